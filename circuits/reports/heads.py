"""Head types for people: the `interp heads` command and the atlas section, rendering
`circuits.heads.head_types_analysis`."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

import typer

from circuits.heads import KINDS, HeadTypesResult, head_types_analysis
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

PLOTTED = ("previous_token", "duplicate_token", "induction")  # echo equals duplicate_token by definition


def _section_html(result: HeadTypesResult) -> str:
    kinds = "".join(f"<li><b>{k}</b>: {html.escape(v)}</li>" for k, v in KINDS.items())
    return (
        "<p>Each head's score is the fraction of its attention that falls on the query–key pairs a head type "
        "predicts, averaged over sequences: TransformerLens' <code>head_detector</code> detection patterns with its "
        "default <code>mul</code> measure (no BOS or current-token exclusion).</p>"
        f"<ul>{kinds}</ul>"
        f"<p>Inputs: previous-token scores from {html.escape(result.previous_token_input)}; duplicate-token, "
        f"induction and echo scores from {html.escape(result.table.meta['repeated_input'])} (BOS first when the "
        "model prepends one), the standard induction input. Echo (RazorAttention) equals duplicate-token by "
        "definition, so only the latter is plotted; both are in the JSON.</p>"
    )


def section(result: HeadTypesResult) -> dict[str, Any]:
    """The "Classic head types" section: a heatmap and the top heads per type, and the JSON."""
    table = result.table
    body = result.to_dict()
    del body["schema"], body["model"]
    return {
        "title": "Classic head types",
        "text": _section_html(result),
        "figures": [table.heatmap(k, title=f"{k} score ({table.model})") for k in PLOTTED],
        "tables": [(f"top {k} heads", table.top(k, 10).df[["label", k]]) for k in PLOTTED],
        "json": body,
    }


def atlas_section(model, context: dict) -> dict[str, Any]:
    """context: "texts" (real passages), "seed", "max_tokens", "progress"."""
    result = head_types_analysis(model, context.get("texts", ()), seed=int(context.get("seed", 0)),
                                 max_tokens=int(context.get("max_tokens", 128)),
                                 progress=context.get("progress"))
    return section(result)


def heads_command(
    model: str = MODEL, out: Path = OUT, as_json: bool = JSON, seed: int = SEED, device: Optional[str] = DEVICE,
    n_texts: int = typer.Option(32, min=1, help="real-text passages for previous-token scores"),
    max_tokens: int = typer.Option(128, min=4, help="tokens per passage; repeated blocks of this length"),
):
    """Previous-token, duplicate-token, induction and echo heads (TransformerLens' head_detector scoring)."""
    from interp.output import check_out, staged_output
    from interp.report import write_analysis
    from interp.texts import sample_texts

    facts = check_model(model, device)
    check_tokens(max_tokens, facts, "max-tokens")
    check_n_texts(n_texts)
    check_out(out)
    net = load_cli_model(model, device)
    result = head_types_analysis(net, sample_texts(n_texts, seed=seed), seed=seed, max_tokens=max_tokens)
    part = section(result)
    with staged_output(out) as stage:
        write_analysis(stage, "heads", net.cfg.model_name, part["json"], f"Head types: {net.cfg.model_name}", part)
    emit(as_json, {"schema": "interp.heads/1", "model": net.cfg.model_name, **part["json"]},
         f"{net.cfg.model_name}: head types for {len(result.table)} heads; wrote {out}/heads.html, heads.json")
