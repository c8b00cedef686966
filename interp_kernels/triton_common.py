"""Constants and launch helpers shared by the Triton kernels."""
from __future__ import annotations

import os

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


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


# One launch config: two block sizes (the kernel's own names), num_warps, num_stages.
LaunchConfig = tuple[int, int, int, int]


def dtype_bytes(dtype) -> int:
    """Element size of a torch or triton dtype (2 for fp16/bf16, 4 for float32)."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    return max(1, dtype.primitive_bitwidth // 8)


def fits(config: LaunchConfig, head_dim: int, elt_bytes: int, shared_limit: int, *, streamed: str) -> bool:
    """Whether a config is worth compiling for this head dim and element size on a GPU with
    ``shared_limit`` bytes of shared memory per block.

    Shared memory estimate (checked against the compiled kernels' metadata by the AOT test):
    ``num_stages`` buffers of the streamed tiles (K and V blocks for the forward,
    ``streamed="kv"``; query blocks for the received pass, ``streamed="q"``), the resident
    tile, and for the forward one p tile in the input dtype (the p·v dot) and one in float32
    (the IEEE mass dot). Registers: the float32 accumulator ([block, head_dim]) must stay
    within 128 registers a thread.
    """
    block_a, block_b, warps, stages = config
    if streamed == "kv":
        need = (stages * 2 * block_b * head_dim + block_a * head_dim + block_a * block_b) * elt_bytes
        need += 4 * block_a * block_b
    else:
        need = (stages * block_b * head_dim + block_a * head_dim) * elt_bytes
    acc_regs = block_a * head_dim // (32 * warps)
    return need <= shared_limit and acc_regs <= 128


def autotune_configs(configs: list[LaunchConfig], names: tuple[str, str],
                     interpret_config: LaunchConfig) -> list[triton.Config]:
    """triton.Config objects from ``(block a, block b, warps, stages)`` tuples; under the
    interpreter only ``interpret_config`` (small blocks, so short CPU tests still cross several
    blocks), so the interpreter never benchmarks configs."""
    chosen = [interpret_config] if interpreting() else configs
    return [triton.Config({names[0]: a, names[1]: b}, num_warps=w, num_stages=st) for a, b, w, st in chosen]


def pruner(tensor_arg: str, names: tuple[str, str], streamed: str):
    """An ``early_config_prune`` for triton.autotune: keeps the configs that ``fits`` the launch's
    device (head dim and dtype read from the launch), or the smallest one if none fits."""

    def prune(configs, named_args, **kwargs):
        x = named_args[tensor_arg]
        head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
        limit = shared_memory_limit(x.device) if x.device.type == "cuda" else max(SHARED_MEMORY_BY_ARCH.values())
        as_tuple = lambda c: (c.kwargs[names[0]], c.kwargs[names[1]], c.num_warps, c.num_stages)  # noqa: E731
        kept = [c for c in configs if fits(as_tuple(c), head_dim, dtype_bytes(x.dtype), limit, streamed=streamed)]
        return kept or [min(configs, key=lambda c: c.kwargs[names[0]] * c.kwargs[names[1]] * c.num_stages)]

    return prune


def length_bucket(n: int) -> int:
    """Autotuning key for a sequence length: the next power of two (from 256, capped at 65536),
    so a trace over prompts of many lengths tunes once per bucket, not once per length."""
    return min(max(next_pow2(n), 256), 1 << 16)


def tuned_configs(kernel) -> dict[str, dict]:
    """What an autotuned kernel picked so far: its cache, key (as a string) → config kwargs
    plus num_warps / num_stages."""
    found = {}
    for key, config in getattr(kernel, "cache", {}).items():
        found[str(key)] = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    return found


@triton.jit
def visible(q_pos, k_pos, n_ctx, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Mask: query q_pos sees key k_pos (rules in interp_kernels.masking); the two position tensors
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
