"""Safety heads (Zhou et al. 2024, repo ydyjya/SafetyHeadAttribution): Ships, Sahara, and a
refusal-rate check of what ablating the heads does.

Ships(prompt, head) = KL(p_base ‖ p_ablated) of the next-token distribution at the prompt's last
position. Ablations (`ablation`):
  "query"  (default, the paper's) the head's query × `scale` (1e-5): its attention becomes
           uniform ("undifferentiated"). Scaling the head's keys instead is the same operation
           for that head (scores are q·k), so it is not a separate option.
  "mean"   the head's output z replaced by its mean over the prompt set's tokens (base run).
  "output" the head's output z × `scale`.
The query is scaled after QK-norm and rotary (hook_rot_q) so QK-norm cannot undo it.

Dataset level: Ships averaged over a prompt set ranks heads. Sahara searches greedily for the head
set whose ablation turns the last-layer, last-token representation matrix of the harmful set
(ln_final output, [prompts, d_model]) the most: the angle between the top left singular vectors
of the base and ablated matrices, in degrees (the authors' `compute_subspace_similarity`).

Cost: prompts go through the model's chat template; the template's shared beginning (system
prompt, user tag) is run once and its keys and values reused for every prompt (`KVCache`). For a
head in layer l, the ablated run restarts from the base run's residual stream entering layer l,
for the shared prefix (batch 1) and then for the whole prompt batch (right-padded): one forward
per head and prompt batch over layers l..L−1.

`safety_analysis` (`SafetyConfig` → `SafetyResult`) runs it all, as the `interp safety` command and
the atlas section do: Ships per head, Sahara's search, and the refusal check.
"""
from __future__ import annotations

import json
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from circuits.refusal import REFUSAL_PHRASES, is_refusal
from interp.decoding import (
    KVCache,
    cached_attention,
    chat_prompt,
    decode_threads,
    run_cached,
    stop_token_ids,
)
from interp.errors import InputError
from interp.head_ids import HeadId
from interp.head_table import HeadTable
from interp.progress import progress_bar
from interp.results import AnalysisResult, frame_records

ABLATIONS = ("query", "mean", "output")
SCALE = 1e-5

# The head table's columns: units and sign (larger = the head matters more, as everywhere).
SAFETY_COLUMNS = {
    "ships": "Ships: KL(p_base || p_ablated) of the next-token distribution at the prompt's last position, nats, "
             "mean over the harmful prompts (>= 0; larger = ablating the head changes the answer more)",
    "ships_median": "Ships, median over the harmful prompts (nats)",
    "sahara_angle": "angle between the top left singular vectors of the harmful set's last-layer, last-token "
                    "representations, base vs this head ablated (degrees, >= 0; larger = the head shapes them more)",
}


# ---------------------------------------------------------------------------------------------
# prompt sets


def load_prompts(kind: str = "harmful") -> pd.DataFrame:
    """The shipped prompt set `kind` ("harmful" or "harmless") as a DataFrame (id, category, prompt).
    Harmful requests are written for this project in the style of AdvBench; each harmless one
    mirrors a harmful one's verb and form (column pair_of names the harmful category)."""
    if kind not in ("harmful", "harmless"):
        raise InputError(f"unknown prompt set {kind!r}; choose harmful or harmless")
    text = resources.files("circuits").joinpath("data", f"{kind}.jsonl").read_text(encoding="utf-8")
    return pd.DataFrame([json.loads(line) for line in text.splitlines() if line.strip()])


@dataclass
class PromptBatch:
    """Chat-templated prompts split into a shared prefix [P] and right-padded suffixes [B, S];
    `last` [B] is each suffix's last real index, `lengths` [B] its real length."""

    prefix: torch.Tensor
    suffix: torch.Tensor
    last: torch.Tensor
    lengths: torch.Tensor
    prompts: list[str]

    def __len__(self) -> int:
        return self.suffix.shape[0]


