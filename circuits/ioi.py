"""Indirect object identification (Wang et al. 2022) on the discovery engine, and a second task for
component reuse (Merullo et al. 2023).

IOI prompts: "When Mary and John went to the store, John gave a drink to" → IO " Mary", subject
S " John". BABA: the subject is named first ("… John and Mary …, John …"); ABBA: the IO first.
Templates are Wang et al.'s 15 BABA templates (ABBA swaps the first two names). ABC corruption:
the same sentence with three unrelated names in the three name slots. Metric: logit(IO) −
logit(S) at the last position. Names, places and objects are kept only when each is a single
token (with its leading space) for the model's tokenizer: checked, not assumed.

Splits. Circuits are selected on one prompt set and evaluated on another, disjoint in templates,
names, places and objects (MIB's practice): split "select" takes the templates, names, places and
objects at even positions of their lists, "eval" those at odd positions (single-token words only,
so the split is per tokenizer); split None uses them all. Orders: BABA and ABBA alternate so that at
every n the counts differ by at most one, and each template gets both orders.

Mean ablation ("mean over ABC"): per template, over `abc_per_template` ABC prompts (default 16)
drawn from the split's own names, places and objects, independent of n (TaskData.reference,
TaskData.ablation); never a single prompt's own corruption.

Second task, for component reuse: factual recall of capitals ("The capital of France is" →
" Paris"; corruption: another country, whose capital is the wrong token; metric logit(capital) −
logit(other capital)). Chosen because SmolLM2-135M solves it (logit(capital) > logit(other capital)
on 48 of 48 prompts over 22 single-token countries; top-1 82–91 % per template) while the
colored-objects task Merullo et al. used is near chance (the asked color ranks first among the three
listed on 31–52 % of prompts per phrasing, chance 33 %); `python benchmarks/bench_ioi.py --tasks`,
benchmarks/RESULTS.md. It also contrasts with IOI: the answer comes from the weights, not from the
context, so the head overlap measures how much of the IOI machinery (name movers copying from
context) a recall task reuses.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from circuits.attribution import head_write, through_final_norm
from interp.circuit import Circuit
from interp.errors import InputError
from interp.head_ids import HeadId
from interp.head_table import HeadTable
from interp.patching import PromptPairs
from interp.results import AnalysisResult, frame_records, json_ready

# Wang et al.'s BABA templates ({A} = first-named, {B} = second-named, {S} = the subject again;
# the prompt ends before the final IO name).
TEMPLATES = (
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} were working at the {PLACE}. {S} decided to give a {OBJECT} to",
    "Then, {A} and {B} were thinking about going to the {PLACE}. {S} wanted to give a {OBJECT} to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give the {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "While {A} and {B} were commuting to the {PLACE}, {S} gave a {OBJECT} to",
    "After the lunch, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Afterwards, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} had a long argument. Afterwards {S} said to",
    "The {PLACE} {A} and {B} went to had a {OBJECT}. {S} gave it to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave it to",
)
NAMES = (
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Paul", "Kate", "Anna", "David", "Sarah",
    "Mark", "Lisa", "Peter", "Laura", "Jack", "Emma", "Chris", "Alice", "Bob", "Michael", "Rachel", "Steve",
    "Linda", "George", "Helen", "Frank", "Susan", "Henry", "Anne", "Eric", "Grace", "Adam", "Ruth", "Paula",
    "Jane", "Alex", "Sam", "Ben", "Carl", "Joe", "Lucy", "Matt", "Nick", "Rose", "Tim", "Will", "Max",
)
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station", "park", "beach",
          "market", "library", "church", "museum", "bank", "river", "hotel", "farm", "kitchen", "airport")
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack", "book", "ball", "letter",
           "gift", "card", "key", "pen", "cake", "flower", "bag", "hat", "phone")
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "Russia": "Moscow",
    "China": "Beijing", "Egypt": "Cairo", "England": "London", "Greece": "Athens", "Austria": "Vienna",
    "Canada": "Ottawa", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw",
    "Portugal": "Lisbon", "Kenya": "Nairobi", "Cuba": "Havana", "Peru": "Lima", "Chile": "Santiago", "India": "Delhi",
}
CAPITAL_TEMPLATES = ("The capital of {X} is", "The capital city of {X} is", "In {X}, the capital is")
SPLITS = (None, "select", "eval")


def split_items(items: Sequence, split: str | None) -> list:
    """The items of a split: all (None), even positions ("select") or odd positions ("eval")."""
    if split not in SPLITS:
        raise InputError(f"split must be select, eval or None, got {split!r}")
    items = list(items)
    return items if split is None else items[(0 if split == "select" else 1)::2]


def single_tokens(model: HookedTransformer, words: Sequence[str]) -> list[str]:
    """The words that are one token with a leading space (" Mary") for the model's tokenizer."""
    keep = []
    for w in words:
        ids = model.tokenizer.encode(" " + w, add_special_tokens=False)
        if len(ids) == 1:
            keep.append(w)
    return keep


def token_id(model: HookedTransformer, word: str) -> int:
    ids = model.tokenizer.encode(" " + word, add_special_tokens=False)
    if len(ids) != 1:
        raise InputError(f"' {word}' is {len(ids)} tokens for {model.cfg.model_name}; names must be single tokens")
    return ids[0]


@dataclass
class TaskData:
    """A task's prompts and their prompt pairs for the engine.

    prompts / corrupt_prompts: texts; pairs: PromptPairs (answer = IO or the asked color, wrong =
    S or the other object's color, group = template); positions: per prompt, named token indices
    (IOI: "IO", "S1", "S2", "end"); meta: template ids, orders, vocabulary sizes."""

    task: str
    prompts: list[str]
    corrupt_prompts: list[str]
    pairs: PromptPairs
    positions: list[dict[str, int]]
    meta: dict = field(default_factory=dict)
    reference: PromptPairs | None = None  # the corrupted prompts mean ablation averages, per group

    def ablation(self, model: HookedTransformer, kind: str = "mean", *, seed: int = 0):
        """Ablation values for `pairs`: mean over `reference`'s corrupted prompts of each group (or
        of `pairs` when there is no reference); other kinds from `pairs` itself."""
        from interp.patching import ablation_values

        ref = self.reference if kind == "mean" else None
        return ablation_values(model, self.pairs, kind, seed=seed, reference=ref)


