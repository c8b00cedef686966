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
[query, key] pattern (torch's fused CPU/GPU attention, or `interp_kernels.attention_with_stats` for
sliding-window layers and on request); its keys and values go into a TransformerLens key-value
cache. Each decoding step then runs one query row per head against the cached keys through
TransformerLens' own attention, whose one-row pattern gives the top-1 key.

Masking (Wu et al. §4): a head's attention is made uniform by zeroing its query (after QK-norm
and rotary, at hook_rot_q), in prefill and decoding alike.

`retrieval_analysis` (`RetrievalConfig` → `RetrievalResult`) runs it all, as the `interp retrieval`
command and the atlas section do: needle tests, retrieval scores, RazorAttention's echo and
induction columns, the accuracy grid and the masking experiment.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from interp.decoding import (  # noqa: F401  (re-exported: circuits.retrieval.run_cached etc. keep working)
    MAX_NEW_TOKENS,
    Decoded,
    KVCache,
    cached_attention,
    chat_prompt,
    decode_threads,
    decode_with_top1,
    new_cache,
    query_zeroing_hooks,
    run_cached,
    stop_token_ids,
)
from interp.errors import InputError
from interp.head_ids import HeadId
from interp.head_table import HeadTable
from interp.progress import progress_bar
from interp.results import AnalysisResult, frame_records

THRESHOLD = 0.1  # retrieval head: score above this (Wu et al.)
RECALL_TO_COUNT = 0.5  # a test counts when ROUGE-1 recall of the answer exceeds this
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192)
DEFAULT_DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)  # needle_tests' default grid
ANALYSIS_DEPTHS = (0.1, 0.5, 0.9)  # retrieval_analysis' (and the command's) default
ATTENTIONS = ("sdpa", "kernels")
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


# The head table's columns: units and sign (larger = more of the property, as everywhere).
RETRIEVAL_COLUMNS = {
    "retrieval_score": "Wu et al.'s score: per counted test, 1/|answer span| for every decoding step whose top-1 "
                       "key lies in the span and holds the token generated; mean over counted tests (a share of "
                       "the answer's tokens, usually 0-1; larger = the head copies more of the needle)",
    "retrieval_head": "retrieval_score > threshold (bool)",
    "hit_tests": "counted tests in which the head had at least one hit (count)",
    "echo": "RazorAttention echo score: mean attention to the earlier occurrence of the current token, "
            "on random tokens repeated twice (0-1)",
    "induction": "RazorAttention induction score: mean attention to the token after that occurrence (0-1)",
}


