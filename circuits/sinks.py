"""Attention sinks and extreme tokens, as their authors define them (../shared/METHODS.md).

- `sink_scores`: α_k and Sink_k^ε of Gu et al. (first-token sink by default, T = 64).
- `hidden_sinks`: ACT's later-token sinks (Yu et al.): α_j > 0.1 for j ≥ 1.
- `extreme_tokens`: value-state drains and residual-state peaks per layer (Guo et al.).
- `massive_activations`: residual entries above 100 and ~1000× the median magnitude (Sun et al.).
- `act_calibration` / `calibration_effect`: ACT's calibration as a switchable intervention and
  its measured effect on next-token loss.
- `sinks_analysis` (`SinksConfig` → `SinksResult`): all of the above on one set of texts, as the
  `interp sinks` command and the atlas section run it.

α_j is the attention key j receives divided by the number of queries that see it (with causal
attention and no window: the mean of A[i, j] over i ≥ j). It is computed by the fused kernels,
so no attention pattern is materialised, at any length.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from interp import HeadTable, InputError, capture
from interp.capture import tokenize_prompts
from interp.head_table import head_label
from interp.kernel_attention import queries_per_key
from interp.results import AnalysisResult, frame_records
from interp.stats_trace import stats_trace


def _cut(model: HookedTransformer, texts: Iterable, max_tokens: int, min_tokens: int = 2) -> list[torch.Tensor]:
    """Each text tokenised with the model's defaults and cut to `max_tokens`; too-short ones dropped."""
    tokens = [t[:max_tokens] for t in tokenize_prompts(model, texts)]
    kept = [t for t in tokens if len(t) >= min_tokens]
    if not kept:
        raise InputError(f"no text has at least {min_tokens} tokens; give longer texts")
    return kept


def sink_scores(model: HookedTransformer, texts: Sequence, *, k: int = 0, eps: float = 0.3, max_tokens: int = 64,
                backend: str = "auto", progress: bool | None = None) -> HeadTable:
    """Gu et al.'s first-token sink (or the sink at key k) per head.

    Each text is cut to T = `max_tokens` tokens. Columns: `alpha` (mean over samples of α_k) and
    `sink_rate` (fraction of samples with α_k > eps). `meta["sink_ratio"]` is the model's
    Sink_k^ε = 100 × the mean sink_rate over heads.
    """
    if k < 0:
        raise InputError(f"k={k}: the sink position must be a token index ≥ 0")
    tokens = _cut(model, texts, max_tokens, min_tokens=k + 1)
    trace = stats_trace(model, tokens, received=k != 0, backend=backend, progress=progress)
    alpha = torch.stack([p["alpha"][..., k] if k else p["alpha_first"] for p in trace.per_prompt])  # [sample, layer, head]
    rate = (alpha > eps).float().mean(0)
    return HeadTable.from_arrays(
        {"alpha": alpha.mean(0), "sink_rate": rate}, model=model.cfg.model_name,
        meta={"analysis": "sink_scores", "k": k, "eps": eps, "T": max_tokens, "n_samples": len(tokens),
              "sink_ratio": 100.0 * rate.mean().item()},
    )


def hidden_sinks(model: HookedTransformer, texts: Sequence, *, threshold: float = 0.1, max_tokens: int = 256,
                 min_queries: int = 1, backend: str = "auto", progress: bool | None = None) -> pd.DataFrame:
    """ACT's hidden sinks: keys j ≥ 1 whose α_j exceeds `threshold`, per head and text.

    min_queries: ignore keys seen by fewer queries (ACT's code uses 1, so the last keys, seen by
    few queries, can qualify on little evidence). Rows: prompt, position, token, layer, head,
    label, alpha, n_queries.
    """
    tokens = _cut(model, texts, max_tokens)
    trace = stats_trace(model, tokens, received=True, backend=backend, progress=progress)
    rows = []
    for i, (toks, stats) in enumerate(zip(tokens, trace.per_prompt)):
        alpha = stats["alpha"]  # [layer, head, key]
        n = len(toks)
        n_queries = queries_per_key(model, n)  # [layer, key]
        hit = (alpha > threshold) & (n_queries[:, None, :] >= min_queries)
        hit[..., 0] = False
        strings = model.to_str_tokens(toks)
        for layer, head, pos in hit.nonzero().tolist():
            rows.append({"prompt": i, "position": pos, "token": strings[pos], "layer": layer, "head": head,
                         "label": head_label(layer, head), "alpha": alpha[layer, head, pos].item(),
                         "n_queries": int(n_queries[layer, pos])})
    return pd.DataFrame(rows, columns=["prompt", "position", "token", "layer", "head", "label", "alpha", "n_queries"])