def ioi_dataset(model: HookedTransformer, n: int = 64, *, seed: int = 0, orders: Sequence[str] = ("BABA", "ABBA"),
                templates: Sequence[str] = TEMPLATES, split: str | None = None, abc_per_template: int = 16) -> TaskData:
    """`n` IOI prompts with ABC corruptions over the `split`'s templates, names, places and objects
    (module doc); template i mod T, orders alternating and balanced at every n. group = template id
    (its index in `templates`). `reference`: `abc_per_template` ABC prompts per template used, for mean ablation."""
    if n < 1:
        raise InputError(f"the IOI dataset needs at least 1 prompt, got n={n}")
    bad = [o for o in orders if o not in ("BABA", "ABBA")]
    if bad or not orders:
        raise InputError(f"IOI orders must be BABA and/or ABBA, got {list(orders)}")
    if abc_per_template < 1:
        raise InputError(f"abc_per_template must be ≥ 1, got {abc_per_template}")
    names, places, objects = (split_items(single_tokens(model, w), split) for w in (NAMES, PLACES, OBJECTS))
    template_ids = split_items(range(len(templates)), split)
    if len(names) < 5 or not places or not objects or not template_ids:
        raise InputError(f"{model.cfg.model_name}'s tokenizer splits too many IOI names/places/objects into several "
                         f"tokens; split {split!r} needs ≥ 5 single-token names (has {len(names)})")
    rng = random.Random(seed)
    T = len(template_ids)
    clean, corrupt, answers, wrongs, groups, positions, prompts, corrupt_prompts, orders_used = ([] for _ in range(9))
    for i in range(n):
        t = template_ids[i % T]
        order = orders[(i % T + i // T) % len(orders)]
        io, s, c1, c2, c3 = rng.sample(names, 5)
        place, obj = rng.choice(places), rng.choice(objects)
        first, second = (s, io) if order == "BABA" else (io, s)
        text = templates[t].format(A=first, B=second, S=s, PLACE=place, OBJECT=obj)
        bad_text = templates[t].format(A=c1, B=c2, S=c3, PLACE=place, OBJECT=obj)
        tokens = model.to_tokens(text)[0].cpu()
        bad_tokens = model.to_tokens(bad_text)[0].cpu()
        if len(tokens) != len(bad_tokens):
            raise InputError(f"template {t} tokenises the clean and ABC prompts to different lengths")
        io_id, s_id = token_id(model, io), token_id(model, s)
        s_pos = (tokens == s_id).nonzero().flatten().tolist()
        io_pos = (tokens == io_id).nonzero().flatten().tolist()
        if len(s_pos) != 2 or len(io_pos) != 1:
            raise InputError(f"template {t}: expected S twice and IO once as single tokens in {text!r}")
        clean.append(tokens)
        corrupt.append(bad_tokens)
        answers.append(io_id)
        wrongs.append(s_id)
        groups.append(t)
        positions.append({"IO": io_pos[0], "S1": s_pos[0], "S2": s_pos[1], "end": len(tokens) - 1})
        prompts.append(text)
        corrupt_prompts.append(bad_text)
        orders_used.append(order)
    pairs = PromptPairs.from_lists(clean, corrupt, answers, wrongs, groups, pad=_pad(model))
    ref_rng = random.Random(f"abc-{seed}-{split}")
    ref_tokens, ref_groups = [], []
    for t in sorted(set(groups)):
        for _ in range(abc_per_template):
            c1, c2, c3 = ref_rng.sample(names, 3)
            text = templates[t].format(A=c1, B=c2, S=c3, PLACE=ref_rng.choice(places), OBJECT=ref_rng.choice(objects))
            ref_tokens.append(model.to_tokens(text)[0].cpu())
            ref_groups.append(t)
    reference = PromptPairs.from_lists(ref_tokens, ref_tokens, [0] * len(ref_tokens), [0] * len(ref_tokens),
                                       ref_groups, pad=_pad(model))
    meta = {"seed": seed, "split": split, "orders": orders_used, "templates": groups, "n_templates": len(set(groups)),
            "template_ids": template_ids, "names": names, "places": places, "objects": objects,
            "abc_per_template": abc_per_template,
            "vocab": {"names": len(names), "places": len(places), "objects": len(objects)},
            "rejected": {"names": sorted(set(NAMES) - set(single_tokens(model, NAMES))),
                         "places": sorted(set(PLACES) - set(single_tokens(model, PLACES))),
                         "objects": sorted(set(OBJECTS) - set(single_tokens(model, OBJECTS)))}}
    return TaskData("ioi", prompts, corrupt_prompts, pairs, positions, meta, reference)


def capitals_dataset(model: HookedTransformer, n: int = 64, *, seed: int = 0, split: str | None = None) -> TaskData:
    """`n` factual-recall prompts ("The capital of France is" → " Paris") over the split's templates
    and countries (even / odd positions, module doc), templates cycled; the corruption names another
    country of the split, whose capital is the wrong token. Mean ablation averages each template's
    corrupted prompts (no separate reference set: every corruption is one country sentence)."""
    if n < 1:
        raise InputError(f"the capitals dataset needs at least 1 prompt, got n={n}")
    pairs_ok = split_items([(c, k) for c, k in CAPITALS.items() if single_tokens(model, [c]) and single_tokens(model, [k])],
                           split)
    template_ids = split_items(range(len(CAPITAL_TEMPLATES)), split)
    if len(pairs_ok) < 4:
        raise InputError(f"{model.cfg.model_name}'s tokenizer leaves fewer than 4 single-token country/capital pairs "
                         f"in split {split!r}")
    rng = random.Random(seed)
    clean, corrupt, answers, wrongs, groups, positions, prompts, corrupt_prompts = ([] for _ in range(8))
    for i in range(n):
        t = template_ids[i % len(template_ids)]
        (country, capital), (other, other_capital) = rng.sample(pairs_ok, 2)
        text, bad_text = CAPITAL_TEMPLATES[t].format(X=country), CAPITAL_TEMPLATES[t].format(X=other)
        tokens, bad_tokens = model.to_tokens(text)[0].cpu(), model.to_tokens(bad_text)[0].cpu()
        if len(tokens) != len(bad_tokens):
            raise InputError("capitals: clean and corrupted prompts tokenise to different lengths")
        clean.append(tokens)
        corrupt.append(bad_tokens)
        answers.append(token_id(model, capital))
        wrongs.append(token_id(model, other_capital))
        groups.append(t)
        positions.append({"end": len(tokens) - 1})
        prompts.append(text)
        corrupt_prompts.append(bad_text)
    pairs = PromptPairs.from_lists(clean, corrupt, answers, wrongs, groups, pad=_pad(model))
    meta = {"seed": seed, "split": split, "n_countries": len(pairs_ok), "countries": [c for c, _ in pairs_ok],
            "templates": [CAPITAL_TEMPLATES[t] for t in template_ids]}
    return TaskData("capitals", prompts, corrupt_prompts, pairs, positions, meta)


def _pad(model: HookedTransformer) -> int:
    tok = model.tokenizer
    return tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0


def baseline(model: HookedTransformer, data: TaskData, batch_size: int = 32) -> dict[str, float]:
    """The full model on the clean prompts: mean logit difference (answer − wrong), accuracy (share
    of prompts with a positive difference) and top-1 (share whose top prediction is the answer);
    the same logit difference on the corrupted prompts."""
    from interp.patching import metric_per_prompt, run_last_logits

    ld, ld_bad, top1 = [], [], []
    for _, part in data.pairs.batches(batch_size):
        logits = run_last_logits(model, part.clean, part.last)
        ld.append(metric_per_prompt("logit_diff", logits, part))
        top1.append((logits.argmax(-1).cpu() == part.answer).float())
        ld_bad.append(metric_per_prompt("logit_diff", run_last_logits(model, part.corrupt, part.last), part))
    ld, ld_bad, top1 = torch.cat(ld).cpu(), torch.cat(ld_bad).cpu(), torch.cat(top1)
    return {"n_prompts": len(data.pairs), "logit_diff": float(ld.mean()), "logit_diff_std": float(ld.std()) if len(ld) > 1 else 0.0,
            "accuracy": float((ld > 0).float().mean()), "top1": float(top1.mean()),
            "corrupt_logit_diff": float(ld_bad.mean())}


# ---------------------------------------------------------------------------------------------
# head roles


ROLES = ("name_mover", "negative_name_mover", "s_copy_suppression", "s_inhibition", "induction", "duplicate_token",
         "previous_token", "other")


@dataclass
class RoleThresholds:
    """name_attention: a (negative) name mover puts at least this much attention from the last
    position on IO, and more on IO than on both S tokens; the sign of its direct effect on
    logit(IO) − logit(S) decides name mover (+) or negative name mover (−).
    s_copy_suppression: not in Wang et al.'s GPT-2 taxonomy, seen in SmolLM2: the head attends from the
    last position more to S2 than to IO (at least name_attention), its OV circuit suppresses the
    name it reads (negative copy score ≥ copy_score) and it raises logit(IO) − logit(S) directly, by
    lowering S (copy suppression, McDougall et al. 2023, applied to the subject).
    s_inhibition: attends from the last position more to S2 than to IO, and ablating it lowers the
    name movers' (attention to IO − attention to S2) by at least s_inhibition; the name movers are
    all heads of the model (in the circuit or not) meeting the name-mover rule with a direct effect
    of at least mover_effect.
    induction / duplicate_token / previous_token: in the IOI prompts, attention S2 → the token after
    S1 / S2 → S1 at least type_score, or the TransformerLens head-detector score on repeated random
    tokens at least type_score (the largest of the three decides)."""

    name_attention: float = 0.1
    mover_effect: float = 0.1
    copy_score: float = 0.5
    s_inhibition: float = 0.02
    type_score: float = 0.3


def ioi_head_evidence(model: HookedTransformer, data: TaskData, n: int = 16) -> dict[str, torch.Tensor]:
    """Per head [layer, head], over the first `n` clean prompts: attention from the last position to
    IO, S1 and S2 ("att_end_io", "att_end_s1", "att_end_s2"), from S2 to S1 ("att_s2_s1", duplicate
    token in IOI) and to the token after S1 ("att_s2_s1_next", induction in IOI); the head's direct
    effect on logit(IO) − logit(S) ("dla_logit_diff") and on logit(IO) ("dla_io") at the last position:
    its write (after a post-norm, its share of the normed output; circuits.attribution.head_write) through
    the final norm of the clean run (circuits.attribution.through_final_norm)."""
    cfg = model.cfg
    part = data.pairs.select(slice(0, min(n, len(data.pairs))))
    pos = data.positions[: len(part)]
    rows = torch.arange(len(part))
    idx = {k: torch.tensor([p[k] for p in pos]) for k in ("IO", "S1", "S2", "end")}
    att = {k: torch.zeros(cfg.n_layers, cfg.n_heads) for k in ("att_end_io", "att_end_s1", "att_end_s2", "att_s2_s1",
                                                                 "att_s2_s1_next")}
    z_end = torch.zeros(cfg.n_layers, len(part), cfg.n_heads, cfg.d_head)
    scale = {}

    def on_pattern(layer):
        def hook(p, hook):  # [B, H, q, k]
            p = p.detach().float().cpu()
            att["att_end_io"][layer] = p[rows, :, idx["end"], idx["IO"]].mean(0)
            att["att_end_s1"][layer] = p[rows, :, idx["end"], idx["S1"]].mean(0)
            att["att_end_s2"][layer] = p[rows, :, idx["end"], idx["S2"]].mean(0)
            att["att_s2_s1"][layer] = p[rows, :, idx["S2"], idx["S1"]].mean(0)
            att["att_s2_s1_next"][layer] = p[rows, :, idx["S2"], idx["S1"] + 1].mean(0)
        return hook

    def on_z(layer):
        def hook(z, hook):
            z_end[layer] = z.detach().float().cpu()[rows, idx["end"]]
        return hook

    def on_scale(act, hook):
        scale["end"] = act.detach().float().cpu()[rows, idx["end"]]  # [B, 1]

    hooks = [(f"blocks.{l}.attn.hook_pattern", on_pattern(l)) for l in range(cfg.n_layers)]
    hooks += [(f"blocks.{l}.attn.hook_z", on_z(l)) for l in range(cfg.n_layers)]
    if hasattr(model.ln_final, "hook_scale"):
        hooks.append(("ln_final.hook_scale", on_scale))
    with torch.no_grad():
        model.run_with_hooks(part.clean.to(cfg.device), fwd_hooks=hooks)
    W_U = model.W_U.detach().float().cpu()
    direction = (W_U[:, part.answer] - W_U[:, part.wrong]).T  # [B, d_model]
    io_dir = W_U[:, part.answer].T
    dla, dla_io = torch.zeros(cfg.n_layers, cfg.n_heads), torch.zeros(cfg.n_layers, cfg.n_heads)
    for l in range(cfg.n_layers):
        out = through_final_norm(model, head_write(model, l, z_end[l]), scale.get("end")).float()
        dla[l] = torch.einsum("bhd,bd->bh", out, direction).mean(0)
        dla_io[l] = torch.einsum("bhd,bd->bh", out, io_dir).mean(0)
    return {**att, "dla_logit_diff": dla, "dla_io": dla_io}


def copy_scores(model: HookedTransformer, heads: Sequence[tuple[int, int]], names: Sequence[str] = NAMES,
                top: int = 5) -> dict[tuple[int, int], tuple[float, float]]:
    """Wang et al.'s copy score per head: each name's residual after the first MLP (embedding +
    MLP 0) through the head's OV circuit and the unembedding; the share of names ranked in the top
    `top` logits (positive), and the same with the OV output negated (negative copy score)."""
    names = single_tokens(model, names)
    ids = torch.tensor([token_id(model, n) for n in names], device=model.cfg.device)
    out = {}
    with torch.no_grad():
        for head, v in ov_writes(model, ids, heads).items():
            scores = []
            for sign in (1.0, -1.0):
                logits = model.unembed(model.ln_final((sign * v)[:, None]))[:, 0]
                rank = logits.topk(top, -1).indices
                scores.append(float((rank == ids[:, None].to(rank.device)).any(-1).float().mean()))
            out[head] = (scores[0], scores[1])
    return out


@torch.no_grad()
def ov_writes(model: HookedTransformer, ids: torch.Tensor, heads: Sequence[tuple[int, int]]) -> dict:
    """{(layer, head): [n, d_model]}: what each head writes to the residual from the tokens `ids` [n] alone,
    its input being the token's embedding plus MLP 0's output on it: the block's input norm (none on OLMo
    2/3), W_V[h]·W_O[h] without biases, then the attention output's post-norm (Gemma 2/3, OLMo 2/3)."""
    from circuits.discovery.graph import attn_out_norm, input_norm, is_post_norm

    block0 = model.blocks[0]
    x = model.embed(ids[:, None])  # [n, 1, d]
    pre = None if is_post_norm(model) else block0.ln2
    mlp = block0.mlp(pre(x) if pre is not None else x)
    if getattr(model.cfg, "use_normalization_before_and_after", False):
        mlp = block0.ln2_post(mlp)
    elif is_post_norm(model):
        mlp = block0.ln2(mlp)
    x = x + mlp
    out = {}
    for l, h in heads:
        attn, norm_in, norm_out = model.blocks[l].attn, input_norm(model, l), attn_out_norm(model, l)
        xin = (norm_in(x) if norm_in is not None else x).to(attn.W_V.device)
        v = (xin @ attn.W_V[h] @ attn.W_O[h])  # [n, 1, d]
        out[(l, h)] = (norm_out(v) if norm_out is not None else v)[:, 0]
    return out


def s_inhibition_effects(model: HookedTransformer, data: TaskData, candidates: Sequence[tuple[int, int]],
                         name_movers: Sequence[tuple[int, int]], *, ablation: str = "mean", n: int = 8) -> dict:
    """For each candidate head: mean-ablate it and measure the change in the name movers' attention
    from the last position to IO minus to S2 (averaged over name movers and the first `n` prompts).
    S-inhibition heads tell name movers to avoid S, so ablating them lowers it. → {head: change}."""
    from interp.patching import ablation_values, clean_run

    if not candidates or not name_movers:
        return {}
    cfg = model.cfg
    part = data.pairs.select(slice(0, min(n, len(data.pairs))))
    B = len(part)
    abl = ablation_values(model, data.pairs, ablation).select(slice(0, B), part.clean.shape[1])
    pos = data.positions[:B]
    io = torch.tensor([p["IO"] for p in pos])
    s2 = torch.tensor([p["S2"] for p in pos])
    end = torch.tensor([p["end"] for p in pos])
    nm_layers = sorted({l for l, _ in name_movers})

    def nm_diff(patterns: dict[int, torch.Tensor], k: int) -> torch.Tensor:  # → [k]
        diffs = []
        for l in nm_layers:
            heads = [h for ll, h in name_movers if ll == l]
            p = patterns[l].view(k, B, cfg.n_heads, *patterns[l].shape[-2:])[:, :, heads]
            p = p.permute(1, 3, 4, 0, 2)  # [B, query, key, variant, head]
            r = torch.arange(B)
            diffs.append((p[r, end, io] - p[r, end, s2]).mean((0, 2)))  # [variant]
        return torch.stack(diffs).mean(0)

    def collect(store):
        def hook(p, hook):
            store[int(hook.name.split(".")[1])] = p.detach().float().cpu()
        return hook

    base: dict[int, torch.Tensor] = {}
    run = clean_run(model, part, "logit_diff")
    with torch.no_grad():
        model.run_with_hooks(part.clean.to(cfg.device),
                             fwd_hooks=[(f"blocks.{l}.attn.hook_pattern", collect(base)) for l in nm_layers])
    reference = float(nm_diff(base, 1)[0])
    effects = {}
    for layer in sorted({l for l, _ in candidates}):
        heads = [h for l, h in candidates if l == layer and layer < max(nm_layers)]
        if not heads:
            continue
        k = len(heads)
        z_abl = abl.z[layer].to(cfg.device)

        def ablate(z, hook, heads=heads, z_abl=z_abl):
            z = z.clone()
            for j, h in enumerate(heads):
                z[j * B:(j + 1) * B, :, h] = z_abl[:, :, h]
            return z

        store: dict[int, torch.Tensor] = {}
        hooks = [(f"blocks.{layer}.attn.hook_z", ablate)]
        hooks += [(f"blocks.{l}.attn.hook_pattern", collect(store)) for l in nm_layers if l > layer]
        with torch.no_grad():
            model.run_with_hooks(run.resid_pre[layer].repeat(k, 1, 1), fwd_hooks=hooks, start_at_layer=layer,
                                 stop_at_layer=max(nm_layers) + 1)
        for l in nm_layers:
            if l <= layer:
                store[l] = base[l].repeat(k, 1, 1, 1)
        for j, h in enumerate(heads):
            effects[(layer, h)] = float(nm_diff(store, k)[j]) - reference
    return effects


def classify_roles(model: HookedTransformer, data: TaskData, heads: Sequence[tuple[int, int]], *,
                   thresholds: RoleThresholds | None = None, n_evidence: int = 16, n_inhibition: int = 8,
                   seed: int = 0):
    """A role per head (ROLES) with the evidence behind it → pandas DataFrame, one row per head:
    label, layer, head, role, the IOI attention and direct-effect numbers (`ioi_head_evidence`), copy
    scores, the S-inhibition effect, and head-type scores on repeated random tokens."""
    import pandas as pd

    from circuits.heads import head_type_scores, repeated_random_tokens

    th = thresholds or RoleThresholds()
    ev = ioi_head_evidence(model, data, n_evidence)
    types = head_type_scores(model, repeated_random_tokens(model, 24, 2, batch=4, seed=seed)).df
    type_of = {(int(r.layer), int(r.head)): r for r in types.itertuples()}
    copy = copy_scores(model, heads)

    def is_mover(l, h):
        io = float(ev["att_end_io"][l, h])
        return io >= th.name_attention and io > float(ev["att_end_s1"][l, h] + ev["att_end_s2"][l, h])

    # name movers are looked for among all heads: a small circuit may hold none of them (SmolLM2's
    # 8-head IOI circuit lowers S rather than copying IO) while its S-inhibition heads still steer them
    movers = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)
              if is_mover(l, h) and float(ev["dla_logit_diff"][l, h]) >= th.mover_effect]
    others = [(l, h) for l, h in heads if not is_mover(l, h)]
    inhibition = s_inhibition_effects(model, data, others, movers, n=n_inhibition)
    rows = []
    for l, h in heads:
        t = type_of[(l, h)]
        row = {"label": HeadId(l, h).label, "layer": l, "head": h,
               **{k: float(v[l, h]) for k, v in ev.items()},
               "copy_score": copy[(l, h)][0], "negative_copy_score": copy[(l, h)][1],
               "s_inhibition_effect": inhibition.get((l, h), float("nan")),
               "previous_token": float(t.previous_token), "duplicate_token": float(t.duplicate_token),
               "induction": float(t.induction)}
        row["role"] = _role(row, is_mover(l, h), th)
        rows.append(row)
    cols = ["label", "layer", "head", "role"]
    df = pd.DataFrame(rows)
    df.attrs["name_movers"] = [HeadId(l, h).label for l, h in movers]
    return df[cols + [c for c in df.columns if c not in cols]] if rows else pd.DataFrame(columns=cols)


