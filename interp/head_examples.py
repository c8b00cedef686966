"""Small attention examples for the head atlas: every head's full pattern on a few short texts.

Patterns are kept only for texts of at most 64 tokens (a [heads x q x k] pattern of 64 tokens is
4096 numbers a head), as integer percentages of the lower triangle, so a report can carry them for
every head of a model and draw them on demand.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformer_lens import HookedTransformer

from interp.errors import InputError
from interp.head_ids import HeadId
from interp.texts import domain_texts, sample_texts

MAX_EXAMPLE_TOKENS = 64


def example_texts(seed: int = 0) -> list[str]:
    """Three short texts a head's behaviour shows on: prose, code, and a prose phrase repeated twice
    (where previous-token, duplicate-token and induction heads show their stripes)."""
    prose = sample_texts(1, seed=seed, max_chars=220)[0]
    code = domain_texts("code", 1, seed=seed)[0]
    phrase = " ".join(sample_texts(1, seed=seed + 1, max_chars=90)[0].split()[:12])
    return [prose, code, f"{phrase} {phrase}"]


@torch.no_grad()
def attention_examples(model: HookedTransformer, texts: Sequence[str], *, max_tokens: int = 40) -> dict[str, Any]:
    """Each head's attention on each text (cut to `max_tokens` tokens).

    Returns {"texts": [{"text", "tokens"}], "patterns": {"L{l}H{h}": [pattern per text]}}, where a
    pattern is the lower triangle, row q holding the attention of query q on keys 0..q in percent
    (rounded integers; each row sums to about 100).
    """
    if not 2 <= max_tokens <= MAX_EXAMPLE_TOKENS:
        raise InputError(f"example texts must be cut to 2-{MAX_EXAMPLE_TOKENS} tokens, not {max_tokens}")
    cfg = model.cfg
    records, patterns = [], {HeadId(l, h).label: [] for l in range(cfg.n_layers) for h in range(cfg.n_heads)}
    for text in texts:
        tokens = model.to_tokens(text)[:, :max_tokens]
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_pattern"))
        n = tokens.shape[1]
        records.append({"text": model.tokenizer.decode(tokens[0].tolist()), "tokens": model.to_str_tokens(tokens[0])})
        for layer in range(cfg.n_layers):
            grid = (cache[f"blocks.{layer}.attn.hook_pattern"][0].float() * 100).round().to(torch.int16).cpu()
            for head in range(cfg.n_heads):
                patterns[HeadId(layer, head).label].append([grid[head, q, : q + 1].tolist() for q in range(n)])
    return {"texts": records, "patterns": patterns, "max_tokens": max_tokens}
