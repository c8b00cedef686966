"""The `interp heads` command: classic head types as a head table, heatmaps and CSV."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from circuits.heads import KINDS, atlas_section
from interp.cli import DEVICE, JSON, MODEL, OUT, SEED, check_model, check_tokens, emit, load_cli_model


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
    check_out(out)
    net = load_cli_model(model, device)
    part = atlas_section(net, {"texts": sample_texts(n_texts, seed=seed), "seed": seed, "max_tokens": max_tokens,
                               "progress": True})
    with staged_output(out) as stage:
        write_analysis(stage, "heads", net.cfg.model_name, {"kinds": list(KINDS), "heads": part["json"]},
                       f"Head types: {net.cfg.model_name}", part)
    emit(as_json, {"schema": "interp.heads/1", "model": net.cfg.model_name, "heads": part["json"]},
         f"{net.cfg.model_name}: head types for {len(part['json']['rows'])} heads; wrote {out}/heads.html, heads.json")