def _role(row: dict, mover: bool, th: RoleThresholds) -> str:
    if mover:
        return "name_mover" if row["dla_logit_diff"] > 0 else "negative_name_mover"
    reads_s = row["att_end_s2"] >= th.name_attention and row["att_end_s2"] > row["att_end_io"]
    if reads_s and row["dla_logit_diff"] > 0 and row["negative_copy_score"] >= th.copy_score:
        return "s_copy_suppression"
    if reads_s and row["s_inhibition_effect"] <= -th.s_inhibition:
        return "s_inhibition"
    kinds = {"induction": max(row["induction"], row["att_s2_s1_next"]),
             "duplicate_token": max(row["duplicate_token"], row["att_s2_s1"]),
             "previous_token": row["previous_token"]}
    best = max(kinds, key=kinds.get)
    return best if kinds[best] >= th.type_score else "other"


# ---------------------------------------------------------------------------------------------
# the whole analysis


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two flat tensors (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().double().numpy(), b.flatten().double().numpy()).statistic)


def top_heads(scores: torch.Tensor, k: int, *, absolute: bool = False) -> list[tuple[int, int]]:
    """The k heads of largest score (positive = helps), or of largest |score|, from a [layer, head] tensor."""
    n_heads = scores.shape[1]
    flat = scores.flatten().abs() if absolute else scores.flatten()
    return [tuple(HeadId.from_index(int(i), n_heads)) for i in flat.argsort(descending=True, stable=True)[:k]]


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def ranking_stability(model: HookedTransformer, first: TaskData, second: TaskData, *, k: int = 20,
                      method: str = "eap", batch_size: int = 16) -> dict:
    """How stable the head ranking is across two prompt sets (e.g. the select and eval splits,
    disjoint in templates and names): head_attribution on each (mean ablation over each set's ABC
    reference) → top-k Jaccard of the most helpful heads, top-k Jaccard by |score|, Spearman of the scores."""
    from circuits.attribution import head_attribution

    tables = [head_attribution(model, d.pairs, method=method, ablation=d.ablation(model), batch_size=batch_size)
              for d in (first, second)]
    grids = [torch.tensor(t.grid("score").to_numpy()) for t in tables]
    return {"method": method, "k": k, "n_prompts": [len(first.pairs), len(second.pairs)],
            "top_k_jaccard": jaccard(top_heads(grids[0], k), top_heads(grids[1], k)),
            "top_k_jaccard_abs": jaccard(top_heads(grids[0], k, absolute=True), top_heads(grids[1], k, absolute=True)),
            "spearman": spearman(grids[0], grids[1])}


