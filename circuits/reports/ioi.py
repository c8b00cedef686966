"""IOI for people: the `interp ioi` command and the atlas section "ioi", rendering `circuits.ioi.ioi_analysis`'s
IOIResult (the JSON is the result's own `to_dict()`)."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import typer

from circuits.ioi import IOIResult, ioi_analysis
from interp.cli import DEVICE, JSON, MODEL, OUT, SEED, check_model, emit, load_cli_model
from interp.errors import InputError
from interp.head_ids import HeadId


def _figures(result: IOIResult) -> list:
    import plotly.graph_objects as go

    circuit = result.circuit
    figures = [circuit.faithfulness_figure()]
    figures.append(result.table.heatmap("score", title=f"{circuit.method} head scores: loss of logit diff when the "
                                        "head's output is mean-ablated (positive = the head helps)"))
    if result.patching is not None:
        p = result.patching
        labels = [HeadId(l, h).label for l in range(p["eap"].shape[0]) for h in range(p["eap"].shape[1])]
        fig = go.Figure(go.Scatter(x=p["exact"].flatten().tolist(), y=p["eap"].flatten().tolist(), mode="markers",
                                   text=labels, hoverinfo="text+x+y"))
        fig.update_layout(title=f"EAP head score vs exact activation patching ({p['n_prompts']} prompts, every head)",
                          xaxis_title="exact patching: clean − patched logit diff",
                          yaxis_title="EAP: first-order loss of logit diff")
        figures.append(fig)
    edge_circuit = result.edge_circuit
    if edge_circuit is not None and edge_circuit.edges:
        figures.append(edge_circuit.graph_figure(max_edges=150))
    return figures


def _summary(result: IOIResult) -> str:
    b, t, p, c = result.baseline, result.targets, result.params, result.circuit
    eb = result.eval_baseline
    text = (f"<p>Selection split: {p['n_prompts']} IOI prompts over {p['templates']} templates; held-out split: "
            f"{p['n_eval']} prompts over {p['eval_templates']} other templates with other names, places and objects "
            f"(BABA and ABBA balanced; single-token words checked with the tokenizer; {html.escape(p['ablation'])}). "
            f"Full model, selection / held-out: logit difference <b>{b['logit_diff']:.2f}</b> / {eb['logit_diff']:.2f} "
            f"(ABC prompts: {b['corrupt_logit_diff']:.2f}), accuracy <b>{b['accuracy']:.0%}</b> / {eb['accuracy']:.0%} "
            f"(IO above S), top-1 {b['top1']:.0%}.</p>"
            f"<p>Method <b>{html.escape(c.method)}</b>, heads ranked by mask-IG on the selection split. Head circuit: "
            f"<b>{t['circuit_heads']}</b> of {t['n_heads_total']} heads ({t['circuit_head_fraction']:.1%}), the "
            f"smallest reaching the target on the selection prompts ({t['selection_faithfulness']:.0%}); on the "
            f"<b>held-out</b> prompts its faithfulness (m(C) − m(∅)) / (m(full) − m(∅)) with every other head "
            f"mean-ablated is <b>{t['circuit_faithfulness']:.0%}</b> (logit-difference ratio {t['circuit_ratio']:.0%}; "
            f"target: ≤ 15 % of heads, ≥ {p['target']:.0%}).")
    if t.get("best_within_15pct"):
        r = t["best_within_15pct"]
        text += f" Held-out curve, largest point within 15 % of heads: {r['n_heads']} heads → {r['value']:.0%}."
    text += "</p>"
    if "acdc" in result.details:
        a = result.details["acdc"]
        text += (f"<p>ACDC over the top {p['acdc_candidates']} EAP-IG edges (τ = {a['tau']}, {a['metric']}): kept "
                 f"{a['n_kept']} edges in {a['n_runs']} forward passes; faithfulness {a['faithfulness']:.0%}.</p>")
    if "spearman_eap_vs_patching" in t:
        r = result.reuse
        text += (f"<p>Checks: EAP vs exact activation patching over all heads, Spearman "
                 f"<b>{t['spearman_eap_vs_patching']:.2f}</b> (target ≥ 0.8; sign agreement on heads with ≥ 10 % of "
                 f"the largest patching effect {t['sign_agreement_large_heads']:.0%}). Top-20 most helpful heads (EAP) "
                 f"on the two disjoint splits: Jaccard <b>{t['top20_jaccard']:.2f}</b> (target ≥ 0.7). Component reuse with factual recall of capitals (accuracy "
                 f"{r['baseline']['accuracy']:.0%}, logit diff {r['baseline']['logit_diff']:.2f}): its circuit has "
                 f"{len(r['circuit_heads'])} heads, {len(r['shared'])} shared with IOI ({r['share_of_ioi']:.0%} of "
                 f"IOI's heads, Jaccard {r['jaccard']:.2f}); of the capitals task's top {r['k']} heads, "
                 f"{r['top_k_shared']:.0%} are in the IOI circuit.</p>")
    counts = result.roles["role"].value_counts().to_dict() if len(result.roles) else {}
    text += "<p>Roles: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()) + "."
    if len(result.roles):
        text += (" Name movers in the whole model (used for the S-inhibition test): "
                 f"{', '.join(result.name_movers) or 'none'}.")
    text += "</p>"
    if result.mib is not None:
        text += ("<p>MIB circuit-track summaries (Mueller et al. 2025), scores from the selection split, curves on "
                 "held-out prompts at MIB's sizes (0.1 % … 100 % of edges, or of heads for node level): CPR (area "
                 "under the faithfulness curve, higher is better) and CMD (area between the curve and 1, 0 is best) "
                 "— table below.</p>")
    return text


def mib_rows(result: IOIResult) -> list[dict[str, Any]]:
    """The MIB table: one row per task, method and level."""
    return [{"task": r["task"], "method": r["method"], "level": r["level"], "n_items": r["n_items"],
             "CPR": r["cpr"], "CMD": r["cmd"]} for r in result.mib or []]


def _section(result: IOIResult) -> dict[str, Any]:
    import pandas as pd

    roles = result.roles
    cols = [c for c in ("label", "role", "att_end_io", "att_end_s2", "dla_logit_diff", "copy_score",
                        "negative_copy_score", "s_inhibition_effect", "att_s2_s1", "att_s2_s1_next", "induction",
                        "duplicate_token", "previous_token") if c in roles.columns]
    body = result.to_dict()
    del body["schema"], body["model"]
    tables = [("circuit heads, their roles and the evidence (held-out prompts)", roles[cols].round(3)),
              ("faithfulness curves (split: select / eval)", pd.DataFrame(result.circuit.faithfulness).round(3))]
    if result.mib is not None:
        tables.append(("MIB summaries on held-out prompts", pd.DataFrame(mib_rows(result)).round(3)))
    return {"title": "IOI circuit (indirect object identification)", "text": _summary(result),
            "figures": _figures(result), "tables": tables, "json": body}


def atlas_section(model, context: dict) -> dict[str, Any]:
    """Cheap version for the atlas: 16 prompts, EAP, head curve only, no checks."""
    result = ioi_analysis(model, n_prompts=16, n_eval=16, method="eap", seed=int(context.get("seed", 0)), checks=False,
                          curve_points=6, edge_curves=False, role_prompts=8, progress=context.get("progress"))
    return _section(result)


def ioi_command(
    model: str = MODEL, out: Path = OUT, as_json: bool = JSON, seed: int = SEED, device: str | None = DEVICE,
    method: str = typer.Option("eap", help="eap | eap-ig | acdc | patching"),
    n_prompts: int = typer.Option(48, min=2, help="IOI prompt pairs"),
    steps: int = typer.Option(5, min=1, help="EAP-IG interpolation steps"),
    tau: float = typer.Option(0.01, help="ACDC threshold on the metric change (KL, nats)"),
    acdc_candidates: int = typer.Option(200, min=1, help="ACDC prunes this many top EAP-IG edges"),
    target: float = typer.Option(0.8, min=0.0, help="faithfulness the circuit must reach"),
    checks: bool = typer.Option(True, help="EAP vs exact patching, stability, reuse with the capitals task, MIB CPR/CMD"),
    mib: bool = typer.Option(True, help="with --checks: MIB CPR/CMD for EAP, EAP-IG, exact patching on IOI and capitals"),
    curve_points: int = typer.Option(10, min=2, help="sizes on the faithfulness curves"),
    edge_curves: bool = typer.Option(True, help="also measure the edge circuit's faithfulness curves (EAP, EAP-IG)"),
):
    """IOI end to end: dataset, baseline, circuit discovery, head roles with evidence, target checks."""
    from circuits.discovery import METHODS
    from interp.output import check_out, staged_output
    from interp.report import write_analysis

    if method not in METHODS:
        raise InputError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    check_model(model, device)
    check_out(out)
    net = load_cli_model(model, device)
    result = ioi_analysis(net, n_prompts=n_prompts, method=method, seed=seed, steps=steps, tau=tau,
                          acdc_candidates=acdc_candidates, target=target, checks=checks, mib=mib,
                          curve_points=curve_points, edge_curves=edge_curves)
    part = _section(result)
    schema = f"interp.{result.KIND}/{result.VERSION}"
    body = {"schema": schema, **part["json"]}  # the body's schema (version 2) is the one ioi.json carries
    with staged_output(out) as stage:
        write_analysis(stage, "ioi", net.cfg.model_name, body, f"IOI circuit: {net.cfg.model_name}", part)
        result.circuit.to_json(stage / "circuit.json")
        result.circuit.to_html(stage / "circuit.html")
        if result.edge_circuit is not None:
            result.edge_circuit.to_json(stage / "edge_circuit.json")
        result.roles.to_csv(stage / "ioi_roles.csv", index=False)
        result.table.to_csv(stage / "ioi_heads.csv")
    t, b = result.targets, result.baseline
    emit(as_json, {"schema": schema, "model": net.cfg.model_name, **part["json"]},
         f"{net.cfg.model_name}: IOI logit diff {b['logit_diff']:.2f}, accuracy "
         f"{b['accuracy']:.0%}; circuit {t['circuit_heads']} heads ({t['circuit_head_fraction']:.0%}) "
         f"→ {t['circuit_faithfulness']:.0%} faithful on held-out prompts (selection {t['selection_faithfulness']:.0%}); wrote {out}/ioi.html, ioi.json, circuit.json, circuit.html, ioi_heads.csv")
