"""IOI on SmolLM2-135M: the held-out faithfulness of the head circuit, the ranking stability, and MIB's
CPR / CMD table — the numbers README.md quotes, measured on prompts that did not choose the circuit.

  --circuit   `discover` with `interp ioi --seed 0`'s settings (48 select + 48 held-out prompts, EAP
              scores, heads ranked by mask-IG on the select split, every faithfulness on the held-out
              split; edge curves skipped: they do not change the head circuit), then
              `ranking_stability` (top-20 Jaccard of EAP head scores between the two disjoint splits).
  --mib       `circuits.ioi.mib_table` for EAP, exact patching and EAP-IG on IOI and capitals
              (N select prompts score, N held-out prompts measure, P prompts for exact patching).
  --tasks     which tasks the model solves, the grounds for choosing capitals as the reuse task: top-1
              accuracy on IOI (`circuits.ioi.baseline`, both splits), on every single-token country x
              capital template, on three phrasings of Merullo et al.'s colored objects (accuracy among
              the listed colors too, chance 1/3) and on gendered pronouns (he vs she).
  --copy      Wang et al.'s copy and negative copy scores (`circuits.ioi.copy_scores`) of every head:
              the top heads of each and the named --heads.

    python benchmarks/bench_ioi.py --circuit --json /tmp/ioi-circuit.json
    python benchmarks/bench_ioi.py --mib --n 16 --patching 8 --json /tmp/ioi-mib.json
    python benchmarks/bench_ioi.py --tasks --copy --json /tmp/ioi-tasks.json
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


COLORS = ("red", "blue", "green", "yellow", "black", "white", "brown", "purple", "pink", "orange", "gray")
THINGS = ("pen", "book", "cup", "ball", "hat", "key", "phone", "bag", "box", "lamp", "chair", "shoe")
COLOR_PHRASINGS = (
    "On the table there is a {c0} {o0}, a {c1} {o1} and a {c2} {o2}. The {q} is",
    "I see a {c0} {o0}, a {c1} {o1} and a {c2} {o2}. What color is the {q}? It is",
    "On the desk, you see a {c0} {o0}, a {c1} {o1} and a {c2} {o2}. Q: What is the color of the {q}? A:",
)
WOMEN = ("Mary", "Amy", "Kate", "Anna", "Sarah", "Lisa", "Laura", "Emma", "Alice", "Rachel")
MEN = ("John", "Tom", "James", "Dan", "Paul", "David", "Mark", "Peter", "Jack", "Michael")
PRONOUN_TEMPLATES = ("{N} went to the store because", "When {N} woke up,", "{N} called the doctor because")


def _last_logits(model, texts: list[str]):
    import torch

    with torch.no_grad():
        return torch.stack([model(model.to_tokens(t))[0, -1] for t in texts])


def tasks(model, n: int, seed: int) -> dict:
    """Top-1 accuracy per task (and per phrasing), with the chance level where the answer is one of a few."""
    import random

    import torch

    from circuits.ioi import (CAPITAL_TEMPLATES, CAPITALS, baseline, capitals_dataset, ioi_dataset, single_tokens,
                             token_id)

    out: dict = {"ioi": {split: baseline(model, ioi_dataset(model, n, seed=seed, split=split))
                         for split in ("select", "eval")}}
    countries = [c for c, k in CAPITALS.items() if single_tokens(model, [c]) and single_tokens(model, [k])]
    out["capitals"] = {"countries": len(countries), "top1_by_template": {}}
    for template in CAPITAL_TEMPLATES:
        logits = _last_logits(model, [template.format(X=c) for c in countries])
        answers = [token_id(model, CAPITALS[c]) for c in countries]
        out["capitals"]["top1_by_template"][template] = float((logits.argmax(-1).cpu() == torch.tensor(answers)).float().mean())
    out["capitals"]["pairwise"] = baseline(model, capitals_dataset(model, n, seed=seed))
    colors, things = single_tokens(model, COLORS), single_tokens(model, THINGS)
    rng = random.Random(seed)
    out["colored_objects"] = {"chance_among_listed": 1 / 3, "by_phrasing": {}}
    for phrasing in COLOR_PHRASINGS:
        texts, answers, listed = [], [], []
        for _ in range(n):
            cs, os_ = rng.sample(colors, 3), rng.sample(things, 3)
            q = rng.randrange(3)
            texts.append(phrasing.format(c0=cs[0], c1=cs[1], c2=cs[2], o0=os_[0], o1=os_[1], o2=os_[2], q=os_[q]))
            answers.append(token_id(model, cs[q]))
            listed.append([token_id(model, c) for c in cs])
        logits = _last_logits(model, texts).cpu()
        among = [ids[int(logits[i, ids].argmax())] == answers[i] for i, ids in enumerate(listed)]
        out["colored_objects"]["by_phrasing"][phrasing] = {
            "top1": float((logits.argmax(-1) == torch.tensor(answers)).float().mean()),
            "among_listed": sum(among) / len(among)}
    she, he = token_id(model, "she"), token_id(model, "he")
    names = [(w, she, he) for w in WOMEN] + [(m, he, she) for m in MEN]
    out["pronouns"] = {"chance": 0.5, "by_template": {}}
    for template in PRONOUN_TEMPLATES:
        logits = _last_logits(model, [template.format(N=name) for name, _, _ in names]).cpu()
        right = [float(logits[i, good] > logits[i, bad]) for i, (_, good, bad) in enumerate(names)]
        out["pronouns"]["by_template"][template] = sum(right) / len(right)
    return out


def copies(model, heads: list[str]) -> dict:
    """Copy and negative copy score of every head; the top 5 of each and the named heads."""
    from circuits.ioi import copy_scores
    from interp.head_ids import HeadId

    every = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    scores = copy_scores(model, every)
    label = {lh: HeadId(*lh).label for lh in every}
    top = {kind: [(label[lh], scores[lh][i]) for lh in sorted(every, key=lambda lh: -scores[lh][i])[:5]]
           for i, kind in enumerate(("copy", "negative_copy"))}
    named = {name: scores[(head.layer, head.head)] for name, head in ((n, HeadId.parse(n)) for n in heads)}
    return {"top": top, "heads": {k: {"copy": v[0], "negative_copy": v[1]} for k, v in named.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--circuit", action="store_true")
    ap.add_argument("--mib", action="store_true")
    ap.add_argument("--tasks", action="store_true")
    ap.add_argument("--copy", action="store_true")
    ap.add_argument("--heads", default="L23H3", help="--copy: heads to report by name (comma-separated)")
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
    if args.tasks:
        result["tasks"] = tasks(model, args.n or 48, args.seed)
    if args.copy:
        result["copy"] = copies(model, args.heads.split(","))
    result.update(seconds=round(time.perf_counter() - start, 1), load_after=os.getloadavg())
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