def extreme_tokens(model: HookedTransformer, texts: Sequence, *, sink_position: int = 0, max_tokens: int = 128,
                   progress: bool | None = None) -> pd.DataFrame:
    """Guo et al.'s value-state drain and residual-state peak, per layer.

    For the token at `sink_position` against every other token: mean value-vector norm over heads
    (`v_norm_sink`, `v_norm_other`, ratio `value_drain` = sink/other; < 1 is a drain) and
    residual-stream norm entering the layer (`resid_norm_sink`, `resid_norm_other`, ratio
    `resid_peak` = sink/other; > 1 is a peak). "other" is the median over positions and texts.
    """
    tokens = _cut(model, texts, max_tokens, min_tokens=sink_position + 2)
    cap = capture(model, tokens, names=["v_norm", "resid_norm"], progress=progress)
    rows = []
    for layer in cap.layers:
        v = [cap.get("v_norm", layer, i).mean(-1) for i in range(len(tokens))]  # [pos] per text
        r = [cap.get("resid_norm", layer, i) for i in range(len(tokens))]
        v_sink, v_other = _split(v, sink_position)
        r_sink, r_other = _split(r, sink_position)
        rows.append({"layer": layer, "v_norm_sink": v_sink, "v_norm_other": v_other, "value_drain": v_sink / v_other,
                     "resid_norm_sink": r_sink, "resid_norm_other": r_other, "resid_peak": r_sink / r_other})
    return pd.DataFrame(rows)


def _split(per_text: list[torch.Tensor], position: int) -> tuple[float, float]:
    """Mean at `position` over texts, and the median over every other position."""
    sink = torch.stack([x[position] for x in per_text]).mean().item()
    other = torch.cat([torch.cat([x[:position], x[position + 1:]]) for x in per_text]).median().item()
    return sink, other


def massive_activations(model: HookedTransformer, texts: Sequence, *, threshold: float = 100.0, ratio: float = 1000.0,
                        max_tokens: int = 128, progress: bool | None = None) -> pd.DataFrame:
    """Sun et al.'s massive activations: residual-stream entries (entering each layer) with
    |x| > threshold and |x| > ratio × the median |x| of that layer and text.
    Rows: layer, prompt, position, token, dim, value, ratio_to_median."""
    tokens = _cut(model, texts, max_tokens)
    cap = capture(model, tokens, names=["resid"], progress=progress)
    rows = []
    for layer in cap.layers:
        for i, toks in enumerate(tokens):
            x = cap.get("resid", layer, i)  # [pos, d_model]
            median = x.abs().median().item()
            hits = ((x.abs() > threshold) & (x.abs() > ratio * median)).nonzero().tolist()
            strings = model.to_str_tokens(toks) if hits else []
            for pos, dim in hits:
                value = x[pos, dim].item()
                rows.append({"layer": layer, "prompt": i, "position": pos, "token": strings[pos], "dim": dim,
                             "value": value, "ratio_to_median": abs(value) / median})
    return pd.DataFrame(rows, columns=["layer", "prompt", "position", "token", "dim", "value", "ratio_to_median"])


def calibrate_pattern(pattern: torch.Tensor, *, beta: float = 0.4, threshold: float = 0.1) -> torch.Tensor:
    """ACT's calibration of one head's causal pattern [query, key] (rows sum to 1).

    Sinks: keys j ≥ 1 with α_j = Σ_i A[i, j] / (N − j) > threshold. Their attention is scaled by
    beta in every row and the removed mass is given to the row's other keys in proportion to
    their attention. Rows with no other key to receive it are left as they are.
    """
    n = pattern.shape[-1]
    alpha = pattern.sum(-2) / torch.arange(n, 0, -1, device=pattern.device, dtype=pattern.dtype)
    sinks = alpha > threshold
    sinks[0] = False
    if not sinks.any():
        return pattern
    sink_mass = (pattern * sinks).sum(-1, keepdim=True)  # [query, 1]
    others = pattern * ~sinks
    others_total = others.sum(-1, keepdim=True)
    movable = others_total > 0
    calibrated = pattern * torch.where(sinks, beta, 1.0) + (1 - beta) * sink_mass * others / others_total.clamp_min(1e-30)
    return torch.where(movable, calibrated, pattern)