@dataclass(frozen=True)
class RetrievalConfig:
    """Options of `retrieval_analysis` (and the `interp retrieval` command); sequences are stored as tuples.

    Lengths above the context minus max_new_tokens are lowered to it when the tests are made
    (8192 → 8142 on SmolLM2 with 50 new tokens); the result's `params["lengths"]` are those run."""

    lengths: tuple[int, ...] = DEFAULT_LENGTHS      # context lengths of the needle tests, tokens
    depths: tuple[float, ...] = ANALYSIS_DEPTHS     # needle depths in [0, 1]
    n_needles: int = 1                              # needles, each tested at every length and depth
    seed: int = 0                                   # needle draw, haystack shuffle, random tokens, random heads
    max_new_tokens: int = MAX_NEW_TOKENS            # greedy decoding steps at most
    threshold: float = THRESHOLD                    # retrieval head: score above this
    mask_ks: tuple[int, ...] = (5, 20)              # masking experiment: numbers of heads masked (() skips it)
    mask_draws: int = 2                             # random draws of k non-retrieval heads per k
    mask_length: int | None = None                  # context length of the masking tests (None: the shortest)
    echo_segment: int | None = 128                  # random-token block for echo/induction (None: no such columns)
    attention: str = "sdpa"                         # prefill attention: sdpa (torch fused) or kernels

    def __post_init__(self) -> None:
        for name in ("lengths", "depths", "mask_ks"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass(repr=False)  # AnalysisResult's short repr, not every DataFrame
class RetrievalResult(AnalysisResult):
    """`table`: one row per head, columns as `RETRIEVAL_COLUMNS` says (retrieval_score, retrieval_head,
    hit_tests; echo and induction when config.echo_segment is set); `table.meta` says what ran
    (n_tests, n_counted, the lengths and depths run). `tests`: one row per needle test (length,
    n_tokens, depth, needle, answer, recall, counted, n_generated). `masking`: one row per masking
    run (k, masked, draw, recall, pass_rate, heads), None when not run. `seconds`: wall time per phase."""

    tests: pd.DataFrame
    masking: pd.DataFrame | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    KIND: ClassVar[str] = "retrieval"

    @property
    def params(self) -> dict[str, Any]:
        """What the run did (tests made and counted, lengths as run): the table's meta without its column docs."""
        return {k: v for k, v in self.table.meta.items() if k != "columns"}

    @property
    def n_tests(self) -> int:
        return int(self.table.meta["n_tests"])

    @property
    def n_counted(self) -> int:
        """Tests whose answer recalls the needle (ROUGE-1 recall > 0.5): the ones the score averages."""
        return int(self.table.meta["n_counted"])

    @property
    def retrieval_heads(self) -> list[str]:
        """Labels of the heads scoring above the threshold, best first."""
        df = self.table.df
        return df[df["retrieval_head"]].sort_values("retrieval_score", ascending=False, kind="stable")["label"].tolist()

    def accuracy_grid(self, value: str = "recall") -> pd.DataFrame:
        """Mean of `value` per test by length (rows) × depth (columns), unmasked."""
        return accuracy_grid(self.tests, value)

    def extras(self) -> dict[str, Any]:
        grid = self.accuracy_grid()
        return {"params": self.params, "seconds": dict(self.seconds), "tests": frame_records(self.tests),
                "accuracy_grid": {str(n): {str(d): None if pd.isna(v) else float(v) for d, v in row.items()}
                                  for n, row in grid.iterrows()},
                "masking": frame_records(self.masking)}


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
    progress: bool | None = None,
    seed: int = 0,
) -> RetrievalResult:
    """Retrieval score of every head over needle `tests` (default: `needle_tests(model, seed=seed)`
    with the lengths that fit the model's context). See the module docstring for the definition.
    The result's config describes the tests (their lengths, depths and needles), without masking
    or echo/induction columns: `retrieval_analysis` adds those."""
    cfg = model.cfg
    if tests is None:
        tests = needle_tests(model, [n for n in DEFAULT_LENGTHS if n + max_new_tokens <= cfg.n_ctx] or [cfg.n_ctx // 2],
                             seed=seed)
    totals = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64)
    any_hit = torch.zeros_like(totals)
    rows = []
    for test in progress_bar(tests, "needle tests", progress, unit="test"):
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
    lengths, depths = sorted({t.length for t in tests}), sorted({t.depth for t in tests})
    params = {"analysis": "retrieval", "n_tests": len(tests), "n_counted": n_counted, "threshold": threshold,
              "max_new_tokens": max_new_tokens, "recall_to_count": RECALL_TO_COUNT, "attention": attention,
              "lengths": lengths, "depths": depths, "columns": dict(RETRIEVAL_COLUMNS)}
    table = HeadTable.from_arrays({"retrieval_score": scores, "retrieval_head": (scores > threshold).float(),
                                   "hit_tests": any_hit}, model=cfg.model_name, meta=params)
    table.df["retrieval_head"] = table.df["retrieval_head"].astype(bool)
    table.df["hit_tests"] = table.df["hit_tests"].astype(int)
    config = RetrievalConfig(lengths=lengths, depths=depths, n_needles=len({t.needle for t in tests}), seed=seed,
                             max_new_tokens=max_new_tokens, threshold=threshold, mask_ks=(), echo_segment=None,
                             attention=attention)
    return RetrievalResult(table, config, table_tests)


