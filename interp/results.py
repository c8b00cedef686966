"""One result shape for every analysis.

An analysis entry point takes the model first, then its inputs, then a config dataclass (or its
fields as keywords), and returns a subclass of `AnalysisResult`: `.table` (a `HeadTable`, one row
per head, with documented columns), `.config` (the options it ran with, recorded whole in its
JSON) and the analysis' own extras as typed fields. `to_dict()` / `to_json(path)` write
`{"schema": "interp.<kind>/1", "model", "config", "heads": <head table>, ...extras}`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from interp.head_table import HeadTable


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON-ready values (tuples as lists, paths and other objects as text)."""
    if config is None:
        return {}
    raw = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {k: _plain(v) for k, v in raw.items()}


def frame_records(df: pd.DataFrame | None) -> list[dict[str, Any]] | None:
    """A DataFrame as JSON rows (NaN as null, numpy scalars as Python ones); None stays None."""
    if df is None:
        return None
    return [{k: _plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def json_ready(value: Any) -> Any:
    """Any analysis value as plain JSON: numpy / torch scalars and arrays as Python numbers and lists,
    NaN and ±inf as null, tuples as lists, dict keys as text, other objects as text."""
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays, torch tensors
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass
class AnalysisResult:
    """What an analysis returns: `table` (one row per head) and `config` (how it was made)."""

    table: HeadTable
    config: Any

    KIND: ClassVar[str] = "analysis"
    VERSION: ClassVar[int] = 1  # the schema's version: bumped when a kind's JSON changes shape

    @property
    def model(self) -> str | None:
        return self.table.model

    def extras(self) -> dict[str, Any]:
        """The analysis' own parts, as JSON (subclasses add theirs)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": f"interp.{self.KIND}/{self.VERSION}", "model": self.model, "config": config_dict(self.config),
                "heads": self.table.to_dict(), **self.extras()}

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, heads={len(self.table)}, metrics={self.table.metrics})"

    def _repr_html_(self) -> str:
        return f"<p><b>{type(self).__name__}</b> of {self.model} ({len(self.table)} heads)</p>" + self.table._repr_html_()
