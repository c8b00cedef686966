"""Attributing hook_z SAE features to heads (Kissane et al. 2024).

- Weight-based: feature i's share of head h is |W_dec[i, h-block]| / sum over heads of those norms.
- Polysemanticity estimate per head: the live features a head "owns" (share >= `own`), their effective
  number (participation ratio of the head's shares), and whether they write different directions.
- Direct feature attribution for a prompt: feature i's encoder pre-activation at query position q is
  sum_h W_enc[h-block, i] . z_h[q] + (b_enc[i] - b_dec . W_enc[:, i]), and z_h[q] = sum_s A_h[q, s] v_h[s],
  so it splits exactly by head and by source position s (GQA: v of query head h is KV head h // group).
"""
from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from interp.head_ids import HeadId
from interp.head_table import HeadTable
from saes.evaluate import feature_acts


def _blocks(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[d_sae, n_heads * d_head] -> [d_sae, n_heads, d_head]."""
    return weight.reshape(weight.shape[0], n_heads, -1)


@torch.no_grad()
def head_attribution(sae, n_heads: int) -> torch.Tensor:
    """Weight-based head attribution of every feature: [d_sae, n_heads], rows summing to 1."""
    norms = _blocks(sae.W_dec.detach().float(), n_heads).norm(dim=-1)
    return norms / norms.sum(-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def head_polysemanticity(sae, model, layer: int, *, alive: torch.Tensor | None = None, own: float = 0.5,
                         distinct_cos: float = 0.5) -> HeadTable:
    """Per head of `layer`: `owned_features` (live features with share >= `own`), `effective_features`
    (participation ratio (sum a)^2 / sum a^2 of the head's shares a over live features), `mean_share`,
    `mean_abs_cos` (mean |cosine| between the owned features' decoder blocks in this head) and
    `polysemantic`: at least two owned features whose directions differ (mean |cos| < `distinct_cos`).

    An estimate from weights alone; the paper's 90 % comes from reading feature dashboards."""
    n_heads = model.cfg.n_heads
    share = head_attribution(sae, n_heads)
    if alive is not None:
        share = share[alive.bool()]
        blocks = _blocks(sae.W_dec.detach().float()[alive.bool()], n_heads)
    else:
        blocks = _blocks(sae.W_dec.detach().float(), n_heads)
    rows = []
    for h in range(n_heads):
        a = share[:, h]
        owned = (a >= own).nonzero().flatten()
        cos = float("nan")
        if len(owned) >= 2:
            dirs = torch.nn.functional.normalize(blocks[owned[:512], h], dim=-1)
            sim = (dirs @ dirs.T).abs()
            m = sim.shape[0]
            cos = float((sim.sum() - sim.diagonal().sum()) / (m * (m - 1)))
        rows.append({"layer": layer, "head": h, "owned_features": len(owned),
                     "effective_features": float(a.sum() ** 2 / a.pow(2).sum().clamp_min(1e-12)),
                     "mean_share": float(a.mean()), "mean_abs_cos": cos,
                     "polysemantic": bool(len(owned) >= 2 and cos < distinct_cos)})
    df = pd.DataFrame(rows)
    df.insert(2, "label", [HeadId(layer, h).label for h in df["head"]])
    return HeadTable(df)


@torch.no_grad()
def direct_feature_attribution(model, sae, tokens: torch.Tensor, feature: int, *, layer: int,
                               position: int = -1) -> dict[str, Any]:
    """Feature `feature`'s pre-activation at query `position` of one prompt, split by head and source.

    tokens: int64 [seq] or [1, seq]. Returns `by_head_source` [n_heads, position + 1] (contributions),
    `by_head` [n_heads], `by_source` [position + 1], `bias` (b_enc[i] - b_dec . W_enc[:, i]), `pre_activation`
    (their total) and `activation` (the SAE's own output for that feature there)."""
    tokens = tokens.reshape(1, -1).to(model.cfg.device)
    seq = tokens.shape[1]
    q = position % seq
    names = [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_v", f"blocks.{layer}.attn.hook_z"]
    _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=layer + 1)
    pattern = cache[names[0]][0, :, q, : q + 1].double()            # [n_heads, q+1]
    v = cache[names[1]][0, : q + 1].double()                        # [q+1, n_kv, d_head]
    n_heads = model.cfg.n_heads
    group = n_heads // v.shape[1]
    v = v.repeat_interleave(group, dim=1)                            # [q+1, n_heads, d_head]
    w = _blocks(sae.W_enc.detach().T.double(), n_heads)[feature].to(v.device)  # [n_heads, d_head]
    value_dot = torch.einsum("shd,hd->hs", v, w)                     # [n_heads, q+1]
    by_head_source = (pattern * value_dot).cpu()
    bias = float(sae.b_enc[feature].double() - sae.cfg.apply_b_dec_to_input * (sae.b_dec.double() @ sae.W_enc[:, feature].double()))
    acts = feature_acts(sae, cache[names[2]][0, q][None])[0]
    return {"feature": feature, "layer": layer, "position": q, "by_head_source": by_head_source,
            "by_head": by_head_source.sum(1), "by_source": by_head_source.sum(0), "bias": bias,
            "pre_activation": float(by_head_source.sum() + bias), "activation": float(acts[feature]),
            "tokens": tokens[0, : q + 1].cpu()}


def attribution_frame(result: dict[str, Any], model) -> pd.DataFrame:
    """`direct_feature_attribution`'s split as a tidy frame: head, label, source position, token, contribution."""
    layer, rows = result["layer"], []
    strs = model.to_str_tokens(result["tokens"]) if model.tokenizer is not None else [str(int(t)) for t in result["tokens"]]
    grid = result["by_head_source"]
    for h in range(grid.shape[0]):
        for s in range(grid.shape[1]):
            rows.append({"head": h, "label": HeadId(layer, h).label, "source": s, "token": strs[s], "contribution": float(grid[h, s])})
    return pd.DataFrame(rows)