def mib_table(model: HookedTransformer, select: TaskData, held: TaskData, *,
              methods: Sequence[str] = ("eap", "eap-ig", "patching"), steps: int = 5, edges: bool = True,
              patching_prompts: int = 16, precomputed: dict[str, torch.Tensor] | None = None,
              batch_size: int = 16) -> list[dict]:
    """MIB circuit-track summaries (circuits.discovery.mib_summary): each method scores on `select`,
    the curves are measured on `held` (disjoint prompts) with its own mean ablation. Rows: task,
    method, level ("edges" for EAP / EAP-IG; "heads" for every method, exact patching being node-level),
    cpr, cmd, and the curves. Exact patching scores on the first `patching_prompts` selection prompts
    (270 forward passes per prompt); `precomputed` {method: head scores [layer, head]} skips a method's scoring."""
    from circuits.attribution import head_attribution
    from circuits.discovery import attribute, mib_summary

    abl_s, abl_e = select.ablation(model), held.ablation(model)
    rows = []
    for method in methods:
        if method in ("eap", "eap-ig"):
            attr = attribute(model, select.pairs, method=method, ablation=abl_s, steps=steps, batch_size=batch_size)
            heads = attr.head_scores()
            if edges:
                rows.append({"task": select.task, "method": method,
                             **mib_summary(model, held.pairs, abl_e, edge_scores=attr, batch_size=batch_size)})
        elif precomputed and method in precomputed:
            heads = precomputed[method]
        else:
            n = len(select.pairs) if method != "patching" else min(patching_prompts, len(select.pairs))
            part = select.pairs.select(slice(0, n))
            table = head_attribution(model, part, method=method, ablation=abl_s.select(slice(0, n), part.clean.shape[1]),
                                     steps=steps, batch_size=batch_size)
            heads = torch.tensor(table.grid("score").to_numpy())
        rows.append({"task": select.task, "method": method,
                     **mib_summary(model, held.pairs, abl_e, head_scores=heads, batch_size=batch_size)})
    return rows


