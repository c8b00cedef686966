"""Compile the Triton kernels for a CUDA target ahead of time, without a GPU.

The launchers in ``triton_forward`` / ``triton_received`` are run on meta tensors with the
kernel swapped for a recorder; the recorded call is specialised the way Triton's JIT
specialises a real launch (dtypes, 16-divisibility, ints equal to 1, except the
parameters a kernel lists in ``do_not_specialize``) and compiled through
``triton.compile`` for ``GPUTarget("cuda", arch, 32)``, down to a cubin with the ptxas
shipped in the triton wheel. Needs the kernel modules imported with TRITON_INTERPRET unset.
"""
from __future__ import annotations

import torch
import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction, native_specialize_impl

from . import triton_forward, triton_received
from .triton_common import SHARED_MEMORY_BY_ARCH, dtype_bytes, fits

_OPTIONS = ("num_warps", "num_stages")


class _Recorder:
    """Stands in for a JIT kernel: ``rec[grid](*args, **kwargs)`` records the call."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, args, kwargs))


def _record(module, name: str, launch) -> tuple:
    kernel = getattr(module, name)
    if not isinstance(kernel, JITFunction):
        raise RuntimeError(f"{module.__name__}.{name} is not a JITFunction; import it with TRITON_INTERPRET unset")
    recorder = _Recorder()
    setattr(module, name, recorder)
    try:
        launch()
    finally:
        setattr(module, name, kernel)
    return kernel, recorder.calls[-1]


def _compile_call(kernel: JITFunction, args: tuple, kwargs: dict, arch: int):
    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
    bound = dict(zip(kernel.arg_names, args), **kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        value = bound[name]
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
            continue
        ty, attr = native_specialize_impl(BaseBackend, value, param.is_const, not param.do_not_specialize,
                                          not param.do_not_specialize_on_alignment)
        signature[name] = ty
        if ty == "constexpr":
            constexprs[name] = value
        elif isinstance(attr, str) and attr:
            attrs[(i,)] = BaseBackend.parse_attr(attr)
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


_STREAMED = {"triton_forward": "kv", "triton_received": "q"}


def configs_for(module, head_dim: int, dtype: torch.dtype, arch: int) -> list[tuple]:
    """The configs of ``module``'s autotuning set that its pruning keeps on ``arch`` for this
    head dim and dtype: exactly what autotuning would benchmark on such a GPU."""
    table = module.FP32_CONFIGS if dtype == torch.float32 else module.HALF_CONFIGS
    streamed = _STREAMED[module.__name__.rsplit(".", 1)[-1]]
    return [c for c in table if fits(c, head_dim, dtype_bytes(dtype), SHARED_MEMORY_BY_ARCH[arch], streamed=streamed)]


def _meta(shape, dtype):
    return torch.empty(shape, dtype=dtype, device="meta")


def compile_forward(head_dim: int, dtype: torch.dtype, arch: int = 90, *, causal: bool = True,
                    window: int | None = None, n_spans: int = 1, n: int = 4096, heads: tuple = (32, 8),
                    config: tuple | None = None):
    """Compile the forward kernel as the launcher would call it for [1, H, n, head_dim] inputs
    with ``config`` (default: the first of ``configs_for``); returns triton's CompiledKernel
    (``.asm``, ``.metadata``)."""
    h, hkv = heads
    config = config or configs_for(triton_forward, head_dim, dtype, arch)[0]
    q, k = _meta((1, h, n, head_dim), dtype), _meta((1, hkv, n, head_dim), dtype)
    ranges = [(0, 1)] + [(2 * i + 1, 2 * i + 3) for i in range(n_spans)]
    kernel, (_, args, kwargs) = _record(triton_forward, "_attn_fwd_stats", lambda: triton_forward.forward(
        q, k, k, causal=causal, window=window, scale=head_dim ** -0.5, mass_ranges=ranges, block=config))
    return _compile_call(kernel, args, kwargs, arch)


def compile_received(head_dim: int, dtype: torch.dtype, arch: int = 90, *, causal: bool = True,
                     window: int | None = None, n: int = 4096, heads: tuple = (32, 8), config: tuple | None = None):
    """Compile the key-major received kernel as the launcher would call it; see compile_forward."""
    h, hkv = heads
    config = config or configs_for(triton_received, head_dim, dtype, arch)[0]
    q, k = _meta((1, h, n, head_dim), dtype), _meta((1, hkv, n, head_dim), dtype)
    lse = _meta((1, h, n), torch.float32)
    kernel, (_, args, kwargs) = _record(triton_received, "_attn_received", lambda: triton_received.received(
        q, k, lse, causal=causal, window=window, scale=head_dim ** -0.5, block=config))
    return _compile_call(kernel, args, kwargs, arch)


def compile_all(archs=(80, 86, 90), head_dims=(64, 128), dtypes=(torch.bfloat16, torch.float32)):
    """Compile every config each arch keeps, for both kernels; yields one dict per compile
    (arch, kernel, dtype, head_dim, config, shared bytes, seconds)."""
    import time

    for arch in archs:
        for name, module, fn in (("forward", triton_forward, compile_forward),
                                 ("received", triton_received, compile_received)):
            for dtype in dtypes:
                for d in head_dims:
                    for config in configs_for(module, d, dtype, arch):
                        start = time.perf_counter()
                        compiled = fn(d, dtype, arch, config=config)
                        yield {"arch": arch, "kernel": name, "dtype": str(dtype).removeprefix("torch."),
                               "head_dim": d, "config": config, "shared": compiled.metadata.shared,
                               "limit": SHARED_MEMORY_BY_ARCH[arch], "seconds": time.perf_counter() - start}


if __name__ == "__main__":  # python -m interp_kernels.aot: the whole matrix, one line per compile
    import json
    import sys

    for row in compile_all(head_dims=tuple(int(x) for x in sys.argv[1:]) or (64, 128)):
        print(json.dumps(row), flush=True)
