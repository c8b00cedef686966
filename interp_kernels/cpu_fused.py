"""The fused CPU backend: the chunked plan of ``interp_kernels.reference`` with one C loop per key block.

Per query chunk and key block: a GEMM writes the scores ``s = q·kᵀ·scale``; ``block_update``
(``cpu_fused.c``) reads each score row once and updates the row's running max, Σ e, Σ e·(s − max),
argmax and range masses in place, rescales its output accumulator when the max grows, and writes
e = exp(s − max); a second GEMM adds e·v to the accumulator (``baddbmm_``). So a block costs three
calls instead of the reference backend's thirty, and tiles can stay small enough for the caches.
Same semantics, mask geometry and thread split (``reference.run_chunks``) as the reference backend.

The C source is compiled on first use with the system C compiler (``$CC``, else ``cc``, ``gcc`` or
``clang``) into ``$INTERP_KERNEL_CACHE`` (default ``~/.cache/interp-workbench/cpu-kernels``), keyed
by a hash of the source, flags, compiler and CPU, and loaded through ctypes (which releases the GIL
during the call). Without a compiler, or with ``INTERP_CPU_KERNEL=0``, ``library()`` is None and
``backend="auto"`` uses the reference backend; ``unavailable_reason()`` says why.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from . import reference
from .masking import key_bounds
from .stats import AttentionStats

SOURCE = Path(__file__).with_name("cpu_fused.c")
# -ffast-math at compile time only: linking with it would add crtfastmath.o, which turns on
# flush-to-zero for the whole process when the library loads (GCC < 13).
COMPILE_FLAGS = ("-O3", "-ffast-math", "-fPIC")
NATIVE_FLAGS = ("-march=native",)  # tried first; dropped if the compiler refuses it
# 4 MiB float32 tiles with at least 256 query rows (measured side by side at 8K/16K tokens, 2 threads:
# 2^20 / 256 rows beat 2^21 / 128 and 2^19 / 256 by 5-15 %; see benchmarks/RESULTS.md)
TILE_ELEMENTS = 1 << 20
MIN_ROWS = 256
EMPTY_MAX = -3.0e38  # the running max before a row has seen a key (the C code uses no infinities)

_ARGS = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 8 + [ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 5
_RECEIVED_ARGS = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 8
NO_KEY_LSE = 3.0e38  # the lse the received kernel skips (a row that saw no key: lse = -inf)
_problem: list[str] = []


def _compiler() -> str | None:
    for name in ([os.environ["CC"]] if os.environ.get("CC") else []) + ["cc", "gcc", "clang"]:
        found = shutil.which(name)
        if found:
            return found
    return None


def _cache_dir() -> Path:
    if os.environ.get("INTERP_KERNEL_CACHE"):
        return Path(os.environ["INTERP_KERNEL_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "interp-workbench" / "cpu-kernels"


def _cpu_identity() -> str:
    """The CPU's model and feature flags (-march=native code is only valid on the same kind of CPU)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(keep))


