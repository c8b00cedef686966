"""Triton key-major pass: attention each key receives, from the forward pass's log-sum-exp.

Like FlashAttention-2's dK/dV loop: the grid is (key block, batch·query head); each program
keeps BLOCK_N keys in registers and walks the query blocks that can see them, recomputing
p_ij = 2^(x_ij - lse_i·log2 e) and summing over queries. Each program writes only its own
keys, so there are no atomics and the result is bitwise deterministic. As in the forward
kernel, the query loop is split into two masked boundary segments around a mask-free middle.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import (LOG2E, autotune_configs, dot_precision, interpreter_upcast, length_bucket, mma, pruner,
                           tuned_configs, visible)

# Autotuning set, (BLOCK_N keys, BLOCK_M queries, num_warps, num_stages), pruned per launch by
# shared memory and registers (triton_common.fits); float32 (IEEE dots) gets smaller tiles.
HALF_CONFIGS = [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (32, 32, 4, 2)]
FP32_CONFIGS = [(64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2)]
INTERPRET_CONFIG = (16, 16, 1, 1)
BLOCK_NAMES = ("BLOCK_N", "BLOCK_M")
TUNING_KEY = ["n_bucket", "HEAD_DIM", "CAUSAL", "HAS_WINDOW", "DOT_PRECISION"]


@triton.jit
def _query_segments(k_first, n_ctx, window, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Query block bounds lo <= mid_lo <= mid_hi <= hi for keys k_first .. k_first+BLOCK_N-1.

    Query blocks in [mid_lo, mid_hi) see every one of these keys and need no mask.
    """
    k_last = k_first + BLOCK_N - 1
    lo = k_first * 0
    hi = n_ctx + lo
    full_lo = lo
    full_hi = hi
    if CAUSAL:
        lo = k_first // BLOCK_M * BLOCK_M
        full_lo = k_last + lo * 0
    if HAS_WINDOW:
        hi = tl.minimum(hi, k_last + window)
        full_hi = tl.minimum(full_hi, k_first + window)
        if not CAUSAL:
            lo = tl.maximum(k_first - window + 1, 0) // BLOCK_M * BLOCK_M
            full_lo = tl.maximum(k_last - window + 1, 0)
    mid_lo = tl.minimum(tl.maximum((full_lo + BLOCK_M - 1) // BLOCK_M * BLOCK_M, lo), hi)
    mid_hi = tl.maximum(tl.minimum(full_hi // BLOCK_M * BLOCK_M, hi), mid_lo)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def _recv_range(total, k, q_base, lse_base, stride_qn, offs_n, lo, hi, n_ctx, window, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr,
                HAS_WINDOW: tl.constexpr, MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
                UPCAST_BF16: tl.constexpr):
    """Add Σ_i p_ij over query blocks lo .. hi (step BLOCK_M) to total[j]."""
    offs_d = tl.arange(0, HEAD_DIM)
    qt_tile = tl.arange(0, BLOCK_M)[None, :] * stride_qn + offs_d[:, None]  # 32-bit within a block
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        qt_ptrs = q_base + start_m.to(tl.int64) * stride_qn + qt_tile  # the block start in 64 bits
        if MASK:
            qt = tl.load(qt_ptrs, mask=offs_m[None, :] < n_ctx, other=0.0)
            lse = tl.load(lse_base + offs_m, mask=offs_m < n_ctx, other=float("inf"))
        else:
            qt = tl.load(qt_ptrs)
            lse = tl.load(lse_base + offs_m)
        # A row that saw no key (lse = -inf) gives no attention: use +inf so p = 0.
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
        x = mma(k, qt, None, DOT_PRECISION, UPCAST_BF16) * qk_scale
        p = tl.math.exp2(x - lse2[None, :])
        if MASK:
            p = tl.where(visible(offs_m[None, :], offs_n[:, None], n_ctx, window, CAUSAL, HAS_WINDOW), p, 0.0)
        total += tl.sum(p, 1)
    return total


@triton.jit
def _queries_per_key(offs_n, n_ctx, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """How many queries see each key offs_n (interp_kernels.masking.queries_per_key)."""
    if CAUSAL:
        count = n_ctx - offs_n
        if HAS_WINDOW:
            count = tl.minimum(count, window)
    elif HAS_WINDOW:
        count = tl.minimum(offs_n + window - 1, n_ctx - 1) - tl.maximum(offs_n - window + 1, 0) + 1
    else:
        count = offs_n * 0 + n_ctx
    return tl.maximum(count, 0).to(tl.float32)


# Lengths and window are not specialised (no recompile per prompt length or window).
@triton.jit(do_not_specialize=["n_ctx", "n_heads", "group", "window", "n_bucket"])
def _attn_received(Q, K, Lse, Recv, Alpha, sm_scale, n_ctx, n_heads, group, window, n_bucket,
                   stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                   HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   UPCAST_BF16: tl.constexpr):
    """One program: BLOCK_N keys of one (batch, query head); GQA via head // group.
    n_bucket is not read: it is the autotuning key for n_ctx (triton_common.length_bucket)."""
    k_first = tl.program_id(0) * BLOCK_N
    off_bh = tl.program_id(1).to(tl.int64)
    off_b = off_bh // n_heads
    off_h = off_bh % n_heads
    off_hk = off_h // group
    offs_n = k_first + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n < n_ctx
    k_ptrs = (K + off_b * stride_kb + off_hk * stride_kh + k_first.to(tl.int64) * stride_kn
              + (tl.arange(0, BLOCK_N)[:, None] * stride_kn + offs_d[None, :]))
    k = tl.load(k_ptrs, mask=key_ok[:, None], other=0.0)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    lse_base = Lse + off_bh * n_ctx
    qk_scale = sm_scale * LOG2E

    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    lo, mid_lo, mid_hi, hi = _query_segments(k_first, n_ctx, window, BLOCK_N, BLOCK_M, CAUSAL, HAS_WINDOW)
    total = _recv_range(total, k, q_base, lse_base, stride_qn, offs_n, lo, mid_lo, n_ctx, window, qk_scale,
                        HEAD_DIM, BLOCK_M, CAUSAL, HAS_WINDOW, True, DOT_PRECISION, UPCAST_BF16)
    total = _recv_range(total, k, q_base, lse_base, stride_qn, offs_n, mid_lo, mid_hi, n_ctx, window, qk_scale,
                        HEAD_DIM, BLOCK_M, CAUSAL, HAS_WINDOW, False, DOT_PRECISION, UPCAST_BF16)
    total = _recv_range(total, k, q_base, lse_base, stride_qn, offs_n, mid_hi, hi, n_ctx, window, qk_scale,
                        HEAD_DIM, BLOCK_M, CAUSAL, HAS_WINDOW, True, DOT_PRECISION, UPCAST_BF16)

    count = _queries_per_key(offs_n, n_ctx, window, CAUSAL, HAS_WINDOW)
    alpha = tl.where(count > 0, total / tl.maximum(count, 1.0), 0.0)
    tl.store(Recv + off_bh * n_ctx + offs_n, total, mask=key_ok)
    tl.store(Alpha + off_bh * n_ctx + offs_n, alpha, mask=key_ok)


def _make_tuned(configs):
    return triton.autotune(configs=autotune_configs(configs, BLOCK_NAMES, INTERPRET_CONFIG), key=TUNING_KEY,
                           prune_configs_by={"early_config_prune": pruner("K", BLOCK_NAMES, streamed="q")})(
        _attn_received)


_TUNED_HALF = _make_tuned(HALF_CONFIGS)
_TUNED_FP32 = _make_tuned(FP32_CONFIGS)


def best_configs() -> dict[str, dict]:
    """The configs autotuning has picked in this process, by tuning key (for the GPU check)."""
    return {**tuned_configs(_TUNED_HALF), **tuned_configs(_TUNED_FP32)}


def received(q, k, lse, *, causal: bool, window: int | None, scale: float,
             block: tuple[int, int, int, int] | None = None):
    """Launch the key-major pass; same contract as ``interp_kernels.reference.received``.

    q ``[B, H, N, d]``, k ``[B, H_kv, N, d]`` with unit stride on d, lse float32 ``[B, H, N]``.
    ``block`` fixes (BLOCK_N, BLOCK_M, num_warps, num_stages); without it the launch is
    autotuned (HALF_CONFIGS / FP32_CONFIGS; INTERPRET_CONFIG alone under the interpreter).
    Returns ``(received, alpha)``.
    """
    b, h, n, d = q.shape
    dev = q.device
    lse = lse.to(torch.float32).contiguous()
    total = torch.empty((b, h, n), device=dev, dtype=torch.float32)
    alpha = torch.empty_like(total)
    args = (q, k, lse, total, alpha, scale, n, h, h // k.shape[1], 0 if window is None else window, length_bucket(n),
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    meta = dict(HEAD_DIM=d, CAUSAL=causal, HAS_WINDOW=window is not None, DOT_PRECISION=dot_precision(q.dtype),
                UPCAST_BF16=interpreter_upcast(q.dtype, dev))
    if block is None:
        tuned = _TUNED_FP32 if q.dtype == torch.float32 else _TUNED_HALF
        tuned[lambda cfg: (triton.cdiv(n, cfg["BLOCK_N"]), b * h)](*args, **meta)
    else:
        block_n, block_m, warps, stages = block
        _attn_received[(triton.cdiv(n, block_n), b * h)](*args, **meta, BLOCK_N=block_n, BLOCK_M=block_m,
                                                         num_warps=warps, num_stages=stages)
    return total, alpha
