"""ACDC-style pruning (Conmy et al. 2023) over the top attribution edges."""
from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

from circuits.discovery.eap import Attribution
from circuits.discovery.edge_patching import run_with_edges
from interp.patching import (
    Ablation,
    PromptPairs,
    check_metric,
    metric_per_prompt,
    run_last_logits,
)
from interp.progress import progress_bar

# ---------------------------------------------------------------------------------------------
# ACDC-style pruning


def acdc(model: HookedTransformer, attribution: Attribution, pairs: PromptPairs, abl: Ablation, *,
         n_candidates: int = 200, tau: float = 0.01, metric: str = "kl", progress: bool | None = None) -> dict:
    """Conmy et al.'s pruning over the edges attribution proposes: start from the circuit of the
    `n_candidates` edges of largest |score| (everything else ablated); visit destinations from
    Resid End backwards (reverse topological order); for each incoming edge (smallest |score|
    first) remove it, run the model for real, and keep it removed when the metric (KL to the clean
    model by default; with logit_diff, the drop in logit difference) rises by less than `tau`.
    All prompts run as one batch; blocks below the destination's layer are reused from a cache.
    Returns {"keep": Bool [n_src, n_dst], "n_start", "n_kept", "n_runs", "metric", "value"}."""
    check_metric(metric)
    graph = attribution.graph
    keep = attribution.top_mask(n_candidates)
    clean_lp = torch.zeros(len(pairs), model.cfg.d_vocab_out)
    for index, part in pairs.batches(32):
        clean_lp[index] = run_last_logits(model, part.clean, part.last).float().log_softmax(-1).cpu()
    clean_lp = clean_lp.to(model.cfg.device)
    sign = -1.0 if metric == "logit_diff" else 1.0  # "cost" rises as the circuit gets worse

    def cost(logits):
        return sign * float(metric_per_prompt(metric, logits, pairs, clean_lp).mean())

    logits, cache = run_with_edges(model, graph, pairs, abl, keep, record=True)
    current = cost(logits)
    runs = 1
    dsts = sorted({int(d) for d in keep.nonzero(as_tuple=True)[1]}, key=lambda d: (graph.dst_layer(d), d), reverse=True)
    order = []
    for d in dsts:
        srcs = keep[:, d].nonzero().flatten().tolist()
        order += [(s, d) for s in sorted(srcs, key=lambda s: abs(float(attribution.scores[s, d])))]
    layer_of_cache = graph.n_layers
    for s, d in progress_bar(order, "acdc", progress):
        layer = graph.dst_layer(d)
        if layer < layer_of_cache:  # moving down: refresh the cache for the current circuit
            _, cache = run_with_edges(model, graph, pairs, abl, keep, record=True)
            runs += 1
            layer_of_cache = layer
        trial = keep.clone()
        trial[s, d] = False
        value = cost(run_with_edges(model, graph, pairs, abl, trial, start_layer=layer, cache=cache))
        runs += 1
        if value - current < tau:
            keep, current = trial, value
    return {"keep": keep, "n_start": len(order), "n_kept": int(keep.sum()), "n_runs": runs, "metric": metric,
            "value": sign * current, "tau": tau}