def chat_batch(model: HookedTransformer, prompts: Sequence[str], *, template: bool = True) -> PromptBatch:
    """Tokenise `prompts` (through the chat template unless template=False) and split off the
    longest token prefix they share (every suffix keeps at least one token)."""
    prompts = list(prompts)
    if not prompts:
        raise InputError("no prompts were given")
    if model.tokenizer is None:
        raise InputError("safety heads need a model with a tokenizer")
    texts = [chat_prompt(model, p) if template else p for p in prompts]
    bos = [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos and model.tokenizer.bos_token_id is not None else []
    ids = [bos + model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    return token_batch(ids, pad=pad, prompts=prompts)


def token_batch(ids: Sequence[Sequence[int]], *, pad: int = 0, prompts: Sequence[str] | None = None) -> PromptBatch:
    """Token-id prompts → PromptBatch: the longest shared prefix split off (each suffix keeps at
    least one token), suffixes right-padded with `pad`."""
    ids = [list(map(int, x)) for x in ids]
    if not ids or min(len(x) for x in ids) < 1:
        raise InputError("every prompt needs at least one token")
    shared = min(len(x) for x in ids) - 1
    for i in range(shared):
        if any(x[i] != ids[0][i] for x in ids):
            shared = i
            break
    suffixes = [x[shared:] for x in ids]
    width = max(len(s) for s in suffixes)
    suffix = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes], dtype=torch.long)
    lengths = torch.tensor([len(s) for s in suffixes])
    names = list(prompts) if prompts is not None else [" ".join(map(str, x)) for x in ids]
    return PromptBatch(torch.tensor(ids[0][:shared], dtype=torch.long), suffix, lengths - 1, lengths, names)


# ---------------------------------------------------------------------------------------------
# ablation hooks


