"""The `interp compare` command: the head taxonomy of several models side by side (circuits.compare
computes; this module renders)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd
import typer

from circuits.compare import ModelTaxonomy, model_atlas, model_taxonomy, summary_row
from interp.cli import DEVICE, JSON, OUT, SEED, check_model, check_n_texts, emit, load_cli_model
from interp.errors import InputError
from interp.results import frame_records
from interp.texts import sample_texts


def overlap_figure(results: list[ModelTaxonomy]):
    """The taxonomy overlaps (Jaccard of top sets) of each model, side by side."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    overlaps = [model_atlas(r).overlaps() for r in results]
    fig = make_subplots(rows=1, cols=len(results), subplot_titles=[
        f"{r.card['name']}: Jaccard of top-{o.k} heads" for r, o in zip(results, overlaps)])
    for col, o in enumerate(overlaps, start=1):
        names = list(o.jaccard.index)
        fig.add_trace(go.Heatmap(z=o.jaccard.to_numpy(), x=names, y=names, zmin=0, zmax=1, colorscale="Viridis",
                                 showscale=col == len(results)), 1, col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    return fig


def figures(results: list[ModelTaxonomy]) -> list:
    """Side-by-side heatmaps of α per model, and per-layer curves on relative depth."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = [r.card["name"] for r in results]
    heat = make_subplots(rows=1, cols=len(results), subplot_titles=[f"α of the first token: {n}" for n in names])
    for col, r in enumerate(results, start=1):
        grid = r.sinks.grid("alpha")
        heat.add_trace(go.Heatmap(z=grid.values, x=[f"H{h}" for h in grid.columns], y=[f"L{l}" for l in grid.index],
                                  zmin=0, zmax=1, colorscale="Viridis", showscale=col == len(results)), 1, col)
        heat.update_yaxes(autorange="reversed", row=1, col=col)
    curves = go.Figure()
    for r in results:
        depth = r.extreme["layer"] / max(1, r.card["n_layers"] - 1)
        for metric, dash in (("resid_peak", None), ("value_drain", "dot")):
            curves.add_trace(go.Scatter(x=depth, y=r.extreme[metric], name=f"{r.card['name']} {metric}",
                                        mode="lines+markers", line=dict(dash=dash)))
    curves.update_layout(title="extreme tokens by relative depth (first token / median of others)",
                         xaxis_title="layer / (n_layers − 1)", yaxis_type="log")
    induction = go.Figure([go.Box(y=r.types["induction"], name=r.card["name"], boxpoints="all") for r in results])
    induction.update_layout(title="induction scores of every head", yaxis_title="induction score")
    return [heat, curves, induction, overlap_figure(results)]


def compare_command(
    models: str = typer.Option("smollm2-135m,gemma3-270m", "--models", help="comma-separated models"),
    out: Path = OUT, as_json: bool = JSON, seed: int = SEED, device: Optional[str] = DEVICE,
    n_texts: int = typer.Option(16, min=1, help="real-text samples for sinks and extreme tokens"),
    dormant_texts: int = typer.Option(3, min=1, help="texts per domain for active-dormant heads"),
):
    """Sinks, extreme tokens, head types and active-dormant heads of several models, side by side."""
    from interp.output import check_out, staged_output
    from interp.report import write_analysis

    names = [name.strip() for name in models.split(",") if name.strip()]
    if not names:
        raise InputError("--models names no model; pass e.g. --models smollm2-135m,gemma3-270m")
    for name in names:  # every name resolved before the first model runs
        check_model(name, device)
    check_n_texts(n_texts)
    check_out(out)
    texts = sample_texts(n_texts, seed=seed)
    results = [model_taxonomy(load_cli_model(name, device), texts, seed=seed, dormant_texts=dormant_texts)
               for name in names]
    table = pd.DataFrame([summary_row(r) for r in results])
    body = {"models": table.to_dict(orient="records"),
            "per_model": {r.card["name"]: {"sinks": r.sinks.to_dict(), "types": r.types.to_dict(),
                                              "extreme_tokens": r.extreme.to_dict(orient="records"),
                                              "switching": frame_records(r.dormant.switching),
                                              "overlaps": model_atlas(r).overlaps().to_dict()}
                          for r in results}}
    part = {"title": "Side by side", "figures": figures(results), "tables": [("headline numbers", table)],
            "text": f"<p>{n_texts} real texts (seed {seed}); induction on 4 × 128 random tokens repeated twice; "
                    f"dormant heads on six domains, {dormant_texts} texts each.</p>"}
    with staged_output(out) as stage:
        write_analysis(stage, "compare", None, body, "Head taxonomy across models", part)
    emit(as_json, {"schema": "interp.compare/1", "model": None, **body},
         table.to_string(index=False) + f"\nwrote {out}/compare.html and compare.json")
