"""Speed and memory of interp_kernels.attention_with_stats / attention_received.

CUDA part (bf16, causal): our Triton forward+stats next to torch SDPA (flash backend) and the
materialised-pattern path (scores → softmax → stats → p·v, as hook-based tools do), for
(d=64, H=9, H_kv=3) and (d=128, H=32, H_kv=8) over a range of N; time, TFLOP/s
(2·N²·d·H for causal), fraction of the dense bf16 peak, peak memory, and the
attention_received pass against one SDPA forward.

CPU part: the CPU backend "auto" picks (the fused C kernel where it builds, else the chunked
torch reference): time and peak RSS for (d=64, H=9, H_kv=3), each N in a fresh subprocess so the
peak belongs to that N alone, next to the size of a dense pattern.
``--part cpu-vs-sdpa``: torch SDPA's forward, the fused backend's forward+stats ("cpu") and the
reference backend's ("torch"), and both backends' attention-received pass, timed alternately in one process per N (median of --cpu-repeats
each), the ratio that the 1.5× target is about; on a shared machine only that side-by-side ratio
is meaningful.

    python benchmarks/bench_attention.py --help
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import interp_kernels  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}
CUDA_SHAPES = [(64, 9, 3), (128, 32, 8)]  # (d, H, H_kv)
CPU_SHAPE = (64, 9, 3)


def causal_flops(n: int, d: int, h: int, batch: int = 1) -> float:
    """Forward attention FLOPs with a causal mask: 4·N²·d·H halved."""
    return 2.0 * n * n * d * h * batch


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def random_inputs(n, d, h, hkv, dtype, device, batch=1, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    shapes = [(batch, heads, n, d) for heads in (h, hkv, hkv)]
    return tuple(torch.randn(s, generator=g, device=device).to(dtype) for s in shapes)


# ---------------------------------------------------------------- CUDA

def cuda_time_ms(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds, from CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cuda_peak_bytes(fn) -> int:
    """Peak CUDA memory allocated by fn() above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def materialised(q, k, v, sink_tokens=1):
    """The pattern path: full scores and softmax, stats read off the pattern, then p·v."""
    b, h, n, d = q.shape
    hkv = k.shape[1]
    s = (q.reshape(b, hkv, h // hkv * n, d) @ k.transpose(-1, -2)).view(b, h, n, n).float()
    s.mul_(d ** -0.5).masked_fill_(torch.ones(n, n, dtype=torch.bool, device=q.device).triu_(1), -math.inf)
    lse = torch.logsumexp(s, -1)
    p = torch.softmax(s, -1)
    entropy = -torch.special.xlogy(p, p).sum(-1)
    max_prob, argmax = p.max(-1)
    sink = p[..., :sink_tokens].sum(-1)
    out = (p.to(v.dtype).view(b, hkv, h // hkv * n, n) @ v).view(b, h, n, d)
    return out, (lse, entropy, max_prob, argmax, sink)


def materialised_bytes(n: int, h: int, batch: int = 1) -> int:
    """Rough peak of ``materialised``: fp32 scores, pattern and xlogy temp, bf16 copy, mask."""
    return batch * h * n * n * (4 + 4 + 4 + 2) + n * n


def sdpa_call(q, k, v):
    """torch SDPA restricted to the flash backend; K/V expanded beforehand if GQA is refused."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(kk, vv, gqa):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
    try:
        run(k, v, True)
        return (lambda: run(k, v, True)), "native GQA"
    except RuntimeError:
        group = q.shape[1] // k.shape[1]
        kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        run(kk, vv, False)
        return (lambda: run(kk, vv, False)), "K/V expanded"


def bench_cuda_one(n, d, h, hkv, repeats):
    q, k, v = random_inputs(n, d, h, hkv, torch.bfloat16, "cuda")
    flops = causal_flops(n, d, h)
    row = {"N": n, "d": d, "H": h, "H_kv": hkv}
    ours = lambda: interp_kernels.attention_with_stats(q, k, v, causal=True, backend="triton")  # noqa: E731
    row["ours_ms"] = cuda_time_ms(ours, repeats)
    row["ours_peak_MiB"] = cuda_peak_bytes(ours) / 2**20
    sdpa, row["sdpa_note"] = sdpa_call(q, k, v)
    row["sdpa_ms"] = cuda_time_ms(sdpa, repeats)
    row["sdpa_peak_MiB"] = cuda_peak_bytes(sdpa) / 2**20
    lse = ours()[1].lse
    row["received_ms"] = cuda_time_ms(lambda: interp_kernels.attention_received(q, k, lse, backend="triton"), repeats)
    free = torch.cuda.mem_get_info()[0]
    if materialised_bytes(n, h) < 0.8 * free:
        mat = lambda: materialised(q, k, v)  # noqa: E731
        row["pattern_ms"] = cuda_time_ms(mat, max(1, repeats // 3), warmup=1)
        row["pattern_peak_MiB"] = cuda_peak_bytes(mat) / 2**20
    else:
        row["pattern_ms"] = None
        row["pattern_note"] = f"skipped: needs ≈{materialised_bytes(n, h) / 2**30:.0f} GiB"
    for key in ("ours", "sdpa", "pattern"):
        ms = row.get(f"{key}_ms")
        row[f"{key}_tflops"] = flops / (ms * 1e-3) / 1e12 if ms else None
    del q, k, v, lse
    torch.cuda.empty_cache()
    return row


def cuda_table(rows, peak):
    fmt = lambda x, spec: "–" if x is None else format(x, spec)  # noqa: E731
    lines = ["| d | H/H_kv | N | ours ms | ours TFLOP/s | % peak | SDPA ms | SDPA TFLOP/s | pattern ms | "
             "received ms | received / SDPA | ours MiB | SDPA MiB | pattern MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pct = None if peak is None else 100 * r["ours_tflops"] / peak
        pattern = fmt(r["pattern_ms"], ".2f") if r["pattern_ms"] else r["pattern_note"]
        lines.append(
            f"| {r['d']} | {r['H']}/{r['H_kv']} | {r['N']} | {fmt(r['ours_ms'], '.3f')} | "
            f"{fmt(r['ours_tflops'], '.0f')} | {fmt(pct, '.0f')} | {fmt(r['sdpa_ms'], '.3f')} | "
            f"{fmt(r['sdpa_tflops'], '.0f')} | {pattern} | "
            f"{fmt(r['received_ms'], '.3f')} | {fmt(r['received_ms'] / r['sdpa_ms'], '.2f')} | "
            f"{fmt(r['ours_peak_MiB'], '.0f')} | {fmt(r['sdpa_peak_MiB'], '.0f')} | "
            f"{fmt(r.get('pattern_peak_MiB'), '.0f')} |")
    expanded = sorted({r["N"] for r in rows if r["sdpa_note"] != "native GQA"})
    if expanded:
        lines.append(f"\nSDPA flash refused enable_gqa; K/V were expanded before timing (N = {expanded}).")
    return "\n".join(lines)


# ---------------------------------------------------------------- CPU

def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_one(n: int, repeats: int) -> dict:
    """Time and peak RSS of the CPU backend auto picks (forward+stats, then received) at one N."""
    d, h, hkv = CPU_SHAPE
    q, k, v = random_inputs(n, d, h, hkv, torch.float32, "cpu")
    interp_kernels.attention_with_stats(q[:, :, :64], k[:, :, :64], v[:, :, :64])
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, stats = interp_kernels.attention_with_stats(q, k, v, causal=True)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    interp_kernels.attention_received(q, k, stats.lse, causal=True)
    received_s = time.perf_counter() - start
    return {"N": n, "d": d, "H": h, "H_kv": hkv, "forward_s": min(times), "received_s": received_s,
            "peak_rss_MiB": (_status_kib("VmHWM") - base) / 1024,
            "dense_pattern_MiB": h * n * n * 4 / 2**20,
            "gflops": causal_flops(n, d, h) / min(times) / 1e9}


def sdpa_cpu(q, k, v):
    """torch SDPA's causal forward on CPU with native GQA (its flash kernel for float32)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def _peak_above_current_mib(fn) -> float:
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) / 1024


def cpu_vs_sdpa_one(n: int, repeats: int) -> dict:
    """torch SDPA's forward and our forward+stats on the fused ("cpu") and reference ("torch") backends,
    timed alternately in this one process (SDPA, fused, reference, SDPA, ...), so load on a shared
    machine hits all alike; median of ``repeats`` each, the ratios of the medians to SDPA's, and the
    peak RSS of one call of each."""
    d, h, hkv = CPU_SHAPE
    q, k, v = random_inputs(n, d, h, hkv, torch.float32, "cpu")
    lse = interp_kernels.attention_with_stats(q, k, v, causal=True)[1].lse
    calls = {"sdpa": lambda: sdpa_cpu(q, k, v),
             "fused": lambda: interp_kernels.attention_with_stats(q, k, v, causal=True, backend="cpu"),
             "reference": lambda: interp_kernels.attention_with_stats(q, k, v, causal=True, backend="torch"),
             "fused_received": lambda: interp_kernels.attention_received(q, k, lse, causal=True, backend="cpu"),
             "reference_received": lambda: interp_kernels.attention_received(q, k, lse, causal=True, backend="torch")}
    small = [x[:, :, :256] for x in (q, k, v)]
    sdpa_cpu(*small), interp_kernels.attention_with_stats(*small, backend="cpu"), interp_kernels.attention_with_stats(*small, backend="torch")
    row = {"N": n, "d": d, "H": h, "H_kv": hkv, "repeats": repeats}
    row |= {f"{name}_peak_rss_MiB": _peak_above_current_mib(fn) for name, fn in calls.items()}
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    row |= {f"{name}_s": med[name] for name in calls} | {f"{name}_all_s": times[name] for name in calls}
    row |= {f"{name}_ratio": med[name] / med["sdpa"] for name in calls if name != "sdpa"}
    row["load_average"] = os.getloadavg()
    return row


def cpu_vs_sdpa_rows(lengths, repeats, threads):
    rows = []
    for n in lengths:
        cmd = [sys.executable, __file__, "--_cpu-vs-sdpa-one", str(n), "--cpu-repeats", str(repeats),
               "--threads", str(threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def cpu_vs_sdpa_table(rows):
    lines = ["| d | H/H_kv | N | repeats | SDPA forward s (median) | fused forward+stats s | fused / SDPA "
             "| reference forward+stats s | reference / SDPA | received fused / SDPA | received reference / SDPA "
             "| fused / reference / SDPA peak RSS MiB | load average (1 min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['d']} | {r['H']}/{r['H_kv']} | {r['N']} | {r['repeats']} | {r['sdpa_s']:.3f} | "
                     f"{r['fused_s']:.3f} | {r['fused_ratio']:.2f} | {r['reference_s']:.3f} | "
                     f"{r['reference_ratio']:.2f} | {r['fused_received_ratio']:.2f} | {r['reference_received_ratio']:.2f} | "
                     f"{r['fused_peak_rss_MiB']:.0f} / {r['reference_peak_rss_MiB']:.0f} / "
                     f"{r['sdpa_peak_rss_MiB']:.0f} | {r['load_average'][0]:.1f} |")
    return "\n".join(lines)


def cpu_rows(lengths, repeats, threads):
    rows = []
    for n in lengths:
        cmd = [sys.executable, __file__, "--_cpu-one", str(n), "--cpu-repeats", str(repeats), "--threads", str(threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def cpu_table(rows):
    lines = ["| d | H/H_kv | N | forward+stats s | GFLOP/s | received s | peak RSS above inputs MiB "
             "| dense fp32 pattern MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['d']} | {r['H']}/{r['H_kv']} | {r['N']} | {r['forward_s']:.3f} | {r['gflops']:.1f} | "
                     f"{r['received_s']:.3f} | {r['peak_rss_MiB']:.0f} | {r['dense_pattern_MiB']:.0f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("all", "cuda", "cpu", "cpu-vs-sdpa"), default="all",
                   help="which part to run; the CUDA part is skipped (with a note) when no GPU is present; "
                        "cpu-vs-sdpa times torch SDPA's forward and our fused and reference CPU backends alternately in one "
                        "process per N (not part of 'all')")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768],
                   help="sequence lengths for the CUDA part")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per CUDA measurement (median reported)")
    p.add_argument("--cpu-lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192],
                   help="sequence lengths for the CPU part")
    p.add_argument("--cpu-repeats", type=int, default=1,
                   help="timed repeats per CPU measurement (best reported; cpu-vs-sdpa: median, use 5 or more)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--out", type=Path, help="also write all results as JSON here")
    p.add_argument("--_cpu-one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_cpu-vs-sdpa-one", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._cpu_one is not None:
        print(json.dumps(cpu_one(args._cpu_one, args.cpu_repeats)))
        return 0
    if args._cpu_vs_sdpa_one is not None:
        print(json.dumps(cpu_vs_sdpa_one(args._cpu_vs_sdpa_one, args.cpu_repeats)))
        return 0
    result = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
              "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "threads": args.threads, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    if args.part in ("all", "cuda"):
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            result["gpu"] = name
            result["cuda"] = [bench_cuda_one(n, d, h, hkv, args.repeats)
                              for d, h, hkv in CUDA_SHAPES for n in args.lengths]
            peak = peak_tflops(name)
            print(f"## CUDA: {name}, bf16, causal, B=1 (peak dense bf16: {peak or 'unknown'} TFLOP/s)\n")
            print(cuda_table(result["cuda"], peak) + "\n")
        else:
            print("## CUDA: no GPU available, part skipped\n")
    if args.part in ("all", "cpu"):
        result["cpu_rows"] = cpu_rows(args.cpu_lengths, args.cpu_repeats, args.threads)
        backend = "fused C kernel" if interp_kernels.cpu_fused.available() else "torch reference (no C compiler)"
        print(f"## CPU: {backend}, float32, causal, B=1, {args.threads} threads\n")
        print(cpu_table(result["cpu_rows"]) + "\n")
    if args.part == "cpu-vs-sdpa":
        result["cpu_vs_sdpa"] = cpu_vs_sdpa_rows(args.cpu_lengths, args.cpu_repeats, args.threads)
        print(f"## CPU: fused and reference backends vs torch SDPA, float32, causal, B=1, {args.threads} threads, "
              "alternated\n")
        print(cpu_vs_sdpa_table(result["cpu_vs_sdpa"]) + "\n")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