# ---------------------------------------------------------------------------------------------
# the analysis: IOI end to end, as one typed result


@dataclass(frozen=True)
class IOIConfig:
    """Options of `ioi_analysis` (recorded whole in its JSON)."""

    n_prompts: int = 48            # selection-split prompts (the circuit is chosen on them)
    n_eval: int | None = None      # held-out (eval-split) prompts; None: as many as n_prompts
    method: str = "eap"            # discovery method: eap | eap-ig | acdc | patching
    seed: int = 0
    steps: int = 5                 # integration steps of EAP-IG and mask-IG
    target: float = 0.8            # faithfulness the circuit must reach
    tau: float = 0.01              # ACDC threshold on the metric change (KL, nats)
    acdc_candidates: int = 200     # ACDC prunes this many top EAP-IG edges
    checks: bool = True            # EAP vs exact patching, ranking stability, reuse with capitals (and MIB)
    patching_prompts: int = 16     # selection prompts scored by exact patching (checks, MIB)
    reuse_prompts: int = 32        # capitals prompts per split (component reuse)
    curve_points: int = 10         # sizes on the faithfulness curves
    edge_curves: bool = True       # also the edge circuit's curves (EAP / EAP-IG)
    role_prompts: int = 16         # held-out prompts for the role evidence (half as many, at least 4, for S-inhibition)
    mib: bool = True               # with checks: MIB's CPR / CMD for EAP, EAP-IG and exact patching, both tasks
    mib_prompts: int = 24          # held-out prompts the MIB curves are measured on


