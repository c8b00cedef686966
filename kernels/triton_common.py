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


# Largest dynamic shared memory per block in bytes, by compute capability (CUDA guide).
SHARED_MEMORY_BY_ARCH = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


def shared_memory_limit(device: torch.device) -> int:
    """Opt-in shared memory per block of a CUDA device, in bytes."""
    props = torch.cuda.get_device_properties(device)
    found = getattr(props, "shared_memory_per_block_optin", 0)
    return found or SHARED_MEMORY_BY_ARCH.get(props.major * 10 + props.minor, 101376)


def cuda_config(tables: tuple[dict, dict], head_dim: int, dtype: torch.dtype, shared_limit: int) -> tuple:
    """(block a, block b, num_warps, num_stages) from (half table, float32 table) by head dim;
    on GPUs with ~100 KB of shared memory, fewer pipeline stages and smaller blocks for d >= 128."""
    half_table, fp32_table = tables
    block_a, block_b, warps, stages = (fp32_table if dtype == torch.float32 else half_table)[head_dim]
    if shared_limit < 160 * 1024:
        stages = min(stages, 2)
        if head_dim >= 128:
            block_a = min(block_a, 64)
    return block_a, block_b, warps, stages


def launch_config(tables: tuple[dict, dict], interpret_config: tuple, head_dim: int, dtype: torch.dtype,
                  device: torch.device) -> tuple:
    """Launch config for these inputs: the CUDA table entry, or the interpreter config off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return interpret_config
    return cuda_config(tables, head_dim, dtype, shared_memory_limit(device))


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


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot(a, b, acc). UPCAST is set only under TRITON_INTERPRET for bfloat16 inputs: the
    CPU interpreter (triton 3.9) stores bf16 as raw uint16 and multiplies the bit patterns, so
    there the tiles are widened to float32 first; values and rounding are unchanged."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)


def interpreter_upcast(dtype: torch.dtype, device: torch.device) -> bool:
    """Value of the kernels' UPCAST_BF16 flag (see ``mma``): bf16 tensors on the CPU, which only
    the interpreter runs."""
    return torch.device(device).type == "cpu" and dtype == torch.bfloat16
