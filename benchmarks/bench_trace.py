"""Statistics trace of a whole model at long context: time and peak memory against length.

Each length runs in a fresh process so its peak resident memory is its own. Reports, per N:
wall time of `stats_trace` (fused-kernel attention, per-query stats and alpha per key for every
head of every layer), peak RSS, and peak RSS above the loaded model. With --eager, also the
eager TransformerLens forward that materialises every pattern, for comparison.

    python benchmarks/bench_trace.py --model smollm2-135m --lengths 1024,2048,4096,8192
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(model_name: str, n: int, mode: str, device: str) -> dict:
    import torch

    import interp
    from interp.kernel_attention import extend_context
    from interp.stats_trace import stats_trace
    from interp.texts import reference_paragraphs

    model = interp.load_model(model_name, device=device)
    extend_context(model, n)  # past the trained context (SmolLM2: 8K) positions are extrapolated
    corpus = model.to_tokens(" ".join(reference_paragraphs()), truncate=False)[0]  # about 60K tokens
    tokens = corpus.repeat(n // len(corpus) + 1)[:n]
    torch.set_grad_enabled(False)
    base = _rss_mib()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if mode == "stats":
        stats_trace(model, [tokens], progress=False)
    else:
        model(tokens[None], return_type=None)
    seconds = time.perf_counter() - start
    row = {"model": model_name, "mode": mode, "n": n, "seconds": round(seconds, 2), "model_rss_mib": round(base),
           "peak_rss_mib": round(_peak_mib()), "peak_above_model_mib": round(_peak_mib() - base)}
    if device.startswith("cuda"):
        row["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--lengths", default="1024,2048,4096,8192")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eager", default="", help="lengths at which to also run the eager (pattern) forward")
    p.add_argument("--out", help="also write the rows as JSON here")
    p.add_argument("--child", nargs=3, metavar=("MODE", "N", "DEVICE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.model, int(args.child[1]), args.child[0], args.child[2])))
        return
    runs = [("stats", int(n)) for n in args.lengths.split(",")] + [("eager", int(n)) for n in filter(None, args.eager.split(","))]
    rows = []
    for mode, n in runs:
        proc = subprocess.run([sys.executable, __file__, "--model", args.model, "--child", mode, str(n), args.device],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"model": args.model, "mode": mode, "n": n, "error": proc.stderr.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"machine: {platform.node()} {platform.machine()}, {args.device}; python {platform.python_version()}")
    print("| model | mode | N | seconds | peak RSS MiB | above model MiB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['mode']} | {r['n']} | {r.get('seconds', r.get('error'))} | {r.get('peak_rss_mib', '')} | {r.get('peak_above_model_mib', '')} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
