"""HF config → TransformerLens `HookedTransformerConfig`, through TransformerLens' own conversion.

For every decoder architecture TransformerLens 3 converts from a config (GPT-2, GPT-Neo, GPT-J,
GPT-NeoX, OPT, Bloom, Llama, Mistral, Mixtral, Qwen2/3, Phi, Phi-3, OLMo 3, OLMoE, Apertus,
GPT-OSS), `transformer_lens.loading_from_pretrained.convert_hf_model_config` is called on the
model's own config (written to a private temporary directory, so a GGUF file, a local directory
and a hub id convert the same way). Our own code fills only what TransformerLens lacks:

- Gemma 1/2/3 builders: TransformerLens 3.9 keys its Gemma settings on hub names
  ("google/gemma-2-2b", ...) with hard-coded numbers, so a local or GGUF Gemma has no config
  conversion at all; ours read every number from the config.
- `_complete`: a few fields TransformerLens' per-architecture branches leave at a wrong value
  for some configs (each line says which).

Whether the result computes what transformers computes is not assumed: `interp.parity` checks
every conversion against the HF model.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from transformer_lens import HookedTransformerConfig

from interp.errors import InputError

# Architectures whose config TransformerLens converts from the config itself (not from a hub name).
TL_FROM_CONFIG = (
    "GPT2LMHeadModel", "GPTNeoForCausalLM", "GPTJForCausalLM", "GPTNeoXForCausalLM", "OPTForCausalLM",
    "BloomForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM",
    "Qwen3ForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM", "Olmo3ForCausalLM", "OlmoeForCausalLM",
    "ApertusForCausalLM", "GptOssForCausalLM",
)
SUPPORTED_FAMILIES = ("GPT-2, GPT-Neo, GPT-J, GPT-NeoX/Pythia, OPT, Bloom, Llama (rope scaling: llama3, YaRN, linear), "
                      "Mistral, Mixtral, Qwen2, Qwen3, Gemma, Gemma 2, Gemma 3, Phi, Phi-3, OLMo 3, OLMoE, Apertus, GPT-OSS")


def _rope_params(hf_config: Any, layer_type: str | None = None) -> dict[str, Any]:
    params = getattr(hf_config, "rope_parameters", None) or {}
    if layer_type and layer_type in params:
        params = params[layer_type]
    return params or {}


def _rope_theta(hf_config: Any, layer_type: str | None = None) -> float:
    params = _rope_params(hf_config, layer_type)
    if "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(hf_config, "rope_theta", None) or 10000.0)


def _gemma_common(c: Any) -> dict[str, Any]:
    return dict(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        act_fn=getattr(c, "hidden_activation", None) or c.hidden_act, initializer_range=c.initializer_range,
        n_key_value_heads=c.num_key_value_heads, normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=c.head_dim, rotary_base=_rope_theta(c, "full_attention"), use_attn_scale=True,
        gated_mlp=True, final_rms=True,
    )


def _gemma(c: Any) -> dict[str, Any]:
    # HF's GemmaConfig has hidden_act "gelu_pytorch_tanh" (hidden_activation unset in most files).
    return dict(_gemma_common(c), act_fn=getattr(c, "hidden_activation", None) or c.hidden_act,
                original_architecture="GemmaForCausalLM")


def _local_global(c: Any) -> list[str]:
    types = getattr(c, "layer_types", None) or ["sliding_attention" if i % 2 == 0 else "full_attention"
                                                 for i in range(c.num_hidden_layers)]
    return ["local" if t == "sliding_attention" else "global" for t in types]


def _gemma2(c: Any) -> dict[str, Any]:
    return dict(
        _gemma_common(c), attn_scale=float(c.query_pre_attn_scalar) ** 0.5,
        use_normalization_before_and_after=True, window_size=c.sliding_window, use_local_attn=True,
        attn_types=_local_global(c), attn_scores_soft_cap=c.attn_logit_softcapping or -1.0,
        output_logits_soft_cap=c.final_logit_softcapping or -1.0, original_architecture="Gemma2ForCausalLM",
    )


def _gemma3(c: Any) -> dict[str, Any]:
    return dict(
        _gemma2(c), use_qk_norm=True, rotary_base_local=_rope_theta(c, "sliding_attention"),
        original_architecture="Gemma3ForCausalLM",
    )


_BUILDERS = {"GemmaForCausalLM": _gemma, "Gemma2ForCausalLM": _gemma2, "Gemma3ForCausalLM": _gemma3}
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "gemma3_text": "Gemma3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
                "gemma": "GemmaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                "mistral": "MistralForCausalLM", "phi3": "Phi3ForCausalLM", "gpt2": "GPT2LMHeadModel"}


def architecture_of(hf_config: Any) -> str:
    archs = getattr(hf_config, "architectures", None) or []
    if archs:
        return archs[0]
    return _MODEL_TYPES.get(hf_config.model_type, hf_config.model_type)


def check_causal_lm(hf_config: Any, where: str) -> None:
    """InputError for an encoder-only or encoder-decoder model (HookedTransformer is a decoder)."""
    from transformer_lens.utilities.architectures import MASKED_LM_ARCHITECTURES, SEQ2SEQ_ARCHITECTURES

    arch = architecture_of(hf_config)
    if getattr(hf_config, "is_encoder_decoder", False) or arch in SEQ2SEQ_ARCHITECTURES:
        raise InputError(f"{arch} in {where} is an encoder-decoder (seq2seq) model; the workbench analyses decoder-only "
                         f"causal LMs ({SUPPORTED_FAMILIES})")
    encoder = arch in MASKED_LM_ARCHITECTURES or arch.endswith(("ForMaskedLM", "ForSequenceClassification")) \
        or hf_config.model_type in ("bert", "roberta", "albert", "distilbert", "electra", "deberta", "deberta-v2")
    if encoder:
        raise InputError(f"{arch} in {where} is an encoder-only model; the workbench analyses decoder-only causal LMs "
                         f"({SUPPORTED_FAMILIES})")


def check_supported(hf_config: Any) -> None:
    """InputError naming the supported families when no conversion exists for the architecture."""
    arch = architecture_of(hf_config)
    if arch not in _BUILDERS and arch not in TL_FROM_CONFIG:
        raise InputError(f"unsupported architecture {arch}: TransformerLens 3 converts only {SUPPORTED_FAMILIES}")


def tl_config_dict(hf_config: Any) -> dict[str, Any]:
    """HookedTransformerConfig keyword arguments for an HF config, before any weight processing;
    InputError naming the supported families if TransformerLens cannot convert it."""
    arch = architecture_of(hf_config)
    if arch in _BUILDERS:
        return _with_rope_scaling(_BUILDERS[arch](hf_config), hf_config)
    check_supported(hf_config)

    import transformer_lens.loading_from_pretrained as tl_loading

    # TransformerLens reads the config with AutoConfig.from_pretrained(path); it is handed the
    # in-memory config instead (so a GGUF or hub config converts as loaded, never re-fetched).
    # The path only has to exist, and must not contain "llama"/"gemma" (TL picks hub-name branches on it).
    config = _tl_view(hf_config, arch)
    shim = type("InMemoryAutoConfig", (), {"from_pretrained": staticmethod(lambda *a, **k: config)})
    saved = tl_loading.AutoConfig
    with tempfile.TemporaryDirectory(prefix="interp-hfcfg-") as tmp:
        (Path(tmp) / "config.json").write_text("{}")
        tl_loading.AutoConfig = shim
        try:
            cfg = tl_loading.convert_hf_model_config(tmp)
        except Exception as err:  # TransformerLens raises many kinds for configs it cannot read
            raise InputError(f"TransformerLens cannot convert this {arch} config ({type(err).__name__}: {err})") from None
        finally:
            tl_loading.AutoConfig = saved
    return _with_rope_scaling(_complete(cfg, hf_config), hf_config)


def _tl_view(hf_config: Any, arch: str) -> Any:
    """A copy of the config with the attributes TransformerLens 3.9 reads under their transformers-4 names."""
    import copy

    c = copy.deepcopy(hf_config)
    c.architectures = [arch]  # a config read from GGUF has none; TransformerLens dispatches on it
    rope = getattr(c, "rope_parameters", None) or {}
    if "partial_rotary_factor" in rope and getattr(c, "partial_rotary_factor", None) is None:
        # transformers 5 moved Phi's partial_rotary_factor into rope_parameters; TL's Phi branch reads the attribute.
        c.partial_rotary_factor = rope["partial_rotary_factor"]
    if arch == "GPT2LMHeadModel" and getattr(c, "n_ctx", None) is None:
        c.n_ctx = c.n_positions  # transformers 5's GPT2Config dropped n_ctx; TL's GPT-2 branch reads it
    return c


def _complete(cfg: dict[str, Any], c: Any) -> dict[str, Any]:
    """Fix the fields TransformerLens' per-architecture branches set wrongly for some configs."""
    cfg = dict(cfg)
    # TransformerLens pins Mixtral and GPT-OSS to bfloat16; conversion and the parity check run in
    # float32 (load_model's dtype applies afterwards). A bf16 cfg with f32 weights crashed Mixtral.
    cfg.pop("dtype", None)
    head_dim = getattr(c, "head_dim", None)
    if head_dim and cfg.get("d_head") != head_dim and cfg.get("positional_embedding_type") == "rotary":
        # Llama and Mixtral branches compute d_head as hidden/heads, ignoring an explicit head_dim.
        if cfg.get("rotary_dim") == cfg.get("d_head"):
            cfg["rotary_dim"] = head_dim
        cfg["d_head"] = head_dim
    if cfg.get("original_architecture") == "MistralForCausalLM":
        cfg["n_ctx"] = c.max_position_embeddings  # TransformerLens caps Mistral at 2048 tokens
    return cfg


