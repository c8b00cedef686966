"""Public entry points: argument checks, backend choice, then a call into a backend.

Backends: "torch" (interp_kernels.reference, any device), "cpu" (interp_kernels.cpu_fused: the same chunked
plan with a compiled C loop per key block; CPU tensors, needs a C compiler on first use) and
"triton" (interp_kernels.triton_forward / interp_kernels.triton_received; CUDA, or CPU under
TRITON_INTERPRET=1). "auto" picks triton for CUDA tensors when triton imports and supports the
dtype (fp16, bf16, fp32), the head dim (a power of two in 16..256) and the number of spans (at
most 63); cpu for CPU tensors when its kernel builds; torch otherwise. Both entry points are
inference-only (they run under torch.no_grad; outputs carry no gradient).
"""
from __future__ import annotations

import importlib
import math
import os

import torch

from . import cpu_fused, reference
from .stats import AttentionStats

BACKENDS = ("auto", "triton", "cpu", "torch")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The Triton forward keeps one register accumulator column per span (plus the sink).
MAX_TRITON_SPANS = 63


def _triton_available() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("+")[0].split(".")[:2] if x.isdigit())


def interpreter_problem(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's CPU interpreter cannot run our kernels with these versions, or None. Triton up to
    3.6 turns a loop bound into an int by int() of a one-element array, which numpy 2.4 made an
    error (fixed in Triton 3.7); compiled GPU launches are not affected."""
    if _version(triton_version) < (3, 7) and _version(numpy_version) >= (2, 4):
        return (f"Triton {triton_version}'s interpreter (TRITON_INTERPRET=1) does not run with numpy "
                f"{numpy_version}: install triton>=3.7 or numpy<2.4, or use backend='cpu' / 'torch'")
    return None


def _triton_head_dim_ok(d: int) -> bool:
    return 16 <= d <= 256 and d & (d - 1) == 0


def _check_triton(q: torch.Tensor, n_spans: int) -> None:
    """Raise ValueError (one line) unless the Triton backend can run on these tensors."""
    if not _triton_available():
        raise ValueError("backend='triton' needs the triton package, which is not installed")
    if q.device.type != "cuda" and not _interpreting():
        raise ValueError(f"backend='triton' on {q.device.type} tensors needs TRITON_INTERPRET=1 set "
                         "before triton is imported; use a CUDA device or backend='torch'")
    if q.device.type != "cuda":
        import numpy
        import triton

        problem = interpreter_problem(triton.__version__, numpy.__version__)
        if problem:
            raise ValueError(problem)
    if q.dtype not in TRITON_DTYPES:
        raise ValueError(f"backend='triton' supports float16, bfloat16 and float32, not {q.dtype}")
    if not _triton_head_dim_ok(q.shape[-1]):
        raise ValueError(f"backend='triton' needs a power-of-two head dim in 16..256, got {q.shape[-1]}")
    if n_spans > MAX_TRITON_SPANS:
        raise ValueError(f"backend='triton' supports at most {MAX_TRITON_SPANS} spans, got {n_spans}")


def _check_cpu(q: torch.Tensor) -> None:
    """Raise ValueError (one line) unless the fused CPU backend can run on these tensors."""
    if q.device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got {q.device.type}; use backend='auto'")
    if not cpu_fused.available():
        raise ValueError(f"backend='cpu' is not available: {cpu_fused.unavailable_reason()}; use backend='torch'")


def _resolve_backend(backend: str, q: torch.Tensor, n_spans: int = 0) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        usable = (q.device.type == "cuda" and q.dtype in TRITON_DTYPES and n_spans <= MAX_TRITON_SPANS
                  and _triton_head_dim_ok(q.shape[-1]) and _triton_available())
        if usable:
            return "triton"
        return "cpu" if q.device.type == "cpu" and cpu_fused.available() else "torch"
    if backend == "triton":
        _check_triton(q, n_spans)
    if backend == "cpu":
        _check_cpu(q)
    return backend


def _check_qk(q: torch.Tensor, k: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be [B, H, N, d] and [B, H_kv, N, d], got {tuple(q.shape)} and {tuple(k.shape)}")
    b, h, n, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, n, d):
        raise ValueError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)} in batch, length or head dim")
    if k.shape[1] == 0 or h % k.shape[1]:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({k.shape[1]})")
    if k.dtype != q.dtype or k.device != q.device:
        raise ValueError("q and k must share dtype and device")
    if not q.is_floating_point():
        raise ValueError(f"q, k and v must be floating point, got {q.dtype}")


def _check_window(window) -> int | None:
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be None or an int >= 1, got {window!r}")
    return window


def _mass_ranges(sink_tokens, spans, n: int) -> list[tuple[int, int]]:
    """Sink range then spans, each clipped to [0, n]."""
    if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
        raise ValueError(f"sink_tokens must be an int >= 0, got {sink_tokens!r}")
    ranges = [(0, min(sink_tokens, n))]
    for span in spans or ():
        try:
            start, stop = (int(x) for x in span)
        except (TypeError, ValueError):
            raise ValueError(f"spans must be (start, stop) pairs of ints, got {span!r}") from None
        if start < 0 or stop < start:
            raise ValueError(f"span {span!r} must satisfy 0 <= start <= stop")
        ranges.append((min(start, n), min(stop, n)))
    return ranges


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@torch.no_grad()
def attention_with_stats(q, k, v, *, causal=True, window=None, scale=None, sink_tokens=1,
                         spans=None, backend="auto"):
    """Attention output and per-query statistics in one pass.

    q ``[B, H, N, d]``; k, v ``[B, H_kv, N, d]`` with H % H_kv == 0 (query head h reads KV head
    h // (H // H_kv)); q and k already rotary-embedded. Scores are q·kᵀ·scale (scale defaults to
    1/sqrt(d)). causal: query i sees keys j <= i; window=w additionally limits it to
    i-w+1 .. i (non-causal: |i-j| < w). sink_tokens: keys 0 .. sink_tokens-1 form
    ``sink_mass``; spans: half-open (start, stop) key ranges, clipped to [0, N], one
    ``span_mass`` column each. fp16/bf16/fp32 inputs are accumulated in float32 (float64
    inputs, torch and cpu backends only, in float64). backend: "auto", "triton", "cpu" or "torch"
    (module docstring); "triton" on CPU tensors needs TRITON_INTERPRET=1, otherwise ValueError.

    Returns ``(out, stats)``: out like q (same dtype), stats an ``AttentionStats`` of float32
    ``[B, H, N]`` fields (argmax int64, lowest key index on ties) and span_mass
    ``[B, H, N, len(spans)]``.
    """
    _check_qk(q, k)
    if v.shape != k.shape or v.dtype != k.dtype or v.device != k.device:
        raise ValueError(f"v {tuple(v.shape)} must match k {tuple(k.shape)} in shape, dtype and device")
    window = _check_window(window)
    ranges = _mass_ranges(sink_tokens, spans, q.shape[2])
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    chosen = _resolve_backend(backend, q, len(ranges) - 1)
    if chosen == "torch" or q.numel() == 0:
        return reference.forward(q, k, v, causal=causal, window=window, scale=scale, mass_ranges=ranges)
    if chosen == "cpu":
        return cpu_fused.forward(q, k, v, causal=causal, window=window, scale=scale, mass_ranges=ranges)
    from . import triton_forward
    return triton_forward.forward(_unit_stride(q), _unit_stride(k), _unit_stride(v), causal=causal,
                                  window=window, scale=scale, mass_ranges=ranges)


@torch.no_grad()
def attention_received(q, k, lse, *, causal=True, window=None, scale=None, backend="auto"):
    """Attention each key receives, from the log-sum-exp of ``attention_with_stats``.

    q ``[B, H, N, d]``, k ``[B, H_kv, N, d]``, lse ``[B, H, N]`` (``stats.lse`` of the same
    call's q, k, causal, window and scale). With p_ij = exp(s_ij - lse_i), returns
    ``(received, alpha)``, float32 ``[B, H, N]``: received_j = Σ_i p_ij over the queries that
    see key j, alpha_j = received_j / (number of those queries), e.g. N - j when causal with
    no window (α_j of Gu et al.); alpha is 0 for a key no query sees, and a query whose lse
    is -inf contributes nothing. Deterministic: the same inputs give bitwise the same result.
    """
    _check_qk(q, k)
    if tuple(lse.shape) != tuple(q.shape[:3]):
        raise ValueError(f"lse must be [B, H, N] = {tuple(q.shape[:3])}, got {tuple(lse.shape)}")
    window = _check_window(window)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    lse = lse.to(device=q.device, dtype=torch.float32)
    chosen = _resolve_backend(backend, q)
    if chosen == "cpu" and q.numel():
        return cpu_fused.received(q, k, lse, causal=causal, window=window, scale=scale)
    if chosen == "torch" or q.numel() == 0:
        return reference.received(q, k, lse, causal=causal, window=window, scale=scale)
    from . import triton_received
    return triton_received.received(_unit_stride(q), _unit_stride(k), lse, causal=causal,
                                    window=window, scale=scale)


__all__ = ["AttentionStats", "attention_with_stats", "attention_received", "BACKENDS"]
