"""Retrieval heads for people: the `interp retrieval` command and the atlas section, rendering
`circuits.retrieval.retrieval_analysis`."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import typer

from circuits.retrieval import (
    ANALYSIS_DEPTHS,
    DEFAULT_LENGTHS,
    MAX_NEW_TOKENS,
    THRESHOLD,
    RetrievalConfig,
    RetrievalResult,
    check_retrieval_args,
    retrieval_analysis,
)
from interp.cli import DEVICE, JSON, MODEL, OUT, SEED, check_model, emit, load_cli_model
from interp.errors import InputError


def _figures(result: RetrievalResult) -> list:
    import plotly.express as px

    table, masking = result.table, result.masking
    figures = [table.heatmap("retrieval_score", title=f"retrieval score (Wu et al.) — {table.model}")]
    grid = result.accuracy_grid()
    figures.append(px.imshow(grid.values, x=[f"{d:.0%}" for d in grid.columns], y=[str(n) for n in grid.index],
                             zmin=0, zmax=1, color_continuous_scale="Viridis", text_auto=".2f",
                             labels={"x": "needle depth", "y": "context length (tokens)", "color": "ROUGE-1 recall"},
                             title="needle accuracy (unmasked): ROUGE-1 recall of the answer"))
    if "induction" in table.df:
        df = table.df.assign(kind=lambda d: d["retrieval_head"].map({True: "retrieval head", False: "other"}))
        figures.append(px.scatter(df, x="induction", y="retrieval_score", color="kind", hover_name="label",
                                  hover_data=["echo"], title="retrieval score vs RazorAttention induction score"))
    if masking is not None:
        m = masking[masking["k"] > 0].groupby(["k", "masked"], as_index=False)["recall"].mean()
        base = float(masking.loc[masking["k"] == 0, "recall"].iloc[0])
        fig = px.bar(m, x="k", y="recall", color="masked", barmode="group",
                     title="needle recall with k heads' attention made uniform (random: mean over draws)")
        fig.add_hline(y=base, line_dash="dash", annotation_text="no masking")
        figures.append(fig)
    return figures


def _summary(result: RetrievalResult) -> str:
    p, df, masking = result.params, result.table.df, result.masking
    n_ret = int(df["retrieval_head"].sum())
    zero = float((df["retrieval_score"] == 0).mean())
    top = df.sort_values("retrieval_score", ascending=False).head(5)
    tops = ", ".join(f"{r.label} ({r.retrieval_score:.3f})" for r in top.itertuples())
    text = (f"<p>{p['n_tests']} needle tests (lengths {', '.join(map(str, p['lengths']))} tokens × depths "
            f"{', '.join(f'{d:.0%}' for d in p['depths'])}; haystack: Python's reference documentation; needle "
            f"questions in the chat template), greedy decoding up to {p['max_new_tokens']} tokens. "
            f"<b>{p['n_counted']}</b> tests were answered (ROUGE-1 recall &gt; {p['recall_to_count']}) and count. "
            f"<b>{n_ret}</b> of {len(df)} heads ({n_ret / len(df):.1%}) score above {p['threshold']} (retrieval "
            f"heads); {zero:.0%} score zero. Top: {html.escape(tops)}.</p>"
            "<p>Score (Wu et al.): per decoding step and head, the top-1 attended key counts 1/|needle| when it lies "
            "in the needle's answer span and holds the token just generated; mean over counted tests. The prompt is "
            "prefilled without attention patterns (fused attention); each step's single query row gives the top-1 "
            "key. Echo and induction columns: RazorAttention's head types on repeated random tokens.</p>")
    if masking is not None:
        base = float(masking.loc[masking["k"] == 0, "recall"].iloc[0])
        parts = []
        for k, g in masking[masking["k"] > 0].groupby("k"):
            top_r = g.loc[g["masked"] != "random", "recall"].mean()
            rnd = g.loc[g["masked"] == "random", "recall"]
            parts.append(f"k={k}: top {top_r:.2f} vs random {rnd.mean():.2f} (range {rnd.min():.2f}–{rnd.max():.2f})")
        text += (f"<p>Masking (query zeroed → uniform attention) on the {len(masking)} runs' tests: unmasked recall "
                 f"{base:.2f}; {html.escape('; '.join(parts))}.</p>")
    return text


def _tables(result: RetrievalResult) -> list:
    cols = [c for c in ("label", "retrieval_score", "hit_tests", "echo", "induction") if c in result.table.df]
    tables = [("top 15 heads by retrieval score", result.table.top("retrieval_score", 15).df[cols]),
              ("needle recall by length (rows) × depth (columns)", result.accuracy_grid().round(3).reset_index()),
              ("every test", result.tests)]
    if result.masking is not None:
        tables.append(("masking runs", result.masking))
    return tables


def _section(result: RetrievalResult) -> dict[str, Any]:
    body = result.to_dict()
    del body["schema"], body["model"]
    return {"title": "Retrieval heads (needle in a haystack)", "text": _summary(result),
            "figures": _figures(result), "tables": _tables(result), "json": body}


def atlas_section(model, context: dict) -> dict[str, Any]:
    """Cheap: one 384-token needle test at depth 50 %, up to 20 new tokens, no masking; the full run
    is `interp retrieval`."""
    length = min(384, model.cfg.n_ctx - 32)
    config = RetrievalConfig(lengths=(length,), depths=(0.5,), seed=int(context.get("seed", 0)), max_new_tokens=20,
                             mask_ks=(), echo_segment=48)
    part = _section(retrieval_analysis(model, config, progress=context.get("progress")))
    part["text"] += ("<p>Atlas setting (kept cheap): one short context; run <code>interp retrieval</code> for 1K–8K "
                     "tokens and the masking experiment.</p>")
    return part


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--{what} {text!r} is not a comma-separated list of integers") from None


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--{what} {text!r} is not a comma-separated list of numbers") from None


def retrieval_command(
    model: str = MODEL, out: Path = OUT, as_json: bool = JSON, seed: int = SEED, device: str | None = DEVICE,
    lengths: str = typer.Option(",".join(map(str, DEFAULT_LENGTHS)), help="context lengths in tokens, comma-separated"),
    depths: str = typer.Option(",".join(map(str, ANALYSIS_DEPTHS)), help="needle depths in [0, 1], comma-separated"),
    needles: int = typer.Option(1, min=1, help="needles (each tested at every length and depth)"),
    max_new_tokens: int = typer.Option(MAX_NEW_TOKENS, min=1, help="greedy decoding steps at most"),
    threshold: float = typer.Option(THRESHOLD, min=0.0, help="retrieval head: score above this"),
    mask_ks: str = typer.Option("5,20", help="masking experiment: k values ('' to skip)"),
    mask_draws: int = typer.Option(2, min=1, help="random draws of k non-retrieval heads per k"),
    mask_length: int | None = typer.Option(None, help="context length of the masking tests (default: shortest)"),
    attention: str = typer.Option("sdpa", help="prefill attention: sdpa (torch fused) or kernels"),
):
    """Retrieval heads (Wu et al.): needle-in-a-haystack accuracy, retrieval scores, masking, echo/induction."""
    from interp.output import check_out, staged_output
    from interp.report import write_analysis

    config = RetrievalConfig(lengths=_ints(lengths, "lengths"), depths=_floats(depths, "depths"), n_needles=needles,
                             seed=seed, max_new_tokens=max_new_tokens, threshold=threshold,
                             mask_ks=_ints(mask_ks, "mask-ks"), mask_draws=mask_draws, mask_length=mask_length,
                             attention=attention)
    check_retrieval_args(check_model(model, device), config)
    check_out(out)
    net = load_cli_model(model, device)
    result = retrieval_analysis(net, config)
    part = _section(result)
    with staged_output(out) as stage:
        write_analysis(stage, "retrieval", net.cfg.model_name, part["json"], f"Retrieval heads: {net.cfg.model_name}", part)
        result.table.to_csv(stage / "retrieval_heads.csv")
        result.tests.to_csv(stage / "needle_tests.csv", index=False)
    n_ret = int(result.table.df["retrieval_head"].sum())
    emit(as_json, {"schema": "interp.retrieval/1", "model": net.cfg.model_name, **part["json"]},
         f"{net.cfg.model_name}: {n_ret} retrieval heads from {result.n_counted}/{result.n_tests} "
         f"answered tests; wrote {out}/retrieval.html, retrieval.json")


