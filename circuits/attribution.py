"""One entry point for head attribution, with one sign: `score` is positive when the head helps the
metric (ablating it would lower the logit difference, or raise KL to the clean model).

Methods (all with the same ablation values, interp.patching):
  eap       edge attribution patching (Syed et al. 2023): Σ of the head's outgoing edge scores, the
            first-order loss of the metric when the head's output is ablated
  eap-ig    the same with the gradient averaged along the ablated → clean path (Hanna et al. 2024)
  mask-ig   integrated gradients on a mask over every head's output from all heads ablated to none
            (circuits.discovery.head_mask_ig; logit_diff only)
  patching  exact activation patching: metric(clean) − metric(head ablated) (interp.patching.patch_heads)
  dla       direct logit attribution of the change: (z_h − ablated z_h)·W_O[h] at the last position
            (after a post-norm: the change of the head's share of the normed output),
            through the final norm's scale of the clean run, onto W_U[answer] − W_U[wrong] (logit_diff only)
"""
from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

from interp.errors import InputError
from interp.head_table import HeadTable
from interp.patching import Ablation, PromptPairs, ablation_values, check_metric, patch_heads

HEAD_METHODS = ("eap", "eap-ig", "mask-ig", "patching", "dla")


def head_attribution(model: HookedTransformer, pairs: PromptPairs, *, method: str = "eap", metric: str = "logit_diff",
                     ablation: str | Ablation = "mean", steps: int = 5, batch_size: int = 16,
                     seed: int = 0) -> HeadTable:
    """Score every head with `method` (module doc). → HeadTable with `score` (metric units per prompt,
    positive = the head helps) and `rank` (1 = the most helpful head); meta records method, metric,
    ablation, steps and the number of prompts."""
    if method not in HEAD_METHODS:
        raise InputError(f"unknown head-attribution method {method!r}; choose one of {', '.join(HEAD_METHODS)}")
    check_metric(metric)
    if method in ("mask-ig", "dla") and metric != "logit_diff":
        raise InputError(f"head attribution {method} is defined for the logit_diff metric, not {metric!r}")
    abl = ablation if isinstance(ablation, Ablation) else ablation_values(model, pairs, ablation, seed=seed)
    cfg = model.cfg
    if method in ("eap", "eap-ig"):
        from circuits.discovery import attribute

        scores = attribute(model, pairs, method=method, metric=metric, ablation=abl, steps=steps,
                           batch_size=batch_size).head_scores()
    elif method == "mask-ig":
        from circuits.discovery import head_mask_ig

        scores = head_mask_ig(model, pairs, abl, steps=steps, batch_size=batch_size)
    elif method == "patching":
        scores = patch_heads(model, pairs, metric=metric, ablation=abl, batch_size=batch_size)["effect"]
        scores = scores.view(cfg.n_layers, cfg.n_heads)
    else:
        scores = direct_logit_attribution(model, pairs, abl, batch_size=batch_size)
    scores = scores.detach().double().cpu()
    rank = torch.empty(scores.numel(), dtype=torch.long)
    rank[scores.flatten().argsort(descending=True, stable=True)] = torch.arange(1, scores.numel() + 1)
    meta = {"method": method, "metric": metric, "ablation": abl.kind, "steps": steps if "ig" in method else 1,
            "n_prompts": len(pairs), "sign": "positive = the head helps the metric"}
    return HeadTable.from_arrays({"score": scores, "rank": rank.view_as(scores)}, model=cfg.model_name, meta=meta)


def direct_logit_attribution(model: HookedTransformer, pairs: PromptPairs, abl: Ablation, *,
                             batch_size: int = 16) -> torch.Tensor:
    """[layer, head]: mean over prompts of (z_h − ablated z_h)·W_O[h] / scale · (W_U[answer] − W_U[wrong]) at
    the last position (scale: the final norm's of the clean run). The direct part of patching's effect."""
    cfg = model.cfg
    total = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64)
    W_U = model.W_U.detach().double().cpu()
    for index, part in pairs.batches(batch_size):
        part_abl = abl.select(index, part.clean.shape[1])
        rows = torch.arange(len(part))
        z_end, scale = {}, {}

        def on_z(z, hook):
            z_end[hook.layer()] = z.detach().double().cpu()[rows, part.last]  # [B, H, dh]

        def on_scale(act, hook):
            scale["end"] = act.detach().double().cpu()[rows, part.last]  # [B, 1]

        hooks = [(f"blocks.{l}.attn.hook_z", on_z) for l in range(cfg.n_layers)]
        if hasattr(model.ln_final, "hook_scale"):
            hooks.append(("ln_final.hook_scale", on_scale))
        with torch.no_grad():
            model.run_with_hooks(part.clean.to(cfg.device), fwd_hooks=hooks)
        direction = (W_U[:, part.answer] - W_U[:, part.wrong]).T  # [B, d_model]
        for l in range(cfg.n_layers):
            z_abl = part_abl.z[l].double()[rows, part.last]
            out = through_final_norm(model, head_write(model, l, z_end[l]) - head_write(model, l, z_abl),
                                     scale.get("end"))
            total[l] += torch.einsum("bhd,bd->h", out, direction)
    return (total / len(pairs)).float()


def head_write(model: HookedTransformer, layer: int, z: torch.Tensor) -> torch.Tensor:
    """[B, H, d_model] float64 on the CPU: each head's write to the residual at z [B, H, d_head]. After a
    post-norm (Gemma 2/3, OLMo 2/3) a head's write is its share of the normed attention output, with that z's
    own norm scale, b_O shared equally (circuits.discovery.graph.head_writes); else z_h·W_O[h]. A difference
    of two writes is a head's write change with each run's own scale."""
    from circuits.discovery.graph import attn_out_norm, head_writes

    if attn_out_norm(model, layer) is None:
        return torch.einsum("bhe,hed->bhd", z.double().cpu(), model.blocks[layer].attn.W_O.detach().double().cpu())
    dtype, device = model.cfg.dtype, model.blocks[layer].attn.W_O.device
    with torch.no_grad():
        writes = head_writes(model, layer, z.to(device, dtype)[:, None])  # [H, B, 1, d]
    return writes[:, :, 0].permute(1, 0, 2).double().cpu()


def through_final_norm(model: HookedTransformer, writes: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Residual writes [B, ..., d_model] as the unembedding sees them: divided by the final norm's scale
    [B, 1] of the clean run (None: no final norm scale), centred for LayerNorm, times ln_final.w where the
    model keeps it (not folded into W_U)."""
    out = writes if scale is None else writes / scale.view(-1, *([1] * (writes.dim() - 1))).to(writes)
    if model.cfg.normalization_type in ("LN", "LNPre"):
        out = out - out.mean(-1, keepdim=True)  # LayerNorm centres before it scales
    if getattr(model.ln_final, "w", None) is not None:
        out = out * model.ln_final.w.detach().to(out).cpu()
    return out