@contextlib.contextmanager
def act_calibration(model: HookedTransformer, heads: Iterable[tuple[int, int]], *, beta: float = 0.4,
                    threshold: float = 0.1) -> Iterator[None]:
    """Within the block, the chosen (layer, head)s have their attention calibrated as ACT does.

    Works on the eager path (hook_pattern) for unpadded inputs, one sequence or equal lengths."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise InputError(f"head L{layer}H{head} does not exist in {model.cfg.model_name}")
        by_layer.setdefault(layer, []).append(head)

    def hook_for(chosen: list[int]):
        def hook(pattern, hook):
            out = pattern.clone()
            for b in range(pattern.shape[0]):
                for h in chosen:
                    out[b, h] = calibrate_pattern(pattern[b, h], beta=beta, threshold=threshold)
            return out

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_pattern", hook_for(chosen)) for layer, chosen in by_layer.items()]
    with model.hooks(fwd_hooks=hooks):
        yield


def calibration_effect(model: HookedTransformer, heads: Sequence[tuple[int, int]], texts: Sequence, *,
                       beta: float = 0.4, threshold: float = 0.1, max_tokens: int = 256) -> pd.DataFrame:
    """Next-token loss (nats/token) of each text without and with ACT calibration on `heads`.
    Rows: prompt, n_tokens, loss_base, loss_calibrated, delta (negative = calibration helps)."""
    rows = []
    for i, toks in enumerate(_cut(model, texts, max_tokens)):
        with torch.no_grad():
            base = model(toks[None], return_type="loss").item()
            with act_calibration(model, heads, beta=beta, threshold=threshold):
                calibrated = model(toks[None], return_type="loss").item()
        rows.append({"prompt": i, "n_tokens": len(toks), "loss_base": base, "loss_calibrated": calibrated,
                     "delta": calibrated - base})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# the analysis: every sink measurement on one set of texts, as one typed result


@dataclass(frozen=True)
class SinksConfig:
    """Options of `sinks_analysis` (defaults: Gu et al.'s k = 0, eps = 0.3, T = 64; ACT's 0.1)."""

    k: int = 0                      # the sink position whose alpha is scored
    eps: float = 0.3                # Sink_k^eps threshold on alpha_k
    max_tokens: int = 64            # T: each text cut to this many tokens (hidden sinks: 4 T, extremes: 2 T)
    hidden_threshold: float = 0.1   # ACT: a later token is a sink in a head when its alpha exceeds this
    hidden_texts: int = 8           # texts used for hidden sinks and massive activations


@dataclass(repr=False)  # AnalysisResult's short repr, not every DataFrame
class SinksResult(AnalysisResult):
    """`table`: per head `alpha` (mean alpha_k over samples) and `sink_rate` (share of samples with
    alpha_k > eps); `hidden`: ACT's later-token sinks (one row per (text, head, token)); `extreme`:
    value-state drain and residual-state peak per layer; `massive`: massive activations."""

    hidden: pd.DataFrame
    extreme: pd.DataFrame
    massive: pd.DataFrame

    KIND: ClassVar[str] = "sinks"

    @property
    def sink_ratio(self) -> float:
        """Sink_k^eps in percent: 100 x the mean sink_rate over heads."""
        return float(self.table.meta["sink_ratio"])

    def extras(self) -> dict[str, Any]:
        return {"sink_ratio": self.sink_ratio, "hidden_sinks": frame_records(self.hidden),
                "extreme_tokens": frame_records(self.extreme), "massive_activations": frame_records(self.massive)}


def sinks_analysis(model: HookedTransformer, texts: Sequence, config: SinksConfig | None = None, *,
                   progress: bool | None = None, **fields: Any) -> SinksResult:
    """Every sink measurement on `texts`: the head table, hidden sinks, extreme tokens, massive
    activations. `fields` are SinksConfig fields, for `sinks_analysis(model, texts, eps=0.5)`."""
    c = config or SinksConfig(**fields)
    table = sink_scores(model, texts, k=c.k, eps=c.eps, max_tokens=c.max_tokens, progress=progress)
    few = list(texts)[: c.hidden_texts]
    hidden = hidden_sinks(model, few, threshold=c.hidden_threshold, max_tokens=4 * c.max_tokens, progress=progress)
    extreme = extreme_tokens(model, texts, max_tokens=2 * c.max_tokens, progress=progress)
    massive = massive_activations(model, few, max_tokens=2 * c.max_tokens, progress=progress)
    return SinksResult(table, c, hidden, extreme, massive)
