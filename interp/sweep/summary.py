"""The sweep summary: every job's own JSON joined into DIR/summary.json and DIR/summary.html.

Sections, each present when the sweep ran the analyses it joins:
- jobs: status (done / failed / missing), attempts, seconds, a link to the job's own report;
- SAE metrics by layer (sae_lens names: l0, explained_variance, ce_loss_score, dead_fraction), from
  `sae eval` (sae_eval.json) and `sae train` (training.json: the running means at the end of training,
  no CE loss score);
- head taxonomy across models, from `heads`, `sinks` and `atlas` jobs: the headline numbers of
  `interp compare` (Sink ratio, induction heads over 0.1, the top induction and previous-token heads);
- failures: the job, what it ran and its last error.
Only JSON is read; nothing here imports an analysis package.
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from interp.sweep.spec import Job

SAE_METRICS = ("l0", "explained_variance", "ce_loss_score", "dead_fraction")
INDUCTION_THRESHOLD = 0.1  # as in `interp compare`


@dataclass
class JobStatus:
    id: str
    analysis: str
    options: dict[str, Any]
    status: str                      # "done", "failed" or "missing" (never finished, no error recorded)
    attempts: int = 0
    seconds: Optional[float] = None
    report: Optional[str] = None     # the job's own HTML report, relative to DIR
    outputs: list[str] = field(default_factory=list)  # the job's JSON files, relative to DIR
    error: Optional[str] = None


def job_status(out: Path, job: Job) -> JobStatus:
    from interp.sweep.runner import ATTEMPTS, ERROR, JOB_JSON, is_finished, job_folder

    folder = job_folder(out, job)
    attempts = len((folder / ATTEMPTS).read_text().splitlines()) if (folder / ATTEMPTS).is_file() else 0
    status = JobStatus(job.id, job.analysis, job.options, "missing", attempts)
    if is_finished(folder):
        record = json.loads((folder / JOB_JSON).read_text())
        status.status, status.seconds = "done", record.get("seconds")
        files = record.get("files", [])
        status.outputs = [f"jobs/{job.id}/{f}" for f in files if f.endswith(".json")]
        pages = [f for f in files if f.endswith(".html")]
        main = next((f for f in pages if f == "report.html"), pages[0] if pages else None)
        status.report = f"jobs/{job.id}/{main}" if main else None
    elif (folder / ERROR).is_file():
        status.status = "failed"
        status.error = json.loads((folder / ERROR).read_text()).get("error")
    return status


def _load(out: Path, rel: str) -> dict:
    return json.loads((out / rel).read_text())


def sae_rows(out: Path, statuses: list[JobStatus]) -> pd.DataFrame:
    """One row per SAE job: model, layer, the four sae_lens metrics, where they came from."""
    rows = []
    for st in statuses:
        for rel in st.outputs:
            name = Path(rel).name
            if name == "sae_eval.json":
                doc = _load(out, rel)
                m = doc.get("metrics", {})
                rows.append({"job": st.id, "model": doc.get("model"), "layer": doc.get("layer"), "source": "sae eval",
                             **{k: m.get(k) for k in SAE_METRICS}})
            elif name == "training.json" and Path(rel).parent.name == st.id:
                doc = _load(out, rel)
                final = doc.get("final", {})
                d_sae = doc.get("d_sae")
                dead = final.get("dead")
                rows.append({"job": st.id, "model": doc.get("model", st.options.get("model")),
                             "layer": doc.get("layer", st.options.get("layer")), "source": "sae train (running)",
                             "l0": final.get("l0"), "explained_variance": final.get("explained_variance"),
                             "ce_loss_score": None,
                             "dead_fraction": dead / d_sae if dead is not None and d_sae else None})
    df = pd.DataFrame(rows, columns=["job", "model", "layer", "source", *SAE_METRICS])
    return df.sort_values(["model", "layer", "source"], kind="stable").reset_index(drop=True) if len(df) else df


def _head_rows(table: dict) -> pd.DataFrame:
    return pd.DataFrame(table.get("rows", []))


def taxonomy_rows(out: Path, statuses: list[JobStatus]) -> pd.DataFrame:
    """The `compare` headline numbers per model, from heads/sinks/atlas jobs (one row per model;
    a model swept with several settings gets one row per setting)."""
    parts: dict[str, list[dict]] = {}
    for st in statuses:
        for rel in st.outputs:
            name = Path(rel).name
            if name not in {"heads.json", "sinks.json", "atlas.json"}:
                continue
            doc = _load(out, rel)
            found: dict[str, Any] = {"model": doc.get("model"), "jobs": [st.id]}
            if name == "atlas.json":
                sections = doc.get("sections", {})
                card = doc.get("card", {})
                found.update(n_layers=card.get("n_layers"), n_heads=card.get("n_heads"))
                types, sinks = sections.get("head_types"), sections.get("sinks")
            else:
                types = doc.get("heads") if name == "heads.json" else None
                sinks = doc if name == "sinks.json" else None
            if types:
                rows = _head_rows(types)
                found.update(_types_summary(rows))
                if len(rows):
                    found.setdefault("n_layers", int(rows["layer"].max()) + 1)
                    found.setdefault("n_heads", int(rows["head"].max()) + 1)
            if sinks:
                found["sink_ratio_pct"] = sinks.get("sink_ratio")
                heads = _head_rows(sinks.get("heads", {}))
                if len(heads):
                    found.update(n_layers=int(heads["layer"].max()) + 1, n_heads=int(heads["head"].max()) + 1)
            parts.setdefault(str(found["model"]), []).append(found)
    rows = []
    for model, found in parts.items():
        merged: list[dict] = []
        for part in found:  # fill the first row lacking these keys; a repeated analysis starts a new row
            target = next((m for m in merged if not (set(part) - {"model", "jobs", "n_layers", "n_heads"}) & set(m)), None)
            if target is None:
                merged.append(dict(part))
            else:
                target.update({k: v for k, v in part.items() if k != "jobs"})
                target["jobs"] = target["jobs"] + part["jobs"]
        rows.extend(merged)
    cols = ["model", "n_layers", "n_heads", "sink_ratio_pct", f"induction_heads_over_{INDUCTION_THRESHOLD}",
            "top_induction_head", "top_previous_token_head", "jobs"]
    df = pd.DataFrame(rows, columns=cols)
    if len(df):
        df["jobs"] = df["jobs"].map(lambda ids: ", ".join(ids))
    return df


def _types_summary(rows: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "induction" in rows:
        out[f"induction_heads_over_{INDUCTION_THRESHOLD}"] = int((rows["induction"] > INDUCTION_THRESHOLD).sum())
        top = rows.loc[rows["induction"].idxmax()]
        out["top_induction_head"] = f"{top['label']} ({top['induction']:.2f})"
    if "previous_token" in rows:
        top = rows.loc[rows["previous_token"].idxmax()]
        out["top_previous_token_head"] = f"{top['label']} ({top['previous_token']:.2f})"
    return out


def summarize(out: str | Path, jobs: list[Job]) -> dict[str, Any]:
    """The summary document (also what summary.json holds)."""
    out = Path(out)
    statuses = [job_status(out, j) for j in jobs]
    sae, taxonomy = sae_rows(out, statuses), taxonomy_rows(out, statuses)
    counts = {s: sum(st.status == s for st in statuses) for s in ("done", "failed", "missing")}
    return {"schema": "interp.sweep_summary/1", "model": None, "counts": {"total": len(jobs), **counts},
            "jobs": [asdict(st) for st in statuses],
            "sae_by_layer": _records(sae), "taxonomy": _records(taxonomy),
            "failures": [{"id": st.id, "analysis": st.analysis, "options": st.options, "attempts": st.attempts,
                          "error": st.error} for st in statuses if st.status == "failed"]}


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain JSON values, floats exact, missing values None."""
    def plain(v: Any) -> Any:
        v = v.item() if hasattr(v, "item") else v
        return None if isinstance(v, float) and math.isnan(v) else v

    return [{k: plain(v) for k, v in row.items()} for row in df.astype(object).to_dict(orient="records")]


