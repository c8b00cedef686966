"""Safety heads: wall time of Ships for every head over the harmful prompt set.

One batched forward per head over all prompts (restarting from the head's layer, the template's
shared prefix run once per head). Reports seconds for the base run and for all heads, seconds per
head, the machine's load average, and the top heads. --layers restricts the heads (the per-head
time then extrapolates to all heads: restarts from layer l cost ∝ n_layers − l, so pick layers
spread over the depth).

--refusal-ks K,K then runs `circuits.safety.refusal_check` on the scored heads: greedy answers
(--max-new-tokens) to the harmful and harmless sets (--check-prompts each), unablated, with the top-k
Ships heads ablated and with k random scored heads (--draws), and reports each refusal rate (the
phrase detector of `circuits.refusal`) with a few base answers.

    python benchmarks/bench_safety.py --prompts 100 --json /tmp/bench_safety.json
    python benchmarks/bench_safety.py --prompts 100 --refusal-ks 1,3 --json /tmp/bench_refusal.json
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
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--refusal-ks", default=None, help="comma-separated k for the refusal check (default: none)")
    ap.add_argument("--check-prompts", type=int, default=100, help="refusal check: prompts per set")
    ap.add_argument("--draws", type=int, default=2, help="refusal check: random draws per k")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    import interp
    from circuits.safety import load_prompts, refusal_check, ships, summary

    if args.threads:
        torch.set_num_threads(args.threads)
    model = interp.load_model(args.model, device=args.device)
    cfg = model.cfg
    layers = range(cfg.n_layers) if args.layers is None else [int(x) for x in args.layers.split(",")]
    heads = [(l, h) for l in layers for h in range(cfg.n_heads)]
    prompts = load_prompts("harmful")["prompt"].tolist()[: args.prompts]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    result = ships(model, prompts, heads=heads, progress=True)
    total = time.perf_counter() - t0
    restart_layers = sum(cfg.n_layers - l for l, _ in heads)
    all_layers = cfg.n_heads * sum(cfg.n_layers - l for l in range(cfg.n_layers))
    out = {
        "model": args.model, "device": args.device, "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "load_before": load_before,
        "load_after": os.getloadavg(), "n_prompts": len(prompts), "n_heads": len(heads),
        "shared_prefix_tokens": len(result.base.batch.prefix), "suffix_shape": list(result.base.batch.suffix.shape),
        "seconds_total": total, "seconds_per_head": total / len(heads),
        "seconds_all_heads_extrapolated": total * all_layers / restart_layers,
        "top": result.table.top("ships", 8).df[["label", "ships", "sahara_angle"]].to_dict("records"),
    }
    if args.refusal_ks:
        t1 = time.perf_counter()
        sets = {kind: load_prompts(kind)["prompt"].tolist()[: args.check_prompts] for kind in ("harmful", "harmless")}
        checks, answers = refusal_check(model, result.table, ks=[int(k) for k in args.refusal_ks.split(",")],
                                        draws=args.draws, harmful=sets["harmful"], harmless=sets["harmless"],
                                        max_new_tokens=args.max_new_tokens, progress=True)
        out["refusal"] = {"prompts_per_set": {k: len(v) for k, v in sets.items()}, "max_new_tokens": args.max_new_tokens,
                          "summary": summary(checks).to_dict("records"), "runs": checks.to_dict("records"),
                          "base_answers": {k: v[:5] for k, v in answers.items()},
                          "seconds": time.perf_counter() - t1}
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
