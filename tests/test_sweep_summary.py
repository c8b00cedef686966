"""The sweep summary's join of finished jobs' JSON files (no Ray needed: folders shaped as the
commands write them, so this runs where the `[ray]` extra is not installed)."""
import json
from pathlib import Path

from interp.sweep import summarize


def _finished_job(out: Path, job, files: dict) -> None:
    folder = out / "jobs" / job.id
    folder.mkdir(parents=True)
    for name, doc in files.items():
        (folder / name).write_text(json.dumps(doc))
    (folder / "job.json").write_text(json.dumps({**job.to_dict(), "seconds": 1.0, "files": sorted(files)}))
    (folder / "attempts.log").write_text("1 0 0\n")
    (folder / "done").write_text("ok\n")


def _head_table(model, rows):
    metrics = [k for k in rows[0] if k not in ("layer", "head", "label")]
    return {"schema": "interp.head_table/1", "model": model, "metrics": metrics, "meta": {}, "rows": rows}


def test_the_summary_joins_sae_metrics_by_layer_and_head_taxonomies_from_the_jobs_json(tmp_path):
    """Folders shaped as `sae eval`, `sae train`, `heads` and `sinks` write them (no Ray: the join only)."""
    from interp.sweep import Job

    out = tmp_path / "run"
    evals = {layer: {"l0": 20.0 + layer, "explained_variance": 0.8 - 0.1 * layer, "ce_loss_score": 0.9,
                     "dead_fraction": 0.01 * layer, "kl_div_score": 0.5} for layer in (2, 0, 1)}
    for layer, metrics in evals.items():
        _finished_job(out, Job("sae eval", {"model": "m1", "sae": f"s{layer}"}),
                      {"sae_eval.json": {"schema": "interp.sae_eval/1", "model": "m1", "sae": f"s{layer}",
                                         "layer": layer, "metrics": metrics}, "sae_eval.html": "<html/>"})
    train = Job("sae train", {"model": "m1", "layer": 5})
    _finished_job(out, train, {"training.json": {"schema": "interp.sae_training/1", "model": "m1", "layer": 5,
                                                 "d_sae": 400, "final": {"l0": 24.0, "explained_variance": 0.7,
                                                                         "dead": 8.0, "loss": 1.0}}})
    rows = [{"layer": l, "head": h, "label": f"L{l}H{h}", "previous_token": 0.1 * h, "duplicate_token": 0.0,
             "induction": 0.05 * (l + h), "echo": 0.0} for l in range(2) for h in range(3)]
    heads = Job("heads", {"model": "m1"})
    _finished_job(out, heads, {"heads.json": {"schema": "interp.heads/1", "model": "m1", "kinds": [],
                                              "heads": _head_table("m1", rows)}, "heads.html": "<html/>"})
    sinks = Job("sinks", {"model": "m1"})
    sink_rows = [{"layer": r["layer"], "head": r["head"], "label": r["label"], "alpha": 0.5, "sink_rate": 0.4}
                 for r in rows]
    _finished_job(out, sinks, {"sinks.json": {"schema": "interp.sinks/1", "model": "m1", "sink_ratio": 42.5,
                                              "heads": _head_table("m1", sink_rows)}})
    failed = Job("heads", {"model": "m2"})
    (out / "jobs" / failed.id).mkdir(parents=True)
    (out / "jobs" / failed.id / "error.json").write_text(json.dumps({"error": "RuntimeError: boom"}))
    jobs = [*(Job("sae eval", {"model": "m1", "sae": f"s{l}"}) for l in evals), train, heads, sinks, failed]
    doc = summarize(out, jobs)
    sae = doc["sae_by_layer"]
    assert [(r["layer"], r["source"]) for r in sae] == [(0, "sae eval"), (1, "sae eval"), (2, "sae eval"),
                                                       (5, "sae train (running)")]
    for r in sae[:3]:
        assert {k: r[k] for k in ("l0", "explained_variance", "ce_loss_score", "dead_fraction")} == \
            {k: evals[r["layer"]][k] for k in ("l0", "explained_variance", "ce_loss_score", "dead_fraction")}
    assert sae[3]["l0"] == 24.0 and sae[3]["dead_fraction"] == 8.0 / 400 and sae[3]["ce_loss_score"] is None
    [tax] = doc["taxonomy"]
    assert tax["model"] == "m1" and tax["sink_ratio_pct"] == 42.5 and (tax["n_layers"], tax["n_heads"]) == (2, 3)
    assert tax["induction_heads_over_0.1"] == sum(r["induction"] > 0.1 for r in rows) == 1
    assert tax["top_induction_head"] == "L1H2 (0.15)" and tax["top_previous_token_head"] == "L0H2 (0.20)"
    assert doc["counts"] == {"total": 7, "done": 6, "failed": 1, "missing": 0}
    assert doc["failures"][0]["id"] == failed.id and doc["failures"][0]["error"] == "RuntimeError: boom"