def needle_accuracy(model: HookedTransformer, tests: Sequence[NeedleTest], *,
                    masked_heads: Sequence[tuple[int, int]] = (), max_new_tokens: int = MAX_NEW_TOKENS,
                    attention: str = "sdpa", progress: bool | None = None) -> pd.DataFrame:
    """Answer every test (no top-1 recording) with `masked_heads` made uniform: one row per test
    with length, depth, answer, recall and passed (recall > 0.5)."""
    rows = []
    for test in progress_bar(tests, "needle accuracy", progress, unit="test"):
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
    progress: bool | None = None,
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
    for k, which, draw, heads in progress_bar(runs, "masking", progress, unit="run"):
        acc = needle_accuracy(model, tests, masked_heads=heads, max_new_tokens=max_new_tokens, attention=attention,
                              progress=False)
        rows.append({"k": k, "masked": which, "draw": draw, "recall": acc["recall"].mean(),
                     "pass_rate": acc["passed"].mean(), "heads": ",".join(HeadId(l, h).label for l, h in heads)})
    return pd.DataFrame(rows)


def echo_induction(model: HookedTransformer, *, segment: int = 128, batch: int = 4, seed: int = 0,
                   progress: bool | None = None) -> pd.DataFrame:
    """RazorAttention's echo and induction scores per head (circuits.heads on `batch` sequences of
    `segment` random tokens repeated twice): columns layer, head, echo, induction."""
    from circuits.heads import head_type_scores, repeated_random_tokens

    seqs = repeated_random_tokens(model, segment, 2, batch=batch, seed=seed)
    table = head_type_scores(model, seqs, ("echo", "induction"), progress=progress)
    return table.df[["layer", "head", "echo", "induction"]]


# ---------------------------------------------------------------------------------------------
# the analysis: needle tests, scores, echo/induction, masking, as one typed result


# below this no model's template, needle, question and 16 haystack tokens fit (SmolLM2 needs 62 plain,
# 89 chat); lengths between it and a model's own minimum are refused when the tests are built
MIN_TEST_LENGTH = 32


def check_retrieval_args(facts, config: RetrievalConfig) -> None:
    """Every option of a retrieval run against the model's facts (`interp.model_facts.ModelFacts`:
    context, heads), before any work. Lengths up to the context are accepted (those above
    context - max_new_tokens are lowered to it); longer ones are refused."""
    c = config
    if not c.lengths or not c.depths:
        raise InputError("give at least one --lengths value and one --depths value")
    if min(c.lengths) < MIN_TEST_LENGTH:
        raise InputError(f"--lengths {min(c.lengths)} is too short for a needle test: the prompt, needle, question "
                         f"and haystack need about 60-90 tokens (89 on SmolLM2 in chat format); use at least 128")
    if facts.n_ctx is not None and max(c.lengths) > facts.n_ctx:
        raise InputError(f"--lengths {max(c.lengths)} exceeds the context of {facts.name} ({facts.n_ctx} tokens); "
                         f"use lengths up to {facts.n_ctx - c.max_new_tokens} (the answer's {c.max_new_tokens} tokens "
                         "must fit too)")
    if facts.n_ctx is not None and c.max_new_tokens >= facts.n_ctx // 2:
        raise InputError(f"--max-new-tokens {c.max_new_tokens} leaves no room for a haystack in the context of "
                         f"{facts.name} ({facts.n_ctx} tokens)")
    if any(not 0.0 <= float(d) <= 1.0 for d in c.depths):
        raise InputError(f"--depths must lie in [0, 1]; got {list(c.depths)}")
    if c.n_needles < 1 or c.mask_draws < 1:
        raise InputError("--needles and --mask-draws must be at least 1")
    if c.attention not in ATTENTIONS:
        raise InputError(f"--attention {c.attention!r} is not sdpa or kernels")
    if c.echo_segment is not None and c.echo_segment < 2:
        raise InputError(f"echo_segment {c.echo_segment} must be at least 2 tokens (or None for no echo columns)")
    if c.mask_ks:
        _check_masking(facts, c)


