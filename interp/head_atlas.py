"""The head atlas: every result of one model joined per head.

A `HeadAtlas` holds the head tables of every analysis that ran on one model (each a `HeadTable`, one
row per head), the taxonomies that turn scores into labels (`Taxonomy`: "induction score > 0.3"),
labels that analyses give directly (`HeadLabel`: "IOI name mover", "dormant on legal text"), and small
attention examples per head. It answers "what does this head do?" (`profile`) and "do two head types
pick the same heads?" (`overlaps`).

Ranks and percentiles are among the model's heads, per score column: rank 1 is the largest value;
the percentile is the share of heads whose value is at most this head's (100 = the largest).
"""
from __future__ import annotations

import html
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from interp.errors import InputError
from interp.head_ids import HeadId, HeadLike
from interp.head_table import SCHEMA as HEAD_TABLE_SCHEMA
from interp.head_table import HeadTable

SCHEMA = "interp.head_atlas/1"


@dataclass(frozen=True)
class Taxonomy:
    """A head type read off one score: heads whose `table.column` exceeds `threshold` earn `name`.

    `description` says what the score measures and its unit; `source` names the method (paper)."""

    name: str
    table: str
    column: str
    threshold: float
    description: str = ""
    source: str = ""

    def holds(self, value: float | None) -> bool:
        return value is not None and not math.isnan(value) and value > self.threshold


@dataclass(frozen=True)
class HeadLabel:
    """A label one analysis gives one head, with the evidence behind it (plain text)."""

    head: str
    label: str
    evidence: str
    analysis: str


@dataclass(frozen=True)
class HeadScore:
    """One score of one head: its value, rank (1 = largest) and percentile among the model's heads."""

    table: str
    metric: str
    value: float | None
    rank: int | None
    percentile: float | None
    n_heads: int


@dataclass
class HeadExample:
    """A head's attention on one short text: `pattern[q][k]` for keys k <= q, in percent (0-100, rounded)."""

    text: str
    tokens: list[str]
    pattern: list[list[int]]


@dataclass
class HeadProfile:
    """Everything the atlas knows about one head."""

    head: HeadId
    model: str
    scores: list[HeadScore]
    labels: list[HeadLabel]
    examples: list[HeadExample] = field(default_factory=list)
    top_tokens: list[dict[str, Any]] = field(default_factory=list)

    @property
    def df(self) -> pd.DataFrame:
        """The scores as a DataFrame: table, metric, value, rank, percentile, n_heads."""
        return pd.DataFrame([asdict(s) for s in self.scores])

    def score(self, table: str, metric: str) -> HeadScore:
        for s in self.scores:
            if s.table == table and s.metric == metric:
                return s
        raise InputError(f"{self.head} has no score {table}.{metric}")

    def to_dict(self) -> dict[str, Any]:
        return {"head": self.head.label, "layer": self.head.layer, "index": self.head.head, "model": self.model,
                "labels": [asdict(x) for x in self.labels], "scores": [asdict(s) for s in self.scores],
                "examples": [asdict(e) for e in self.examples], "top_tokens": self.top_tokens}

    def __repr__(self) -> str:
        labels = ", ".join(x.label for x in self.labels) or "no labels"
        return f"HeadProfile({self.head.label} of {self.model}: {labels}; {len(self.scores)} scores)"

    def _repr_html_(self) -> str:
        labels = "".join(f"<li><b>{html.escape(x.label)}</b> ({html.escape(x.analysis)}): {html.escape(x.evidence)}</li>"
                         for x in self.labels) or "<li>no labels</li>"
        table = self.df.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}")
        return f"<div><h4>{self.head.label} · {html.escape(self.model)}</h4><ul>{labels}</ul>{table}</div>"


@dataclass
class TaxonomyOverlaps:
    """For each pair of head types: Jaccard overlap of their top-`k` head sets and Spearman rank
    correlation of their scores over all heads (both DataFrames indexed by taxonomy name)."""

    jaccard: pd.DataFrame
    spearman: pd.DataFrame
    k: int

    def to_dict(self) -> dict[str, Any]:
        names = list(self.jaccard.index)
        return {"k": self.k, "taxonomies": names, "jaccard": _matrix(self.jaccard), "spearman": _matrix(self.spearman)}


