"""Compile the Triton kernels for a CUDA target ahead of time, without a GPU.

The launchers in ``triton_forward`` / ``triton_received`` are run on meta tensors with the
kernel swapped for a recorder; the recorded call is specialised the way Triton's JIT
specialises a real launch (dtypes, 16-divisibility, ints equal to 1) and compiled through
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
from .triton_common import SHARED_MEMORY_BY_ARCH, cuda_config

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
        ty, attr = native_specialize_impl(BaseBackend, value, False, True, True)
        signature[name] = ty
        if ty == "constexpr":
            constexprs[name] = value
        elif isinstance(attr, str) and attr:
            attrs[(i,)] = BaseBackend.parse_attr(attr)
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def _config(module, head_dim: int, dtype: torch.dtype, arch: int) -> tuple:
    return cuda_config(module.CUDA_CONFIGS, head_dim, dtype, SHARED_MEMORY_BY_ARCH[arch])


def _meta(shape, dtype):
    return torch.empty(shape, dtype=dtype, device="meta")


def compile_forward(head_dim: int, dtype: torch.dtype, arch: int = 90, *, causal: bool = True,
                    window: int | None = None, n_spans: int = 1, n: int = 4096, heads: tuple = (32, 8)):
    """Compile the forward kernel as the launcher would call it for [1, H, n, head_dim] inputs
    with the CUDA config for ``head_dim``; returns triton's CompiledKernel (``.asm``, ``.metadata``)."""
    h, hkv = heads
    q, k = _meta((1, h, n, head_dim), dtype), _meta((1, hkv, n, head_dim), dtype)
    ranges = [(0, 1)] + [(2 * i + 1, 2 * i + 3) for i in range(n_spans)]
    kernel, (_, args, kwargs) = _record(triton_forward, "_attn_fwd_stats", lambda: triton_forward.forward(
        q, k, k, causal=causal, window=window, scale=head_dim ** -0.5, mass_ranges=ranges,
        block=_config(triton_forward, head_dim, dtype, arch)))
    return _compile_call(kernel, args, kwargs, arch)


def compile_received(head_dim: int, dtype: torch.dtype, arch: int = 90, *, causal: bool = True,
                     window: int | None = None, n: int = 4096, heads: tuple = (32, 8)):
    """Compile the key-major received kernel as the launcher would call it; see compile_forward."""
    h, hkv = heads
    q, k = _meta((1, h, n, head_dim), dtype), _meta((1, hkv, n, head_dim), dtype)
    lse = _meta((1, h, n), torch.float32)
    kernel, (_, args, kwargs) = _record(triton_received, "_attn_received", lambda: triton_received.received(
        q, k, lse, causal=causal, window=window, scale=head_dim ** -0.5,
        block=_config(triton_received, head_dim, dtype, arch)))
    return _compile_call(kernel, args, kwargs, arch)
