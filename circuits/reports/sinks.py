"""Sinks for people: the `interp sinks` command and the atlas section, rendering `circuits.sinks.sinks_analysis`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from circuits.sinks import SinksResult, sinks_analysis
from interp.cli import (
    DEVICE,
    JSON,
    MODEL,
    OUT,
    SEED,
    check_model,
    check_n_texts,
    check_tokens,
    emit,
    load_cli_model,
)
from interp.errors import InputError


def _figures(result: SinksResult) -> list:
    import plotly.graph_objects as go

    table, extreme = result.table, result.extreme
    layers = go.Figure([go.Scatter(x=extreme["layer"], y=extreme[c], name=c, mode="lines+markers")
                        for c in ("value_drain", "resid_peak")])
    layers.update_layout(title="extreme-token phenomena per layer (first token / median of others)",
                         xaxis_title="layer", yaxis_type="log", yaxis_title="ratio")
    return [table.heatmap("alpha", title="α of the sink token per head"), table.heatmap("sink_rate"), layers]


def _tables(result: SinksResult) -> list:
    hidden, massive = result.hidden, result.massive
    by_token = (hidden.groupby("token").agg(heads=("label", "nunique"), occurrences=("alpha", "size"),
                                            mean_alpha=("alpha", "mean")).sort_values("heads", ascending=False).head(15)
                .reset_index()) if len(hidden) else hidden
    top_massive = massive.reindex(massive["value"].abs().sort_values(ascending=False).index).head(15) if len(massive) else massive
    return [("heads with the strongest sink (α)", result.table.top("alpha", 10).df),
            ("hidden sinks (ACT, α > threshold at later tokens), by token", by_token),
            ("massive activations (|x| > 100 and > 1000 × median)", top_massive),
            ("extreme tokens per layer", result.extreme)]


def _summary(result: SinksResult) -> str:
    meta = result.table.meta
    return (f"<p>Sink<sub>{meta['k']}</sub><sup>{meta['eps']}</sup> = <b>{meta['sink_ratio']:.1f} %</b> of (sample, layer, "
            f"head) triples put α > {meta['eps']} on token {meta['k']} (Gu et al.; {meta['n_samples']} texts of "
            f"{meta['T']} tokens). α of a key is the attention it receives divided by the number of queries that see it, "
            f"computed by the fused kernels.</p>")


def _section(result: SinksResult) -> dict[str, Any]:
    body = result.to_dict()
    del body["schema"], body["model"]
    return {"title": "Attention sinks and extreme tokens", "text": _summary(result), "figures": _figures(result),
            "tables": _tables(result), "json": body}


def atlas_section(model, context: dict) -> dict[str, Any]:
    return _section(sinks_analysis(model, context["texts"], progress=context.get("progress")))


def sinks_command(
    model: str = MODEL, out: Path = OUT, as_json: bool = JSON, seed: int = SEED, device: Optional[str] = DEVICE,
    n_texts: int = typer.Option(32, min=1, help="real-text samples"),
    max_tokens: int = typer.Option(64, min=2, help="T, tokens per sample (Gu et al.: 64)"),
    k: int = typer.Option(0, min=0, help="sink position"),
    eps: float = typer.Option(0.3, min=0.0, max=1.0, help="α threshold for Sink_k^eps"),
):
    """Attention sinks (Gu et al.), hidden sinks (ACT), value drains, residual peaks, massive activations."""
    from interp.output import check_out, staged_output
    from interp.report import write_analysis
    from interp.texts import sample_texts

    facts = check_model(model, device)
    check_tokens(max_tokens, facts, "max-tokens")
    check_n_texts(n_texts)
    if k >= max_tokens:
        raise InputError(f"--k {k} must be a position inside the first --max-tokens {max_tokens} tokens")
    check_out(out)
    net = load_cli_model(model, device)
    result = sinks_analysis(net, sample_texts(n_texts, seed=seed), k=k, eps=eps, max_tokens=max_tokens)
    part = _section(result)
    body = part["json"]
    with staged_output(out) as stage:
        write_analysis(stage, "sinks", net.cfg.model_name, body, f"Attention sinks: {net.cfg.model_name}", part)
        result.table.to_csv(stage / "sink_heads.csv")
    emit(as_json, {"schema": "interp.sinks/1", "model": net.cfg.model_name, **body},
         f"{net.cfg.model_name}: Sink_{k}^{eps} = {body['sink_ratio']:.1f} %; wrote {out}/sinks.html, sinks.json, sink_heads.csv")
