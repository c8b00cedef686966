"""Retrieval heads: wall time of the `interp retrieval` default run, phase by phase.

Runs `circuits.retrieval.retrieval_analysis` with the command's defaults (needle tests at
1K, 2K, 4K and 8K tokens × depths 10/50/90 %, greedy decoding up to 50 tokens, retrieval scores,
echo/induction, then masking with k = 5, 20 and 2 random draws on the 1K tests), and reports the
seconds of each phase, the machine's load average, and the headline numbers.

    python benchmarks/bench_retrieval.py --model smollm2-135m --json /tmp/bench_retrieval.json
    python benchmarks/bench_retrieval.py --device cuda --lengths 8192   # full context on a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", default="1024,2048,4096,8192")
    ap.add_argument("--depths", default="0.1,0.5,0.9")
    ap.add_argument("--mask-ks", default="5,20", help="'' skips the masking experiment")
    ap.add_argument("--mask-draws", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    import interp
    from circuits.retrieval import RetrievalConfig, retrieval_analysis

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    model = interp.load_model(args.model, device=args.device)
    t_load = time.perf_counter() - t0
    ks = [int(k) for k in args.mask_ks.split(",") if k.strip()]
    t1 = time.perf_counter()
    config = RetrievalConfig(lengths=[int(x) for x in args.lengths.split(",")],
                             depths=[float(x) for x in args.depths.split(",")], mask_ks=ks, mask_draws=args.mask_draws)
    result = retrieval_analysis(model, config, progress=True)
    total = time.perf_counter() - t1
    masking, body = result.masking, result.to_dict()
    df = result.table.df
    out = {
        "model": args.model, "device": args.device, "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "load_before": load_before,
        "load_after": os.getloadavg(), "seconds_load": t_load, "seconds_total": total,
        "config": body["config"], "seconds": result.seconds, "n_tests": result.n_tests,
        "n_counted": result.n_counted,
        "n_retrieval_heads": int(df["retrieval_head"].sum()), "share_zero": float((df["retrieval_score"] == 0).mean()),
        "top": df.sort_values("retrieval_score", ascending=False).head(8)[["label", "retrieval_score"]].to_dict("records"),
        "recall_grid": body["accuracy_grid"],
        "masking": None if masking is None else masking.drop(columns="heads").to_dict("records"),
    }
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
