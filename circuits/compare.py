"""Head taxonomy across models, side by side: sinks, extreme tokens, head types, dormant heads.

Models differ in depth, so per-layer curves are drawn against relative depth (layer / (n_layers − 1)).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from circuits.active_dormant import DormantResult, active_dormant
from circuits.heads import head_type_scores, repeated_random_tokens
from circuits.sinks import extreme_tokens, sink_scores
from circuits.taxonomy import TAXONOMIES, dormant_labels
from interp.head_atlas import HeadAtlas
from interp.head_table import HeadTable


@dataclass
class ModelTaxonomy:
    """One model's head taxonomy: `card` (name, n_layers, n_heads, n_key_value_heads), `sinks` (HeadTable:
    alpha, sink_rate), `extreme` (value drain / residual peak per layer), `types` (HeadTable: duplicate_token,
    induction) and `dormant` (the active-dormant result)."""

    card: dict[str, Any]
    sinks: HeadTable
    extreme: pd.DataFrame
    types: HeadTable
    dormant: DormantResult


def model_taxonomy(model, texts: Sequence[str], *, seed: int = 0, dormant_texts: int = 3,
                   progress: bool | None = None) -> ModelTaxonomy:
    """One model's sink table, extreme tokens, head types and active-dormant result."""
    induction_input = repeated_random_tokens(model, 128, batch=4, seed=seed)
    card = {"name": model.cfg.model_name, "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads,
            "n_key_value_heads": model.cfg.n_key_value_heads or model.cfg.n_heads}
    return ModelTaxonomy(
        card, sink_scores(model, texts, progress=progress),
        extreme_tokens(model, texts, max_tokens=128, progress=progress),
        head_type_scores(model, induction_input, kinds=("duplicate_token", "induction")),
        active_dormant(model, n=dormant_texts, max_tokens=96, seed=seed, progress=progress))


def summary_row(result: ModelTaxonomy) -> dict[str, Any]:
    """The headline numbers of one model's taxonomy."""
    types, dormant, extreme = result.types, result.dormant, result.extreme
    causal = dormant.causal
    top = types.top("induction", 1).df.iloc[0]
    return {
        **result.card,
        "sink_ratio_pct": result.sinks.meta["sink_ratio"],
        "max_resid_peak": extreme["resid_peak"].max(),
        "min_value_drain": extreme["value_drain"].min(),
        "induction_heads_over_0.1": int((types["induction"] > 0.1).sum()),
        "top_induction_head": f"{top['label']} ({top['induction']:.2f})",
        "switching_heads": len(dormant.switching),
        "median_dloss_dormant": None if causal is None or not len(causal) else causal["delta_dormant"].median(),
        "median_dloss_active": None if causal is None or not len(causal) else causal["delta_active"].median(),
    }


def model_atlas(result: ModelTaxonomy) -> HeadAtlas:
    """One model's taxonomy as a head atlas: the circuits taxonomies its tables can express (sinks,
    duplicate-token, induction) and its dormant-domain labels."""
    tables = {"sinks.heads": result.sinks, "head_types.heads": result.types}
    section = result.dormant.extras()
    card = result.card
    return HeadAtlas(card["name"], card["n_layers"], card["n_heads"], tables, TAXONOMIES, dormant_labels(section))