def _run(cmd: list[str]) -> str | None:
    """Run a compiler command; None on success, else its last line of error output."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"


def _build(cc: str, target: Path) -> str | None:
    """Compile SOURCE into ``target`` (atomically); None on success, else why not."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / "cpu_fused.o", Path(tmp) / "cpu_fused.so"
        error = None
        for extra in (NATIVE_FLAGS, ()):
            error = _run([cc, *COMPILE_FLAGS, *extra, "-c", str(SOURCE), "-o", str(obj)])
            if error is None:
                break
        if error is None:
            error = _run([cc, "-shared", str(obj), "-o", str(lib), "-lm"])
        if error is None:
            os.replace(lib, target)
        return error


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for fn in (lib.block_update_f32, lib.block_update_f64):
        fn.argtypes, fn.restype = _ARGS, None
    for fn in (lib.received_block_f32, lib.received_block_f64):
        fn.argtypes, fn.restype = _RECEIVED_ARGS, None
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled block kernel (built on first use), or None when it cannot be built."""
    if os.environ.get("INTERP_CPU_KERNEL", "1").strip().lower() in ("0", "false", "off", "no"):
        _problem.append("INTERP_CPU_KERNEL=0 turns it off")
        return None
    cc = _compiler()
    if cc is None:
        _problem.append("no C compiler found (set CC, or install gcc or clang)")
        return None
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *COMPILE_FLAGS, *NATIVE_FLAGS, cc, version,
                                    platform.machine(), _cpu_identity()]).encode()).hexdigest()[:16]
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"interp-cpu-kernels-{os.getuid()}"):
        target = folder / f"cpu_fused-{key}.so"
        try:
            if not target.exists():
                error = _build(cc, target)
                if error is not None:
                    _problem.append(f"{cc} could not compile {SOURCE.name}: {error}")
                    return None
            return _load(target)
        except OSError as exc:  # an unwritable cache folder: try the next one
            _problem[:] = [f"could not build in {folder}: {exc}"]
    return None


def available() -> bool:
    """Whether the fused CPU backend can run here (builds it on the first call)."""
    return library() is not None


def unavailable_reason() -> str | None:
    """Why ``available()`` is False, in one line (None when it is True)."""
    return None if available() else (_problem[-1] if _problem else "unknown")


def forward(q, k, v, *, causal: bool, window: int | None, scale: float, mass_ranges: list[tuple[int, int]],
            chunk_size: int | None = None, tile_elements: int | None = None, min_rows: int | None = None):
    """Attention with per-query statistics on CPU tensors, as ``reference.forward`` (same arguments and
    result); ``tile_elements`` / ``min_rows`` override TILE_ELEMENTS / MIN_ROWS. Raises RuntimeError
    when the kernel is not available."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the fused CPU kernel is not available: {unavailable_reason()}")
    b, h, n, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    update = lib.block_update_f64 if cd == torch.float64 else lib.block_update_f32
    tile_elements = tile_elements or TILE_ELEMENTS
    qg = q.unflatten(1, (hkv, g))
    k3, v3 = (x.to(cd).reshape(b * hkv, n, d) for x in (k, v))
    ranges = torch.tensor(mass_ranges, dtype=torch.int64).reshape(-1)
    out = torch.empty((b, h, n, d), dtype=q.dtype)
    lse, entropy, max_prob = (torch.empty((b, h, n)) for _ in range(3))
    mass_all = torch.empty((b, h, n, len(mass_ranges)))
    argmax = torch.empty((b, h, n), dtype=torch.int64)
    views = [t.unflatten(1, (hkv, g)) for t in (out, lse, entropy, max_prob, argmax, mass_all)]
    plan = reference.chunks(b * h, n, causal, window, chunk_size, min_rows or MIN_ROWS, tile_elements)
    tile = max(reference.chunk_tiles(b * h, n, plan, causal, window, tile_elements))
    scratch: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def one_chunk(c0: int, c1: int, worker: int) -> None:
        if worker not in scratch:  # score and e tiles, one pair per worker thread
            scratch[worker] = (torch.empty(tile, dtype=cd), torch.empty(tile, dtype=cd))
        c, rows = c1 - c0, b * h * (c1 - c0)
        q3 = (qg[:, :, :, c0:c1].to(cd) * scale).reshape(b * hkv, g * c, d)
        acc = torch.zeros((b * hkv, g * c, d), dtype=cd)
        m = torch.full((rows,), EMPTY_MAX, dtype=cd)
        z, ex = torch.zeros(rows, dtype=cd), torch.zeros(rows, dtype=cd)
        arg = torch.full((rows,), -1, dtype=torch.int64)
        mass = torch.zeros((rows, len(mass_ranges)), dtype=cd)
        lo, hi = key_bounds(c0, c1, n, causal, window)
        step = reference.key_block(b * h, c, tile_elements)
        for j0 in range(lo, hi, step):
            keys = min(hi, j0 + step) - j0
            s = scratch[worker][0][:rows * keys].view(b * hkv, g * c, keys)
            e = scratch[worker][1][:rows * keys].view(b * hkv, g * c, keys)
            torch.bmm(q3, k3[:, j0:j0 + keys].transpose(1, 2), out=s)
            update(s.data_ptr(), e.data_ptr(), acc.data_ptr(), rows, keys, d, j0, c0, c, int(causal),
                   -1 if window is None else window, ranges.data_ptr(), len(mass_ranges),
                   m.data_ptr(), arg.data_ptr(), z.data_ptr(), ex.data_ptr(), mass.data_ptr())
            acc.baddbmm_(e, v3[:, j0:j0 + keys])
        for view, value in zip(views, _finish(acc.view(rows, d), m, arg, z, ex, mass)):
            view[:, :, :, c0:c1] = value.view(*view.shape[:3], c, *value.shape[1:])

    with torch.no_grad():
        reference.run_chunks(plan, one_chunk, q.device)
    stats = AttentionStats(lse=lse, entropy=entropy, max_prob=max_prob, argmax=argmax,
                           sink_mass=mass_all[..., 0].contiguous(), span_mass=mass_all[..., 1:].contiguous())
    return out, stats