class HeadAtlas:
    """All head-level results of one model, joined per head."""

    def __init__(self, model: str, n_layers: int, n_heads: int, tables: Mapping[str, HeadTable],
                 taxonomies: Sequence[Taxonomy] = (), labels: Iterable[HeadLabel] = (),
                 examples: Mapping[str, Any] | None = None):
        self.model, self.n_layers, self.n_heads = model, int(n_layers), int(n_heads)
        self.tables = dict(tables)
        for name, table in self.tables.items():
            if len(table.df[["layer", "head"]].drop_duplicates()) != len(table.df):
                raise InputError(f"head table {name!r} has more than one row for some head")
        missing = [t for t in taxonomies if t.table not in self.tables or t.column not in self.tables[t.table].metrics]
        self.taxonomies = [t for t in taxonomies if t not in missing]
        self.labels = list(labels)
        self.examples = dict(examples or {})  # {"texts": [{"text", "tokens"}], "patterns": {label: [[[int]]]}}
        self._ranks = {name: _ranks(name, table) for name, table in self.tables.items()}

    # -- one head -------------------------------------------------------------------------------
    def profile(self, head: HeadLike) -> HeadProfile:
        """Every score, rank, percentile, label and example of one head ("L17H4", "A17.4", (17, 4))."""
        hid = HeadId.parse(head, self.n_heads).check(self.n_layers, self.n_heads, self.model)
        return HeadProfile(hid, self.model, self._scores(hid), self.head_labels(hid), *self._examples(hid))

    def head_labels(self, head: HeadLike) -> list[HeadLabel]:
        """The labels a head earns: from each taxonomy's rule, then those analyses gave directly."""
        hid = HeadId.parse(head, self.n_heads)
        out = []
        for t in self.taxonomies:
            s = self._score(hid, t.table, t.column)
            if s is not None and t.holds(s.value):
                out.append(HeadLabel(hid.label, t.name, f"{t.column} = {s.value:.3g} > {t.threshold:g} "
                                     f"(rank {s.rank} of {s.n_heads}); {t.description}".rstrip("; "), t.table))
        return out + [x for x in self.labels if x.head == hid.label]

    def heads_labelled(self, name: str) -> list[str]:
        """Labels of the heads that carry the label `name`, in layer-head order."""
        return [h.label for h in self.heads() if any(x.label == name for x in self.head_labels(h))]

    def heads(self) -> list[HeadId]:
        """Every head of the model, in layer-head order."""
        return [HeadId(l, h) for l in range(self.n_layers) for h in range(self.n_heads)]

    # -- across heads ---------------------------------------------------------------------------
    def overlaps(self, k: int | None = None) -> TaxonomyOverlaps:
        """Jaccard of the top-k sets (k defaults to 5 % of the heads, at least 5) and Spearman
        correlation of the scores, for every pair of taxonomies."""
        n = self.n_layers * self.n_heads
        k = k or max(5, math.ceil(0.05 * n))
        names = [t.name for t in self.taxonomies]
        vectors = {t.name: self._vector(t) for t in self.taxonomies}
        tops = {name: set(np.argsort(-np.nan_to_num(v, nan=-np.inf), kind="stable")[:k]) for name, v in vectors.items()}
        jac = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
        rho = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                jac.loc[a, b] = jac.loc[b, a] = len(tops[a] & tops[b]) / len(tops[a] | tops[b])
                rho.loc[a, b] = rho.loc[b, a] = _spearman(vectors[a], vectors[b])
        return TaxonomyOverlaps(jac, rho, k)

    def to_dict(self) -> dict[str, Any]:
        heads = self.heads()
        return {"schema": SCHEMA, "model": self.model, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "taxonomies": [asdict(t) for t in self.taxonomies], "overlaps": self.overlaps().to_dict(),
                "profiles": {h.label: _card(self.profile(h)) for h in heads}}

    @classmethod
    def from_json(cls, source: str | os.PathLike | Mapping[str, Any], taxonomies: Sequence[Taxonomy] | None = None) -> "HeadAtlas":
        """Rebuild the atlas of an `atlas.json` (a path or its parsed body): its head tables,
        taxonomies, labels and examples as the atlas run recorded them."""
        body = _read(source)
        card, part = body.get("card", {}), body.get("head_atlas") or {}
        tables = {name: HeadTable.from_dict(t) for name, t in part.get("tables", {}).items()}
        taxa = taxonomies if taxonomies is not None else [Taxonomy(**t) for t in part.get("taxonomies", [])]
        labels = [HeadLabel(**x) for x in part.get("labels", [])]
        return cls(body.get("model") or card.get("name", "?"), card["n_layers"], card["n_heads"], tables, taxa,
                   labels, part.get("examples"))

    def record(self) -> dict[str, Any]:
        """What `atlas.json` stores to rebuild this atlas (`from_json`), besides the per-head profiles."""
        return {"tables": {n: t.to_dict() for n, t in self.tables.items()},
                "taxonomies": [asdict(t) for t in self.taxonomies], "labels": [asdict(x) for x in self.labels],
                "examples": self.examples}

    def __repr__(self) -> str:
        return (f"HeadAtlas({self.model}: {self.n_layers}x{self.n_heads} heads, tables {sorted(self.tables)}, "
                f"{len(self.taxonomies)} taxonomies, {len(self.labels)} direct labels)")

    # -- internals ------------------------------------------------------------------------------
    def _score(self, hid: HeadId, table: str, metric: str) -> HeadScore | None:
        return self._ranks[table].get((hid.layer, hid.head), {}).get(metric)

    def _scores(self, hid: HeadId) -> list[HeadScore]:
        key = (hid.layer, hid.head)
        return [s for name in self.tables for s in self._ranks[name].get(key, {}).values()]

    def _vector(self, t: Taxonomy) -> np.ndarray:
        """The taxonomy's score for every head, flat [n_layers * n_heads], NaN where not measured."""
        v = np.full(self.n_layers * self.n_heads, np.nan)
        df = self.tables[t.table].df
        idx = [HeadId(int(l), int(h)).index(self.n_heads) for l, h in zip(df["layer"], df["head"])]
        v[idx] = df[t.column].astype(float).to_numpy()
        return v

    def _examples(self, hid: HeadId) -> tuple[list[HeadExample], list[dict[str, Any]]]:
        patterns = self.examples.get("patterns", {}).get(hid.label)
        if not patterns:
            return [], []
        texts = self.examples.get("texts", [])
        examples = [HeadExample(t["text"], t["tokens"], p) for t, p in zip(texts, patterns)]
        return examples, _top_tokens(examples)