@dataclass(repr=False)  # AnalysisResult's short repr, not every DataFrame
class IOIResult(AnalysisResult):
    """`ioi_analysis`'s result. `table`, one row per head of the model:

    - `score`: the discovery method's head score on the selection split (`details["head_scores"]`; for EAP
      the sum of the head's outgoing edge attributions): the loss of logit(IO) − logit(S), in logits per
      prompt, when the head's output is mean-ablated to the ABC reference, so positive = the head helps
      (circuits.attribution.head_attribution's sign);
    - `mask_ig`: the mask-IG head score (same units and sign) whose ranking chooses the head circuit
      (`details["ranking"]`, largest first);
    - `in_circuit`: whether the head is one of the circuit's heads (the first `targets["circuit_heads"]`
      of that ranking);
    - `role`: its IOI role (ROLES, evidence in `roles`) for circuit heads, None for the others;
    - with checks, `exact_patching`: clean − mean-ablated logit difference over the first
      `patching_prompts` selection prompts (logits, positive = helps).

    Extras: `circuit` (the head circuit, faithfulness measured on held-out prompts), `baseline` /
    `eval_baseline` (the full model on each split), `targets` (circuit size and held-out faithfulness
    against the targets, plus the checks' numbers), `details` (what `circuits.discovery.discover`
    returned), `roles` (one row per circuit head: role and evidence), `name_movers` (heads of the whole
    model meeting the name-mover rule), `params` (what the prompts and the ablation were), `examples`
    (four selection prompts with their ABC corruption) and, with checks, `patching` (EAP vs exact
    patching grids), `stability`, `reuse` (the capitals task) and, with mib, `mib` (one row per task,
    method and level)."""

    circuit: Circuit
    baseline: dict[str, float]
    eval_baseline: dict[str, float]
    targets: dict[str, Any]
    details: dict[str, Any]
    roles: pd.DataFrame
    name_movers: list[str]
    params: dict[str, Any]
    examples: list[dict[str, str]]
    patching: dict[str, Any] | None = None
    stability: dict[str, Any] | None = None
    reuse: dict[str, Any] | None = None
    mib: list[dict[str, Any]] | None = None

    KIND: ClassVar[str] = "ioi"
    VERSION: ClassVar[int] = 2

    @property
    def edge_circuit(self) -> Circuit | None:
        """The edge circuit (EAP / EAP-IG / ACDC with edge curves), None otherwise."""
        return self.details.get("edge_circuit")

    def extras(self) -> dict[str, Any]:
        d = self.details
        body: dict[str, Any] = {
            "params": self.params, "baseline": self.baseline, "eval_baseline": self.eval_baseline,
            "targets": self.targets, "circuit": self.circuit.to_dict(), "roles": frame_records(self.roles),
            "name_movers": self.name_movers, "head_scores": d["head_scores"], "examples": self.examples}
        if self.edge_circuit is not None:
            body["edge_circuit"] = self.edge_circuit.to_dict()
        if "acdc" in d:
            body["acdc"] = d["acdc"]
        if self.patching is not None:
            body["patching"] = self.patching
        if self.stability is not None:
            body["stability"] = self.stability
        if self.reuse is not None:
            body["reuse"] = self.reuse
        if self.mib is not None:
            body["mib"] = self.mib
        return json_ready(body)


