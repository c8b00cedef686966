"""Feature dashboards for hook_z SAEs: top-activating contexts, head attribution, logit effects.

Logit effect of feature i: its decoder direction written through every head's W_O (sum_h W_dec[i, h-block]
W_O[layer, h]) and read by the unembedding W_U (the direct path, ignoring later layers and the final
norm's scale), reported as the tokens it raises and lowers most.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from interp.head_ids import HeadId
from interp.progress import progress_bar
from saes.attribution import head_attribution
from saes.evaluate import feature_acts


@torch.no_grad()
def activation_stats(model, sae, tokens: torch.Tensor, *, layer: int, batch_size: int = 8, top: int = 8,
                     window: int = 12, features: list[int] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """One pass over `tokens` [n, seq]: per-feature firing frequency, max activation and, for `features`
    (default: all), the `top` highest activations with their context (`window` tokens before, 2 after)."""
    name = f"blocks.{layer}.attn.hook_z"
    d_sae = sae.cfg.d_sae
    feats = torch.arange(d_sae) if features is None else torch.as_tensor(features)
    fired = torch.zeros(d_sae, dtype=torch.long)
    max_act = torch.zeros(d_sae)
    best_val = torch.full((len(feats), top), -1.0)
    best_idx = torch.zeros((len(feats), top), dtype=torch.long)  # flat index into tokens
    seq = tokens.shape[1]
    for start in progress_bar(range(0, tokens.shape[0], batch_size), "SAE activations", progress, unit="batch"):
        batch = tokens[start:start + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=[name], stop_at_layer=layer + 1)
        acts = feature_acts(sae, cache[name]).float().cpu().flatten(0, 1)   # [b*seq, d_sae]
        fired += (acts > 0).sum(0)
        max_act = torch.maximum(max_act, acts.max(0).values)
        sub = acts[:, feats].T                                               # [n_feats, b*seq]
        k = min(top, sub.shape[1])
        val, idx = sub.topk(k, dim=1)
        val = torch.cat([best_val, val], 1)
        idx = torch.cat([best_idx, idx + start * seq], 1)
        order = val.topk(top, dim=1).indices
        best_val, best_idx = val.gather(1, order), idx.gather(1, order)
    return {"frequency": fired.double() / tokens.numel(), "max_activation": max_act, "features": feats,
            "top_values": best_val, "top_index": best_idx, "window": window, "tokens": tokens}


def top_contexts(model, stats: dict[str, Any], feature: int) -> pd.DataFrame:
    """The top-activating contexts of one feature: activation, the token, and its context (token marked «»)."""
    row = (stats["features"] == feature).nonzero()
    if len(row) == 0:
        return pd.DataFrame(columns=["activation", "token", "context"])
    r = int(row[0])
    tokens, seq, w = stats["tokens"], stats["tokens"].shape[1], stats["window"]
    out = []
    for val, flat in zip(stats["top_values"][r].tolist(), stats["top_index"][r].tolist()):
        if val <= 0:
            continue
        ctx, pos = divmod(flat, seq)
        before = tokens[ctx, max(0, pos - w):pos]
        after = tokens[ctx, pos + 1:pos + 3]
        tok = _text(model, tokens[ctx, pos:pos + 1])
        out.append({"activation": round(val, 4), "token": tok,
                    "context": f"{_text(model, before)}«{tok}»{_text(model, after)}"})
    return pd.DataFrame(out, columns=["activation", "token", "context"])


def _text(model, ids: torch.Tensor) -> str:
    if model.tokenizer is None:
        return " ".join(str(int(i)) for i in ids)
    return model.tokenizer.decode(ids.tolist()).replace("\n", "⏎")


@torch.no_grad()
def logit_effects(model, sae, feature: int, *, layer: int, k: int = 8) -> pd.DataFrame:
    """Tokens feature `feature` raises and lowers most through the direct path W_dec -> W_O -> W_U."""
    n_heads = model.cfg.n_heads
    w_o = model.W_O[layer].float()
    blocks = sae.W_dec[feature].detach().float().reshape(n_heads, -1).to(w_o.device)  # [n_heads, d_head]
    direction = torch.einsum("hd,hdm->m", blocks, w_o)                             # [d_model]
    logits = (direction.to(model.W_U.device) @ model.W_U.float()).cpu()
    up, down = logits.topk(k), (-logits).topk(k)
    rows = [{"direction": "up", "token": _text(model, torch.tensor([int(i)])), "logit": float(v)}
            for v, i in zip(up.values, up.indices)]
    rows += [{"direction": "down", "token": _text(model, torch.tensor([int(i)])), "logit": -float(v)}
             for v, i in zip(down.values, down.indices)]
    return pd.DataFrame(rows)


def dashboard(model, sae, stats: dict[str, Any], feature: int, *, layer: int) -> dict[str, Any]:
    """Everything shown for one feature: frequency, max activation, head shares, contexts, logit effects."""
    shares = head_attribution(sae, model.cfg.n_heads)[feature]
    return {
        "feature": feature, "frequency": float(stats["frequency"][feature]),
        "max_activation": float(stats["max_activation"][feature]),
        "head_attribution": {HeadId(layer, h).label: round(float(s), 4) for h, s in enumerate(shares)},
        "top_head": HeadId(layer, int(shares.argmax())).label,
        "top_contexts": top_contexts(model, stats, feature).to_dict(orient="records"),
        "logit_effects": logit_effects(model, sae, feature, layer=layer).to_dict(orient="records"),
    }
