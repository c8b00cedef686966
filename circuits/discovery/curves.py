"""Faithfulness of edge and head circuits, their curves over circuit size, and MIB's CPR / CMD summaries."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from circuits.discovery.eap import Attribution
from circuits.discovery.edge_patching import run_with_edges
from circuits.discovery.graph import Graph, build_graph
from interp.errors import InputError
from interp.head_ids import HeadId
from interp.patching import (
    Ablation,
    PromptPairs,
    head_ablation_hooks,
    metric_per_prompt,
    run_last_logits,
)

# ---------------------------------------------------------------------------------------------
# evaluation: circuits with everything else ablated


def edge_circuit_metric(model, graph: Graph, pairs: PromptPairs, abl: Ablation, keep: torch.Tensor, metric: str,
                        clean_logprobs: torch.Tensor | None = None, batch_size: int = 16) -> float:
    """Mean metric of the clean prompts with only `keep` edges (the rest ablated)."""
    total = 0.0
    for index, part in pairs.batches(batch_size):
        logits = run_with_edges(model, graph, part, abl.select(index, part.clean.shape[1]), keep)
        lp = clean_logprobs[index] if clean_logprobs is not None else None
        total += float(metric_per_prompt(metric, logits, part, lp).sum())
    return total / len(pairs)


def head_circuit_metric(model, pairs: PromptPairs, abl: Ablation, kept_heads: torch.Tensor, metric: str,
                        clean_logprobs: torch.Tensor | None = None, batch_size: int = 32) -> float:
    """Mean metric with every head outside `kept_heads` (Bool [layer, head]) ablated; MLPs and the
    embedding intact (Wang et al.'s faithfulness setting)."""
    total = 0.0
    for index, part in pairs.batches(batch_size):
        hooks = head_ablation_hooks(abl.select(index, part.clean.shape[1]), ~kept_heads.bool(), model.cfg.device)
        logits = run_last_logits(model, part.clean, part.last, hooks)
        lp = clean_logprobs[index] if clean_logprobs is not None else None
        total += float(metric_per_prompt(metric, logits, part, lp).sum())
    return total / len(pairs)


def size_grid(n: int, points: int = 12, start: int = 1) -> list[int]:
    """About `points` sizes from `start` to n, evenly spaced on a log scale, always ending at n."""
    if n <= start:
        return [n]
    sizes = {round(math.exp(math.log(start) + (math.log(n) - math.log(start)) * i / (points - 1)))
             for i in range(points)}
    return sorted(s for s in sizes if start <= s <= n) if n in sizes else sorted(sizes | {n})


# MIB's circuit sizes, as fractions of the scored items (edges, or heads at node level), and its
# integration rule: MIB-circuit-track, MIB_circuit_track/evaluation.py, evaluate_area_under_curve
# (percentages = (.001, .002, .005, .01, .02, .05, .1, .2, .5, 1); k = int(pct · n); trapezoids on the
# linear fraction axis, log_scale=False as run_evaluation.py calls it; CPR = area under the
# faithfulness curve, from the signed ranking (abs=False); CMD = area of |1 − faithfulness|, from the
# ranking by |score| (abs=True), as print_results.py picks the abs-False / abs-True runs).
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def mib_sizes(n: int) -> list[int]:
    """MIB's circuit sizes for n scored items: int(fraction · n) for each of MIB_FRACTIONS."""
    return [int(f * n) for f in MIB_FRACTIONS]


def mib_area(values: Sequence[float], *, from_one: bool) -> float:
    """MIB's trapezoidal area over MIB_FRACTIONS: of the faithfulness values (CPR) or of |1 − value| (CMD)."""
    if len(values) != len(MIB_FRACTIONS):
        raise InputError(f"a MIB curve has {len(MIB_FRACTIONS)} points, got {len(values)}")
    y = [abs(1.0 - v) for v in values] if from_one else list(values)
    x = MIB_FRACTIONS
    return sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))


def faithfulness(value: float, full: float, empty: float) -> float:
    """(m(C) − m(∅)) / (m(full) − m(∅)); NaN when the full and the empty model score the same."""
    gap = full - empty
    return (value - empty) / gap if abs(gap) > 1e-12 else float("nan")


def edge_curve(model, attribution: Attribution, pairs: PromptPairs, abl: Ablation,
               sizes: Sequence[int], batch_size: int = 16, *, absolute: bool = True,
               split: str = "select") -> list[dict[str, float]]:
    """Faithfulness by edges kept: the top-k edges (by |score|, or by score with absolute=False),
    every other edge ablated, on `pairs`. Row: kind "edges", n_edges, n_heads, value (normalised
    faithfulness, module doc), ratio (m(C) / m(full)), logit_diff, split."""
    full = mean_logit_diff(model, pairs)
    graph = attribution.graph
    empty = edge_circuit_metric(model, graph, pairs, abl, torch.zeros_like(graph.allowed), "logit_diff",
                                batch_size=batch_size)
    rows = []
    for k in sizes:
        keep = attribution.top_mask(k, absolute=absolute)
        value = edge_circuit_metric(model, graph, pairs, abl, keep, "logit_diff", batch_size=batch_size)
        rows.append({"kind": "edges", "n_edges": int(k), "n_heads": len(heads_of_edges(graph, keep)),
                     "value": faithfulness(value, full, empty), "ratio": value / full, "logit_diff": value,
                     "split": split})
    return rows