def ablation_hooks(model: HookedTransformer, heads: Sequence[tuple[int, int]], ablation: str = "query", *,
                   scale: float = SCALE, mean_z: torch.Tensor | None = None) -> list:
    """Forward hooks ablating `heads` ((layer, head) pairs). mean_z [layer, head, d_head] for "mean"."""
    cfg = model.cfg
    if ablation not in ABLATIONS:
        raise InputError(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")
    if ablation == "mean" and mean_z is None:
        raise InputError("mean ablation needs the heads' mean outputs (mean_z)")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise InputError(f"head L{layer}H{head} does not exist in a model of {cfg.n_layers} layers × {cfg.n_heads} heads")
        by_layer.setdefault(int(layer), []).append(int(head))
    site = ("hook_rot_q" if cfg.positional_embedding_type == "rotary" else "hook_q") if ablation == "query" else "hook_z"

    def hook_for(layer: int, hs: list[int]):
        def hook(x, hook):  # [batch, pos, head, d_head]
            x = x.clone()
            if ablation == "mean":
                x[:, :, hs] = mean_z[layer, hs].to(x.dtype)
            else:
                x[:, :, hs] = x[:, :, hs] * scale
            return x
        return hook

    return [(f"blocks.{l}.attn.{site}", hook_for(l, hs)) for l, hs in sorted(by_layer.items())]


# ---------------------------------------------------------------------------------------------
# base run and restarts


@dataclass
class BaseRun:
    """What an ablated run restarts from: residual streams entering each layer for the prefix
    [layer, P, d_model] and suffixes [layer, B, S, d_model]; base log-probs [B, vocab] and last-layer
    last-token representations [B, d_model]; mean head outputs [layer, head, d_head]."""

    batch: PromptBatch
    prefix_resid: torch.Tensor
    suffix_resid: torch.Tensor
    logprobs: torch.Tensor
    final: torch.Tensor
    mean_z: torch.Tensor


def base_run(model: HookedTransformer, batch: PromptBatch) -> BaseRun:
    """Run the prompts once without ablation, keeping what every restart needs."""
    cfg = model.cfg
    L = cfg.n_layers
    prefix_resid: list = [None] * L
    suffix_resid: list = [None] * L
    z_sum = torch.zeros(L, cfg.n_heads, cfg.d_head, dtype=torch.float64)
    real = _real_mask(batch)

    def keep(store, layer):
        def hook(x, hook):
            store[layer] = x.detach()
        return hook

    def z_hook(layer, weight):
        def hook(z, hook):  # [batch, pos, head, d_head]
            w = weight(z)
            z_sum[layer] += (z.double() * w[..., None, None]).sum((0, 1)).cpu()
        return hook

    prefix_w = lambda z: torch.full(z.shape[:2], float(len(batch)), dtype=torch.float64, device=z.device)
    suffix_w = lambda z: real.to(z.device).double()
    cache = KVCache(L)
    with torch.no_grad(), decode_threads(cfg.device, batch.suffix.numel() + len(batch.prefix)):
        hooks = [(f"blocks.{l}.hook_resid_pre", keep(prefix_resid, l)) for l in range(L)]
        hooks += [(f"blocks.{l}.attn.hook_z", z_hook(l, prefix_w)) for l in range(L)]
        with model.hooks(fwd_hooks=hooks):
            if len(batch.prefix):
                run_cached(model, batch.prefix[None], cache)
        cache.frozen = True
        hooks = [(f"blocks.{l}.hook_resid_pre", keep(suffix_resid, l)) for l in range(L)]
        hooks += [(f"blocks.{l}.attn.hook_z", z_hook(l, suffix_w)) for l in range(L)]
        with model.hooks(fwd_hooks=hooks):
            final, logprobs = _finish(model, batch, cache, None, 0)
    n_tokens = len(batch) * len(batch.prefix) + int(real.sum())
    empty = torch.zeros(L, 0, cfg.d_model)
    return BaseRun(batch, torch.stack([p[0] for p in prefix_resid]) if len(batch.prefix) else empty,
                   torch.stack(suffix_resid), logprobs, final, (z_sum / n_tokens).float())


def _real_mask(batch: PromptBatch) -> torch.Tensor:
    return torch.arange(batch.suffix.shape[1])[None, :] < batch.lengths[:, None]


def _finish(model, batch: PromptBatch, cache: KVCache, resid, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the suffixes from layer `start` (tokens when resid is None) → (ln_final at the last real
    token [B, d_model], log-probs there [B, vocab], float32)."""
    cfg = model.cfg
    with cached_attention(model, cache):
        if resid is None:
            resid = model.hook_embed(model.embed(batch.suffix.to(cfg.device)))
        for block in model.blocks[start:]:
            resid = block(resid)
    rows = torch.arange(len(batch), device=resid.device)
    final = model.ln_final(resid[rows, batch.last.to(resid.device)][:, None])  # [B, 1, d_model]
    logits = model.unembed(final)[:, 0].float()
    return final[:, 0].float(), torch.log_softmax(logits, -1)


def ablated_run(model: HookedTransformer, base: BaseRun, heads: Sequence[tuple[int, int]], ablation: str = "query",
                *, scale: float = SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward with `heads` ablated, restarting at the earliest of their layers: the shared
    prefix (batch 1), then every prompt at once. → (final reps [B, d_model], log-probs [B, vocab])."""
    start = min(l for l, _ in heads)
    cache = KVCache(model.cfg.n_layers)
    hooks = ablation_hooks(model, heads, ablation, scale=scale, mean_z=base.mean_z)
    work = base.batch.suffix.numel() + base.prefix_resid.shape[1]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks), decode_threads(model.cfg.device, work):
        if base.prefix_resid.shape[1]:
            with cached_attention(model, cache):
                resid = base.prefix_resid[start][None]
                for block in model.blocks[start:]:
                    resid = block(resid)
        cache.frozen = True
        return _finish(model, base.batch, cache, base.suffix_resid[start], start)


def kl_divergence(base_logprobs: torch.Tensor, other_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(p_base ‖ p_other) per row in nats, float64: Σ p_base (log p_base − log p_other)."""
    b, o = base_logprobs.double(), other_logprobs.double()
    return (b.exp() * (b - o)).sum(-1)


def subspace_angle(base: torch.Tensor, other: torch.Tensor) -> float:
    """Angle in degrees between the top left singular vectors of two [prompts, d] matrices."""
    u1 = torch.linalg.svd(base.double(), full_matrices=False)[0][:, :1]
    u2 = torch.linalg.svd(other.double(), full_matrices=False)[0][:, :1]
    cos = torch.linalg.svdvals(u1.T @ u2).clamp(-1, 1)
    return float(torch.rad2deg(torch.acos(cos))[0])


# ---------------------------------------------------------------------------------------------
# Ships and Sahara


@dataclass
class ShipsResult:
    """The Ships step, and what Sahara restarts from. `table`: HeadTable with the scored heads'
    ships (mean over prompts, nats), ships_median, sahara_angle (the first greedy step's angle,
    degrees), as `SAFETY_COLUMNS` says. `per_prompt`: [prompt, layer, head] float64 Ships (NaN
    for heads not scored). `base`: the unablated run. `safety_analysis` builds a SafetyResult on it."""

    table: HeadTable
    per_prompt: np.ndarray
    base: BaseRun


def ships(model: HookedTransformer, prompts: Sequence[str] | PromptBatch | None = None, *, ablation: str = "query",
          scale: float = SCALE, heads: Sequence[tuple[int, int]] | None = None, template: bool = True,
          progress: bool | None = None) -> ShipsResult:
    """Ships of every head (or `heads`) on every prompt (default: the shipped harmful set; texts
    go through the chat template, or pass a `token_batch`), one batched forward per head. Also
    records Sahara's first-step angle per head."""
    cfg = model.cfg
    if prompts is None:
        prompts = load_prompts("harmful")["prompt"].tolist()
    batch = prompts if isinstance(prompts, PromptBatch) else chat_batch(model, prompts, template=template)
    base = base_run(model, batch)
    heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)] if heads is None else list(heads)
    per_prompt = np.full((len(batch), cfg.n_layers, cfg.n_heads), np.nan)
    angle = np.full((cfg.n_layers, cfg.n_heads), np.nan)
    for layer, head in progress_bar(heads, "Ships", progress, unit="head"):
        final, logprobs = ablated_run(model, base, [(layer, head)], ablation, scale=scale)
        per_prompt[:, layer, head] = kl_divergence(base.logprobs, logprobs).cpu().numpy()
        angle[layer, head] = subspace_angle(base.final, final)
    meta = {"analysis": "safety", "ablation": ablation, "scale": scale, "n_prompts": len(batch),
            "shared_prefix_tokens": len(batch.prefix), "chat_template": template, "columns": dict(SAFETY_COLUMNS)}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # heads not scored stay NaN
        metrics = {"ships": np.nanmean(per_prompt, 0), "ships_median": np.nanmedian(per_prompt, 0),
                   "sahara_angle": angle}
    table = HeadTable.from_arrays(metrics, model=cfg.model_name, meta=meta)
    if len(heads) < cfg.n_layers * cfg.n_heads:
        keep = set(heads)
        table.df = table.df[[(l, h) in keep for l, h in zip(table.df["layer"], table.df["head"])]].reset_index(drop=True)
    return ShipsResult(table, per_prompt, base)