def ioi_table(model: HookedTransformer, details: dict[str, Any], roles: pd.DataFrame, n_circuit: int, *,
              method: str, exact: torch.Tensor | None = None) -> HeadTable:
    """The per-head table of `IOIResult` (its doc) from `discover`'s details, the roles and the exact
    patching grid [layer, head] (or None). Scores stay float64 (numpy arrays into the table)."""
    cfg = model.cfg
    grids = {"score": details["head_scores"]}
    if "head_rank_scores" in details:
        grids["mask_ig"] = details["head_rank_scores"]
    if exact is not None:
        grids["exact_patching"] = exact
    metrics = {k: v.detach().double().cpu().numpy() for k, v in grids.items()}
    meta = {"analysis": "ioi", "method": method, "ranking": "mask-ig" if "mask_ig" in metrics else "score",
            "metric": "logit(IO) - logit(S), logits per prompt", "n_prompts": details["n_prompts"],
            "split": "select", "ablation": details["ablation"], "sign": "positive = the head helps the logit difference"}
    df = HeadTable.from_arrays(metrics, model=cfg.model_name).df
    chosen = {tuple(h) for h in details["ranking"][:n_circuit]}
    df["in_circuit"] = [(int(l), int(h)) in chosen for l, h in zip(df["layer"], df["head"])]
    role_of = {(int(r.layer), int(r.head)): r.role for r in roles.itertuples()} if len(roles) else {}
    df["role"] = [role_of.get((int(l), int(h))) for l, h in zip(df["layer"], df["head"])]
    return HeadTable(df, model=cfg.model_name, meta=meta)


