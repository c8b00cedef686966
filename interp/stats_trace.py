"""Statistics traces: per-head attention statistics at any context length, no pattern kept.

Prompts run under `kernel_attention`, batched only with prompts of the same length (no padding); per layer the kernels give, for
every head and query, entropy, largest probability and its key, mass on the first
`sink_tokens` keys and on given spans, and per key the attention received and α (received over
the number of queries that see the key, Gu et al.). Memory grows linearly in the prompt length.
α of the first token comes from the per-query sink mass (α_0 = Σ_i sink_mass_i / #queries that
see key 0); `received=True` adds the key-major pass for α of every key (`alpha`, [layer, head, key]).
A model with a feature the kernels cannot express (soft-capped scores, ALiBi, learned sinks: see
`interp.kernel_attention.unsupported_features`) gets the same statistics computed eagerly from its
attention pattern instead (O(pos²) memory per layer; `lse` is then NaN), never a wrong number.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from interp.capture import tokenize_prompts
from interp.head_table import HeadTable
from interp.kernel_attention import (
    LayerStats,
    kernel_attention,
    queries_per_key,
    unsupported_features,
)
from interp.progress import progress_bar

PER_QUERY = ("entropy", "max_prob", "argmax", "sink_mass")


@dataclass
class StatsTrace:
    """Per prompt, a dict of name → tensor [layer, head, pos] (span_mass: [layer, head, pos, span])."""

    model_name: str
    tokens: list[torch.Tensor]
    per_prompt: list[dict[str, torch.Tensor]]
    table: HeadTable


def stats_trace(
    model: HookedTransformer,
    prompts: Iterable[str | Sequence[int] | torch.Tensor],
    *,
    sink_tokens: int = 1,
    spans: Sequence[tuple[int, int]] | None = None,
    eps: float = 0.3,
    received: bool = False,
    backend: str = "auto",
    batch_tokens: int = 4096,
    out_dir: str | Path | None = None,
    progress: bool | None = None,
) -> StatsTrace:
    """Trace `prompts`; return per-prompt statistics and a HeadTable of per-head means:
    entropy, max_prob, sink_mass (means over queries and prompts), alpha_first (α of the first
    token, mean over prompts) and sink_rate (fraction of prompts with α_first > eps).
    alpha_first needs sink_tokens=1 (else it measures the first sink_tokens keys together)."""
    tokens = tokenize_prompts(model, prompts)
    per_prompt: list[dict[str, torch.Tensor]] = [{} for _ in tokens]
    groups = _equal_length_batches(tokens, batch_tokens)
    for group in progress_bar(groups, "stats trace", progress, unit="batch"):
        batch = torch.stack([tokens[i] for i in group])
        for i, one in zip(group, _trace_batch(model, batch, sink_tokens, spans, received, backend)):
            if out_dir is not None:
                _save(Path(out_dir), i, one)
                one = {k: v for k, v in one.items() if k != "span_mass"}
            per_prompt[i] = one
    table = _summary(model, per_prompt, eps, sink_tokens)
    if out_dir is not None:
        index = dict(schema="interp.stats/1", model=model.cfg.model_name, lengths=[len(t) for t in tokens],
                     fields=list(per_prompt[0]), shape="[layer, head, pos]", sink_tokens=sink_tokens, spans=spans)
        (Path(out_dir) / "stats.json").write_text(json.dumps(index, indent=1))
    return StatsTrace(model.cfg.model_name, tokens, per_prompt, table)


def _equal_length_batches(tokens: list[torch.Tensor], batch_tokens: int) -> list[list[int]]:
    """Prompt indices grouped by exact length (no padding), at most `batch_tokens` tokens a batch."""
    by_length: dict[int, list[int]] = {}
    for i, t in enumerate(tokens):
        by_length.setdefault(len(t), []).append(i)
    batches = []
    for n, group in sorted(by_length.items()):
        size = max(1, batch_tokens // n)
        batches.extend(group[j:j + size] for j in range(0, len(group), size))
    return batches


def _trace_batch(model, batch: torch.Tensor, sink_tokens, spans, received, backend) -> list[dict[str, torch.Tensor]]:
    """Run equal-length prompts [batch, pos] under kernel attention (or, for a model the kernels
    cannot express, e.g. soft-capped scores, eagerly from hook_pattern); one dict per prompt of
    name → [layer, head, pos] (alpha_first: [layer, head])."""
    layers: dict[int, LayerStats] = {}
    if unsupported_features(model):
        layers = _eager_layer_stats(model, batch, sink_tokens, spans, received)
    else:
        with torch.no_grad(), kernel_attention(model, sink_tokens=sink_tokens, spans=spans, received=received,
                                               backend=backend, on_layer=lambda l, s: layers.__setitem__(l, s)):
            model(batch.to(model.cfg.device), return_type=None)
    order = sorted(layers)
    stacked = {name: torch.stack([getattr(layers[l].stats, name) for l in order], 1) for name in PER_QUERY}
    stacked["alpha_first"] = stacked["sink_mass"].sum(-1) / queries_per_key(model, batch.shape[1])[:, :1]
    if received:
        stacked["alpha"] = torch.stack([layers[l].alpha for l in order], 1)
    if spans:
        stacked["span_mass"] = torch.stack([layers[l].stats.span_mass for l in order], 1)
    return [{name: value[b] for name, value in stacked.items()} for b in range(batch.shape[0])]


def _eager_layer_stats(model, batch: torch.Tensor, sink_tokens: int, spans, received: bool) -> dict[int, LayerStats]:
    """The kernels' statistics computed from TransformerLens' own attention pattern [batch, head,
    query, key] (O(pos²) memory per layer): the path for features the kernels do not express."""
    import interp_kernels

    out: dict[int, LayerStats] = {}
    n = batch.shape[1]
    seen = queries_per_key(model, n)  # [layer, key] queries that see each key

    def keep(pattern: torch.Tensor, hook) -> None:
        p = pattern.detach().float()
        layer = hook.layer()
        plogp = torch.where(p > 0, p * p.clamp_min(1e-45).log(), torch.zeros_like(p))
        max_prob, argmax = p.max(-1)
        span_cols = [p[..., max(0, a):min(b, n)].sum(-1) for a, b in (spans or [])]
        span_mass = torch.stack(span_cols, -1) if span_cols else p.new_zeros(*p.shape[:3], 0)
        stats = interp_kernels.AttentionStats(lse=p.new_full(p.shape[:3], float("nan")), entropy=-plogp.sum(-1),
                                       max_prob=max_prob, argmax=argmax, sink_mass=p[..., :sink_tokens].sum(-1),
                                       span_mass=span_mass)
        got = p.sum(-2) if received else None  # [batch, head, key]
        alpha = got / seen[layer].clamp_min(1).to(got) if received else None
        out[layer] = LayerStats(stats.to("cpu"), None if got is None else got.cpu(), None if alpha is None else alpha.cpu())

    with torch.no_grad():
        model.run_with_hooks(batch.to(model.cfg.device), return_type=None,
                             fwd_hooks=[(lambda name: name.endswith("attn.hook_pattern"), keep)])
    return out


def _save(folder: Path, i: int, one: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in one.items()}, str(folder / f"stats-{i:05d}.safetensors"))


def _summary(model, per_prompt: list[dict[str, torch.Tensor]], eps: float, sink_tokens: int) -> HeadTable:
    mean_over_tokens = lambda name: torch.cat([p[name] for p in per_prompt], dim=-1).float().mean(-1)
    alpha_first = torch.stack([p["alpha_first"] for p in per_prompt])  # [prompt, layer, head]
    return HeadTable.from_arrays(
        {"entropy": mean_over_tokens("entropy"), "max_prob": mean_over_tokens("max_prob"),
         "sink_mass": mean_over_tokens("sink_mass"), "alpha_first": alpha_first.mean(0),
         "sink_rate": (alpha_first > eps).float().mean(0)},
        model=model.cfg.model_name,
        meta={"analysis": "stats_trace", "n_prompts": len(per_prompt), "eps": eps, "sink_tokens": sink_tokens,
              "lengths": [p["entropy"].shape[-1] for p in per_prompt]},
    )
