"""`interp atlas` on one model, after the model is cached: wall time with the section breakdown.

Runs `interp.atlas.run_atlas` exactly as `interp atlas --model M --out DIR` does (every section,
defaults), reads the per-section times the run records in atlas.json (`timings_s`), and prints
them with the total, the load average before and after (the machine may be shared), the size of
report.html and the share of the head atlas (example patterns, join, cards) in the total.

    python benchmarks/bench_atlas.py --model smollm2-135m --threads 2 --out /tmp/atlas-bench
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/atlas-bench")
    ap.add_argument("--json", default=None, help="also write the measurement here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import interp
    from interp.atlas import AtlasConfig, run_atlas

    model = interp.load_model(args.model, device="cpu")  # converted beforehand: the benchmark is the atlas alone
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    body = run_atlas(model, out, AtlasConfig(progress=False))
    total = time.perf_counter() - start
    load_after = os.getloadavg()
    timings = body["timings_s"]
    result = {"model": args.model, "total_s": round(total, 1), "sections_s": timings,
              "head_atlas_share": round(timings.get("head_atlas", 0.0) / total, 4),
              "report_mb": round((out / "report.html").stat().st_size / 1e6, 2),
              "atlas_json_mb": round((out / "atlas.json").stat().st_size / 1e6, 2),
              "threads": args.threads, "load_before": load_before, "load_after": load_after,
              "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
