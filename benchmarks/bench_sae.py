"""Attention-output SAE on SmolLM2-135M: training time and quality against the issue's targets.

Trains (or resumes) an SAE on hook_z of one layer through `saes.train.train_sae`, then evaluates it on
held-out contexts of the same corpus with `saes.evaluate.evaluate_sae`. Targets (issue 7): L0 <= 30,
CE loss recovered >= 80 %, dead features < 20 %, training under an hour on 2 CPU cores.

    INTERP_CACHE=/tmp/icache python benchmarks/bench_sae.py --layer 15 --tokens 2000000 \
        --out /tmp/sae_bench/L15 --json /tmp/sae_bench/result.json

Run it again with the same --out to resume an interrupted training run. Load averages are sampled
during training (the build machine is shared) and reported with the result.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--architecture", default="topk")
    ap.add_argument("--k", type=int, default=24)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--batch-tokens", type=int, default=1024)
    ap.add_argument("--buffer-factor", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lm-dtype", default="auto")
    ap.add_argument("--autocast", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--eval-contexts", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    import interp
    from saes.corpus import split_contexts, token_contexts
    from saes.train import train_sae

    loads: list[float] = []

    def sample_load(step: int, running: dict) -> None:
        if step % 20 == 0:
            loads.append(os.getloadavg()[0])

    model = interp.load_model(args.model, device=args.device)
    started = time.time()
    if not (args.out / "cfg.json").is_file():
        train_sae(model, args.layer, architecture=args.architecture, k=args.k, expansion=args.expansion,
                  tokens=args.tokens, batch_tokens=args.batch_tokens, buffer_factor=args.buffer_factor, lr=args.lr, lm_dtype=args.lm_dtype,
                  autocast={"auto": None, "on": True, "off": False}[args.autocast],
                  out=args.out, n_checkpoints=8, on_step=sample_load)
    train_wall = time.time() - started
    training = json.loads((args.out / "training.json").read_text())

    from saes.evaluate import (  # after training: the run takes long
        evaluate_sae,
        load_sae,
    )

    sae = load_sae(args.out, device=args.device)
    contexts = token_contexts(model, "bible", context_size=training["context_size"])
    if "data" in training:  # exactly the contexts training held out
        held = contexts[torch.tensor(training["data"]["held_out_ids"])]
    else:  # an SAE trained before the split was recorded (seed 0, 2 %)
        _, held = split_contexts(contexts, 0.02, seed=0)
    t0 = time.time()
    metrics = evaluate_sae(model, sae, held[: args.eval_contexts], layer=args.layer,
                           frequency_tokens=held[args.eval_contexts:])
    result = {
        "model": args.model, "layer": args.layer, "architecture": args.architecture, "d_sae": training["d_sae"],
        "training_tokens": training["training_tokens"], "train_seconds": training.get("seconds_total", training["seconds"]),
        "train_wall_this_run": round(train_wall, 1), "eval_seconds": round(time.time() - t0, 1),
        "eval_tokens": int(held[: args.eval_contexts].numel()),
        "frequency_tokens": int(held.numel()), "metrics": metrics,
        "targets": {"l0<=30": metrics["l0"] <= 30, "ce_loss_score>=0.8": metrics["ce_loss_score"] >= 0.8,
                    "dead<0.2": metrics["dead_fraction"] < 0.2,
                    "train<3600s": training.get("seconds_total", training["seconds"]) < 3600},
        "load_average_during_training": {"min": min(loads, default=None), "max": max(loads, default=None),
                                          "mean": sum(loads) / len(loads) if loads else None},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "sae_dir": str(args.out),
    }
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


if __name__ == "__main__":
    main()