def sahara(model: HookedTransformer, base: BaseRun, *, steps: int = 3, ablation: str = "query", scale: float = SCALE,
           candidates: Sequence[tuple[int, int]] | None = None, first_angles: HeadTable | None = None,
           progress: bool | None = None) -> pd.DataFrame:
    """Greedy head-set search: at each step add the candidate head whose ablation, together with the
    set so far, gives the largest angle (`subspace_angle`) against the base representations.
    candidates default to every head; `first_angles` (a table with sahara_angle, e.g. from `ships`)
    stands in for step 1. Returns one row per step: step, head, label, angle, set."""
    cfg = model.cfg
    pool = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)] if candidates is None else list(candidates)
    chosen: list[tuple[int, int]] = []
    rows = []
    for step in range(1, steps + 1):
        if step == 1 and first_angles is not None:
            angles = {(int(l), int(h)): float(a) for l, h, a in
                      zip(first_angles.df["layer"], first_angles.df["head"], first_angles.df["sahara_angle"])
                      if (int(l), int(h)) in set(pool)}
        else:
            angles = {}
            left = [c for c in pool if c not in chosen]
            for cand in progress_bar(left, f"Sahara step {step}", progress, unit="head"):
                final, _ = ablated_run(model, base, chosen + [cand], ablation, scale=scale)
                angles[cand] = subspace_angle(base.final, final)
        best = max(angles, key=lambda c: (angles[c], -c[0], -c[1]))
        chosen.append(best)
        rows.append({"step": step, "layer": best[0], "head": best[1], "label": HeadId(*best).label,
                     "angle": angles[best], "set": ",".join(HeadId(l, h).label for l, h in chosen)})
        pool = [c for c in pool if c != best]
        if not pool:
            break
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# generation and the refusal check


def generate(model: HookedTransformer, prompts: Sequence[str], *, max_new_tokens: int = 32,
             heads: Sequence[tuple[int, int]] = (), ablation: str = "query", scale: float = SCALE,
             mean_z: torch.Tensor | None = None, template: bool = True, batch_size: int = 64) -> list[str]:
    """Greedy answers to `prompts` (chat template), `heads` ablated, batched: the shared prefix once,
    then the suffixes left-padded in the middle (positions and attention skip the padding)."""
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        out += _generate_batch(model, list(prompts[start:start + batch_size]), max_new_tokens, heads, ablation, scale,
                               mean_z, template)
    return out