def head_curve(model, ranking: Sequence[tuple[int, int]], pairs: PromptPairs, abl: Ablation,
               sizes: Sequence[int], graph: Graph | None = None, batch_size: int = 32, *,
               split: str = "select") -> list[dict[str, float]]:
    """Faithfulness by heads kept: the first k heads of `ranking` kept, every other head's output
    ablated (MLPs kept), on `pairs`. value = (m(C) − m(no head)) / (m(full) − m(no head)); ratio = m(C) / m(full)."""
    cfg = model.cfg
    graph = graph or build_graph(model)
    full = mean_logit_diff(model, pairs)
    none = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.bool)
    empty = head_circuit_metric(model, pairs, abl, none, "logit_diff", batch_size=batch_size)
    rows = []
    for k in sizes:
        kept = none.clone()
        for l, h in ranking[:k]:
            kept[l, h] = True
        value = empty if k == 0 else head_circuit_metric(model, pairs, abl, kept, "logit_diff", batch_size=batch_size)
        rows.append({"kind": "heads", "n_heads": int(k), "n_edges": edges_among_heads(graph, kept),
                     "value": faithfulness(value, full, empty), "ratio": value / full, "logit_diff": value,
                     "split": split})
    return rows


def mib_summary(model, pairs: PromptPairs, abl: Ablation, *, edge_scores: Attribution | None = None,
                head_scores: torch.Tensor | None = None, batch_size: int = 16) -> dict[str, Any]:
    """MIB's circuit-track summaries on `pairs` (the held-out prompts): the faithfulness curves at
    MIB's sizes (fractions of edges, or of heads for node-level `head_scores` [layer, head]), CPR
    (signed ranking) and CMD (|score| ranking). → {"level", "n_items", "fractions", "sizes",
    "signed", "absolute" (faithfulness lists), "cpr", "cmd"}."""
    if (edge_scores is None) == (head_scores is None):
        raise InputError("mib_summary needs edge scores or head scores (one of them)")
    out: dict[str, Any] = {"fractions": list(MIB_FRACTIONS)}
    if edge_scores is not None:
        n = edge_scores.graph.n_edges
        sizes = mib_sizes(n)
        for absolute in (False, True):  # the last size is the whole graph: the full model, faithfulness 1
            rows = edge_curve(model, edge_scores, pairs, abl, sizes[:-1], batch_size, absolute=absolute, split="eval")
            out["absolute" if absolute else "signed"] = [r["value"] for r in rows] + [1.0]
        out.update(level="edges", n_items=n)
    else:
        cfg = model.cfg
        n = cfg.n_layers * cfg.n_heads
        sizes = mib_sizes(n)
        graph = build_graph(model)
        flat = head_scores.flatten()
        for absolute in (False, True):
            order = (flat.abs() if absolute else flat).argsort(descending=True, stable=True)
            ranking = [HeadId.from_index(int(i), cfg.n_heads) for i in order]
            rows = head_curve(model, ranking, pairs, abl, sizes, graph, batch_size=2 * batch_size, split="eval")
            out["absolute" if absolute else "signed"] = [r["value"] for r in rows]
        out.update(level="heads", n_items=n)
    out["sizes"] = sizes
    out["cpr"] = mib_area(out["signed"], from_one=False)
    out["cmd"] = mib_area(out["absolute"], from_one=True)
    return out


def mean_logit_diff(model, pairs: PromptPairs) -> float:
    total = 0.0
    for _, part in pairs.batches(32):
        total += float(metric_per_prompt("logit_diff", run_last_logits(model, part.clean, part.last), part).sum())
    return total / len(pairs)


def heads_of_edges(graph: Graph, keep: torch.Tensor) -> set[tuple[int, int]]:
    """Heads a set of edges touches, as a source or through their query input."""
    heads = set()
    src, dst = keep.nonzero(as_tuple=True)
    for s in src.unique().tolist():
        if (h := graph.head_of_src(s)) is not None:
            heads.add(h)
    for d in dst.unique().tolist():
        name = graph.dst_names[d]
        if name.endswith(".Q"):
            layer, head = name[1:-2].split(".")
            heads.add((int(layer), int(head)))
    return heads


def edges_among_heads(graph: Graph, kept: torch.Tensor) -> int:
    """Edges left when the heads outside `kept` are ablated: from the embedding, MLPs and kept heads
    into MLPs, Resid End, kept heads' queries and the K/V inputs of groups with a kept head."""
    src_ok = torch.ones(graph.n_src, dtype=torch.bool)
    dst_ok = torch.ones(graph.n_dst, dtype=torch.bool)
    r = graph.n_heads // graph.n_kv
    for l in range(graph.n_layers):
        for h in range(graph.n_heads):
            src_ok[graph.head_src(l, h)] = bool(kept[l, h])
            dst_ok[graph.q_dsts(l)[h]] = bool(kept[l, h])
        for g in range(graph.n_kv):
            any_kept = bool(kept[l, g * r:(g + 1) * r].any())
            dst_ok[graph.k_dsts(l)[g]] = dst_ok[graph.v_dsts(l)[g]] = any_kept
    return int((graph.allowed & src_ok[:, None] & dst_ok[None, :]).sum())


def smallest_reaching(rows: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first curve row whose value reaches `target` (rows in increasing size), or None."""
    return next((r for r in rows if r["value"] >= target), None)
