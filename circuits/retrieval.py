"""Retrieval heads (Wu et al. 2024) and the needle-in-a-haystack test they are found with.

A needle sentence ("The best thing to do in Lisbon is to ...") goes into real offline text (Python's
reference documentation, `interp.texts.reference_paragraphs`) at a depth of a context of a given
length; the model is asked the needle's question and decodes greedily (up to 50 tokens, stopping
at a newline or end of turn, as the authors' code does).

Retrieval score (Wu et al., repo nightdessert/Retrieval_Head): at every decoding step, for every
head, take the top-1 attended key j of the current query. When j lies inside the needle's answer
span and the token at j equals the token this step generates, the head's count rises by
1/|span|. A test counts only when the answer recalls the needle's answer (ROUGE-1 recall > 0.5,
Porter-stemmed as `rouge_score` with use_stemmer=True); a head's score is its mean over counted
tests; retrieval heads score above 0.1.

Cost: the prompt (all but its last token) is prefilled with attention that never forms a
[query, key] pattern (torch's fused CPU/GPU attention, or `kernels.attention_with_stats` for
sliding-window layers and on request); its keys and values go into a TransformerLens key-value
cache. Each decoding step then runs one query row per head against the cached keys through
TransformerLens' own attention, whose one-row pattern gives the top-1 key.

Masking (Wu et al. §4): a head's attention is made uniform by zeroing its query (after QK-norm
and rotary, at hook_rot_q), in prefill and decoding alike.
"""
from __future__ import annotations

import contextlib
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from interp.errors import InputError
from interp.head_table import HeadTable
from interp.kernel_attention import _check_supported, _project, layer_windows

THRESHOLD = 0.1  # retrieval head: score above this (Wu et al.)
RECALL_TO_COUNT = 0.5  # a test counts when ROUGE-1 recall of the answer exceeds this
MAX_NEW_TOKENS = 50
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192)
DEFAULT_DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
PROMPT_FORMATS = ("chat", "plain")

# Needles: (sentence, question, answer). The answer is the span scored (the authors' "real_needle").
# Cities and activities are drawn independently, so no answer can come from the model's priors.
_CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Quito", "Tallinn", "Dakar", "Perth", "Bergen",
           "Porto", "Krakow", "Montreal", "Seville", "Auckland", "Valencia"]
_ACTIVITIES = [
    "eat a sandwich and sit in the park on a sunny day",
    "take a walk along the river and drink a cup of coffee",
    "ride a bicycle to the old market and buy fresh bread",
    "visit the harbour at sunset and watch the boats",
    "climb the hill behind the cathedral and read a book",
    "swim in the lake early in the morning",
    "listen to jazz in a small cafe near the station",
    "rent a boat and have a picnic on the island",
    "walk through the botanical garden and eat ice cream",
    "play chess with old friends in the main square",
]

# The chat template's user turn holds the context then the question; the plain format is the
# authors' base-model prompt. Both were measured on SmolLM2-135M-Instruct (see `needle_tests`).
_QUESTION = "\n\nBased on the text above, answer the question: {question}"
_PLAIN_QUESTION = "\n\nBased on the content of the book, Question: {question}\nAnswer:"


@dataclass
class NeedleTest:
    """One needle-in-a-haystack prompt. `tokens` [n] (CPU LongTensor); `span` the half-open token
    range of the answer inside the needle; `length` the requested context length in tokens."""

    tokens: torch.Tensor
    span: tuple[int, int]
    needle: str
    question: str
    answer: str
    length: int
    depth: float

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.numel())


@dataclass
class Decoded:
    """Greedy decoding of one prompt: generated token ids, their text, and per step the top-1
    attended key of every head ([step, layer, head], int64; empty when not recorded)."""

    tokens: list[int]
    text: str
    top1: torch.Tensor