def _with_rope_scaling(cfg: dict[str, Any], c: Any) -> dict[str, Any]:
    """Rope scaling TransformerLens' attention implements but its per-architecture branch does not
    read from this config (its Llama branch reads llama3 scaling, its GPT-OSS/OLMo 3 branches
    YaRN; Qwen2, Mistral, Phi-3, Gemma... read none): llama3 (NTK-by-parts), yarn (without
    DeepSeek's mscale variants) and linear, from the config's rope parameters. Applied to
    global layers only where the scaling is per layer type. The parity check verifies the result;
    any other rope type is left alone, and refused there."""
    import math

    if cfg.get("use_NTK_by_parts_rope") or cfg.get("use_yarn_rope") or cfg.get("rotary_scaling_factor", 1.0) != 1.0:
        return cfg
    params = getattr(c, "rope_parameters", None) or {}
    per_layer = bool(params) and all(isinstance(v, dict) for v in params.values())
    rope = params.get("full_attention", {}) if per_layer else params
    kind = rope.get("rope_type") or rope.get("type") or "default"
    out = dict(cfg)
    if kind == "llama3":
        out.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=float(rope["factor"]),
                   NTK_by_parts_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
                   NTK_by_parts_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
                   NTK_original_ctx_len=int(rope.get("original_max_position_embeddings", c.max_position_embeddings)))
    elif kind == "yarn" and not {"mscale", "mscale_all_dim"} & set(rope):
        factor = float(rope["factor"])
        attention = rope.get("attention_factor")
        if attention is None:  # transformers' default: get_mscale(factor) = 0.1 ln(factor) + 1
            attention = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
        out.update(use_yarn_rope=True, yarn_factor=factor, yarn_attention_factor=float(attention),
                   yarn_beta_fast=float(rope.get("beta_fast") or 32.0), yarn_beta_slow=float(rope.get("beta_slow") or 1.0),
                   yarn_original_max_position_embeddings=int(rope.get("original_max_position_embeddings")
                                                             or c.max_position_embeddings),
                   yarn_truncate=rope.get("truncate", True), yarn_global_attn_only=per_layer)
    elif kind == "linear":
        out["rotary_scaling_factor"] = float(rope["factor"])  # TransformerLens applies it to global layers only
    return out


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