def write_summary(out: str | Path, jobs: list[Job]) -> dict[str, Any]:
    """Write DIR/summary.json and DIR/summary.html (each atomically); return the document."""
    from interp.report import Report
    from interp.sweep.runner import _write_atomic

    out = Path(out)
    doc = summarize(out, jobs)
    _write_atomic(out / "summary.json", doc)
    c = doc["counts"]
    report = Report(f"Sweep: {c['done']} of {c['total']} jobs done")
    report.add("Jobs", text=f"<p>{c['done']} done, {c['failed']} failed, {c['missing']} not run yet "
                            f"(rerun the same command to run the missing and failed jobs).</p>" + _jobs_html(doc["jobs"]))
    if doc["sae_by_layer"]:
        sae = pd.DataFrame(doc["sae_by_layer"])
        report.add("SAE metrics by layer", text="<p>sae_lens metric names; held-out tokens for <i>sae eval</i>, "
                   "running means at the end of training for <i>sae train</i>.</p>",
                   figures=_sae_figures(sae), tables=[("by layer", sae)])
    if doc["taxonomy"]:
        report.add("Head taxonomy across models", text="<p>The headline numbers of <code>interp compare</code>, "
                   "joined from each model's heads, sinks and atlas jobs.</p>",
                   tables=[("per model", pd.DataFrame(doc["taxonomy"]))])
    if doc["failures"]:
        report.add("Failures", tables=[("failed jobs (last error)", pd.DataFrame(doc["failures"]))])
    report.write(out / "summary.html")
    return doc


def _jobs_html(jobs: list[dict]) -> str:
    rows = []
    for j in jobs:
        link = f'<a href="{html.escape(j["report"])}">report</a>' if j.get("report") else ""
        opts = ", ".join(f"{k}={v}" for k, v in j["options"].items())
        secs = "" if j["seconds"] is None else f"{j['seconds']:.1f}"
        rows.append(f"<tr><td style='text-align:left'>{html.escape(j['id'])}</td><td>{html.escape(j['analysis'])}</td>"
                    f"<td style='text-align:left'>{html.escape(opts)}</td><td>{j['status']}</td><td>{j['attempts']}</td>"
                    f"<td>{secs}</td><td>{link}</td><td style='text-align:left'>{html.escape(j.get('error') or '')}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("job", "analysis", "options", "status", "attempts", "seconds", "report", "error"))
    return f"<table class='data'><tr>{head}</tr>{''.join(rows)}</table>"


def _sae_figures(sae: pd.DataFrame) -> list:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(SAE_METRICS), subplot_titles=SAE_METRICS)
    for col, metric in enumerate(SAE_METRICS, start=1):
        for (model, source), part in sae.groupby(["model", "source"]):
            if part[metric].notna().any():
                fig.add_trace(go.Scatter(x=part["layer"], y=part[metric], mode="lines+markers",
                                         name=f"{model} ({source})", showlegend=col == 1), 1, col)
    fig.update_layout(title="SAE metrics by layer")
    return [fig]
