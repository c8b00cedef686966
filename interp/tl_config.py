"""HF config → TransformerLens `HookedTransformerConfig`, built from the config itself.

TransformerLens keys its Gemma 3 settings on hub names and caps the context at 8K; the builders
here read every number from the model's own config, so a GGUF or a local directory converts the
same way as a hub checkpoint. Other architectures go through TransformerLens' own converter.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from transformer_lens import HookedTransformerConfig

from interp.errors import InputError


def _rope_theta(hf_config: Any, layer_type: str | None = None) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    if layer_type and layer_type in params:
        params = params[layer_type]
    if "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(hf_config, "rope_theta", 10000.0))


def _llama(c: Any) -> dict[str, Any]:
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return dict(
        d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps,
        d_vocab=c.vocab_size, act_fn=c.hidden_act,
        n_key_value_heads=c.num_key_value_heads if c.num_key_value_heads != c.num_attention_heads else None,
        normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=d_head, rotary_base=_rope_theta(c), final_rms=True, gated_mlp=True,
        original_architecture="LlamaForCausalLM",
    )


def _gemma3(c: Any) -> dict[str, Any]:
    attn_types = ["local" if t == "sliding_attention" else "global" for t in c.layer_types]
    return dict(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps,
        d_vocab=c.vocab_size, act_fn=c.hidden_activation, initializer_range=c.initializer_range,
        n_key_value_heads=c.num_key_value_heads, normalization_type="RMS",
        positional_embedding_type="rotary", rotary_dim=c.head_dim,
        rotary_base=_rope_theta(c, "full_attention"), rotary_base_local=_rope_theta(c, "sliding_attention"),
        use_attn_scale=True, attn_scale=float(c.query_pre_attn_scalar) ** 0.5,
        gated_mlp=True, final_rms=True, use_normalization_before_and_after=True, use_qk_norm=True,
        window_size=c.sliding_window, use_local_attn=True, attn_types=attn_types,
        attn_scores_soft_cap=c.attn_logit_softcapping or -1.0,
        output_logits_soft_cap=c.final_logit_softcapping or -1.0,
        original_architecture="Gemma3ForCausalLM",
    )


_BUILDERS = {"LlamaForCausalLM": _llama, "Gemma3ForCausalLM": _gemma3}


def architecture_of(hf_config: Any) -> str:
    archs = getattr(hf_config, "architectures", None) or []
    if archs:
        return archs[0]
    return {"llama": "LlamaForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}.get(hf_config.model_type, hf_config.model_type)


def tl_config_dict(hf_config: Any) -> dict[str, Any]:
    """HookedTransformerConfig keyword arguments for an HF config; InputError if unsupported."""
    arch = architecture_of(hf_config)
    if arch in _BUILDERS:
        return _BUILDERS[arch](hf_config)
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    with tempfile.TemporaryDirectory() as tmp:
        hf_config.to_json_file(str(Path(tmp) / "config.json"))
        try:
            return convert_hf_model_config(tmp)
        except Exception as err:  # TransformerLens raises many kinds for an unknown architecture
            raise InputError(
                f"unsupported architecture {arch}: TransformerLens cannot convert it ({type(err).__name__}); "
                f"supported: Llama, Gemma 3, and the architectures TransformerLens lists"
            ) from None


def config_to_json(cfg: HookedTransformerConfig) -> str:
    """Serialise a config (dtype and device as strings) so `config_from_json` rebuilds it."""
    d = {k: v for k, v in cfg.to_dict().items() if k in _init_fields()}
    d["dtype"] = str(d["dtype"]).removeprefix("torch.")
    d["device"] = None
    return json.dumps(d, indent=1, sort_keys=True, default=str)


def config_from_json(text: str) -> HookedTransformerConfig:
    import torch

    d = json.loads(text)
    d["dtype"] = getattr(torch, d["dtype"])
    return HookedTransformerConfig(**d)


def _init_fields() -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(HookedTransformerConfig) if f.init}
