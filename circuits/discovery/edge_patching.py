"""Exact edge patching: a forward pass with any set of edges replaced by their ablation values."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from circuits.discovery.graph import Graph, graph_hooks_enabled, head_writes
from interp.patching import (
    Ablation,
    PromptPairs,
    final_logits,
)

# ---------------------------------------------------------------------------------------------
# exact edge patching


@dataclass
class EdgeRunCache:
    """A recorded edge-patched run: resid_pre [layer, B, P, d] entering each block, resid_end
    [B, P, d] after the last block, delta [n_src, B, P, d] (each source's output − its ablation value)."""

    resid_pre: torch.Tensor
    resid_end: torch.Tensor
    delta: torch.Tensor


def run_with_edges(model: HookedTransformer, graph: Graph, part: PromptPairs, abl: Ablation,
                   keep: torch.Tensor, *, start_layer: int | None = None, cache: EdgeRunCache | None = None,
                   record: bool = False):
    """Run the clean prompts with only the edges in `keep` (Bool [n_src, n_dst]); every other edge
    carries its source's ablation value. → logits at the last positions [batch, vocab]
    (and an EdgeRunCache with `record`). With `start_layer` and the `cache` of a run whose edges into
    layers < start_layer were the same, only blocks start_layer … end are recomputed.
    A head's output is its write to the residual (`head_writes`: z_h·W_O[h], or its share of a
    post-norm computed with the norm scale of this run). Stored tensors live on cfg.device and meet
    each hook's activation on its device (a model split over GPUs places blocks on several)."""
    cfg, dev = model.cfg, model.cfg.device
    B, P = part.clean.shape
    removed = (graph.allowed & ~keep.bool()).to(dev, cfg.dtype)
    delta = torch.zeros(graph.n_src, B, P, cfg.d_model, device=dev, dtype=cfg.dtype)
    if start_layer is not None:
        n0 = graph.srcs_before(start_layer)
        delta[:n0] = cache.delta[:n0]
    resid_pre: list[torch.Tensor] = []
    embed = abl.embed.to(dev, cfg.dtype)  # ablation values are float32; the model may be bf16/fp16

    flat = delta.view(graph.n_src, -1)

    def correct(act, n_src, cols):  # act [B, P, (c,) d]; subtract Σ_u removed[u, c] · delta_u
        r = removed[:n_src, cols]
        if not bool(r.any()):
            return act
        if isinstance(cols, int):
            return act - (r[None] @ flat[:n_src]).view(B, P, cfg.d_model).to(act.device)
        corr = (r.T @ flat[:n_src]).view(len(cols), B, P, cfg.d_model)  # one GEMM, no copies of delta
        return act - corr.permute(1, 2, 0, 3).to(act.device)

    def on_embed(act, hook):
        delta[0] = (act - embed.to(act.device)).to(dev)
        return act

    def on_resid(layer):
        def hook(act, hook):
            if record:
                resid_pre.append(act.detach().to(dev, copy=True))
            return act
        return hook

    def on_input(layer, cols):
        n = graph.srcs_before(layer)
        return lambda act, hook: correct(act, n, list(cols))

    def on_z(layer):
        first = graph.head_src(layer, 0)

        def hook(z, hook):
            ablated = head_writes(model, layer, abl.z[layer].to(z.device, z.dtype))
            delta[first:first + cfg.n_heads] = (head_writes(model, layer, z) - ablated).to(dev)
            return z
        return hook

    def on_mlp_in(layer):
        n = graph.mlp_srcs_before(layer)
        return lambda act, hook: correct(act, n, graph.mlp_dst(layer))

    def on_mlp_out(layer):
        def hook(act, hook):
            delta[graph.mlp_src(layer)] = (act - abl.mlp_out[layer].to(act.device, act.dtype)).to(dev)
            return act
        return hook

    first = start_layer if start_layer is not None else 0
    hooks = [] if start_layer is not None else [("blocks.0.hook_resid_pre", on_embed)]
    for l in range(first, cfg.n_layers):
        hooks += [(f"blocks.{l}.hook_resid_pre", on_resid(l)),
                  (f"blocks.{l}.hook_q_input", on_input(l, graph.q_dsts(l))),
                  (f"blocks.{l}.hook_k_input", on_input(l, graph.k_dsts(l))),
                  (f"blocks.{l}.hook_v_input", on_input(l, graph.v_dsts(l))),
                  (f"blocks.{l}.attn.hook_z", on_z(l)),
                  (f"blocks.{l}.hook_mlp_in", on_mlp_in(l)),
                  (f"blocks.{l}.hook_mlp_out", on_mlp_out(l))]
    with torch.no_grad(), graph_hooks_enabled(model):
        if start_layer is None:
            end = model.run_with_hooks(part.clean.to(dev), fwd_hooks=hooks, stop_at_layer=cfg.n_layers)
        elif start_layer < cfg.n_layers:
            end = model.run_with_hooks(cache.resid_pre[start_layer], fwd_hooks=hooks,
                                       start_at_layer=start_layer, stop_at_layer=cfg.n_layers)
        else:
            end = cache.resid_end
        logits = final_logits(model, correct(end, graph.n_src, graph.end_dst), part.last)
    if not record:
        return logits
    if start_layer is not None:
        resid_pre = list(cache.resid_pre[:start_layer]) + resid_pre
    return logits, EdgeRunCache(torch.stack(resid_pre), end.detach().to(dev, copy=True), delta)
