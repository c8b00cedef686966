"""Heads ranked by integrated gradients on a mask over all head outputs."""
from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

from circuits.discovery.eap import frozen_parameters
from interp.patching import (
    Ablation,
    PromptPairs,
    final_logits,
    metric_per_prompt,
)

# ---------------------------------------------------------------------------------------------
# head ranking for head-level circuits


def head_mask_ig(model: HookedTransformer, pairs: PromptPairs, abl: Ablation, *, steps: int = 5,
                 batch_size: int = 16) -> torch.Tensor:
    """Integrated gradients over a mask on every head's output: z_h = ablated_h + a_h·(z_h − ablated_h),
    all a_h moving together from 0 (every head ablated) to 1 (the full model), gradient averaged at
    a = k/steps, k = 1 … steps. → [layer, head]: each head's share of logit diff(full) − logit
    diff(all heads ablated) (the shares sum to that difference up to the discretisation). Unlike
    EAP's single-head first-order scores, they are measured along the way to the
    everything-else-ablated state the head faithfulness curve evaluates, so they rank heads for it."""
    cfg, dev = model.cfg, model.cfg.device
    total = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64)
    with frozen_parameters(model):
        for index, part in pairs.batches(batch_size):
            part_abl = abl.select(index, part.clean.shape[1])
            for k in range(1, steps + 1):
                mask = torch.full((cfg.n_layers, cfg.n_heads), k / steps, device=dev, requires_grad=True)

                def hook(z, hook, mask=mask, part_abl=part_abl):
                    l = hook.layer()
                    za = part_abl.z[l].to(z.device, z.dtype)
                    return za + mask[l].to(z.device)[None, None, :, None] * (z - za)

                with torch.enable_grad():
                    end = model.run_with_hooks(part.clean.to(dev), stop_at_layer=cfg.n_layers,
                                               fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook) for l in range(cfg.n_layers)])
                    value = metric_per_prompt("logit_diff", final_logits(model, end, part.last), part).sum()
                    (grad,) = torch.autograd.grad(value, mask)
                total += grad.double().cpu() / steps
    return (total / len(pairs)).float()
