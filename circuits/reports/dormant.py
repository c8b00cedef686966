"""Active-dormant heads for people: the `interp dormant` command and the atlas section."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from circuits.active_dormant import DormantResult, active_dormant
from interp.cli import (
    DEVICE,
    JSON,
    MODEL,
    OUT,
    SEED,
    check_model,
    check_tokens,
    emit,
    load_cli_model,
)
from interp.errors import InputError
from interp.results import config_dict
from interp.texts import DOMAINS


def _figures(result: DormantResult) -> list:
    import plotly.express as px
    import plotly.graph_objects as go

    stats, params = result.stats, config_dict(result.config)
    scatter = px.scatter(stats, x="sink_mass", y="norm_ratio", color="domain", hover_name="label", opacity=0.6,
                         title="every (domain, head): attention on the sink vs output norm (÷ the head's largest)")
    scatter.add_vline(x=params["sink_threshold"], line_dash="dash")
    scatter.add_hline(y=params["norm_ratio"], line_dash="dash")
    hist = px.histogram(stats, x="sink_mass", color="domain", nbins=40, barmode="overlay",
                        title="distribution of per-domain sink mass over heads")
    hist.add_vline(x=params["sink_threshold"], line_dash="dash")
    figures = [scatter, hist]
    causal = result.causal
    if causal is not None and len(causal):
        bars = go.Figure([go.Bar(x=causal["label"], y=causal["delta_dormant"], name="ablated where dormant"),
                          go.Bar(x=causal["label"], y=causal["delta_active"], name="ablated where active")])
        bars.update_layout(title="causal check: next-token loss change when the head's output is zeroed (nats)",
                           barmode="group", yaxis_title="Δ loss")
        figures.append(bars)
    return figures


def _summary(result: DormantResult) -> str:
    p, switching, causal = config_dict(result.config), result.switching, result.causal
    text = (f"<p>Domains: {', '.join(p['domains'])} ({p['n']} texts × ≤ {p['max_tokens']} tokens each). "
            f"A head is <b>dormant</b> on a domain when its mean attention on the first token is ≥ {p['sink_threshold']} "
            f"and its mean output norm is ≤ {p['norm_ratio']} × its largest over the domains; both thresholds are "
            f"parameters, chosen from the distributions below. <b>{len(switching)}</b> heads switch between "
            f"dormant and active.</p>")
    if causal is not None and len(causal):
        smaller = (causal["delta_dormant"].abs() < causal["delta_active"].abs()).mean()
        text += (f"<p>Causal check (output zeroed): median Δloss {causal['delta_dormant'].median():+.4f} nats where "
                 f"dormant vs {causal['delta_active'].median():+.4f} where active; the dormant ablation matters less "
                 f"for {smaller:.0%} of switching heads.</p>")
    return text


def _tables(result: DormantResult) -> list:
    tables = [("switching heads", result.switching)]
    if result.causal is not None:
        tables.append(("causal check per switching head", result.causal))
    return tables


def _section(result: DormantResult) -> dict[str, Any]:
    body = result.to_dict()
    del body["schema"], body["model"]
    return {"title": "Active and dormant heads across text domains", "text": _summary(result),
            "figures": _figures(result), "tables": _tables(result), "json": body}


def atlas_section(model, context: dict) -> dict[str, Any]:
    return _section(active_dormant(model, n=4, max_tokens=96, seed=context.get("seed", 0),
                                   progress=context.get("progress")))


def dormant_command(
    model: str = MODEL, out: Path = OUT, as_json: bool = JSON, seed: int = SEED, device: Optional[str] = DEVICE,
    domains: str = typer.Option(",".join(DOMAINS), help="comma-separated text domains"),
    n_texts: int = typer.Option(8, min=1, help="texts per domain"),
    max_tokens: int = typer.Option(128, min=8, help="tokens per text"),
    sink_threshold: float = typer.Option(0.8, min=0.0, max=1.0, help="dormant: sink mass at least this"),
    norm_ratio: float = typer.Option(0.5, min=0.0, max=1.0, help="dormant: output norm at most this × the head's largest"),
    check: bool = typer.Option(True, help="ablate every switching head where dormant and where active"),
):
    """Active-dormant heads (Guo et al.): per-domain sink mass and output norm, switching heads, causal check."""
    from interp.output import check_out, staged_output
    from interp.report import write_analysis

    chosen = [d.strip() for d in domains.split(",") if d.strip()]
    unknown = [d for d in chosen if d not in DOMAINS]
    if unknown or not chosen:
        raise InputError(f"unknown domain {unknown[0]!r}; choose from {', '.join(DOMAINS)}" if unknown else
                         f"--domains names no domain; choose from {', '.join(DOMAINS)}")
    facts = check_model(model, device)
    check_tokens(max_tokens, facts, "max-tokens")
    check_out(out)
    net = load_cli_model(model, device)
    result = active_dormant(net, domains=chosen, n=n_texts,
                            max_tokens=max_tokens, sink_threshold=sink_threshold, norm_ratio=norm_ratio, seed=seed,
                            check=check)
    part = _section(result)
    body = part["json"]
    with staged_output(out) as stage:
        write_analysis(stage, "dormant", net.cfg.model_name, body, f"Active and dormant heads: {net.cfg.model_name}", part)
        result.stats.to_csv(stage / "dormant_per_domain.csv", index=False)
    emit(as_json, {"schema": "interp.dormant/1", "model": net.cfg.model_name, **body},
         f"{net.cfg.model_name}: {len(result.switching)} switching heads; wrote {out}/dormant.html, dormant.json")
