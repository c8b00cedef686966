"""Constants and launch helpers shared by the Triton kernels."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# Finite stand-in for -inf on masked scores (log2 units): keeps fully masked tiles NaN-free.
NEG = tl.constexpr(-1.0e30)


def next_pow2(x: int) -> int:
    """Smallest power of two >= x (1 for x <= 1)."""
    return 1 << max(0, int(x) - 1).bit_length()


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: exact IEEE products for float32 inputs (tf32 would cost ~3
    decimal digits); irrelevant for half inputs, which run on tensor cores as they are."""
    return "ieee" if dtype == torch.float32 else "tf32"


def block_config(cuda_table: dict, interpret_config: tuple, head_dim: int, device: torch.device) -> tuple:
    """(block sizes..., num_warps, num_stages) for this head dim and device."""
    if torch.device(device).type != "cuda":
        return interpret_config
    return cuda_table[head_dim]


@triton.jit
def visible(q_pos, k_pos, n_ctx, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Mask: query q_pos sees key k_pos (rules in kernels.masking); the two position tensors
    are broadcast against each other, e.g. [BLOCK_M, 1] and [1, BLOCK_N]."""
    ok = (k_pos < n_ctx) & (q_pos >= 0)
    if CAUSAL:
        ok = ok & (k_pos <= q_pos)
    if HAS_WINDOW:
        ok = ok & (q_pos - k_pos < window)
        if not CAUSAL:
            ok = ok & (k_pos - q_pos < window)
    return ok
