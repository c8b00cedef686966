"""A model's vital statistics, as the atlas and `interp models` show them, with the parity
against transformers measured when it was converted."""
from __future__ import annotations

from typing import Any

from transformer_lens import HookedTransformer


def model_card(model: HookedTransformer) -> dict[str, Any]:
    """Architecture, attention layout, tokenizer facts and provenance of a loaded model."""
    cfg = model.cfg
    tok = model.tokenizer
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    card = {
        "name": cfg.model_name,
        "architecture": cfg.original_architecture,
        "source": getattr(model, "source", None),
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_key_value_heads": n_kv,
        "query_heads_per_kv_head": cfg.n_heads // n_kv,
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
        "d_mlp": cfg.d_mlp,
        "n_ctx": cfg.n_ctx,
        "d_vocab": cfg.d_vocab,
        "n_params": sum(p.numel() for p in model.parameters()),
        "attention_layers": _attention_layout(model),
        "normalization": cfg.normalization_type,
        "dtype": str(cfg.dtype).removeprefix("torch."),
        "device": str(cfg.device),
        "prepends_bos": bool(cfg.default_prepend_bos),
        "bos_token": getattr(tok, "bos_token", None),
        "has_chat_template": bool(getattr(tok, "chat_template", None)),
        "parity": _parity(model),
    }
    return card


def _parity(model: HookedTransformer) -> dict[str, Any] | None:
    """The log-prob agreement with transformers measured at conversion (None: not loaded by load_model)."""
    from interp.loading import parity_of

    parity = parity_of(model)
    return None if parity is None else parity.to_dict()


def _attention_layout(model: HookedTransformer) -> list[str]:
    """Per layer: "global", or "local(w)" for a sliding window of w keys."""
    from interp.kernel_attention import layer_windows

    return ["global" if w is None else f"local({w})" for w in layer_windows(model)]
