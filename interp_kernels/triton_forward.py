"""Triton forward kernel: attention output plus per-query statistics in one pass.

Modelled on the Triton fused-attention tutorial (FlashAttention-2 forward). The grid is
(query block, batch·head); each program keeps one block of queries in registers and walks
the key blocks its rows can see, split into three segments so only the boundary segments pay
for masking: [lo, mid_lo) window edge, [mid_lo, mid_hi) fully visible, [mid_hi, hi) diagonal
and ragged tail. Scores are kept in log2 units (x = s·scale·log2 e) so exp2 can be used.

Per row the loop carries the running max m, l = Σ 2^(x-m), t = Σ 2^(x-m)·(x-m), the argmax,
acc = Σ 2^(x-m)·v and the range masses, all rescaled by 2^(m_old - m_new) when m grows.
t is kept relative to m (not Σ p·x) so entropy = ln2·(log2 l - t/l) has no cancellation.
Masked scores are a large finite negative (not -inf) so a tile a row cannot see yields no NaN;
rows that saw no key at all end with m still at that value and are defined in the epilogue.
Ties for the argmax go to the lowest key index: tl.max breaks ties to the left within a
block, blocks are visited in increasing key order, and a later block wins only if strictly
larger.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .stats import AttentionStats
from .triton_common import (LN2, LOG2E, NEG, autotune_configs, dot_precision, interpreter_upcast, length_bucket,
                           mma, next_pow2, pruner, tuned_configs, visible)

# Autotuning set, (BLOCK_M, BLOCK_N, num_warps, num_stages), after the fused-attention tutorial's;
# pruned per launch by shared memory and accumulator registers (triton_common.fits). float32
# runs its IEEE dots on CUDA cores and stages twice the bytes, hence its smaller tiles.
HALF_CONFIGS = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2),
                (32, 32, 4, 2)]
FP32_CONFIGS = [(64, 32, 4, 2), (64, 64, 4, 2), (32, 32, 4, 2), (32, 16, 4, 1)]
INTERPRET_CONFIG = (16, 16, 1, 1)
BLOCK_NAMES = ("BLOCK_M", "BLOCK_N")
TUNING_KEY = ["n_bucket", "HEAD_DIM", "MASS_COLS", "CAUSAL", "HAS_WINDOW", "DOT_PRECISION"]


@triton.jit
def _key_segments(q_first, n_ctx, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Key block bounds lo <= mid_lo <= mid_hi <= hi for queries q_first .. q_first+BLOCK_M-1.

    Blocks in [mid_lo, mid_hi) are fully visible to every row and need no mask.
    """
    q_last = q_first + BLOCK_M - 1
    lo = q_first * 0
    hi = n_ctx + lo
    full_lo = lo
    full_hi = hi
    if CAUSAL:
        hi = tl.minimum(hi, q_last + 1)
        full_hi = tl.minimum(full_hi, q_first + 1)
    if HAS_WINDOW:
        lo = tl.maximum(q_first - window + 1, 0) // BLOCK_N * BLOCK_N
        full_lo = tl.maximum(q_last - window + 1, 0)
        if not CAUSAL:
            hi = tl.minimum(hi, q_last + window)
            full_hi = tl.minimum(full_hi, q_first + window)
    mid_lo = tl.minimum(tl.maximum((full_lo + BLOCK_N - 1) // BLOCK_N * BLOCK_N, lo), hi)
    mid_hi = tl.maximum(tl.minimum(full_hi // BLOCK_N * BLOCK_N, hi), mid_lo)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def _fwd_range(acc, m_i, l_i, t_i, arg_i, mass_i, q, k_base, v_base, stride_kn, stride_vn,
               span_lo, span_hi, lo, hi, mass_hi, offs_m, n_ctx, window, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_WINDOW: tl.constexpr, MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
               UPCAST_BF16: tl.constexpr):
    """Online-softmax update of one query block over key blocks lo .. hi (step BLOCK_N)."""
    offs_d = tl.arange(0, HEAD_DIM)
    # Offsets within one block stay 32-bit; the block's start is added in 64 bits, so strided
    # inputs whose N·stride exceeds 2^31 elements address correctly.
    k_tile = tl.arange(0, BLOCK_N)[None, :] * stride_kn + offs_d[:, None]
    v_tile = tl.arange(0, BLOCK_N)[:, None] * stride_vn + offs_d[None, :]
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + start_n.to(tl.int64) * stride_kn + k_tile
        v_ptrs = v_base + start_n.to(tl.int64) * stride_vn + v_tile
        if MASK:
            k = tl.load(k_ptrs, mask=offs_n[None, :] < n_ctx, other=0.0)
        else:
            k = tl.load(k_ptrs)
        x = mma(q, k, None, DOT_PRECISION, UPCAST_BF16) * qk_scale
        if MASK:
            x = tl.where(visible(offs_m[:, None], offs_n[None, :], n_ctx, window, CAUSAL, HAS_WINDOW), x, NEG)
        m_blk, a_blk = tl.max(x, 1, return_indices=True)
        arg_i = tl.where(m_blk > m_i, a_blk + start_n, arg_i)
        m_new = tl.maximum(m_i, m_blk)
        alpha = tl.math.exp2(m_i - m_new)
        x = x - m_new[:, None]
        p = tl.math.exp2(x)
        t_i = alpha * (t_i + l_i * (m_i - m_new)) + tl.sum(p * x, 1)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASK:
            v = tl.load(v_ptrs, mask=offs_n[:, None] < n_ctx, other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None], DOT_PRECISION, UPCAST_BF16)
        mass_i = mass_i * alpha[:, None]
        if start_n < mass_hi:
            inside = (offs_n[:, None] >= span_lo[None, :]) & (offs_n[:, None] < span_hi[None, :])
            # Full float32 products whatever the input dtype: tf32 would round p to 10 bits (~1e-3).
            mass_i = tl.dot(p, inside.to(tl.float32), mass_i, input_precision="ieee")
        m_i = m_new
    return acc, m_i, l_i, t_i, arg_i, mass_i


# Lengths, window and mass bounds are not specialised (no recompile per prompt length or window).
@triton.jit(do_not_specialize=["n_ctx", "n_heads", "group", "window", "n_mass", "mass_hi", "n_bucket"])
def _attn_fwd_stats(Q, K, V, Out, Lse, Ent, MaxP, ArgMax, Mass, SpanLo, SpanHi,
                    sm_scale, n_ctx, n_heads, group, window, n_mass, mass_hi, n_bucket,
                    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    MASS_COLS: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, UPCAST_BF16: tl.constexpr):
    """One program: BLOCK_M queries of one (batch, query head); GQA via head // group.
    n_bucket is not read: it is the autotuning key for n_ctx (triton_common.length_bucket)."""
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1).to(tl.int64)
    off_b = off_bh // n_heads
    off_h = off_bh % n_heads
    off_hk = off_h // group
    q_first = start_m * BLOCK_M
    offs_m = q_first + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < n_ctx
    first64 = q_first.to(tl.int64)
    rows_in_block = tl.arange(0, BLOCK_M)[:, None]
    q_ptrs = (Q + off_b * stride_qb + off_h * stride_qh + first64 * stride_qn
              + (rows_in_block * stride_qn + offs_d[None, :]))
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    k_base = K + off_b * stride_kb + off_hk * stride_kh
    v_base = V + off_b * stride_vb + off_hk * stride_vh
    cols = tl.arange(0, MASS_COLS)
    span_lo = tl.load(SpanLo + cols, mask=cols < n_mass, other=0)
    span_hi = tl.load(SpanHi + cols, mask=cols < n_mass, other=0)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + NEG
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    t_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    arg_i = tl.zeros([BLOCK_M], dtype=tl.int32) - 1
    mass_i = tl.zeros([BLOCK_M, MASS_COLS], dtype=tl.float32)
    qk_scale = sm_scale * LOG2E

    lo, mid_lo, mid_hi, hi = _key_segments(q_first, n_ctx, window, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    acc, m_i, l_i, t_i, arg_i, mass_i = _fwd_range(
        acc, m_i, l_i, t_i, arg_i, mass_i, q, k_base, v_base, stride_kn, stride_vn, span_lo, span_hi,
        lo, mid_lo, mass_hi, offs_m, n_ctx, window, qk_scale,
        HEAD_DIM, BLOCK_N, CAUSAL, HAS_WINDOW, True, DOT_PRECISION, UPCAST_BF16)
    acc, m_i, l_i, t_i, arg_i, mass_i = _fwd_range(
        acc, m_i, l_i, t_i, arg_i, mass_i, q, k_base, v_base, stride_kn, stride_vn, span_lo, span_hi,
        mid_lo, mid_hi, mass_hi, offs_m, n_ctx, window, qk_scale,
        HEAD_DIM, BLOCK_N, CAUSAL, HAS_WINDOW, False, DOT_PRECISION, UPCAST_BF16)
    acc, m_i, l_i, t_i, arg_i, mass_i = _fwd_range(
        acc, m_i, l_i, t_i, arg_i, mass_i, q, k_base, v_base, stride_kn, stride_vn, span_lo, span_hi,
        mid_hi, hi, mass_hi, offs_m, n_ctx, window, qk_scale,
        HEAD_DIM, BLOCK_N, CAUSAL, HAS_WINDOW, True, DOT_PRECISION, UPCAST_BF16)

    # Rows that saw no key kept m at NEG; give them the documented empty-row values.
    seen = m_i > NEG * 0.5
    l_safe = tl.where(seen, l_i, 1.0)
    inv_l = tl.where(seen, 1.0 / l_safe, 0.0)
    log2_l = tl.math.log2(l_safe)
    lse = tl.where(seen, (m_i + log2_l) * LN2, float("-inf"))
    ent = tl.where(seen, tl.maximum((log2_l - t_i * inv_l) * LN2, 0.0), 0.0)
    arg_i = tl.where(seen, arg_i, -1)

    o_ptrs = (Out + off_b * stride_ob + off_h * stride_oh + first64 * stride_on
              + (rows_in_block * stride_on + offs_d[None, :]))
    tl.store(o_ptrs, (acc * inv_l[:, None]).to(Out.dtype.element_ty), mask=row_ok[:, None])
    row = off_bh * n_ctx + offs_m
    tl.store(Lse + row, lse, mask=row_ok)
    tl.store(Ent + row, ent, mask=row_ok)
    tl.store(MaxP + row, inv_l, mask=row_ok)
    tl.store(ArgMax + row, arg_i.to(tl.int64), mask=row_ok)
    mass_ptrs = Mass + row[:, None] * n_mass + cols[None, :]
    tl.store(mass_ptrs, mass_i * inv_l[:, None], mask=row_ok[:, None] & (cols[None, :] < n_mass))


def _tuned(dtype: torch.dtype):
    """The autotuned launcher for this dtype family (half or float32 config set)."""
    return _TUNED_FP32 if dtype == torch.float32 else _TUNED_HALF


def _make_tuned(configs):
    return triton.autotune(configs=autotune_configs(configs, BLOCK_NAMES, INTERPRET_CONFIG), key=TUNING_KEY,
                           prune_configs_by={"early_config_prune": pruner("Q", BLOCK_NAMES, streamed="kv")})(
        _attn_fwd_stats)


_TUNED_HALF = _make_tuned(HALF_CONFIGS)
_TUNED_FP32 = _make_tuned(FP32_CONFIGS)


def best_configs() -> dict[str, dict]:
    """The configs autotuning has picked in this process, by tuning key (for the GPU check)."""
    return {**tuned_configs(_TUNED_HALF), **tuned_configs(_TUNED_FP32)}


def forward(q, k, v, *, causal: bool, window: int | None, scale: float,
            mass_ranges: list[tuple[int, int]], block: tuple[int, int, int, int] | None = None):
    """Launch the forward kernel; same contract as ``interp_kernels.reference.forward``.

    q ``[B, H, N, d]``, k and v ``[B, H_kv, N, d]`` with unit stride on d. ``block`` fixes
    (BLOCK_M, BLOCK_N, num_warps, num_stages); without it the launch is autotuned over
    HALF_CONFIGS or FP32_CONFIGS (one config, INTERPRET_CONFIG, under the interpreter), keyed
    on the length bucket, head dim, number of mass columns, masking and dtype. Returns
    ``(out, AttentionStats)``.
    """
    b, h, n, d = q.shape
    dev = q.device
    out = torch.empty((b, h, n, d), dtype=q.dtype, device=dev)
    lse, ent, maxp = (torch.empty((b, h, n), device=dev, dtype=torch.float32) for _ in range(3))
    argmax = torch.empty((b, h, n), device=dev, dtype=torch.int64)
    mass = torch.empty((b, h, n, len(mass_ranges)), device=dev, dtype=torch.float32)
    bounds = torch.tensor(_range_bounds(mass_ranges), dtype=torch.int32, device=dev)
    mass_hi = max([stop for start, stop in mass_ranges if stop > start], default=0)
    args = (q, k, v, out, lse, ent, maxp, argmax, mass, bounds[0], bounds[1],
            scale, n, h, h // k.shape[1], 0 if window is None else window, len(mass_ranges), mass_hi,
            length_bucket(n),
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2))
    meta = dict(HEAD_DIM=d, MASS_COLS=max(16, next_pow2(len(mass_ranges))), CAUSAL=causal,
                HAS_WINDOW=window is not None, DOT_PRECISION=dot_precision(q.dtype),
                UPCAST_BF16=interpreter_upcast(q.dtype, dev))
    if block is None:
        grid = lambda cfg: (triton.cdiv(n, cfg["BLOCK_M"]), b * h)  # noqa: E731
        _tuned(q.dtype)[grid](*args, **meta)
    else:
        block_m, block_n, warps, stages = block
        _attn_fwd_stats[(triton.cdiv(n, block_m), b * h)](*args, **meta, BLOCK_M=block_m, BLOCK_N=block_n,
                                                          num_warps=warps, num_stages=stages)
    stats = AttentionStats(lse=lse, entropy=ent, max_prob=maxp, argmax=argmax,
                           sink_mass=mass[..., 0].contiguous(), span_mass=mass[..., 1:].contiguous())
    return out, stats


def _range_bounds(mass_ranges: list[tuple[int, int]]) -> list[list[int]]:
    """``[[starts...], [stops...]]``, padded with one empty range so the tensor is never empty."""
    pairs = list(mass_ranges) or [(0, 0)]
    return [[a for a, _ in pairs], [b for _, b in pairs]]
