"""Edge attribution patching over every edge of SmolLM2-135M's graph: wall time for N prompt pairs.

Times, for N IOI prompt pairs (mean ablation over the ABC prompts of each template):
  ablation   one forward pass over the corrupted prompts and the per-template means
  eap        the rest of `circuits.discovery.attribute`: per batch one clean forward + backward
             (activation gradients only, no parameter gradients), the input gradients of every
             destination, and the [n_src, tokens·d] @ [tokens·d, n_dst] product for all edges
and the total. Also prints the load average before and after (the machine may be shared), the
time of one plain forward pass over the clean prompts (calibration: EAP costs about 3–4 of them
plus the edge GEMMs) and the number of edges scored. With --ig, EAP-IG (m = 5) instead.

    python benchmarks/bench_eap.py --n-prompts 100 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-prompts", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ig", action="store_true", help="EAP-IG with 5 steps instead of EAP")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import interp
    from circuits.discovery import attribute, build_graph
    from circuits.ioi import ioi_dataset
    from interp.patching import ablation_values

    model = interp.load_model(args.model, device="cpu")
    data = ioi_dataset(model, args.n_prompts, seed=0)
    graph = build_graph(model)
    load_before = os.getloadavg()
    from interp.patching import run_last_logits

    t = time.perf_counter()
    for _, part in data.pairs.batches(args.batch_size):  # calibration: how fast is this machine right now
        run_last_logits(model, part.clean, part.last)
    forward_s = time.perf_counter() - t
    rows = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        abl = ablation_values(model, data.pairs, "mean")
        t1 = time.perf_counter()
        attr = attribute(model, data.pairs, method="eap-ig" if args.ig else "eap", ablation=abl,
                         batch_size=args.batch_size)
        t2 = time.perf_counter()
        rows.append({"ablation_s": t1 - t0, "eap_s": t2 - t1, "total_s": t2 - t0})
    result = {"model": args.model, "method": "eap-ig (m=5)" if args.ig else "eap", "n_prompts": args.n_prompts,
              "tokens": int((data.pairs.last + 1).sum()), "edges": graph.n_edges, "threads": args.threads,
              "batch_size": args.batch_size, "plain_forward_s": forward_s, "runs": rows, "best_total_s": min(r["total_s"] for r in rows),
              "load_before": load_before, "load_after": os.getloadavg(), "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "checksum": float(attr.scores.abs().sum())}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
