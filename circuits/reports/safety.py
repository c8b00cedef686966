"""Safety heads for people: the `interp safety` command and the atlas section, rendering
`circuits.safety.safety_analysis`."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import typer

from circuits.refusal import is_refusal
from circuits.safety import (
    ABLATIONS,
    SCALE,
    SafetyConfig,
    SafetyResult,
    check_safety_args,
    load_prompts,
    safety_analysis,
)
from interp.cli import (
    DEVICE,
    JSON,
    MODEL,
    OUT,
    SEED,
    check_model,
    emit,
    load_cli_model,
    parse_indices,
)
from interp.errors import InputError


def _figures(a: SafetyResult) -> list:
    import plotly.express as px

    table = a.table
    figures = [table.heatmap("ships", title=f"Ships: mean KL(base ‖ ablated) over harmful prompts (nats) — {table.model}"),
               table.heatmap("sahara_angle", title="angle of the harmful set's top singular vector when the head is "
                                                   "ablated (degrees)")]
    if a.refusal is not None:
        s = a.refusal_summary()
        s = s[s["k"] > 0]
        base = a.refusal[a.refusal["k"] == 0].set_index("set")["refusal_rate"]
        fig = px.bar(s, x="k", y="refusal_rate", color="ablated", facet_col="set", barmode="group",
                     error_y=s["max"] - s["refusal_rate"], error_y_minus=s["refusal_rate"] - s["min"],
                     title="refusal rate with k heads ablated (random: mean and range over draws)")
        for i, name in enumerate(("harmful", "harmless")):
            if name in base.index:
                fig.add_hline(y=float(base[name]), line_dash="dash", col=i + 1, annotation_text="no ablation")
        figures.append(fig)
    return figures


def _summary(a: SafetyResult) -> str:
    p, c, table = a.params, a.config, a.table.df
    top = table.sort_values("ships", ascending=False).head(5)
    tops = ", ".join(f"{r.label} ({r.ships:.3g})" for r in top.itertuples())
    text = (f"<p>Ships (Zhou et al.): KL(p_base ‖ p_ablated) of the next-token distribution at the last position of "
            f"{p['n_prompts']} harmful requests in the chat template; ablation <b>{html.escape(p['ablation'])}</b>"
            f"{' (query × ' + format(p['scale'], 'g') + ': uniform attention)' if p['ablation'] == 'query' else ''}. "
            f"Top heads by mean Ships: {html.escape(tops)}. The template's shared first {p['shared_prefix_tokens']} "
            f"tokens are run once per head; each head is one batched forward from its layer.</p>")
    if a.sahara is not None and len(a.sahara):
        steps = "; ".join(f"{r.set} → {r.angle:.2f}°" for r in a.sahara.itertuples())
        text += (f"<p>Sahara greedy search (candidates: the {c.sahara_candidates} heads with the largest single-head "
                 f"angle): {html.escape(steps)}.</p>")
    checks = a.refusal
    if checks is not None:
        base = checks[checks["k"] == 0].set_index("set")["refusal_rate"]
        s = a.refusal_summary()
        parts = []
        for k in sorted(set(s["k"]) - {0}):
            row = s[s["k"] == k].set_index(["ablated", "set"])["refusal_rate"]
            top_name = next(x for x in row.index.get_level_values(0) if x != "random")
            parts.append(f"k={k}: harmful {row[(top_name, 'harmful')]:.0%} (random {row[('random', 'harmful')]:.0%}), "
                         f"harmless {row[(top_name, 'harmless')]:.0%} (random {row[('random', 'harmless')]:.0%})")
        text += (f"<p>Refusal check on {p['n_check']} prompts per set, greedy {c.max_new_tokens} tokens, phrase-based "
                 f"detector: base refusal rate <b>{base.get('harmful', float('nan')):.0%}</b> on harmful requests and "
                 f"{base.get('harmless', float('nan')):.0%} on harmless ones. With the top-k Ships heads ablated vs k "
                 f"random heads: {html.escape('; '.join(parts))}.</p>")
    return text


def _answers_table(a: SafetyResult):
    import pandas as pd

    rows = []
    for name, answers in a.answers.items():
        prompts = load_prompts(name)["prompt"].tolist()
        rows += [{"set": name, "prompt": p, "answer": x[:160], "refusal": is_refusal(x)} for p, x in zip(prompts, answers)]
    return pd.DataFrame(rows)


def _tables(a: SafetyResult) -> list:
    top = a.table.top("ships", 15).df[["label", "ships", "ships_median", "sahara_angle"]]
    tables = [("top 15 heads by Ships", top)]
    if a.sahara is not None:
        tables.append(("Sahara greedy search", a.sahara))
    if a.refusal is not None:
        tables.append(("refusal rate per run", a.refusal))
        tables.append(("base answers (first 160 characters)", _answers_table(a).head(40)))
    return tables


def _section(a: SafetyResult) -> dict[str, Any]:
    body = a.to_dict()
    del body["schema"], body["model"]
    return {"title": "Safety heads (Ships, Sahara, refusal)", "text": _summary(a), "figures": _figures(a),
            "tables": _tables(a), "json": body}


def atlas_section(model, context: dict) -> dict[str, Any]:
    """Cheap: 6 harmful prompts, Ships for the heads of layers at 1/6, 1/2 and 5/6 of the depth, 2
    Sahara steps over 4 candidates, refusal check with k = 1 and one random draw on 6 prompts per
    set (8 tokens: refusals show in the first words)."""
    n = model.cfg.n_layers
    config = SafetyConfig(n_prompts=6, layers=sorted({n // 6, n // 2, 5 * n // 6}), sahara_steps=2, sahara_candidates=4,
                          ks=(1,), draws=1, max_new_tokens=8, seed=int(context.get("seed", 0)))
    part = _section(safety_analysis(model, config, progress=context.get("progress")))
    part["text"] += ("<p>Atlas setting (kept cheap): 6 prompts and the heads of three layers only; run "
                     "<code>interp safety</code> for every head over 100 prompts.</p>")
    return part


def safety_command(
    model: str = MODEL, out: Path = OUT, as_json: bool = JSON, seed: int = SEED, device: str | None = DEVICE,
    prompts: int = typer.Option(100, min=1, help="harmful prompts for Ships (the shipped set has 106)"),
    layers: str | None = typer.Option(None, help="score only the heads of these layers, e.g. 0,10-12 (default all)"),
    ablation: str = typer.Option("query", help=f"ablation: {', '.join(ABLATIONS)}"),
    scale: float = typer.Option(SCALE, help="factor for the query (or output) of the ablated head"),
    sahara_steps: int = typer.Option(3, min=0, help="Sahara greedy steps (0: skip)"),
    sahara_candidates: int = typer.Option(20, min=1, help="Sahara: heads searched (largest single-head angle first)"),
    ks: str = typer.Option("1,3,5", help="refusal check: numbers of heads ablated ('' to skip)"),
    draws: int = typer.Option(3, min=1, help="refusal check: random draws per k"),
    check_prompts: int | None = typer.Option(None, help="refusal check: prompts per set (default --prompts)"),
    max_new_tokens: int = typer.Option(32, min=1, help="refusal check: greedy tokens per answer"),
):
    """Safety heads (Zhou et al.): Ships per head, Sahara head-set search, refusal rate with heads ablated."""
    from interp.output import check_out, staged_output
    from interp.report import write_analysis

    try:
        k_list = [int(x) for x in ks.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--ks {ks!r} is not a comma-separated list of integers") from None
    chosen = parse_indices(layers, "layers")
    config = SafetyConfig(n_prompts=prompts, layers=chosen, ablation=ablation, scale=scale, sahara_steps=sahara_steps,
                          sahara_candidates=sahara_candidates, ks=k_list, draws=draws, n_check=check_prompts,
                          max_new_tokens=max_new_tokens, seed=seed)
    check_safety_args(check_model(model, device), config)
    check_out(out)
    net = load_cli_model(model, device)
    a = safety_analysis(net, config)
    part = _section(a)
    with staged_output(out) as stage:
        write_analysis(stage, "safety", net.cfg.model_name, part["json"], f"Safety heads: {net.cfg.model_name}", part)
        a.table.to_csv(stage / "safety_heads.csv")
    top = a.table.top("ships", 1).df.iloc[0]
    emit(as_json, {"schema": "interp.safety/1", "model": net.cfg.model_name, **part["json"]},
         f"{net.cfg.model_name}: top Ships head {top['label']} ({top['ships']:.3g} nats); wrote {out}/safety.html, safety.json")
