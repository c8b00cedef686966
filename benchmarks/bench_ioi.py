"""IOI on SmolLM2-135M: the held-out faithfulness of the head circuit, the ranking stability, and MIB's
CPR / CMD table — the numbers README.md quotes, measured on prompts that did not choose the circuit.

  --circuit   `discover` with `interp ioi --seed 0`'s settings (48 select + 48 held-out prompts, EAP
              scores, heads ranked by mask-IG on the select split, every faithfulness on the held-out
              split; edge curves skipped: they do not change the head circuit), then
              `ranking_stability` (top-20 Jaccard of EAP head scores between the two disjoint splits).
  --mib       `circuits.ioi.mib_table` for EAP, exact patching and EAP-IG on IOI and capitals
              (N select prompts score, N held-out prompts measure, P prompts for exact patching).

    python benchmarks/bench_ioi.py --circuit --json /tmp/ioi-circuit.json
    python benchmarks/bench_ioi.py --mib --n 16 --patching 8 --json /tmp/ioi-mib.json
"""
from __future__ import annotations

import argparse
import json
import os
import time


def circuit(model, n: int, seed: int) -> dict:
    from circuits.discovery import discover
    from circuits.ioi import ioi_dataset, ranking_stability

    sel, held = ioi_dataset(model, n, seed=seed, split="select"), ioi_dataset(model, n, seed=seed, split="eval")
    c, d = discover(model, sel.pairs, eval_pairs=held.pairs, task="ioi", method="eap", ablation=sel.ablation(model),
                    eval_ablation=held.ablation(model), edge_curves=False, seed=seed)
    out = {"heads": c.nodes, "chosen_select": d["head_circuit"], "held": d["held_out_rows"]["heads"],
           "select_curve": [(r["n_heads"], r["value"], r["ratio"]) for r in d["head_curve_select"]],
           "eval_curve": [(r["n_heads"], r["value"], r["ratio"]) for r in d["head_curve_eval"]]}
    out["stability"] = ranking_stability(model, sel, held, k=20)
    return out


def mib(model, n: int, patching: int, seed: int) -> list[dict]:
    from circuits.ioi import capitals_dataset, ioi_dataset, mib_table

    rows = []
    for make in (ioi_dataset, capitals_dataset):
        sel, held = make(model, n, seed=seed, split="select"), make(model, n, seed=seed, split="eval")
        rows += mib_table(model, sel, held, methods=("eap", "patching", "eap-ig"), patching_prompts=patching)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--circuit", action="store_true")
    ap.add_argument("--mib", action="store_true")
    ap.add_argument("--n", type=int, default=None, help="prompts per split (default 48 for --circuit, 16 for --mib)")
    ap.add_argument("--patching", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import interp

    model = interp.load_model("smollm2-135m", device="cpu")
    start, load = time.perf_counter(), os.getloadavg()
    result: dict = {"load_before": load}
    if args.circuit:
        result["circuit"] = circuit(model, args.n or 48, args.seed)
    if args.mib:
        result["mib"] = mib(model, args.n or 16, args.patching, args.seed)
    result.update(seconds=round(time.perf_counter() - start, 1), load_after=os.getloadavg())
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