def _check_masking(facts, c: RetrievalConfig) -> None:
    total = facts.n_head_total
    if min(c.mask_ks) < 1 or (total is not None and 2 * max(c.mask_ks) > total):
        raise InputError(f"--mask-ks {','.join(map(str, c.mask_ks))}: each k must lie in 1..{(total or 2) // 2} "
                         f"(k random heads are drawn from outside the top {max(c.mask_ks)} of {total})")
    room = None if facts.n_ctx is None else facts.n_ctx - c.max_new_tokens
    if c.mask_length is not None and c.mask_length not in _run_lengths(c.lengths, room):
        raise InputError(f"--mask-length {c.mask_length} is not one of the lengths {_run_lengths(c.lengths, room)}")


def _run_lengths(lengths: Sequence[int], room: int | None) -> list[int]:
    """The lengths a run makes tests of: each lowered to `room` (context minus new tokens) when set."""
    return sorted({int(n) if room is None else min(int(n), room) for n in lengths})


def retrieval_analysis(model: HookedTransformer, config: RetrievalConfig | None = None, *,
                       progress: bool | None = None, **fields: Any) -> RetrievalResult:
    """Needle tests → retrieval scores (+ RazorAttention echo/induction columns), the unmasked
    accuracy grid, and the masking experiment on the tests of `mask_length` (default: the
    shortest length; no masking when mask_ks is empty). `fields` are RetrievalConfig fields, for
    `retrieval_analysis(model, lengths=(1024,), mask_ks=())`."""
    import time

    from interp.model_facts import ModelFacts

    if config is not None and fields:
        raise InputError(f"give a RetrievalConfig or its fields, not both (got {', '.join(sorted(fields))})")
    c = config or RetrievalConfig(**fields)
    check_retrieval_args(ModelFacts.of(model), c)
    t0 = time.perf_counter()
    lengths = _run_lengths(c.lengths, model.cfg.n_ctx - c.max_new_tokens)  # the answer must fit in the context too
    tests = needle_tests(model, lengths, c.depths, n_needles=c.n_needles, seed=c.seed)
    scored = retrieval_scores(model, tests, max_new_tokens=c.max_new_tokens, threshold=c.threshold,
                              attention=c.attention, progress=progress, seed=c.seed)
    seconds = {"retrieval_scores": time.perf_counter() - t0}
    table = scored.table
    if c.echo_segment is not None:
        t1 = time.perf_counter()
        razor = echo_induction(model, segment=c.echo_segment, seed=c.seed, progress=progress)
        for col in ("echo", "induction"):
            table.df[col] = razor[col].to_numpy()
        seconds["echo_induction"] = time.perf_counter() - t1
    masking = None
    if c.mask_ks:
        t1 = time.perf_counter()
        length = min(lengths) if c.mask_length is None else c.mask_length
        masking = masking_experiment(model, [t for t in tests if t.length == length], table, ks=c.mask_ks,
                                     draws=c.mask_draws, seed=c.seed, max_new_tokens=c.max_new_tokens,
                                     attention=c.attention, progress=progress)
        seconds["masking"] = time.perf_counter() - t1
    return RetrievalResult(table, c, scored.tests, masking, seconds)


__all__ = [
    "RETRIEVAL_COLUMNS",
    "Decoded",
    "KVCache",
    "NeedleTest",
    "RetrievalConfig",
    "RetrievalResult",
    "accuracy_grid",
    "cached_attention",
    "chat_prompt",
    "check_retrieval_args",
    "decode_with_top1",
    "echo_induction",
    "masking_experiment",
    "needle_accuracy",
    "needle_tests",
    "new_cache",
    "retrieval_analysis",
    "retrieval_scores",
    "rouge1_recall",
    "run_cached",
    "step_hits",
]