@dataclass
class RetrievalResult:
    """`table`: HeadTable with retrieval_score (mean over counted tests), retrieval_head (score >
    threshold) and hits (counted tests with any hit). `tests`: one row per test (length, depth,
    needle, answer, recall, counted, n_tokens)."""

    table: HeadTable
    tests: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# ROUGE-1 recall


def rouge_tokens(text: str, stem: bool = True) -> list[str]:
    """Tokens as `rouge_score` makes them: lowercase, non-alphanumerics to spaces, split; with
    `stem`, Porter-stem tokens longer than 3 characters (nltk, as rouge_score does)."""
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    if stem:
        stemmer = _porter()
        words = [stemmer.stem(w) if len(w) > 3 else w for w in words]
    return words


def rouge1_recall(reference: str, candidate: str, stem: bool = True) -> float:
    """ROUGE-1 recall of `candidate` against `reference`: clipped unigram overlap / reference unigrams."""
    ref, cand = Counter(rouge_tokens(reference, stem)), Counter(rouge_tokens(candidate, stem))
    total = sum(ref.values())
    return sum(min(n, cand[w]) for w, n in ref.items()) / total if total else 0.0


def _porter():
    from nltk.stem import porter

    return porter.PorterStemmer("ORIGINAL_ALGORITHM")


# ---------------------------------------------------------------------------------------------
# needle-in-a-haystack prompts


def needle_tests(
    model: HookedTransformer,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    *,
    n_needles: int = 1,
    seed: int = 0,
    prompt_format: str = "chat",
) -> list[NeedleTest]:
    """Needle tests for every (length, depth, needle): `n_needles` needles drawn with `seed`.

    length: total prompt tokens (template and question included, ±1 sentence boundary); depth in
    [0, 1]: where in the haystack the needle goes, moved back to the previous sentence end.
    prompt_format "chat" puts context + question in the model's chat template (the default: on
    SmolLM2-135M-Instruct it answers far more often than with the plain format); "plain" is the
    authors' base-model prompt ("... Question: q\\nAnswer:").
    """
    _check_tests_args(model, lengths, depths, n_needles, prompt_format)
    rng = random.Random(seed)
    needles = [_draw_needle(rng) for _ in range(n_needles)]
    haystack = _haystack_tokens(model, max(lengths), seed)
    tests = []
    for needle, question, answer in needles:
        before, after = _wrap(model, question, prompt_format)
        needle_ids = _encode(model, " " + needle)
        for length in lengths:
            room = length - len(before) - len(after) - len(needle_ids)
            if room < 16:
                raise InputError(f"length {length} leaves no room for a haystack; use lengths of at least "
                                 f"{len(before) + len(after) + len(needle_ids) + 16} tokens")
            for depth in depths:
                tests.append(_assemble(model, haystack[:room], needle_ids, before, after, needle, question, answer,
                                       length, float(depth)))
    return tests


def _check_tests_args(model, lengths, depths, n_needles, prompt_format) -> None:
    if model.tokenizer is None:
        raise InputError("needle tests need a model with a tokenizer")
    if prompt_format not in PROMPT_FORMATS:
        raise InputError(f"unknown prompt format {prompt_format!r}; choose from {', '.join(PROMPT_FORMATS)}")
    if not lengths or not depths:
        raise InputError("give at least one context length and one depth")
    if any(not 0.0 <= float(d) <= 1.0 for d in depths):
        raise InputError(f"depths must lie in [0, 1]; got {list(depths)}")
    if max(lengths) > model.cfg.n_ctx:
        raise InputError(f"length {max(lengths)} exceeds the model's context of {model.cfg.n_ctx} tokens")
    if n_needles < 1:
        raise InputError(f"n_needles must be at least 1, got {n_needles}")


def _draw_needle(rng: random.Random) -> tuple[str, str, str]:
    city, activity = rng.choice(_CITIES), rng.choice(_ACTIVITIES)
    return (f"The best thing to do in {city} is to {activity}.", f"What is the best thing to do in {city}?",
            activity)