def head_profile(results: HeadAtlas | str | os.PathLike | Mapping[str, Any], head: HeadLike) -> HeadProfile:
    """One head across every result of one model: `results` is a HeadAtlas, an atlas.json path or its body."""
    atlas = results if isinstance(results, HeadAtlas) else HeadAtlas.from_json(results)
    return atlas.profile(head)


def _read(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.is_dir():
        path = path / "atlas.json"
    if not path.is_file():
        raise InputError(f"no atlas at {path}; run `interp atlas --out DIR` and pass DIR or DIR/atlas.json")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not an atlas.json ({err})") from None
    if "head_atlas" not in body:
        raise InputError(f"{path} has no head atlas (written before the head atlas existed); run `interp atlas` again")
    return body


def _ranks(name: str, table: HeadTable) -> dict[tuple[int, int], dict[str, HeadScore]]:
    """Per head, per numeric metric: its HeadScore (rank 1 = largest, ties share the best rank;
    percentile = share of measured heads at or below it). NaN values get no rank."""
    df = table.df
    out: dict[tuple[int, int], dict[str, HeadScore]] = {(int(l), int(h)): {} for l, h in zip(df["layer"], df["head"])}
    keys = list(out)
    for metric in table.metrics:
        col = df[metric]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            continue
        col = col.astype(float)
        n = int(col.notna().sum())
        ranks = col.rank(ascending=False, method="min").to_numpy()
        pcts = (100.0 * col.rank(ascending=True, method="max") / max(n, 1)).to_numpy()
        for key, value, rank, pct in zip(keys, col.to_numpy(), ranks, pcts):
            measured = not math.isnan(value)
            out[key][metric] = HeadScore(name, metric, float(value) if measured else None,
                                         int(rank) if measured else None, float(pct) if measured else None, n)
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    both = ~(np.isnan(a) | np.isnan(b))
    if both.sum() < 3:
        return None
    ra, rb = pd.Series(a[both]).rank().to_numpy(), pd.Series(b[both]).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _top_tokens(examples: list[HeadExample], k: int = 5) -> list[dict[str, Any]]:
    """The key tokens the head attends to most in its examples: mean attention received per query
    that sees the key (α, as for sinks), best first; position 0 included and marked."""
    rows = []
    for i, ex in enumerate(examples):
        n = len(ex.pattern)
        pattern = np.zeros((n, n))
        for q, row in enumerate(ex.pattern):  # lower triangle: row q holds keys 0..q, in percent
            pattern[q, : len(row)] = np.asarray(row, dtype=float) / 100.0
        received = pattern.sum(axis=0) / np.arange(n, 0, -1)
        for j in range(n):
            rows.append({"text": i, "position": j, "token": ex.tokens[j], "alpha": round(float(received[j]), 3)})
    rows.sort(key=lambda r: -r["alpha"])
    return rows[:k]


def _card(p: HeadProfile) -> dict[str, Any]:
    """The compact per-head record the report's head cards read (no example patterns: shared)."""
    return {"labels": [[x.label, x.evidence, x.analysis] for x in p.labels],
            "scores": [[s.table, s.metric, s.value, s.rank, s.percentile] for s in p.scores],
            "top_tokens": p.top_tokens}


def _matrix(df: pd.DataFrame) -> list[list[float | None]]:
    return [[None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4) for v in row]
            for row in df.to_numpy(dtype=object)]


def head_tables_in(body: Any, prefix: str = "") -> dict[str, HeadTable]:
    """Every head table (schema interp.heads/1) inside a JSON body, keyed by its dotted path."""
    found: dict[str, HeadTable] = {}
    if isinstance(body, Mapping):
        if body.get("schema") == HEAD_TABLE_SCHEMA and "rows" in body:
            return {prefix or "heads": HeadTable.from_dict(body)}
        for key, value in body.items():
            found.update(head_tables_in(value, f"{prefix}.{key}" if prefix else str(key)))
    return found
