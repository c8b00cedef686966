"""`discover`: a head circuit and an edge circuit selected on one prompt set, faithful on another."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformer_lens import HookedTransformer

from circuits.discovery.acdc import acdc
from circuits.discovery.curves import (
    edge_circuit_metric,
    edge_curve,
    faithfulness,
    head_curve,
    heads_of_edges,
    mean_logit_diff,
    size_grid,
    smallest_reaching,
)
from circuits.discovery.eap import attribute
from circuits.discovery.graph import build_graph
from circuits.discovery.mask_ig import head_mask_ig
from interp.circuit import Circuit, Edge
from interp.errors import InputError
from interp.head_ids import HeadId
from interp.patching import (
    Ablation,
    PromptPairs,
    ablation_values,
    check_ablation,
    check_metric,
    patch_heads,
)

# ---------------------------------------------------------------------------------------------
# one call: scores, curves, circuit

METHODS = ("eap", "eap-ig", "acdc", "patching")


def discover(model: HookedTransformer, pairs: PromptPairs, *, task: str = "task", method: str = "eap",
             metric: str = "logit_diff", ablation: str | Ablation = "mean", eval_pairs: PromptPairs | None = None,
             eval_ablation: str | Ablation | None = None, steps: int = 5, target: float = 0.8,
             acdc_candidates: int = 200, tau: float = 0.01, acdc_metric: str = "kl", acdc_prompts: int = 16,
             curve_points: int = 10, head_sizes: Sequence[int] | None = None,
             max_curve_heads: int | None = None, edge_curves: bool = True, head_ranking: str = "mask-ig",
             batch_size: int = 16, seed: int = 0, progress: bool | None = None) -> tuple[Circuit, dict[str, Any]]:
    """Find a task's circuits on `pairs` (the selection prompts) and measure their faithfulness on
    `eval_pairs` (held-out prompts; without them the selection prompts, and rows say split "select").

    method: "eap" / "eap-ig" score every edge with `metric` (EAP refuses kl: its gradient at the
    clean run is zero; EAP-IG on kl works, its path starts at the ablated input); "acdc" prunes the
    EAP-IG proposal with real forward passes (first `acdc_prompts` prompts, metric `acdc_metric`);
    "patching" scores heads by exact activation patching (no edges).

    Two circuits, each faithful on its own terms:
    - the head circuit (returned; kind "heads", no edges): the first k heads of `head_ranking`
      ("mask-ig": integrated gradients on a head-output mask, `head_mask_ig`; "score": the method's
      head scores), every other head ablated, MLPs intact; k the smallest size of `head_sizes`
      (default: a log grid of `curve_points` sizes plus every 2 % of heads up to 15 %) whose selection-split faithfulness reaches `target` (the largest size when none does);
    - the edge circuit (details["edge_circuit"]; kind "edges", nodes = its edges' endpoints): the
      smallest top-|score| edge set reaching `target` on the selection split (the ACDC result for
      acdc); None for patching.
    Faithfulness is MIB's normalised (m(C) − m(∅)) / (m(full) − m(∅)) of the logit difference.
    Returns (head circuit, details: head_scores (positive = helps), ranking, head_circuit (the
    chosen selection row), held_out (the chosen circuits' held-out rows), attribution, edge_circuit)."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if head_ranking not in ("mask-ig", "score"):
        raise InputError(f"head_ranking must be mask-ig or score, got {head_ranking!r}")
    check_metric(metric)
    if method == "eap" and metric == "kl":
        raise InputError("EAP with the kl metric is degenerate (KL to the clean model has zero gradient at the clean "
                         "run, so every score is 0); use --metric logit_diff, or method eap-ig / acdc")
    if not isinstance(ablation, Ablation):
        check_ablation(ablation)
    cfg = model.cfg
    graph = build_graph(model)
    abl = ablation if isinstance(ablation, Ablation) else ablation_values(model, pairs, ablation, seed=seed)
    held_out = eval_pairs is not None
    ev_pairs = eval_pairs if held_out else pairs
    ev_abl = abl if not held_out else (eval_ablation if isinstance(eval_ablation, Ablation) else ablation_values(
        model, eval_pairs, eval_ablation or abl.kind, seed=seed))
    ev_split = "eval" if held_out else "select"
    details: dict[str, Any] = {"graph_edges": graph.n_edges, "n_prompts": len(pairs), "ablation": abl.kind,
                               "n_eval_prompts": len(ev_pairs), "held_out": held_out, "metric": metric}
    attribution = None
    if method == "patching":
        patched = patch_heads(model, pairs, metric=metric, ablation=abl, batch_size=batch_size, progress=progress)
        head_scores = patched["effect"].view(cfg.n_layers, cfg.n_heads)
    else:
        attr_method = "eap-ig" if method == "acdc" else method
        attribution = attribute(model, pairs, method=attr_method, metric=metric, ablation=abl, steps=steps,
                                batch_size=batch_size, seed=seed, progress=progress)
        head_scores = attribution.head_scores()
    details["head_scores"] = head_scores
    if head_ranking == "mask-ig":
        rank_scores = head_mask_ig(model, pairs, abl, steps=steps, batch_size=batch_size)
        order = rank_scores.flatten().argsort(descending=True, stable=True)  # most helpful first
        details["head_rank_scores"] = rank_scores
    else:
        order = head_scores.flatten().argsort(descending=True, stable=True)  # positive = helps: most helpful first
    ranking = [HeadId.from_index(int(i), cfg.n_heads) for i in order]
    n_all = cfg.n_layers * cfg.n_heads
    n_heads_max = max_curve_heads or n_all
    if head_sizes is None:
        step = max(1, round(0.02 * n_all))
        head_sizes = set(size_grid(n_heads_max, curve_points)) | set(range(0, int(0.15 * n_all) + 1, step))
    head_sizes = sorted({int(k) for k in head_sizes if 0 <= int(k) <= n_heads_max} | {0})
    select_rows = head_curve(model, ranking, pairs, abl, head_sizes, graph, batch_size=2 * batch_size, split="select")
    chosen_heads = smallest_reaching(select_rows, target) or select_rows[-1]
    eval_rows = head_curve(model, ranking, ev_pairs, ev_abl, head_sizes, graph, batch_size=2 * batch_size,
                           split=ev_split) if held_out else []
    k_heads = int(chosen_heads["n_heads"])
    nodes = [h.node for h in sorted(ranking[:k_heads])]
    held = {"heads": next((r for r in eval_rows if r["n_heads"] == k_heads), chosen_heads)}
    details.update(head_circuit=chosen_heads, ranking=[tuple(h) for h in ranking], head_curve_select=select_rows, head_curve_eval=eval_rows)
    edge_circuit = None
    edge_rows: list[dict] = []
    if attribution is not None:
        details["attribution"] = attribution
        if edge_curves or method == "acdc":
            edge_sizes = size_grid(graph.n_edges, curve_points, start=10)
            sel_edges = edge_curve(model, attribution, pairs, abl, edge_sizes, batch_size=batch_size, split="select")
            chosen = smallest_reaching(sel_edges, target) or sel_edges[-1]
            keep = attribution.top_mask(int(chosen["n_edges"]))
            edge_rows = sel_edges
            if held_out:
                edge_rows = sel_edges + edge_curve(model, attribution, ev_pairs, ev_abl, edge_sizes,
                                                   batch_size=batch_size, split="eval")
            held["edges"] = next(r for r in edge_rows if r["split"] == ev_split and r["n_edges"] == chosen["n_edges"])
        else:
            keep = attribution.top_mask(max(1, graph.n_edges // 100))
        if method == "acdc":
            sub = pairs.select(slice(0, min(acdc_prompts, len(pairs))))
            sub_abl = abl.select(slice(0, len(sub)), sub.clean.shape[1])
            result = acdc(model, attribution, sub, sub_abl, n_candidates=acdc_candidates, tau=tau,
                          metric=acdc_metric, progress=progress)
            keep = result["keep"]
            full = mean_logit_diff(model, ev_pairs)
            empty = edge_circuit_metric(model, graph, ev_pairs, ev_abl, torch.zeros_like(graph.allowed), "logit_diff",
                                        batch_size=batch_size)
            value = edge_circuit_metric(model, graph, ev_pairs, ev_abl, keep, "logit_diff", batch_size=batch_size)
            result["faithfulness"] = faithfulness(value, full, empty)
            details["acdc"] = {k: v for k, v in result.items() if k != "keep"}
            held["edges"] = {"kind": "acdc", "n_edges": result["n_kept"], "n_heads": len(heads_of_edges(graph, keep)),
                             "value": result["faithfulness"], "ratio": value / full, "logit_diff": value,
                             "split": ev_split}
            edge_rows.append(held["edges"])
        src, dst = keep.nonzero(as_tuple=True)
        scores = attribution.scores[src, dst]
        order = scores.abs().argsort(descending=True)
        edges = [Edge(graph.src_names[src[i]], graph.dst_names[dst[i]], float(scores[i])) for i in order.tolist()]
        edge_circuit = Circuit.from_edges(edges, model=cfg.model_name, task=task, metric=metric, method=method,
                                          faithfulness=edge_rows, summary={"held_out": held.get("edges")})
    details.update(held_out_rows=held, edge_circuit=edge_circuit)
    circuit = Circuit(model=cfg.model_name, task=task, metric=metric, method=method, kind="heads", nodes=nodes,
                      faithfulness=select_rows + eval_rows,
                      summary={"held_out": held["heads"], "selected_on": chosen_heads, "ranking": head_ranking,
                               "target": target},
                      evidence={h.node: {"score": float(head_scores[h.layer, h.head]), "rank": i + 1}
                                for i, h in enumerate(ranking) if h.node in nodes})
    return circuit, details