def _generate_batch(model, prompts, max_new_tokens, heads, ablation, scale, mean_z, template) -> list[str]:
    batch = chat_batch(model, prompts, template=template)
    stops = stop_token_ids(model)
    texts = []
    for row in generate_tokens(model, batch, max_new_tokens=max_new_tokens, heads=heads, ablation=ablation,
                               scale=scale, mean_z=mean_z):
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        texts.append(model.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


def generate_tokens(model: HookedTransformer, batch: PromptBatch, *, max_new_tokens: int = 32,
                    heads: Sequence[tuple[int, int]] = (), ablation: str = "query", scale: float = SCALE,
                    mean_z: torch.Tensor | None = None) -> list[list[int]]:
    """Greedy continuation of every prompt of `batch` (up to max_new_tokens, all rows stepping
    together until each has produced a stop token): token ids per prompt, stop token included."""
    cfg = model.cfg
    B, S, P = len(batch), batch.suffix.shape[1], len(batch.prefix)
    # left-pad the suffixes: real tokens end at the same column
    shift = S - batch.lengths
    cols = (torch.arange(S)[None, :] - shift[:, None]) % S
    suffix = torch.gather(batch.suffix, 1, cols)
    real = torch.arange(S)[None, :] >= shift[:, None]
    cache = KVCache(cfg.n_layers, reserve=max_new_tokens + 1)
    hooks = ablation_hooks(model, heads, ablation, scale=scale, mean_z=mean_z) if heads else []
    stops = torch.tensor(sorted(stop_token_ids(model)), dtype=torch.long)
    tokens = torch.zeros(B, 0, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks), decode_threads(cfg.device, B * S + P):
        if P:
            run_cached(model, batch.prefix[None], cache)
        cache.mask = torch.cat([torch.ones(B, P, dtype=torch.long), real.long(),
                                torch.ones(B, max_new_tokens + 1, dtype=torch.long)], 1).to(cfg.device)
        logits = run_cached(model, suffix, cache)
        with decode_threads(cfg.device, B):
            for _ in range(max_new_tokens):
                nxt = logits.argmax(-1).cpu()
                tokens = torch.cat([tokens, nxt[:, None]], 1)
                done |= torch.isin(nxt, stops)
                if bool(done.all()):
                    break
                logits = run_cached(model, nxt[:, None], cache)
    return tokens.tolist()


def refusal_check(
    model: HookedTransformer,
    table: HeadTable,
    *,
    metric: str = "ships",
    ks: Sequence[int] = (1, 3, 5),
    draws: int = 3,
    seed: int = 0,
    harmful: Sequence[str] | None = None,
    harmless: Sequence[str] | None = None,
    max_new_tokens: int = 32,
    ablation: str = "query",
    scale: float = SCALE,
    phrases: Sequence[str] = REFUSAL_PHRASES,
    progress: bool | None = None,
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Refusal rate on the harmful and harmless sets with the top-k heads by `metric` ablated, vs k
    random other heads (`draws` seeded draws), vs none. Returns (one row per run: k, ablated, draw,
    set, refusal_rate, heads) and the base answers per set."""
    harmful = load_prompts("harmful")["prompt"].tolist() if harmful is None else list(harmful)
    harmless = load_prompts("harmless")["prompt"].tolist() if harmless is None else list(harmless)
    order = table.df.sort_values(metric, ascending=False, kind="stable")
    ranked = list(zip(order["layer"].astype(int), order["head"].astype(int)))
    if min(ks) < 1 or 2 * max(ks) > len(ranked):
        raise InputError(f"each k must lie in 1..{len(ranked) // 2}: k random heads are drawn from the "
                         f"{len(ranked)} - k scored heads outside the top k")
    rng = random.Random(seed)
    runs = [(0, "none", 0, [])]
    for k in ks:
        runs.append((k, f"top {metric}", 0, ranked[:k]))
        runs += [(k, "random", d, rng.sample(ranked[k:], k)) for d in range(draws)]
    rows, base_answers = [], {}
    for k, which, draw, heads in progress_bar(runs, "refusal check", progress, unit="run"):
        for name, prompts in (("harmful", harmful), ("harmless", harmless)):
            answers = generate(model, prompts, max_new_tokens=max_new_tokens, heads=heads, ablation=ablation,
                               scale=scale)
            if k == 0:
                base_answers[name] = answers
            rows.append({"k": k, "ablated": which, "draw": draw, "set": name,
                         "refusal_rate": float(np.mean([is_refusal(a, phrases) for a in answers])),
                         "heads": ",".join(HeadId(l, h).label for l, h in heads)})
    return pd.DataFrame(rows), base_answers


def summary(checks: pd.DataFrame) -> pd.DataFrame:
    """Refusal rate per (k, ablated, set), random draws averaged (mean and min–max)."""
    g = checks.groupby(["k", "ablated", "set"])["refusal_rate"]
    return pd.DataFrame({"refusal_rate": g.mean(), "min": g.min(), "max": g.max(), "runs": g.size()}).reset_index()


# ---------------------------------------------------------------------------------------------
# the analysis: Ships, Sahara and the refusal check, as one typed result


@dataclass(frozen=True)
class SafetyConfig:
    """Options of `safety_analysis` (and the `interp safety` command); sequences are stored as tuples."""

    n_prompts: int = 100                  # harmful prompts of the shipped set scored by Ships (and Sahara)
    layers: tuple[int, ...] | None = None  # score only these layers' heads (None: every head)
    ablation: str = "query"               # query (the paper's), mean or output; see the module docstring
    scale: float = SCALE                  # factor on the ablated head's query (or output)
    sahara_steps: int = 3                 # Sahara greedy steps (0: skip)
    sahara_candidates: int = 20           # Sahara searches the heads with the largest single-head angle
    ks: tuple[int, ...] = (1, 3, 5)       # refusal check: numbers of top-Ships heads ablated (() skips it)
    draws: int = 3                        # refusal check: random draws of k other heads per k
    n_check: int | None = None            # refusal check: prompts per set (None: n_prompts)
    max_new_tokens: int = 32              # refusal check: greedy tokens per answer
    seed: int = 0                         # random head draws

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(self.ks))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def check_prompts(self) -> int:
        """Prompts per set of the refusal check."""
        return self.n_prompts if self.n_check is None else self.n_check


@dataclass(repr=False)  # AnalysisResult's short repr, not every DataFrame
class SafetyResult(AnalysisResult):
    """`table`: one row per scored head (every head unless config.layers) with ships, ships_median
    and sahara_angle as `SAFETY_COLUMNS` says; `table.meta` says what ran (ablation, prompts, shared
    prefix). `per_prompt`: [prompt, layer, head] Ships in nats (NaN for heads not scored).
    `sahara`: one row per greedy step (step, layer, head, label, angle in degrees, set), None when
    skipped. `refusal`: one row per (run, set) with k, ablated, draw, set, refusal_rate, heads, None
    when skipped; `answers`: the unablated answers per set. `categories`: each scored prompt's
    category. `seconds`: wall time per phase."""

    per_prompt: np.ndarray
    sahara: pd.DataFrame | None = None
    refusal: pd.DataFrame | None = None
    answers: dict[str, list[str]] = field(default_factory=dict)
    categories: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    KIND: ClassVar[str] = "safety"

    @property
    def params(self) -> dict[str, Any]:
        """What the run did: the table's meta without its column docs, and the refusal check's prompts per set."""
        meta = {k: v for k, v in self.table.meta.items() if k != "columns"}
        return {**meta, "n_check": self.config.check_prompts if self.config is not None else None}

    def refusal_summary(self) -> pd.DataFrame | None:
        """Refusal rate per (k, ablated, set), random draws averaged (`summary`); None when not run."""
        return None if self.refusal is None else summary(self.refusal)

    def extras(self) -> dict[str, Any]:
        return {"params": self.params, "seconds": dict(self.seconds), "sahara": frame_records(self.sahara),
                "refusal": frame_records(self.refusal), "base_answers": dict(self.answers),
                "categories": list(self.categories)}


def check_safety_args(facts, config: SafetyConfig) -> None:
    """Every option of a safety run against the shipped prompt sets and the model's facts
    (`interp.model_facts.ModelFacts`: layers, heads), before any work."""
    c = config
    if c.ablation not in ABLATIONS:
        raise InputError(f"--ablation {c.ablation!r} is not one of {', '.join(ABLATIONS)}")
    n_shipped = min(len(load_prompts("harmful")), len(load_prompts("harmless")))
    if c.n_prompts > n_shipped:
        raise InputError(f"--prompts {c.n_prompts} is more than the {n_shipped} shipped harmful prompts")
    if c.n_prompts < 1 or (c.n_check is not None and not 1 <= c.n_check <= n_shipped):
        raise InputError(f"--prompts and --check-prompts must lie in 1..{n_shipped}")
    if c.sahara_steps < 0 or c.sahara_candidates < 1 or c.draws < 1 or c.max_new_tokens < 1:
        raise InputError("--sahara-steps must be at least 0; --sahara-candidates, --draws and --max-new-tokens "
                         "at least 1")
    if c.layers is not None:
        if not c.layers:
            raise InputError("--layers names no layer")
        bad = [v for v in c.layers if facts.n_layers is not None and not 0 <= v < facts.n_layers]
        if bad:
            raise InputError(f"--layers {bad[0]} is out of range; {facts.name} has layers 0-{facts.n_layers - 1}")
    n_scored = None if facts.n_heads is None else len(set(c.layers)) * facts.n_heads if c.layers else facts.n_head_total
    if c.ks and (min(c.ks) < 1 or (n_scored is not None and 2 * max(c.ks) > n_scored)):
        raise InputError(f"--ks {','.join(map(str, c.ks))!r}: each k must lie in 1..{(n_scored or 2) // 2} (k random "
                         f"heads are drawn from the {n_scored} scored heads outside the top k)")


def safety_analysis(model: HookedTransformer, config: SafetyConfig | None = None, *, progress: bool | None = None,
                    **fields: Any) -> SafetyResult:
    """Ships on the first `n_prompts` shipped harmful prompts (every head, or those of `layers`),
    Sahara's greedy search over the `sahara_candidates` heads with the largest first-step angle,
    and the refusal check (top-k by Ships vs k random heads) on `n_check` prompts of each set.
    `fields` are SafetyConfig fields, for `safety_analysis(model, n_prompts=10, ks=())`."""
    import time

    from interp.model_facts import ModelFacts

    if config is not None and fields:
        raise InputError(f"give a SafetyConfig or its fields, not both (got {', '.join(sorted(fields))})")
    c = config or SafetyConfig(**fields)
    check_safety_args(ModelFacts.of(model), c)
    harmful, harmless = load_prompts("harmful"), load_prompts("harmless")
    heads = None if c.layers is None else [(l, h) for l in sorted(set(c.layers)) for h in range(model.cfg.n_heads)]
    seconds = {}
    t = time.perf_counter()
    scored = ships(model, harmful["prompt"].tolist()[: c.n_prompts], ablation=c.ablation, scale=c.scale, heads=heads,
                   progress=progress)
    seconds["ships"] = time.perf_counter() - t
    search = None
    if c.sahara_steps > 0:
        t = time.perf_counter()
        ranked = scored.table.top("sahara_angle", c.sahara_candidates).df
        candidates = list(zip(ranked["layer"].astype(int), ranked["head"].astype(int)))
        search = sahara(model, scored.base, steps=min(c.sahara_steps, len(candidates)), ablation=c.ablation,
                        scale=c.scale, candidates=candidates, first_angles=scored.table, progress=progress)
        seconds["sahara"] = time.perf_counter() - t
    checks, answers = None, {}
    if c.ks:
        t = time.perf_counter()
        n = c.check_prompts
        checks, answers = refusal_check(model, scored.table, ks=c.ks, draws=c.draws, seed=c.seed,
                                        harmful=harmful["prompt"].tolist()[:n],
                                        harmless=harmless["prompt"].tolist()[:n],
                                        max_new_tokens=c.max_new_tokens, ablation=c.ablation, scale=c.scale,
                                        progress=progress)
        seconds["refusal_check"] = time.perf_counter() - t
    return SafetyResult(scored.table, c, scored.per_prompt, search, checks, answers,
                        harmful["category"].tolist()[: c.n_prompts], seconds)


__all__ = [
    "ABLATIONS",
    "SAFETY_COLUMNS",
    "SCALE",
    "BaseRun",
    "PromptBatch",
    "SafetyConfig",
    "SafetyResult",
    "ShipsResult",
    "ablated_run",
    "ablation_hooks",
    "base_run",
    "chat_batch",
    "check_safety_args",
    "generate",
    "kl_divergence",
    "load_prompts",
    "refusal_check",
    "safety_analysis",
    "sahara",
    "ships",
    "subspace_angle",
    "summary",
]
