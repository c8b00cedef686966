"""Fast trace: a model's attention computed by `interp_kernels.attention_with_stats`, never as a pattern.

Inside `kernel_attention(model)`, every attention layer runs q/k/v projections, QK-norm and
rotary exactly as TransformerLens does (so hook_q, hook_k, hook_v, hook_rot_q, hook_rot_k fire),
then the fused kernel instead of scores → softmax → pattern @ v, then hook_z and the output
projection (hook_result too when `cfg.use_attn_result`). hook_attn_scores and hook_pattern do
not fire: no [head, query, key] tensor ever exists. Each layer's per-query statistics are
collected per head, and optionally the attention each key receives (α of Gu et al.).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

import interp_kernels
from interp.errors import InputError


@dataclass
class LayerStats:
    """Statistics of one layer for one forward pass. Per query: `stats` (interp_kernels.AttentionStats,
    each field [batch, head, query]); per key, when asked: `received` and `alpha` [batch, head, key]."""

    stats: interp_kernels.AttentionStats
    received: torch.Tensor | None = None
    alpha: torch.Tensor | None = None


@dataclass
class KernelTrace:
    """What a `kernel_attention` block collected: layer index → LayerStats (last forward pass)."""

    layers: dict[int, LayerStats] = field(default_factory=dict)


@contextlib.contextmanager
def kernel_attention(
    model: HookedTransformer,
    *,
    sink_tokens: int = 1,
    spans: Sequence[tuple[int, int]] | None = None,
    received: bool = False,
    backend: str = "auto",
    keep_on: str | torch.device = "cpu",
    on_layer: Callable[[int, LayerStats], None] | None = None,
) -> Iterator[KernelTrace]:
    """Swap every attention layer's forward for the fused kernel for the duration of the block.

    sink_tokens: keys counted as the sink in `sink_mass`; spans: half-open key ranges whose
    mass is measured (e.g. a needle); received: also run the key-major pass for α per key.
    Statistics are moved to `keep_on` (None keeps them on the model's device), or handed to
    `on_layer(layer, stats)` and not kept, for streaming long traces.
    """
    _check_supported(model)
    trace = KernelTrace()
    saved = []
    for layer, (block, window) in enumerate(zip(model.blocks, layer_windows(model))):
        attn = block.attn
        saved.append((attn, attn.forward))
        attn.forward = _kernel_forward(attn, layer, window, trace, sink_tokens, spans, received, backend, keep_on,
                                       on_layer)
    try:
        yield trace
    finally:
        for attn, forward in saved:
            attn.forward = forward


def layer_windows(model: HookedTransformer) -> list[int | None]:
    """Per layer: the sliding window (keys i−w+1 … i) of a local layer, None for a global one."""
    cfg = model.cfg
    if not cfg.use_local_attn or not cfg.attn_types:
        return [None] * cfg.n_layers
    return [cfg.window_size if t == "local" else None for t in cfg.attn_types]


def queries_per_key(model: HookedTransformer, n: int) -> torch.Tensor:
    """[layer, key]: how many of n causal queries see each key (the denominator of α)."""
    from interp_kernels.masking import queries_per_key as count

    return torch.stack([count(n, True, w) for w in layer_windows(model)])


def extend_context(model: HookedTransformer, n_ctx: int) -> None:
    """Let the model run sequences up to `n_ctx` tokens (rotary tables grow on demand up to it).

    Positions past the context the model was trained on are extrapolation: useful for measuring
    attention statistics at length, not a claim that the model handles them well."""
    import warnings

    if n_ctx > model.cfg.n_ctx:
        warnings.warn(f"{model.cfg.model_name}: context raised from {model.cfg.n_ctx} to {n_ctx} tokens; "
                      f"positions past the trained context are extrapolated", stacklevel=2)
        model.cfg.n_ctx = n_ctx


def unsupported_features(model: HookedTransformer) -> list[str]:
    """Features of `model` the fused kernels cannot express (empty: the kernel path is exact)."""
    cfg = model.cfg
    unsupported = {
        "attention soft-capping": cfg.attn_scores_soft_cap and cfg.attn_scores_soft_cap > 0,
        "ALiBi / relative position bias": cfg.positional_embedding_type in ("alibi", "relative_positional_bias"),
        "learned attention sinks": cfg.use_attention_sinks,
        "log-n attention scaling": cfg.use_logn_attn,
        "bidirectional attention": cfg.attention_dir != "causal",
    }
    return [name for name, used in unsupported.items() if used]


def _check_supported(model: HookedTransformer) -> None:
    cfg = model.cfg
    found = unsupported_features(model)
    if found:
        raise InputError(f"fast trace does not support {', '.join(found)} (model {cfg.model_name}); use the eager capture instead")


def _kernel_forward(attn, layer, window, trace, sink_tokens, spans, received, backend, keep_on, on_layer):
    cfg = attn.cfg

    def forward(query_input, key_input, value_input, past_kv_cache_entry=None, additive_attention_mask=None,
                attention_mask=None, position_bias=None):
        padded = attention_mask is not None and not bool(attention_mask.bool().all())
        if past_kv_cache_entry is not None or additive_attention_mask is not None or padded:
            raise InputError("fast trace runs whole unpadded sequences: no KV cache, padding or attention mask")
        q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)  # hook_q/k/v, QK-norm
        q, k, v = _after_projection(attn, q, k, v)
        if cfg.positional_embedding_type == "rotary":
            q = attn.hook_rot_q(attn.apply_rotary(q, 0, None))
            k = attn.hook_rot_k(attn.apply_rotary(k, 0, None))
        qh, kh, vh = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # [batch, head, pos, d_head]
        scale = 1.0 / float(attn.attn_scale)
        out, stats = interp_kernels.attention_with_stats(qh, kh, vh, causal=True, window=window, scale=scale,
                                                  sink_tokens=sink_tokens, spans=spans, backend=backend)
        result = LayerStats(stats)
        if received:
            result.received, result.alpha = interp_kernels.attention_received(qh, kh, stats.lse, causal=True, window=window,
                                                                      scale=scale, backend=backend)
        _deliver(layer, result, trace, keep_on, on_layer)
        z = attn.hook_z(out.transpose(1, 2))  # [batch, pos, head, d_head]
        return _project(attn, z)

    return forward


_FULL_VECTOR_QK_NORM = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def _after_projection(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """What TransformerLens' attention forward (TL 3.9 AbstractAttention.forward) does between the
    projections and rotary: the OLMo family's QK-norm over the whole projected vector (all heads
    at once), then clip_qkv. q [batch, pos, head, d_head]; k, v [batch, pos, kv_head, d_head]."""
    cfg = attn.cfg
    if cfg.original_architecture in _FULL_VECTOR_QK_NORM:
        def norm(x, ln):
            return ln(x.flatten(-2)).unflatten(-1, x.shape[-2:])
        q, k = norm(q, attn.q_norm), norm(k, attn.k_norm)
    if cfg.clip_qkv is not None:
        q, k, v = (t.clamp(-cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
    return q, k, v


def _deliver(layer, result: LayerStats, trace: KernelTrace, keep_on, on_layer) -> None:
    if keep_on is not None:
        result = LayerStats(result.stats.to(keep_on),
                            None if result.received is None else result.received.to(keep_on),
                            None if result.alpha is None else result.alpha.to(keep_on))
    if on_layer is not None:
        on_layer(layer, result)
    else:
        trace.layers[layer] = result


def _project(attn, z: torch.Tensor) -> torch.Tensor:
    """The output projection as TransformerLens computes it: [batch, pos, head, d_head] → [batch, pos, d_model]."""
    w_o = attn.W_O.to(z.dtype)
    if attn.cfg.use_attn_result:
        result = attn.hook_result(torch.einsum("bphd,hdm->bphm", z, w_o))
        return result.sum(2) + attn.b_O
    flat = w_o.reshape(-1, w_o.shape[-1]).T  # [d_model, head * d_head]
    return F.linear(z.reshape(*z.shape[:2], -1), flat, attn.b_O)
