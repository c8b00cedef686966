"""Active-dormant heads (Guo et al. 2024): heads that switch between writing something and
parking their attention on the sink token, depending on the input domain.

A head is called dormant on a domain when its attention collapses onto the first token
(mean sink mass ≥ `sink_threshold`) and its output is small (mean ‖z_h W_O‖ at most
`norm_ratio` × its largest mean over the domains); active otherwise. The paper gives no single
threshold, so both are parameters and `domain_head_stats` returns the distributions they are
chosen from. `causal_check` ablates each switching head (its z set to zero) on a domain where it
is dormant and on one where it is active and reports the change in next-token loss for both.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd
import torch
from transformer_lens import HookedTransformer
from transformer_lens.utils import lm_cross_entropy_loss

from interp import InputError, capture
from interp.head_table import HeadTable, head_label
from interp.progress import progress_bar
from interp.results import AnalysisResult, config_dict, frame_records
from interp.texts import DOMAINS, domain_texts, repeated_token_prompts


def domain_prompts(model: HookedTransformer, domains: Sequence[str], n: int, max_tokens: int, seed: int = 0) -> dict:
    """domain → list of 1-D token tensors (texts tokenised with the model's defaults, cut to max_tokens)."""
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise InputError(f"unknown domain {unknown[0]!r}; choose from {', '.join(DOMAINS)}")
    prompts = {}
    for d in domains:
        if d == "repeated":
            prompts[d] = repeated_token_prompts(model, n, max_tokens, seed=seed)
        else:
            prompts[d] = [model.to_tokens(t)[0, :max_tokens].cpu() for t in domain_texts(d, n, seed=seed)]
    return prompts


def domain_head_stats(model: HookedTransformer, prompts: dict, *, progress: bool | None = None) -> pd.DataFrame:
    """Per (domain, layer, head): mean sink mass (attention on token 0) and mean output norm
    ‖z_h W_O‖, over every query position but the first (which can only attend to token 0)."""
    rows = []
    for domain, tokens in prompts.items():
        cap = capture(model, tokens, names=["sink_mass", "result_norm"], progress=progress)
        for layer in cap.layers:
            mass = torch.cat([cap.get("sink_mass", layer, i)[1:] for i in range(len(tokens))]).mean(0)
            norm = torch.cat([cap.get("result_norm", layer, i)[1:] for i in range(len(tokens))]).mean(0)
            for head in cap.heads:
                rows.append({"domain": domain, "layer": layer, "head": head, "label": head_label(layer, head),
                             "sink_mass": mass[head].item(), "output_norm": norm[head].item()})
    stats = pd.DataFrame(rows)
    stats["norm_ratio"] = stats["output_norm"] / stats.groupby("label")["output_norm"].transform("max")
    return stats


def classify(stats: pd.DataFrame, *, sink_threshold: float = 0.8, norm_ratio: float = 0.5) -> pd.DataFrame:
    """Adds `dormant` (bool) to the per-(domain, head) stats."""
    out = stats.copy()
    out["dormant"] = (out["sink_mass"] >= sink_threshold) & (out["norm_ratio"] <= norm_ratio)
    return out


def switching_heads(classified: pd.DataFrame) -> pd.DataFrame:
    """Heads dormant on some domain and active on another. Per head: the domains of each kind,
    and the dormant domain with the highest sink mass and active domain with the lowest."""
    rows = []
    for label, group in classified.groupby("label", sort=False):
        dormant, active = group[group["dormant"]], group[~group["dormant"]]
        if len(dormant) and len(active):
            rows.append({"label": label, "layer": int(group["layer"].iloc[0]), "head": int(group["head"].iloc[0]),
                         "dormant_on": ",".join(dormant["domain"]), "active_on": ",".join(active["domain"]),
                         "dormant_domain": dormant.loc[dormant["sink_mass"].idxmax(), "domain"],
                         "active_domain": active.loc[active["sink_mass"].idxmin(), "domain"]})
    return pd.DataFrame(rows, columns=["label", "layer", "head", "dormant_on", "active_on", "dormant_domain", "active_domain"])


BATCH_TOKENS = 512  # prompts of one length run together up to this many tokens (logits: batch x len x vocab)


def _same_length_batches(tokens: list[torch.Tensor]) -> list[torch.Tensor]:
    """The prompts grouped by length and stacked, at most BATCH_TOKENS tokens a batch: each batch
    [batch, pos] needs no padding, so every prompt computes what it computes alone."""
    by_length: dict[int, list[torch.Tensor]] = {}
    for t in tokens:
        by_length.setdefault(len(t), []).append(t)
    batches = []
    for length, group in by_length.items():
        size = max(1, BATCH_TOKENS // length)
        batches += [torch.stack(group[i:i + size]) for i in range(0, len(group), size)]
    return batches


def _prompt_losses(logits: torch.Tensor, tokens: torch.Tensor) -> list[float]:
    """Each prompt's mean next-token loss (nats): logits [batch, pos, vocab], tokens [batch, pos]."""
    return lm_cross_entropy_loss(logits, tokens.to(logits.device), per_token=True).mean(-1).tolist()


def _clean_runs(model: HookedTransformer, tokens: list[torch.Tensor], layers: set[int]) -> tuple[float, list[tuple]]:
    """Mean next-token loss (nats) over one domain's prompts, and per same-length batch its tokens
    [batch, pos] and the residual stream entering each of `layers` (for reruns from there)."""
    names = {f"blocks.{l}.hook_resid_pre": l for l in layers}
    losses, batches = [], []
    with torch.no_grad():
        for batch in _same_length_batches(tokens):
            logits, cache = model.run_with_cache(batch.to(model.cfg.device), names_filter=list(names))
            losses += _prompt_losses(logits, batch)
            batches.append((batch, {l: cache[name] for name, l in names.items()}))
    return sum(losses) / len(losses), batches


def _ablated_loss(model: HookedTransformer, batches: list[tuple], layer: int, head: int) -> float:
    """Mean next-token loss with head `head` of `layer` zeroed: each batch rerun from its clean residual
    at `layer` (the layers before it do not change), as TransformerLens' forward with start_at_layer."""
    losses = []
    with torch.no_grad(), model.hooks(fwd_hooks=[_zero_head(layer, head)]):
        for batch, resid in batches:
            losses += _prompt_losses(model(resid[layer], start_at_layer=layer, return_type="logits"), batch)
    return sum(losses) / len(losses)


def _zero_head(layer: int, head: int):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    return (f"blocks.{layer}.attn.hook_z", hook)


def causal_check(model: HookedTransformer, switching: pd.DataFrame, prompts: dict, *,
                 progress: bool | None = None) -> pd.DataFrame:
    """For every switching head: next-token loss increase when its output is zeroed, on its most
    dormant domain and on its most active domain (`delta_dormant`, `delta_active`; each a mean over the
    domain's prompts). Each domain's prompts run once clean, prompts of one length batched without
    padding; an ablated run starts at the head's layer from the clean residual there."""
    layers: dict[str, set[int]] = {}
    for row in switching.itertuples():
        for domain in (row.dormant_domain, row.active_domain):
            layers.setdefault(domain, set()).add(int(row.layer))
    clean = {d: _clean_runs(model, prompts[d], ls) for d, ls in layers.items()}
    rows = []
    for row in progress_bar(list(switching.itertuples()), "causal check", progress, unit="head"):
        delta = {}
        for domain in (row.dormant_domain, row.active_domain):
            base, batches = clean[domain]
            delta[domain] = _ablated_loss(model, batches, int(row.layer), int(row.head)) - base
        rows.append({"label": row.label, "dormant_domain": row.dormant_domain, "delta_dormant": delta[row.dormant_domain],
                     "active_domain": row.active_domain, "delta_active": delta[row.active_domain]})
    return pd.DataFrame(rows, columns=["label", "dormant_domain", "delta_dormant", "active_domain", "delta_active"])


@dataclass(frozen=True)
class DormantConfig:
    """Options of `active_dormant` (the paper gives no threshold: both are parameters)."""

    domains: tuple[str, ...] = tuple(DOMAINS)
    n: int = 8                    # texts per domain
    max_tokens: int = 128         # each cut to this many tokens
    sink_threshold: float = 0.8   # dormant: mean attention on the first token at least this
    norm_ratio: float = 0.5       # dormant: mean output norm at most this x the head's largest over the domains
    seed: int = 0
    check: bool = True            # ablate each switching head where dormant and where active


@dataclass(repr=False)  # AnalysisResult's short repr, not every DataFrame
class DormantResult(AnalysisResult):
    """`table`, one row per head: `max_sink_mass` and `min_norm_ratio` over the domains, `dormant_domains`
    (how many domains it is dormant on), `switching` (1 when dormant on some and active on others),
    `delta_dormant` / `delta_active` (next-token loss change, nats, when its output is zeroed where
    dormant / active; NaN for heads not checked). `stats`: per (domain, head) sink mass, output norm,
    norm ratio and the call; `switching`: one row per switching head; `causal`: the ablation check."""

    stats: pd.DataFrame
    switching: pd.DataFrame
    causal: pd.DataFrame | None

    KIND: ClassVar[str] = "dormant"

    def extras(self) -> dict[str, Any]:
        return {"params": config_dict(self.config), "per_domain": frame_records(self.stats),
                "switching": frame_records(self.switching), "causal": frame_records(self.causal)}


def active_dormant(model: HookedTransformer, config: DormantConfig | None = None, *, progress: bool | None = None,
                   **fields: Any) -> DormantResult:
    """The whole analysis: per-domain stats and calls, switching heads, and (check=True) the
    ablation check. `fields` are DormantConfig fields (`active_dormant(model, n=3, domains=[...])`)."""
    if "domains" in fields:
        fields["domains"] = tuple(fields["domains"])
    c = config or DormantConfig(**fields)
    prompts = domain_prompts(model, c.domains, c.n, c.max_tokens, c.seed)
    stats = classify(domain_head_stats(model, prompts, progress=progress), sink_threshold=c.sink_threshold,
                     norm_ratio=c.norm_ratio)
    switching = switching_heads(stats)
    causal = causal_check(model, switching, prompts, progress=progress) if c.check else None
    return DormantResult(_head_table(model, stats, switching, causal), c, stats, switching, causal)


def _head_table(model: HookedTransformer, stats: pd.DataFrame, switching: pd.DataFrame,
                causal: pd.DataFrame | None) -> HeadTable:
    per_head = stats.groupby(["layer", "head"]).agg(max_sink_mass=("sink_mass", "max"),
                                                    min_norm_ratio=("norm_ratio", "min"),
                                                    dormant_domains=("dormant", "sum")).reset_index()
    per_head["dormant_domains"] = per_head["dormant_domains"].astype(float)
    labels = [head_label(l, h) for l, h in zip(per_head["layer"], per_head["head"])]
    per_head["switching"] = [float(x in set(switching["label"])) for x in labels]
    deltas = causal.set_index("label") if causal is not None and len(causal) else None
    for column in ("delta_dormant", "delta_active"):
        per_head[column] = [float(deltas.loc[x, column]) if deltas is not None and x in deltas.index else float("nan")
                            for x in labels]
    return HeadTable(per_head, model=model.cfg.model_name, meta={"analysis": "active_dormant"})
