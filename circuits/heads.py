"""Classic attention-head types: previous-token, duplicate-token, induction, and echo heads.

Definitions are TransformerLens' `head_detector` ("mul" error measure). For one sequence of
N tokens t and one head with attention pattern A [query, key], a kind names a 0/1 detection
pattern D (lower triangular) and the score is

    score = Σ_{i,j} A'[i, j] · D[i, j]  /  Σ_{i,j} A'[i, j]

where A' is A with column 0 zeroed when `exclude_bos` and the diagonal zeroed when
`exclude_current_token` (TransformerLens zeroes column 0 whether or not position 0 is a BOS
token; so do we). Without exclusions the denominator is N (every row of A sums to 1). Scores of
several sequences are averaged per head, as `detect_head` averages a list of texts.

    previous_token   D[i, j] = 1 iff j = i − 1
    duplicate_token  D[i, j] = 1 iff j < i and t[j] = t[i]            (every earlier copy)
    induction        D[i, j] = 1 iff j ≤ i and t[j − 1] = t[i], j − 1 < i  (the token after a copy)
    echo             RazorAttention's echo heads (Tang et al. 2024, METHODS.md "Retrieval heads"):
                     heads that attend to the previous occurrence of the current token. That is
                     the duplicate-token detection pattern, so `echo` is an alias computed from
                     the same pairs (identical column). On the standard input, a random block
                     repeated twice, each token has exactly one earlier occurrence (barring
                     collisions inside the block), so "the previous occurrence" is unambiguous;
                     with more repeats every earlier occurrence counts, as in duplicate_token.
                     RazorAttention's induction heads are the `induction` kind above.

Only the (i, j) pairs with D = 1 (and the diagonal, when excluded) are ever read, so two paths
give the same numbers:
  eager   TransformerLens computes each layer's pattern (hook_pattern); the pairs are gathered
          from it inside the hook, the denominator is the masked pattern's sum (as TransformerLens
          computes it), and the pattern is dropped. Memory O(head · N²) per layer.
  kernel  the model runs under `interp.kernel_attention`, which gives each query's log-sum-exp
          (stats.lse, [batch, head, query]) and fires hook_rot_q / hook_rot_k; each needed entry
          is A[i, j] = exp(q_i · k_j · scale − lse_i), query head h reading KV head
          h // (n_heads / n_kv_heads), and 0 when a sliding-window layer cannot see j
          (i − j ≥ window). With exclude_bos the denominator uses the kernel's own mass on keys
          1..N−1 (a span), summed directly. Work and memory O(pairs · head · d_head): linear in N
          for tokens that occur a bounded number of times; no [head, query, key] tensor exists.
Precision: the paths agree to about 1e-6. One case is ill-conditioned in the kernel path: with
exclude_current_token, a head that puts almost all its attention on the current token (and key
0) leaves a denominator ε = N − Σ A[i, i] found by subtraction, so its score carries an error of
about 1e-7 · N / ε there (eager sums the remaining entries directly).
"auto" runs sequences of up to 512 tokens eagerly and longer ones through the kernel path (always
eagerly for a model the kernels cannot express, e.g. soft-capped attention scores).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformer_lens import HookedTransformer

from interp.capture import tokenize_prompts
from interp.errors import InputError
from interp.head_table import HeadTable
from interp.kernel_attention import (
    LayerStats,
    kernel_attention,
    layer_windows,
    unsupported_features,
)
from interp.progress import progress_bar
from interp.results import AnalysisResult

KINDS = {
    "previous_token": "attention from each token to the token just before it",
    "duplicate_token": "attention from each token to earlier occurrences of the same token",
    "induction": "attention from each token to the token after an earlier occurrence of it",
    "echo": "RazorAttention echo heads: attention to earlier occurrences of the current token "
            "(the duplicate-token pattern; computed identically)",
}
# Which detection pattern each kind reads: echo shares duplicate_token's pairs.
_PATTERN_OF = {"previous_token": "previous_token", "duplicate_token": "duplicate_token",
               "induction": "induction", "echo": "duplicate_token"}
METHODS = ("auto", "eager", "kernel")
EAGER_MAX_TOKENS = 512  # "auto" runs sequences up to this length eagerly
BATCH_TOKENS = 4096  # tokens per forward pass (sequences of equal length are batched)
PAIR_CHUNK_ELEMENTS = 1 << 22  # gathered q elements (pairs · heads · d_head) per chunk, kernel path


@dataclass
class Pairs:
    """(sequence, query, key) index triples, each a LongTensor [P]: the attention entries a score sums."""

    seq: torch.Tensor
    query: torch.Tensor
    key: torch.Tensor

    def __len__(self) -> int:
        return self.seq.numel()

    def where(self, keep: torch.Tensor) -> Pairs:
        return Pairs(self.seq[keep], self.query[keep], self.key[keep])

    def to(self, device) -> Pairs:
        return Pairs(self.seq.to(device), self.query.to(device), self.key.to(device))

    @staticmethod
    def cat(parts: Sequence[Pairs]) -> Pairs:
        return Pairs(*(torch.cat([getattr(p, f) for p in parts]) for f in ("seq", "query", "key")))


# ---------------------------------------------------------------------------------------------
# public entry points


def head_type_scores(
    model: HookedTransformer,
    tokens: torch.Tensor | str | Iterable[str | Sequence[int] | torch.Tensor],
    kinds: Sequence[str] = ("previous_token", "duplicate_token", "induction"),
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    method: str = "auto",
    progress: bool | None = None,
) -> HeadTable:
    """Score every (layer, head) of `model` for each head type in `kinds` (see the module docstring).

    tokens: a [batch, pos] LongTensor, one 1-D tensor, a text, or a list of texts / 1-D token
    sequences (texts tokenised with `model.to_tokens`, BOS as the model prepends it). Each
    sequence needs at least 2 tokens and at most the model's context. Scores are fractions of
    attention in [0, 1], averaged over sequences. method: "auto", "eager" or "kernel".
    Returns a HeadTable with one column per kind; `meta` records the inputs and the path used.
    """
    kinds = _check_kinds(kinds)
    _check_method(method)
    if method == "auto" and unsupported_features(model):  # e.g. soft-capping: the kernel path would refuse
        method = "eager"
    seqs = _as_sequences(model, tokens)
    cfg = model.cfg
    patterns = sorted({_PATTERN_OF[k] for k in kinds})
    totals = {p: torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64) for p in patterns}
    used = set()
    for rows in progress_bar(_length_batches(seqs), "head types", progress, unit="batch"):
        batch = torch.stack(rows)
        path = _resolve_method(method, batch.shape[1])
        used.add(path)
        pairs = _batch_pairs(batch, patterns, exclude_bos, exclude_current_token)
        run = _eager_scores if path == "eager" else _kernel_scores
        for name, scores in run(model, batch, pairs, exclude_bos, exclude_current_token).items():  # [layer, batch, head]
            totals[name] += scores.sum(1).double()
    metrics = {k: (totals[_PATTERN_OF[k]] / len(seqs)).float() for k in kinds}
    meta = {"analysis": "head_types", "kinds": kinds, "exclude_bos": exclude_bos,
            "exclude_current_token": exclude_current_token, "method": "+".join(sorted(used)),
            "n_sequences": len(seqs), "n_tokens": sum(len(s) for s in seqs)}
    return HeadTable.from_arrays(metrics, model=cfg.model_name, meta=meta)


def repeated_random_tokens(model: HookedTransformer, n_tokens: int, n_repeats: int = 2, *, batch: int = 1,
                           seed: int = 0) -> torch.Tensor:
    """The standard induction input: `n_tokens` uniformly random tokens repeated `n_repeats` times.

    Returns a LongTensor [batch, bos + n_tokens · n_repeats] on the model's device, with the BOS
    token in front when the model prepends one to texts (`model.to_tokens`). Special tokens are
    never drawn. Deterministic for a given seed.
    """
    for name, value in (("n_tokens", n_tokens), ("n_repeats", n_repeats), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    bos = _bos_token(model)
    length = n_tokens * n_repeats + (bos is not None)
    if length > model.cfg.n_ctx:
        raise InputError(f"{length} tokens exceed the model's context of {model.cfg.n_ctx}; use fewer tokens or repeats")
    vocab = _drawable_tokens(model)
    g = torch.Generator().manual_seed(seed)
    block = vocab[torch.randint(len(vocab), (batch, n_tokens), generator=g)]
    out = block.repeat(1, n_repeats)
    if bos is not None:
        out = torch.cat([torch.full((batch, 1), bos, dtype=torch.long), out], dim=1)
    return out.to(model.cfg.device)


@dataclass(frozen=True)
class HeadTypesConfig:
    """Options of `head_types_analysis`."""

    seed: int = 0
    max_tokens: int = 128   # real texts cut to this (previous-token); random blocks of this length (capped by context)
    n_repeated: int = 4     # random blocks, each repeated twice (duplicate-token, induction, echo)
    method: str = "auto"    # eager | kernel | auto (see the module docstring)


@dataclass(repr=False)  # AnalysisResult's short repr, not every DataFrame
class HeadTypesResult(AnalysisResult):
    """`table`: per head `previous_token`, `duplicate_token`, `induction` and `echo` scores (fraction of
    attention on the pairs each type predicts, 0-1). `segment`: the random block length used."""

    segment: int
    previous_token_input: str

    KIND: ClassVar[str] = "heads"

    def extras(self) -> dict[str, Any]:
        return {"kinds": list(KINDS), "segment": self.segment, "previous_token_input": self.previous_token_input}


def head_types_analysis(model: HookedTransformer, texts: Sequence[str], config: HeadTypesConfig | None = None, *,
                        progress: bool | None = None, **fields: Any) -> HeadTypesResult:
    """Every classic head type of every head: previous-token scores on `texts` (each cut to
    max_tokens; the repeated random tokens when no text is long enough), duplicate-token, induction
    and echo scores on `n_repeated` random blocks repeated twice (seeded)."""
    c = config or HeadTypesConfig(**fields)
    _check_method(c.method)
    segment = max(8, min(c.max_tokens, (model.cfg.n_ctx - 1) // 2))
    repeated = repeated_random_tokens(model, segment, 2, batch=c.n_repeated, seed=c.seed)
    table = head_type_scores(model, repeated, ("duplicate_token", "induction", "echo"), method=c.method, progress=progress)
    tokens = [t for t in (model.to_tokens(x)[0, : c.max_tokens] for x in texts) if len(t) >= 2]
    prev_source = f"{len(tokens)} real texts, each cut to {c.max_tokens} tokens" if tokens else "the repeated random tokens"
    prev = head_type_scores(model, tokens or repeated, ("previous_token",), method=c.method, progress=progress)
    table.df.insert(3, "previous_token", prev.df["previous_token"].to_numpy())
    for key in ("n_sequences", "n_tokens"):  # they described the repeated input only
        table.meta.pop(key)
    table.meta.update(kinds=list(KINDS), previous_token_input=prev_source, previous_token_method=prev.meta["method"],
                      repeated_input=f"{c.n_repeated} × ({segment} random tokens repeated twice), seed {c.seed}")
    return HeadTypesResult(table, c, segment, prev_source)


# ---------------------------------------------------------------------------------------------
# input checks


def _check_kinds(kinds: Sequence[str]) -> list[str]:
    """Unique kinds in the given order; InputError naming the first unknown one."""
    if isinstance(kinds, str):
        kinds = [kinds]
    kinds = list(dict.fromkeys(kinds))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise InputError(f"unknown head kind {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(KINDS)}")
    return kinds


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def _as_sequences(model: HookedTransformer, tokens) -> list[torch.Tensor]:
    """The input as 1-D LongTensors on CPU, each checked for length and vocabulary range."""
    if isinstance(tokens, torch.Tensor):
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dim() not in (1, 2):
            raise InputError(f"tokens must be integer token ids shaped [batch, pos] or [pos], got {tokens.dtype} {tuple(tokens.shape)}")
        seqs = [row.long().cpu() for row in (tokens if tokens.dim() == 2 else tokens[None])]
    else:
        items = [tokens] if isinstance(tokens, str) else list(tokens)
        if not items:
            raise InputError("no sequences were given; pass at least one text or token sequence")
        if model.tokenizer is None and any(isinstance(x, str) for x in items):
            raise InputError("this model has no tokenizer; pass token ids instead of texts")
        seqs = tokenize_prompts(model, items)
    if not seqs:
        raise InputError("no sequences were given; pass at least one text or token sequence")
    for s in seqs:
        _check_sequence(model, s)
    return seqs


def _check_sequence(model: HookedTransformer, seq: torch.Tensor) -> None:
    n, cfg = seq.numel(), model.cfg
    if n < 2:
        raise InputError(f"a sequence of {n} token(s) was given; head-type scores need at least 2 tokens")
    if n > cfg.n_ctx:
        raise InputError(f"a sequence of {n} tokens exceeds the model's context of {cfg.n_ctx}; shorten it")
    if int(seq.min()) < 0 or int(seq.max()) >= cfg.d_vocab:
        raise InputError(f"token ids must lie in 0..{cfg.d_vocab - 1}; got {int(seq.min())}..{int(seq.max())}")


def _resolve_method(method: str, length: int) -> str:
    if method != "auto":
        return method
    return "eager" if length <= EAGER_MAX_TOKENS else "kernel"


def _length_batches(seqs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Sequences grouped by equal length (no padding), at most BATCH_TOKENS tokens per group."""
    by_length: dict[int, list[torch.Tensor]] = {}
    for s in seqs:
        by_length.setdefault(len(s), []).append(s)
    batches = []
    for n, group in sorted(by_length.items()):
        size = max(1, BATCH_TOKENS // n)
        batches += [group[i:i + size] for i in range(0, len(group), size)]
    return batches


def _bos_token(model: HookedTransformer) -> int | None:
    """The token `model.to_tokens` puts in front of every text, or None when it adds none."""
    if model.tokenizer is None or not model.cfg.default_prepend_bos:
        return None
    return int(model.to_tokens("")[0, 0])


def _drawable_tokens(model: HookedTransformer) -> torch.Tensor:
    """Token ids random inputs may use: the tokenizer's vocabulary (else d_vocab) minus special tokens."""
    n = model.cfg.d_vocab if model.tokenizer is None else min(model.cfg.d_vocab, len(model.tokenizer))
    keep = torch.ones(n, dtype=torch.bool)
    if model.tokenizer is not None:
        special = [i for i in model.tokenizer.all_special_ids if 0 <= i < n]
        keep[special] = False
    return torch.arange(n)[keep]


# ---------------------------------------------------------------------------------------------
# detection patterns as pairs


def previous_token_pairs(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, key) of the previous-token pattern for tokens t [N]: (i, i − 1) for i ≥ 1."""
    query = torch.arange(1, t.numel(), device=t.device)
    return query, query - 1


def duplicate_token_pairs(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, key) of the duplicate-token pattern for tokens t [N]: every j < i with t[j] = t[i].

    Vectorised: positions sorted stably by token form one run per token value; the element of
    rank r in its run pairs with the r earlier elements of the run. Σ r pairs in all."""
    n = t.numel()
    order = torch.sort(t, stable=True).indices
    sorted_t = t[order]
    starts_run = torch.ones(n, dtype=torch.bool, device=t.device)
    starts_run[1:] = sorted_t[1:] != sorted_t[:-1]
    run_start = torch.nonzero(starts_run).squeeze(1)[torch.cumsum(starts_run.long(), 0) - 1]
    rank = torch.arange(n, device=t.device) - run_start
    query_sorted = torch.repeat_interleave(torch.arange(n, device=t.device), rank)
    offset = torch.arange(query_sorted.numel(), device=t.device) - torch.repeat_interleave(torch.cumsum(rank, 0) - rank, rank)
    key_sorted = torch.repeat_interleave(run_start, rank) + offset
    return order[query_sorted], order[key_sorted]


def induction_pairs(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, key) of the induction pattern for tokens t [N]: (i, p + 1) for every earlier
    occurrence p < i of t[i] (p + 1 ≤ i always holds, so the pattern stays causal)."""
    query, key = duplicate_token_pairs(t)
    return query, key + 1


_PAIR_FUNCTIONS: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "previous_token": previous_token_pairs, "duplicate_token": duplicate_token_pairs, "induction": induction_pairs,
}


def _diagonal_pairs(n: int, exclude_bos: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, key) of the diagonal entries removed by exclude_current_token; (0, 0) is left to
    the first column when exclude_bos removes that."""
    i = torch.arange(1 if exclude_bos else 0, n)
    return i, i


def _batch_pairs(batch: torch.Tensor, patterns: Sequence[str], exclude_bos: bool,
                 exclude_current_token: bool) -> dict[str, Pairs]:
    """For a batch [B, N]: each pattern's pairs minus the excluded entries (key 0 when
    exclude_bos, key = query when exclude_current_token) and, with exclude_current_token, the
    diagonal pairs under "diagonal" (subtracted from the kernel path's denominator)."""
    out: dict[str, Pairs] = {}
    for name in patterns:
        pairs = Pairs.cat([_row_pairs(b, *_PAIR_FUNCTIONS[name](row)) for b, row in enumerate(batch)])
        keep = torch.ones(len(pairs), dtype=torch.bool)
        if exclude_bos:
            keep &= pairs.key != 0
        if exclude_current_token:
            keep &= pairs.key != pairs.query
        out[name] = pairs.where(keep)
    if exclude_current_token:
        q, k = _diagonal_pairs(batch.shape[1], exclude_bos)
        out["diagonal"] = Pairs.cat([_row_pairs(b, q, k) for b in range(batch.shape[0])])
    return out


def _row_pairs(row: int, query: torch.Tensor, key: torch.Tensor) -> Pairs:
    return Pairs(torch.full_like(query, row), query, key)


# ---------------------------------------------------------------------------------------------
# scoring one layer from its attention entries


def _layer_scores(entries: Callable[[Pairs], torch.Tensor], pairs: dict[str, Pairs],
                  denominator: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scores [batch, head] per pattern: Σ over its pairs of `entries(pairs)` ([P, head]) per
    sequence, over `denominator` [batch, head] (the attention left after the exclusions)."""
    return {name: (_per_sequence(entries, p, denominator.shape[0]) / denominator).cpu()
            for name, p in pairs.items() if name != "diagonal"}


def _per_sequence(entries: Callable[[Pairs], torch.Tensor], pairs: Pairs, batch: int) -> torch.Tensor:
    """Σ of the attention entries at `pairs`, per sequence: [batch, head] float32."""
    values = entries(pairs).float()
    return torch.zeros(batch, values.shape[1], device=values.device).index_add_(0, pairs.seq, values)


def _eager_denominator(pattern: torch.Tensor, exclude_bos: bool, exclude_current_token: bool) -> torch.Tensor:
    """Σ of the pattern [batch, head, query, key] after zeroing column 0 and/or the diagonal, as
    TransformerLens sums it: [batch, head]."""
    if exclude_bos or exclude_current_token:
        pattern = pattern.clone()
        if exclude_bos:
            pattern[..., 0] = 0
        if exclude_current_token:
            pattern.diagonal(dim1=-2, dim2=-1).zero_()
    return pattern.float().sum((-2, -1))


def _kernel_denominator(stats: LayerStats, entries: Callable[[Pairs], torch.Tensor], pairs: dict[str, Pairs],
                        exclude_bos: bool) -> torch.Tensor:
    """The same sum without a pattern: per query, 1, or the kernel's mass on keys 1..N−1 (span 0)
    when exclude_bos (summed directly, so heads that park almost all attention on key 0 keep
    their precision), minus the diagonal entries when exclude_current_token. → [batch, head]."""
    lse = stats.stats.lse
    if exclude_bos:
        kept = stats.stats.span_mass[..., 0].float().sum(-1)
    else:
        kept = torch.full(lse.shape[:2], float(lse.shape[-1]), device=lse.device)
    if "diagonal" in pairs:
        kept = kept - _per_sequence(entries, pairs["diagonal"], lse.shape[0])
    return kept


def _eager_scores(model: HookedTransformer, batch: torch.Tensor, pairs: dict[str, Pairs], exclude_bos: bool,
                  exclude_current_token: bool) -> dict[str, torch.Tensor]:
    """Eager path: gather the pairs from each layer's hook_pattern. → pattern → [layer, batch, head]."""
    device = model.cfg.device
    pairs = {k: p.to(device) for k, p in pairs.items()}
    per_layer: dict[int, dict[str, torch.Tensor]] = {}

    def hook_for(layer: int):
        def hook(pattern, hook):  # [batch, head, query, key], on this layer's device
            here = _pairs_on(pairs, pattern.device)
            entries = lambda p: pattern[p.seq, :, p.query, p.key]  # [P, head]
            per_layer[layer] = _layer_scores(entries, here, _eager_denominator(pattern, exclude_bos, exclude_current_token))
        return hook

    hooks = [(f"blocks.{l}.attn.hook_pattern", hook_for(l)) for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        model.run_with_hooks(batch.to(device), fwd_hooks=hooks, return_type=None, stop_at_layer=model.cfg.n_layers)
    return _stack_layers(per_layer)


def _kernel_scores(model: HookedTransformer, batch: torch.Tensor, pairs: dict[str, Pairs], exclude_bos: bool,
                   exclude_current_token: bool) -> dict[str, torch.Tensor]:
    """Kernel path: per layer, rotated q and k from hooks, lse (and the mass on keys 1..N−1) from
    the fused kernel, the needed entries recomputed as exp(q·k·scale − lse). → pattern → [layer, batch, head]."""
    cfg = model.cfg
    rotary = cfg.positional_embedding_type == "rotary"
    if not rotary and cfg.use_qk_norm:
        raise InputError("the kernel path reads q and k from hook_q/hook_k, which precede QK-norm in a non-rotary "
                         "model; use method='eager'")
    device = cfg.device
    pairs = {k: p.to(device) for k, p in pairs.items()}
    qk: dict[tuple[int, str], torch.Tensor] = {}
    per_layer: dict[int, dict[str, torch.Tensor]] = {}

    def keep(layer: int, which: str):
        def hook(act, hook):  # [batch, pos, head or kv head, d_head]
            qk[(layer, which)] = act
        return hook

    windows = layer_windows(model)

    def on_layer(layer: int, stats: LayerStats) -> None:
        attn = model.blocks[layer].attn
        window = windows[layer]
        q, k = qk.pop((layer, "q")), qk.pop((layer, "k"))
        here = _pairs_on(pairs, q.device)
        entries = lambda p: kernel_entries(q, k, stats.stats.lse, p, scale=1.0 / float(attn.attn_scale), window=window)
        per_layer[layer] = _layer_scores(entries, here, _kernel_denominator(stats, entries, here, exclude_bos))

    names = ("hook_rot_q", "hook_rot_k") if rotary else ("hook_q", "hook_k")
    hooks = [(f"blocks.{l}.attn.{name}", keep(l, which)) for l in range(cfg.n_layers) for name, which in zip(names, "qk")]
    spans = [(1, batch.shape[1])] if exclude_bos else None
    with torch.no_grad(), kernel_attention(model, spans=spans, keep_on=None, on_layer=on_layer):
        model.run_with_hooks(batch.to(device), fwd_hooks=hooks, return_type=None, stop_at_layer=cfg.n_layers)
    return _stack_layers(per_layer)


def kernel_entries(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, pairs: Pairs, *, scale: float,
                   window: int | None = None) -> torch.Tensor:
    """Attention probabilities at `pairs` without a pattern: exp(q_i · k_j · scale − lse_i).

    q [batch, pos, head, d_head] and k [batch, pos, kv_head, d_head] as the scores see them
    (after rotary and QK-norm); lse [batch, head, query] (natural log, float32). Query head h
    reads KV head h // (head / kv_head). With `window`, keys at i − j ≥ window get 0.
    Returns float32 [P, head], computed in chunks of PAIR_CHUNK_ELEMENTS gathered elements."""
    n_heads, n_kv, d = q.shape[2], k.shape[2], q.shape[3]
    group = n_heads // n_kv
    chunk = max(1, PAIR_CHUNK_ELEMENTS // (n_heads * d))
    out = []
    for start in range(0, len(pairs), chunk):
        s, i, j = (x[start:start + chunk] for x in (pairs.seq, pairs.query, pairs.key))
        qi = q[s, i].float().view(-1, n_kv, group, d)  # [p, kv_head, group, d_head]
        kj = k[s, j].float()  # [p, kv_head, d_head]
        scores = torch.einsum("pkgd,pkd->pkg", qi, kj).reshape(-1, n_heads)
        a = torch.exp(scores * scale - lse[s, :, i].float())
        if window is not None:
            a = torch.where(((i - j) < window)[:, None], a, torch.zeros_like(a))
        out.append(a)
    return torch.cat(out) if out else q.new_zeros(0, n_heads, dtype=torch.float32)


def _stack_layers(per_layer: dict[int, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{layer: {pattern: [batch, head]}} → {pattern: [layer, batch, head]}."""
    layers = sorted(per_layer)
    return {name: torch.stack([per_layer[l][name] for l in layers]) for name in per_layer[layers[0]]}


def _pairs_on(pairs: dict[str, Pairs], device: torch.device) -> dict[str, Pairs]:
    """`pairs` on `device` (a no-op unless the model is split across devices)."""
    return {k: p if p.seq.device == device else p.to(device) for k, p in pairs.items()}