def received(q, k, lse, *, causal: bool, window: int | None, scale: float, chunk_size: int | None = None,
             tile_elements: int | None = None, min_rows: int | None = None):
    """Attention each key receives on CPU tensors, as ``reference.received`` (same arguments and result): per
    key block a GEMM writes the scores and ``received_block`` adds exp(s - lse) over the keys each query sees
    straight into the worker's [B·H, N] partial sums. Raises RuntimeError when the kernel is not available."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the fused CPU kernel is not available: {unavailable_reason()}")
    b, h, n, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    add = lib.received_block_f64 if cd == torch.float64 else lib.received_block_f32
    tile_elements = tile_elements or TILE_ELEMENTS
    qg = q.unflatten(1, (hkv, g))
    k3 = k.to(cd).reshape(b * hkv, n, d)
    lse_g = torch.where(torch.isfinite(lse), lse, NO_KEY_LSE).to(cd).unflatten(1, (hkv, g))
    plan = reference.chunks(b * h, n, causal, window, chunk_size, min_rows or MIN_ROWS, tile_elements)
    tile = max(reference.chunk_tiles(b * h, n, plan, causal, window, tile_elements))
    count = reference.workers(q.device, len(plan))
    partial = [torch.zeros((b * h, n), dtype=cd) for _ in range(count)]
    scores = [torch.empty(tile, dtype=cd) for _ in range(count)]

    def one_chunk(c0: int, c1: int, worker: int) -> None:
        c, rows = c1 - c0, b * h * (c1 - c0)
        q3 = (qg[:, :, :, c0:c1].to(cd) * scale).reshape(b * hkv, g * c, d)
        lse_rows = lse_g[:, :, :, c0:c1].contiguous()
        lo, hi = key_bounds(c0, c1, n, causal, window)
        step = reference.key_block(b * h, c, tile_elements)
        for j0 in range(lo, hi, step):
            keys = min(hi, j0 + step) - j0
            s = scores[worker][:rows * keys].view(b * hkv, g * c, keys)
            torch.bmm(q3, k3[:, j0:j0 + keys].transpose(1, 2), out=s)
            add(s.data_ptr(), lse_rows.data_ptr(), partial[worker][:, j0:].data_ptr(), n, rows, keys, j0, c0, c,
                int(causal), -1 if window is None else window)

    with torch.no_grad():
        reference.run_chunks(plan, one_chunk, q.device)
    return reference.received_and_alpha([p.view(b, h, n) for p in partial], n, causal, window)


def _finish(acc, m, arg, z, ex, mass):
    """Rows' final ``(out, lse, entropy, max_prob, argmax, mass)`` from the running state; rows that saw
    no key (z = 0) get out 0, lse -inf, entropy 0, max_prob 0, argmax -1 and zero masses."""
    ok = z > 0
    inv_z = 1.0 / torch.where(ok, z, 1.0)
    log_z = -torch.log(inv_z)
    zero = torch.zeros((), dtype=z.dtype)
    return (torch.where(ok[:, None], acc * inv_z[:, None], zero), torch.where(ok, m + log_z, -math.inf),
            torch.where(ok, (log_z - ex * inv_z).clamp_(min=0.0), zero), torch.where(ok, inv_z, zero), arg,
            torch.where(ok[:, None], mass * inv_z[:, None], zero))