def ioi_analysis(model: HookedTransformer, config: IOIConfig | None = None, *, progress: bool | None = None,
                 **fields: Any) -> IOIResult:
    """IOI end to end: the select and eval splits (disjoint templates, names, places, objects), the
    baseline, circuits selected on the select split (discovery engine, mean ablation over each split's
    ABC reference prompts) with every reported faithfulness measured on the eval split, head roles
    with evidence and, with `checks`: head scores of EAP vs exact activation patching (same sign,
    Spearman), ranking stability across the two splits (top-20 Jaccard), component reuse with the
    capitals task, and with `mib` MIB's CPR / CMD for EAP, EAP-IG and exact patching on both tasks
    (curves on the first `mib_prompts` held-out prompts). `fields` are IOIConfig fields, for
    `ioi_analysis(model, n_prompts=16, checks=False)`. → IOIResult (its doc lists the table's columns)."""
    from circuits.discovery import discover

    c = config or IOIConfig(**fields)
    cfg = model.cfg
    n_all = cfg.n_layers * cfg.n_heads
    data = ioi_dataset(model, c.n_prompts, seed=c.seed, split="select")
    held = ioi_dataset(model, c.n_eval or c.n_prompts, seed=c.seed, split="eval")
    base, held_base = baseline(model, data), baseline(model, held)
    abl, held_abl = data.ablation(model), held.ablation(model)
    circuit, details = discover(model, data.pairs, eval_pairs=held.pairs, task="ioi", method=c.method, ablation=abl,
                                eval_ablation=held_abl, steps=c.steps, target=c.target, tau=c.tau,
                                acdc_candidates=c.acdc_candidates, curve_points=c.curve_points,
                                edge_curves=c.edge_curves, seed=c.seed, progress=progress)
    heads = circuit.heads
    roles = classify_roles(model, held, heads, n_evidence=c.role_prompts, n_inhibition=max(4, c.role_prompts // 2),
                           seed=c.seed)
    for row in roles.to_dict(orient="records"):
        circuit.evidence[HeadId(row["layer"], row["head"]).node].update(
            {k: v for k, v in row.items() if k not in ("label", "layer", "head")})
    targets = _targets(details, len(heads), n_all, c.target)
    params = _params(c, data, held)
    examples = [{"clean": a, "corrupt": b} for a, b in zip(data.prompts[:4], data.corrupt_prompts[:4])]
    parts: dict[str, Any] = {}
    if c.checks:
        parts = _checks(model, c, data, held, abl, heads, targets, progress)
    exact = parts["patching"]["exact"] if "patching" in parts else None
    table = ioi_table(model, details, roles, len(heads), method=c.method, exact=exact)
    return IOIResult(table, c, circuit, base, held_base, targets, details, roles,
                     list(roles.attrs.get("name_movers", [])), params, examples, **parts)


def _targets(details: dict[str, Any], n_circuit: int, n_all: int, target: float) -> dict[str, Any]:
    """Circuit size and held-out faithfulness against the targets (≤ 15 % of heads, ≥ target)."""
    eval_rows = details["head_curve_eval"]
    chosen, held_row = details["head_circuit"], details["held_out_rows"]["heads"]
    at_15 = max((r for r in eval_rows if r["n_heads"] <= 0.15 * n_all), key=lambda r: r["n_heads"], default=None)
    smallest_held = next((r for r in eval_rows if r["value"] >= target), None)
    return {"n_heads_total": n_all, "circuit_heads": n_circuit, "circuit_head_fraction": n_circuit / n_all,
            "circuit_faithfulness": held_row["value"], "circuit_ratio": held_row["ratio"],
            "selection_faithfulness": chosen["value"], "reaches_target": held_row["value"] >= target,
            "best_within_15pct": at_15, "smallest_reaching_target_held_out": smallest_held}


def _params(c: IOIConfig, data: TaskData, held: TaskData) -> dict[str, Any]:
    """What the prompts and the ablation were (the JSON's `params`)."""
    return {"n_prompts": c.n_prompts, "n_eval": len(held.pairs), "method": c.method, "seed": c.seed,
            "steps": c.steps, "target": c.target, "tau": c.tau, "acdc_candidates": c.acdc_candidates,
            "ablation": f"mean over {data.meta['abc_per_template']} ABC prompts per template, from each "
            "split's own names", "templates": data.meta["n_templates"],
            "eval_templates": held.meta["n_templates"], "vocab": data.meta["vocab"],
            "eval_vocab": held.meta["vocab"],
            "faithfulness": "(m(C) - m(empty)) / (m(full) - m(empty)) of the logit difference, on the "
            "eval split (templates, names, places and objects disjoint from the select split)"}


def _checks(model: HookedTransformer, c: IOIConfig, data: TaskData, held: TaskData, abl, heads, targets: dict,
            progress: bool | None) -> dict[str, Any]:
    """EAP vs exact patching, ranking stability, reuse with capitals and MIB; adds their numbers to
    `targets` and returns the IOIResult fields patching, stability, reuse (and mib)."""
    from circuits.attribution import head_attribution
    from circuits.discovery import discover
    from interp.patching import patch_heads

    cfg = model.cfg
    # head scores of EAP vs exact activation patching: same prompts and ablation values, one sign
    # (on selection prompts, so the patching scores serve MIB's exact-patching row too)
    sub = data.pairs.select(slice(0, min(c.patching_prompts, len(data.pairs))))
    sub_abl = abl.select(slice(0, len(sub)), sub.clean.shape[1])
    eap = head_attribution(model, sub, method="eap", ablation=sub_abl)
    exact = patch_heads(model, sub, ablation=sub_abl, progress=progress)["effect"].view(cfg.n_layers, cfg.n_heads)
    eap_grid = torch.tensor(eap.grid("score").to_numpy()).float()
    targets["spearman_eap_vs_patching"] = spearman(eap_grid, exact)
    big = exact.abs() >= 0.1 * float(exact.abs().max())
    targets["sign_agreement_large_heads"] = float(((eap_grid[big] > 0) == (exact[big] > 0)).float().mean())
    out: dict[str, Any] = {"patching": {"eap": eap_grid, "exact": exact, "n_prompts": len(sub)}}
    # stability: the select and eval splits are disjoint prompt sets
    out["stability"] = ranking_stability(model, data, held, k=20)
    targets["top20_jaccard"] = out["stability"]["top_k_jaccard"]
    # component reuse with the capitals task (its own select / eval split)
    caps, caps_held = (capitals_dataset(model, c.reuse_prompts, seed=c.seed, split=sp) for sp in ("select", "eval"))
    caps_base = baseline(model, caps_held)
    caps_circuit, caps_details = discover(model, caps.pairs, eval_pairs=caps_held.pairs, task="capitals",
                                          method="eap", ablation="mean", target=c.target, curve_points=c.curve_points,
                                          edge_curves=False, seed=c.seed, progress=progress)
    ioi_heads, caps_heads = set(heads), set(caps_circuit.heads)
    k = len(ioi_heads)
    top_caps = set(top_heads(caps_details["head_scores"], k))
    out["reuse"] = {"task": "capitals", "baseline": caps_base, "circuit_heads": sorted(caps_heads),
                    "circuit_faithfulness": caps_details["held_out_rows"]["heads"]["value"],
                    "shared": sorted(ioi_heads & caps_heads),
                    "share_of_ioi": len(ioi_heads & caps_heads) / max(1, len(ioi_heads)),
                    "jaccard": jaccard(ioi_heads, caps_heads),
                    "top_k_shared": len(ioi_heads & top_caps) / max(1, k), "k": k,
                    "faithfulness": caps_circuit.faithfulness}
    if c.mib:
        out["mib"] = mib_table(model, data, _first(held, c.mib_prompts), steps=c.steps,
                               patching_prompts=c.patching_prompts, precomputed={"patching": exact})
        out["mib"] += mib_table(model, caps, _first(caps_held, c.mib_prompts), steps=c.steps,
                                patching_prompts=c.patching_prompts)
    return out


def _first(d: TaskData, n: int) -> TaskData:
    """The task's first `n` prompts (same reference prompts for mean ablation)."""
    part = d.pairs.select(slice(0, min(n, len(d.pairs))))
    return TaskData(d.task, d.prompts[:n], d.corrupt_prompts[:n], part, d.positions[:n], d.meta, d.reference)