def _encode(model: HookedTransformer, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def _wrap(model: HookedTransformer, question: str, prompt_format: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the haystack + needle: template start, and question + template end."""
    bos = [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos and model.tokenizer.bos_token_id is not None else []
    if prompt_format == "plain":
        return bos, _encode(model, _PLAIN_QUESTION.format(question=question))
    marker = "\x00HAYSTACK\x00"
    text = chat_prompt(model, marker + _QUESTION.format(question=question))
    head, tail = text.split(marker)
    return bos + _encode(model, head), _encode(model, tail)


def chat_prompt(model: HookedTransformer, user: str) -> str:
    """`user` as one user turn in the model's chat template, ready for the assistant's answer."""
    template = getattr(model.tokenizer, "chat_template", None)
    if not template:
        raise InputError(f"{model.cfg.model_name} has no chat template; use prompt_format='plain'")
    return model.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)


def _haystack_tokens(model: HookedTransformer, n: int, seed: int) -> list[int]:
    """At least `n` tokens of reference paragraphs, shuffled with `seed`, joined with spaces."""
    from interp.texts import reference_paragraphs

    paragraphs = reference_paragraphs()
    random.Random(seed).shuffle(paragraphs)
    ids: list[int] = []
    for p in paragraphs:
        ids += _encode(model, " " + p)
        if len(ids) >= n:
            return ids
    raise InputError(f"the offline haystack has only {len(ids)} tokens; use lengths up to that")


def _assemble(model, hay, needle_ids, before, after, needle, question, answer, length, depth) -> NeedleTest:
    cut = _sentence_end_before(model, hay, round(depth * len(hay)))
    ids = before + hay[:cut] + needle_ids + hay[cut:] + after
    start = len(before) + cut
    span = _answer_span(model, needle_ids, answer)
    return NeedleTest(torch.tensor(ids, dtype=torch.long), (start + span[0], start + span[1]), needle, question,
                      answer, length, depth)


def _sentence_end_before(model, hay: list[int], point: int) -> int:
    """The largest i ≤ point with hay[i-1] ending a sentence (as the authors' period search), else point."""
    for i in range(point, 0, -1):
        if model.tokenizer.decode(hay[i - 1:i]).rstrip().endswith((".", "!", "?")):
            return i
    return point


def _answer_span(model, needle_ids: list[int], answer: str) -> tuple[int, int]:
    """Half-open token range of `answer` inside the needle's tokens (the tokens its characters cover)."""
    text = model.tokenizer.decode(needle_ids)
    lo = text.index(answer)
    hi = lo + len(answer)
    ends = np.cumsum([len(model.tokenizer.decode(needle_ids[i:i + 1])) for i in range(len(needle_ids))])
    first = int(np.searchsorted(ends, lo, side="right"))
    last = int(np.searchsorted(ends, hi, side="left")) + 1
    return first, last


# ---------------------------------------------------------------------------------------------
# cached attention: pattern-free prefill, one query row per decoding step


class KVCache:
    """Rotated keys and values per layer, [batch, kv_head, pos, d_head], in buffers that grow by
    `reserve` positions so decoding appends without copying the past. `mask` [batch, pos] marks
    real (1) and padding (0) keys of a left-padded batch (None: no padding). A `frozen` cache (a
    shared prefix) is read, broadcast over the batch, and never written."""

    def __init__(self, n_layers: int, reserve: int = 0):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.lengths = [0] * n_layers
        self.reserve = reserve
        self.mask: torch.Tensor | None = None
        self.frozen = False

    def length(self, layer: int) -> int:
        return self.lengths[layer]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v [batch, kv_head, new, d_head]; return all keys and values so far."""
        n, new = self.lengths[layer], k.shape[2]
        if n == 0 and self.frozen:
            return k, v
        if n == 0:
            self.keys[layer], self.values[layer] = self._buffer(k, new), self._buffer(v, new)
        elif self.frozen or self.keys[layer].shape[0] != k.shape[0]:
            past_k, past_v = (t[:, :, :n].expand(k.shape[0], -1, -1, -1) for t in (self.keys[layer], self.values[layer]))
            keys, values = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
            if self.frozen:
                return keys, values
            self.keys[layer], self.values[layer] = self._buffer(keys, n + new), self._buffer(values, n + new)
        else:
            if n + new > self.keys[layer].shape[2]:
                self.keys[layer] = self._buffer(self.keys[layer][:, :, :n], n, n + new)
                self.values[layer] = self._buffer(self.values[layer][:, :, :n], n, n + new)
            self.keys[layer][:, :, n:n + new] = k
            self.values[layer][:, :, n:n + new] = v
        self.lengths[layer] = n + new
        return self.keys[layer][:, :, :n + new], self.values[layer][:, :, :n + new]

    def _buffer(self, t: torch.Tensor, filled: int, need: int | None = None) -> torch.Tensor:
        need = filled if need is None else need
        buf = t.new_empty(t.shape[0], t.shape[1], need + self.reserve, t.shape[3])
        buf[:, :, :filled] = t[:, :, :filled]
        return buf


def new_cache(model: HookedTransformer, reserve: int = 0) -> KVCache:
    return KVCache(model.cfg.n_layers, reserve)


@contextlib.contextmanager
def cached_attention(model: HookedTransformer, cache: KVCache, *, attention: str = "sdpa") -> Iterator[KVCache]:
    """Inside the block, every attention layer reads and extends `cache`: positions continue from
    the cached length, keys are rotated once and stored rotated. A forward pass of n new tokens
    attends to the cached keys and causally to its own, with no [query, key] pattern for n > 1
    (torch's fused attention, or `kernels.attention_with_stats` with attention="kernels" and on
    sliding-window layers); a single new token (decoding) computes its one score row per head
    directly and passes it through hook_pattern ([batch, head, 1, key]). hook_q/k/v, hook_rot_q/k,
    hook_z (and hook_result) fire as in TransformerLens. Padding: set `cache.mask` [batch, pos]."""
    if attention not in ("sdpa", "kernels"):
        raise InputError(f"unknown attention {attention!r}; choose sdpa or kernels")
    _check_supported(model)
    if model.cfg.positional_embedding_type not in ("rotary", "standard"):
        raise InputError(f"cached attention supports rotary or learned absolute positions, not "
                         f"{model.cfg.positional_embedding_type}")
    saved = []
    for layer, (block, window) in enumerate(zip(model.blocks, layer_windows(model))):
        attn = block.attn
        saved.append((attn, attn.forward))
        attn.forward = _cached_forward(attn, layer, cache, window, attention)
    try:
        yield cache
    finally:
        for attn, forward in saved:
            attn.forward = forward


def _cached_forward(attn, layer: int, cache: KVCache, window: int | None, attention: str):
    import kernels

    def forward(query_input, key_input, value_input, past_kv_cache_entry=None, additive_attention_mask=None,
                attention_mask=None, position_bias=None):
        q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)  # [batch, pos, head, d_head]
        offset, new = cache.length(layer), q.shape[1]
        mask = None if cache.mask is None else cache.mask[:, : offset + new].to(q.device)
        if attn.cfg.positional_embedding_type == "rotary":
            q = attn.hook_rot_q(attn.apply_rotary(q, offset, mask))
            k = attn.hook_rot_k(attn.apply_rotary(k, offset, mask))
        qh = q.transpose(1, 2)
        keys, values = cache.extend(layer, k.transpose(1, 2), v.transpose(1, 2))  # [batch, kv_head, n, d_head]
        scale = 1.0 / float(attn.attn_scale)
        if new == 1:
            out = _one_row(attn, qh, keys, values, scale, window, mask)
        elif offset == 0 and mask is None and (attention == "kernels" or window is not None):
            out, _ = kernels.attention_with_stats(qh.contiguous(), keys.contiguous(), values.contiguous(), causal=True,
                                                  window=window, scale=scale)
        else:
            allowed = None if offset == 0 and mask is None else _allowed(offset, new, window, mask, q.device)
            if allowed is None and window is not None:
                allowed = _allowed(offset, new, window, None, q.device)
            out = F.scaled_dot_product_attention(qh, keys, values, attn_mask=allowed, is_causal=allowed is None,
                                                 scale=scale, enable_gqa=keys.shape[1] != qh.shape[1])
        z = attn.hook_z(out.transpose(1, 2))
        return _project(attn, z)

    return forward


def _allowed(offset: int, new: int, window: int | None, mask: torch.Tensor | None, device) -> torch.Tensor:
    """Boolean [batch or 1, 1, new, offset + new]: which keys each new query may attend to. A padded
    query keeps its own key so its row stays finite (its output is never used)."""
    i = torch.arange(offset, offset + new, device=device)[:, None]
    j = torch.arange(offset + new, device=device)[None, :]
    ok = j <= i
    if window is not None:
        ok &= (i - j) < window
    ok = ok[None, None]
    if mask is not None:
        ok = (ok & mask.bool()[:, None, None, :]) | (i == j)[None, None]
    return ok


def _one_row(attn, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float, window, mask) -> torch.Tensor:
    """One query per head against all cached keys: q [batch, head, 1, d], keys/values [batch, kv, n, d]."""
    b, h, _, d = q.shape
    kv, n = keys.shape[1], keys.shape[2]
    qg = q.reshape(b, kv, h // kv, d)
    scores = torch.matmul(qg, keys.transpose(-1, -2)).reshape(b, h, 1, n) * scale
    if window is not None and n > window:
        scores[..., : n - window] = float("-inf")
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    pattern = attn.hook_pattern(torch.softmax(scores.float(), dim=-1).to(q.dtype))  # [batch, head, 1, key]
    out = torch.matmul(pattern.reshape(b, kv, h // kv, n), values)
    return out.reshape(b, h, 1, d)


def run_cached(model: HookedTransformer, tokens: torch.Tensor, cache: KVCache, *, attention: str = "sdpa",
               start_at_layer: int = 0, resid: torch.Tensor | None = None, last_only: bool = True) -> torch.Tensor:
    """Forward `tokens` [batch, new] (or the residual stream `resid` entering `start_at_layer`)
    after the cached positions. Returns logits [batch, vocab] at the last position (all positions
    [batch, new, vocab] with last_only=False). Positions and padding follow `cache`."""
    cfg = model.cfg
    with cached_attention(model, cache, attention=attention):
        if resid is None:
            resid = model.hook_embed(model.embed(tokens.to(cfg.device)))
            if cfg.positional_embedding_type == "standard":
                offset = cache.length(0)
                resid = resid + model.hook_pos_embed(model.pos_embed(tokens.to(cfg.device), offset))
        for block in model.blocks[start_at_layer:]:
            resid = block(resid)
    resid = resid[:, -1:] if last_only else resid
    logits = model.unembed(model.ln_final(resid))
    return logits[:, 0] if last_only else logits


def stop_token_ids(model: HookedTransformer) -> set[int]:
    """Token ids that end an answer: end of turn / text, and any token containing a newline."""
    tok = model.tokenizer
    if tok is None:
        return set()
    ids = {i for i in (tok.eos_token_id, getattr(tok, "pad_token_id", None)) if i is not None}
    for name in ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<eos>"):
        i = tok.convert_tokens_to_ids(name)
        if isinstance(i, int) and i != tok.unk_token_id:
            ids.add(i)
    return ids


def _newline_tokens(model: HookedTransformer) -> torch.Tensor:
    """[vocab] bool: tokens whose text contains a newline (the authors stop at the newline token)."""
    cached = getattr(model, "_interp_newline_tokens", None)
    if cached is None and model.tokenizer is None:
        cached = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
    if cached is None:
        vocab = model.tokenizer.convert_ids_to_tokens(list(range(min(model.cfg.d_vocab, len(model.tokenizer)))))
        flags = [("\n" in model.tokenizer.convert_tokens_to_string([t])) if t is not None else False for t in vocab]
        cached = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
        cached[: len(flags)] = torch.tensor(flags)
        model._interp_newline_tokens = cached
    return cached


def decode_with_top1(
    model: HookedTransformer,
    tokens: torch.Tensor,
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    masked_heads: Sequence[tuple[int, int]] = (),
    record: bool = True,
    attention: str = "sdpa",
) -> Decoded:
    """Greedy decoding of one prompt `tokens` [n], recording each head's top-1 key per step.

    The first n−1 tokens are prefilled (pattern-free); then each step feeds one token (first the
    prompt's last) and takes the argmax of that query's attention row per head, the step's
    generated token being the argmax of its logits. Stops after a newline or end-of-turn token
    (that step still counts, as in the authors' code) or after max_new_tokens.
    masked_heads: (layer, head) pairs whose attention is made uniform (query zeroed)."""
    cfg = model.cfg
    tokens = tokens.reshape(1, -1).to(cfg.device)
    if tokens.shape[1] < 2:
        raise InputError("decoding needs a prompt of at least 2 tokens")
    if tokens.shape[1] + max_new_tokens > cfg.n_ctx:
        raise InputError(f"prompt of {tokens.shape[1]} tokens + {max_new_tokens} new ones exceeds the context of {cfg.n_ctx}")
    stops, newline = stop_token_ids(model), _newline_tokens(model)
    cache = new_cache(model, reserve=max_new_tokens + 1)
    rows: dict[int, torch.Tensor] = {}
    record_hooks = [(f"blocks.{l}.attn.hook_pattern", _top1_hook(rows, l)) for l in range(cfg.n_layers)] if record else []
    out, top1, current = [], [], tokens[:, -1:]
    with torch.no_grad(), model.hooks(fwd_hooks=_mask_hooks(cfg, masked_heads)):
        with decode_threads(cfg.device, tokens.shape[1]):
            run_cached(model, tokens[:, :-1], cache, attention=attention)
        with model.hooks(fwd_hooks=record_hooks), decode_threads(cfg.device):
            for _ in range(max_new_tokens):
                nxt = int(run_cached(model, current, cache).argmax(-1))
                out.append(nxt)
                if record:
                    top1.append(torch.stack([rows[l][0] for l in range(cfg.n_layers)]))
                if nxt in stops or bool(newline[nxt]):
                    break
                current = torch.tensor([[nxt]], device=cfg.device)
    text = model.tokenizer.decode(out, skip_special_tokens=True).strip() if model.tokenizer is not None else ""
    empty = torch.zeros(0, cfg.n_layers, cfg.n_heads, dtype=torch.long)
    return Decoded(out, text, torch.stack(top1).cpu() if top1 else empty)


SINGLE_THREAD_TOKENS = 1024  # CPU forwards over at most this many tokens run on one thread


@contextlib.contextmanager
def decode_threads(device, tokens: int = 1) -> Iterator[None]:
    """On CPU, run small forwards (decoding steps; at most SINGLE_THREAD_TOKENS tokens) on one
    thread: their operations are too small to gain from more, and on a busy machine extra threads
    mostly wait (measured on 2 shared cores: a decoding step 0.3 s vs 1.2-2.4 s, a 4-prompt Ships
    restart 0.7 s vs 5.4 s)."""
    if torch.device(device).type != "cpu" or tokens > SINGLE_THREAD_TOKENS:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _top1_hook(rows: dict, layer: int):
    def hook(pattern, hook):  # [batch, head, 1, key]: the single query row of this step
        rows[layer] = pattern[:, :, -1].argmax(-1)
    return hook


def _mask_hooks(cfg, heads: Sequence[tuple[int, int]]) -> list:
    """Hooks zeroing the (rotated, post-QK-norm) query of each (layer, head): uniform attention."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise InputError(f"head L{layer}H{head} does not exist in a model of {cfg.n_layers} layers × {cfg.n_heads} heads")
        by_layer.setdefault(int(layer), []).append(int(head))
    name = "hook_rot_q" if cfg.positional_embedding_type == "rotary" else "hook_q"

    def zero(heads_here):
        def hook(q, hook):  # [batch, pos, head, d_head]
            q = q.clone()
            q[:, :, heads_here] = 0.0
            return q
        return hook

    return [(f"blocks.{l}.attn.{name}", zero(hs)) for l, hs in by_layer.items()]


# ---------------------------------------------------------------------------------------------
# retrieval scores


def step_hits(top1: torch.Tensor, generated: Sequence[int], prompt: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """Wu et al.'s per-test score: Σ over steps of 1/|span| where the head's top-1 key j is inside
    `span` and prompt[j] equals the token generated at that step. top1 [step, layer, head] →
    [layer, head] float64."""
    start, stop = span
    if top1.numel() == 0:
        return torch.zeros(top1.shape[1:], dtype=torch.float64)
    gen = torch.as_tensor(list(generated[: top1.shape[0]]), dtype=torch.long)[:, None, None]
    inside = (top1 >= start) & (top1 < stop)
    copied = prompt.cpu()[top1.clamp(max=prompt.numel() - 1)] == gen
    return (inside & copied).sum(0).double() / (stop - start)


def retrieval_scores(
    model: HookedTransformer,
    tests: Sequence[NeedleTest] | None = None,
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    threshold: float = THRESHOLD,
    attention: str = "sdpa",
    progress: bool = False,
    seed: int = 0,
) -> RetrievalResult:
    """Retrieval score of every head over needle `tests` (default: `needle_tests(model, seed=seed)`
    with the lengths that fit the model's context). See the module docstring for the definition."""
    cfg = model.cfg
    if tests is None:
        tests = needle_tests(model, [n for n in DEFAULT_LENGTHS if n + max_new_tokens <= cfg.n_ctx] or [cfg.n_ctx // 2],
                             seed=seed)
    totals = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64)
    any_hit = torch.zeros_like(totals)
    rows = []
    for test in _progress(tests, progress, "needle tests"):
        dec = decode_with_top1(model, test.tokens, max_new_tokens=max_new_tokens, attention=attention)
        recall = rouge1_recall(test.answer, dec.text)
        counted = recall > RECALL_TO_COUNT
        if counted:
            per_test = step_hits(dec.top1, dec.tokens, test.tokens, test.span)
            totals += per_test
            any_hit += per_test > 0
        rows.append({"length": test.length, "n_tokens": test.n_tokens, "depth": test.depth, "needle": test.needle,
                     "answer": dec.text, "recall": recall, "counted": counted, "n_generated": len(dec.tokens)})
    table_tests = pd.DataFrame(rows)
    n_counted = int(table_tests["counted"].sum())
    scores = totals / max(n_counted, 1)
    params = {"analysis": "retrieval", "n_tests": len(tests), "n_counted": n_counted, "threshold": threshold,
              "max_new_tokens": max_new_tokens, "recall_to_count": RECALL_TO_COUNT, "attention": attention,
              "lengths": sorted({t.length for t in tests}), "depths": sorted({t.depth for t in tests})}
    table = HeadTable.from_arrays({"retrieval_score": scores, "retrieval_head": (scores > threshold).float(),
                                   "hit_tests": any_hit}, model=cfg.model_name, meta=params)
    table.df["retrieval_head"] = table.df["retrieval_head"].astype(bool)
    table.df["hit_tests"] = table.df["hit_tests"].astype(int)
    return RetrievalResult(table, table_tests, params)


def needle_accuracy(model: HookedTransformer, tests: Sequence[NeedleTest], *,
                    masked_heads: Sequence[tuple[int, int]] = (), max_new_tokens: int = MAX_NEW_TOKENS,
                    attention: str = "sdpa", progress: bool = False) -> pd.DataFrame:
    """Answer every test (no top-1 recording) with `masked_heads` made uniform: one row per test
    with length, depth, answer, recall and passed (recall > 0.5)."""
    rows = []
    for test in _progress(tests, progress, "needle accuracy"):
        dec = decode_with_top1(model, test.tokens, max_new_tokens=max_new_tokens, masked_heads=masked_heads,
                               record=False, attention=attention)
        recall = rouge1_recall(test.answer, dec.text)
        rows.append({"length": test.length, "depth": test.depth, "answer": dec.text, "recall": recall,
                     "passed": recall > RECALL_TO_COUNT})
    return pd.DataFrame(rows)


def accuracy_grid(tests: pd.DataFrame, value: str = "recall") -> pd.DataFrame:
    """Mean of `value` by length (rows) × depth (columns)."""
    return tests.pivot_table(index="length", columns="depth", values=value, aggfunc="mean")


def masking_experiment(
    model: HookedTransformer,
    tests: Sequence[NeedleTest],
    table: HeadTable,
    *,
    ks: Sequence[int] = (5, 10, 20),
    draws: int = 3,
    seed: int = 0,
    max_new_tokens: int = MAX_NEW_TOKENS,
    attention: str = "sdpa",
    progress: bool = False,
) -> pd.DataFrame:
    """Needle accuracy with the top-k retrieval heads masked vs k random non-retrieval heads
    (`draws` random draws per k, seeded), plus the unmasked baseline (k = 0).

    "Non-retrieval" heads are those outside the top max(ks) by retrieval score. Returns one row
    per (k, which, draw): mean recall, pass rate and the heads masked."""
    order = table.df.sort_values("retrieval_score", ascending=False, kind="stable")
    ranked = list(zip(order["layer"].astype(int), order["head"].astype(int)))
    if max(ks) >= len(ranked):
        raise InputError(f"k up to {max(ks)} leaves no heads to draw at random from {len(ranked)}")
    pool = ranked[max(ks):]
    rng = random.Random(seed)
    runs = [(0, "none", 0, [])]
    for k in ks:
        runs.append((k, "top retrieval", 0, ranked[:k]))
        runs += [(k, "random", d, rng.sample(pool, k)) for d in range(draws)]
    rows = []
    for k, which, draw, heads in _progress(runs, progress, "masking"):
        acc = needle_accuracy(model, tests, masked_heads=heads, max_new_tokens=max_new_tokens, attention=attention)
        rows.append({"k": k, "masked": which, "draw": draw, "recall": acc["recall"].mean(),
                     "pass_rate": acc["passed"].mean(), "heads": ",".join(f"L{l}H{h}" for l, h in heads)})
    return pd.DataFrame(rows)


def echo_induction(model: HookedTransformer, *, segment: int = 128, batch: int = 4, seed: int = 0) -> pd.DataFrame:
    """RazorAttention's echo and induction scores per head (circuits.heads on `batch` sequences of
    `segment` random tokens repeated twice): columns layer, head, echo, induction."""
    from circuits.heads import head_type_scores, repeated_random_tokens

    seqs = repeated_random_tokens(model, segment, 2, batch=batch, seed=seed)
    return head_type_scores(model, seqs, ("echo", "induction")).df[["layer", "head", "echo", "induction"]]


def _progress(items: Sequence, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not enabled)


__all__ = [
    "Decoded",
    "KVCache",
    "NeedleTest",
    "RetrievalResult",
    "accuracy_grid",
    "cached_attention",
    "chat_prompt",
    "decode_with_top1",
    "echo_induction",
    "masking_experiment",
    "needle_accuracy",
    "needle_tests",
    "new_cache",
    "retrieval_scores",
    "rouge1_recall",
    "run_cached",
    "step_hits",
]
