"""Retrieval heads for people: the `interp retrieval` command and the atlas section."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import typer

from circuits.retrieval import (
    DEFAULT_LENGTHS,
    MAX_NEW_TOKENS,
    THRESHOLD,
    accuracy_grid,
    echo_induction,
    masking_experiment,
    needle_tests,
    retrieval_scores,
)
from interp.cli import DEVICE, JSON, MODEL, OUT, SEED, check_model, emit, load_cli_model
from interp.errors import InputError

DEFAULT_DEPTHS = (0.1, 0.5, 0.9)


def retrieval_analysis(model, *, lengths=DEFAULT_LENGTHS, depths=DEFAULT_DEPTHS, n_needles: int = 1, seed: int = 0,
                       max_new_tokens: int = MAX_NEW_TOKENS, threshold: float = THRESHOLD, mask_ks=(5, 20),
                       mask_draws: int = 2, mask_length: int | None = None, echo_segment: int = 128,
                       attention: str = "sdpa", progress: bool = True) -> dict[str, Any]:
    """Needle tests → retrieval scores (+ RazorAttention echo/induction columns), the baseline
    accuracy grid, and the masking experiment on the tests of `mask_length` (default: the shortest
    length; no masking when mask_ks is empty). Lengths above the context minus max_new_tokens are
    lowered to it (8192 → 8142 on SmolLM2 with 50 new tokens)."""
    import time

    t0 = time.perf_counter()
    check_retrieval_args(_facts(model), lengths=lengths, depths=depths, n_needles=n_needles, mask_ks=mask_ks,
                         mask_draws=mask_draws, mask_length=mask_length, attention=attention,
                         max_new_tokens=max_new_tokens)
    room = model.cfg.n_ctx - max_new_tokens  # the answer must fit in the context too
    lengths = sorted({min(int(n), room) for n in lengths})
    tests = needle_tests(model, lengths, depths, n_needles=n_needles, seed=seed)
    result = retrieval_scores(model, tests, max_new_tokens=max_new_tokens, threshold=threshold, attention=attention,
                              progress=progress)
    seconds = {"retrieval_scores": time.perf_counter() - t0}
    razor = echo_induction(model, segment=echo_segment, seed=seed)
    for col in ("echo", "induction"):
        result.table.df[col] = razor[col].to_numpy()
    masking = None
    if mask_ks:
        t1 = time.perf_counter()
        length = min(lengths) if mask_length is None else mask_length
        subset = [t for t in tests if t.length == length]
        masking = masking_experiment(model, subset, result.table, ks=mask_ks, draws=mask_draws, seed=seed,
                                     max_new_tokens=max_new_tokens, attention=attention, progress=progress)
        seconds["masking"] = time.perf_counter() - t1
    result.params.update(seconds=seconds, n_needles=n_needles, seed=seed, echo_segment=echo_segment,
                         mask_ks=list(mask_ks), mask_draws=mask_draws)
    return {"result": result, "masking": masking}


def _facts(model):
    from interp.model_facts import ModelFacts

    return ModelFacts.of(model)


def check_retrieval_args(facts, *, lengths, depths, n_needles, mask_ks, mask_draws, mask_length, attention,
                         max_new_tokens) -> None:
    """Every argument of a retrieval run against the model's facts (context, heads), before any work.
    Lengths up to the context are accepted (those above context - max_new_tokens are lowered to it);
    longer ones are refused."""
    if not lengths or not depths:
        raise InputError("give at least one --lengths value and one --depths value")
    if min(lengths) < 1:
        raise InputError(f"--lengths {min(lengths)} must be a positive number of tokens")
    if facts.n_ctx is not None and max(lengths) > facts.n_ctx:
        raise InputError(f"--lengths {max(lengths)} exceeds the context of {facts.name} ({facts.n_ctx} tokens); "
                         f"use lengths up to {facts.n_ctx - max_new_tokens} (the answer's {max_new_tokens} tokens "
                         "must fit too)")
    if facts.n_ctx is not None and max_new_tokens >= facts.n_ctx // 2:
        raise InputError(f"--max-new-tokens {max_new_tokens} leaves no room for a haystack in the context of "
                         f"{facts.name} ({facts.n_ctx} tokens)")
    if any(not 0.0 <= float(d) <= 1.0 for d in depths):
        raise InputError(f"--depths must lie in [0, 1]; got {list(depths)}")
    if n_needles < 1 or mask_draws < 1:
        raise InputError("--needles and --mask-draws must be at least 1")
    if attention not in ("sdpa", "kernels"):
        raise InputError(f"--attention {attention!r} is not sdpa or kernels")
    if mask_ks:
        total = facts.n_head_total
        if min(mask_ks) < 1 or (total is not None and 2 * max(mask_ks) > total):
            raise InputError(f"--mask-ks {','.join(map(str, mask_ks))}: each k must lie in 1..{(total or 2) // 2} "
                             f"(k random heads are drawn from outside the top {max(mask_ks)} of {total})")
        room = None if facts.n_ctx is None else facts.n_ctx - max_new_tokens
        lowered = {min(int(n), room) if room is not None else int(n) for n in lengths}
        if mask_length is not None and mask_length not in lowered:
            raise InputError(f"--mask-length {mask_length} is not one of the lengths {sorted(lowered)}")


def _figures(analysis: dict[str, Any]) -> list:
    import plotly.express as px

    result, masking = analysis["result"], analysis["masking"]
    table = result.table
    figures = [table.heatmap("retrieval_score", title=f"retrieval score (Wu et al.) — {table.model}")]
    grid = accuracy_grid(result.tests)
    figures.append(px.imshow(grid.values, x=[f"{d:.0%}" for d in grid.columns], y=[str(n) for n in grid.index],
                             zmin=0, zmax=1, color_continuous_scale="Viridis", text_auto=".2f",
                             labels={"x": "needle depth", "y": "context length (tokens)", "color": "ROUGE-1 recall"},
                             title="needle accuracy (unmasked): ROUGE-1 recall of the answer"))
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


def _summary(analysis: dict[str, Any]) -> str:
    result, masking = analysis["result"], analysis["masking"]
    p, df = result.params, result.table.df
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


def _tables(analysis: dict[str, Any]) -> list:
    result, masking = analysis["result"], analysis["masking"]
    cols = ["label", "retrieval_score", "hit_tests", "echo", "induction"]
    tables = [("top 15 heads by retrieval score", result.table.top("retrieval_score", 15).df[cols]),
              ("needle recall by length (rows) × depth (columns)", accuracy_grid(result.tests).round(3).reset_index()),
              ("every test", result.tests)]
    if masking is not None:
        tables.append(("masking runs", masking))
    return tables


def _json(analysis: dict[str, Any]) -> dict[str, Any]:
    result, masking = analysis["result"], analysis["masking"]
    return {"params": result.params, "heads": result.table.to_dict(), "tests": result.tests.to_dict(orient="records"),
            "accuracy_grid": {str(k): v for k, v in accuracy_grid(result.tests).to_dict(orient="index").items()},
            "masking": None if masking is None else masking.to_dict(orient="records")}


def _section(analysis: dict[str, Any]) -> dict[str, Any]:
    return {"title": "Retrieval heads (needle in a haystack)", "text": _summary(analysis),
            "figures": _figures(analysis), "tables": _tables(analysis), "json": _json(analysis)}


def atlas_section(model, context: dict) -> dict[str, Any]:
    """Cheap: one 384-token needle test at depth 50 %, up to 20 new tokens, no masking; the full run
    is `interp retrieval`."""
    length = min(384, model.cfg.n_ctx - 32)
    analysis = retrieval_analysis(model, lengths=(length,), depths=(0.5,), seed=int(context.get("seed", 0)),
                                  max_new_tokens=20, mask_ks=(), echo_segment=48,
                                  progress=bool(context.get("progress", False)))
    part = _section(analysis)
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
    depths: str = typer.Option(",".join(map(str, DEFAULT_DEPTHS)), help="needle depths in [0, 1], comma-separated"),
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

    lengths_list, depths_list, ks = _ints(lengths, "lengths"), _floats(depths, "depths"), _ints(mask_ks, "mask-ks")
    check_retrieval_args(check_model(model, device), lengths=lengths_list, depths=depths_list, n_needles=needles,
                         mask_ks=ks, mask_draws=mask_draws, mask_length=mask_length, attention=attention,
                         max_new_tokens=max_new_tokens)
    check_out(out)
    net = load_cli_model(model, device)
    analysis = retrieval_analysis(net, lengths=lengths_list, depths=depths_list, n_needles=needles, seed=seed,
                                  max_new_tokens=max_new_tokens, threshold=threshold, mask_ks=ks,
                                  mask_draws=mask_draws, mask_length=mask_length, attention=attention)
    part = _section(analysis)
    result = analysis["result"]
    with staged_output(out) as stage:
        write_analysis(stage, "retrieval", net.cfg.model_name, part["json"], f"Retrieval heads: {net.cfg.model_name}", part)
        result.table.to_csv(stage / "retrieval_heads.csv")
        result.tests.to_csv(stage / "needle_tests.csv", index=False)
    n_ret = int(result.table.df["retrieval_head"].sum())
    emit(as_json, {"schema": "interp.retrieval/1", "model": net.cfg.model_name, **part["json"]},
         f"{net.cfg.model_name}: {n_ret} retrieval heads from {result.params['n_counted']}/{result.params['n_tests']} "
         f"answered tests; wrote {out}/retrieval.html, retrieval.json")


