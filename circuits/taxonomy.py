"""The head taxonomies of the circuits package, for the head atlas: which score of which atlas
section makes a head a sink, an induction head, a retrieval head, ..., and the labels sections give
heads directly (IOI roles, dormant domains).

Thresholds are the methods' own where the paper states one (retrieval: Wu et al.'s 0.1); elsewhere
they are stated here, and every label carries its evidence (the score and its rank) so a reader can
judge it.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from interp.head_atlas import HeadLabel, Taxonomy
from interp.head_ids import HeadId

TAXONOMIES = [
    Taxonomy("previous-token", "head_types.heads", "previous_token", 0.4,
             "mean attention from each token to the one before it, on real text", "TransformerLens head_detector"),
    Taxonomy("duplicate-token", "head_types.heads", "duplicate_token", 0.3,
             "mean attention to the earlier copy of the current token, on repeated random tokens "
             "(RazorAttention's echo heads)", "TransformerLens head_detector; Tang et al. 2024"),
    Taxonomy("induction", "head_types.heads", "induction", 0.3,
             "mean attention to the token after the earlier copy of the current token, on repeated random tokens",
             "Olsson et al. 2022; TransformerLens head_detector"),
    # RazorAttention's echo heads (Tang et al. 2024) read the duplicate-token pattern itself (circuits.heads
    # computes `echo` as an alias), so they are not a taxonomy of their own: an overlap of 1 would say nothing.
    Taxonomy("first-token sink", "sinks.heads", "sink_rate", 0.5,
             "share of samples where alpha_0 (attention the first token receives per query) exceeds eps", "Gu et al. 2024"),
    Taxonomy("retrieval", "retrieval.heads", "retrieval_score", 0.1,
             "share of needle tokens copied by attending to them (top-1) while the answer recalls the needle",
             "Wu et al. 2024"),
    Taxonomy("safety (Ships)", "safety.heads", "ships", 0.1,
             "KL (nats) of the next-token distribution on harmful prompts when the head's attention is made uniform",
             "Zhou et al. 2024"),
]


def dormant_labels(section: dict[str, Any]) -> list[HeadLabel]:
    """'dormant on <domains>' for every head dormant somewhere, 'active-dormant' for those that switch."""
    dormant: dict[str, list[dict]] = defaultdict(list)
    for row in section.get("per_domain") or []:
        if row.get("dormant"):
            dormant[HeadId(row["layer"], row["head"]).label].append(row)
    switching = {HeadId(r["layer"], r["head"]).label: r for r in section.get("switching") or []}
    params = section.get("params") or {}
    rule = (f"sink mass >= {params.get('sink_threshold', '?')} and output norm <= {params.get('norm_ratio', '?')} x "
            "its largest over the domains")
    out = []
    for label, rows in dormant.items():
        domains = ", ".join(r["domain"] for r in rows)
        detail = "; ".join(f"{r['domain']}: sink mass {r['sink_mass']:.2f}, norm ratio {r['norm_ratio']:.2f}" for r in rows)
        out.append(HeadLabel(label, f"dormant on {domains}", f"{rule} ({detail})", "active_dormant"))
    for label, r in switching.items():
        out.append(HeadLabel(label, "active-dormant", f"dormant on {r['dormant_on']}, active on {r['active_on']}",
                             "active_dormant"))
    return out


def ioi_labels(section: dict[str, Any]) -> list[HeadLabel]:
    """'IOI <role>' for each head of the IOI circuit, with the role's evidence columns."""
    out = []
    for row in section.get("roles") or []:
        evidence = ", ".join(f"{k} {v:.3g}" for k, v in row.items()
                             if k not in ("label", "layer", "head", "role") and isinstance(v, (int, float)) and v == v)
        out.append(HeadLabel(HeadId(row["layer"], row["head"]).label, f"IOI {row['role']}",
                             f"in the IOI circuit; {evidence}", "ioi"))
    return out


def register(registry) -> None:
    for taxonomy in TAXONOMIES:
        registry.taxonomy(taxonomy)
    registry.head_labeller("active_dormant", dormant_labels)
    registry.head_labeller("ioi", ioi_labels)
