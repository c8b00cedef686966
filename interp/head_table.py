"""`HeadTable`: the tidy table every head-level analysis returns, one row per (layer, head)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from interp.errors import InputError
from interp.head_ids import head_label

SCHEMA = "interp.heads/1"
KEY_COLUMNS = ["layer", "head", "label"]


def _plain(value: Any) -> Any:
    """numpy scalars → Python scalars (floats keep all 17 digits in JSON; NaN becomes null)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


class HeadTable:
    """A pandas DataFrame with columns `layer`, `head`, `label` ("L{layer}H{head}") then metrics.

    `meta` holds what produced it (model, analysis, parameters); it travels with the JSON.
    """

    def __init__(self, df: pd.DataFrame, *, model: str | None = None, meta: Mapping[str, Any] | None = None):
        missing = [c for c in ("layer", "head") if c not in df.columns]
        if missing:
            raise InputError(f"a head table needs columns layer and head; missing {', '.join(missing)}")
        df = df.copy()
        df["layer"] = df["layer"].astype(int)
        df["head"] = df["head"].astype(int)
        df["label"] = [head_label(l, h) for l, h in zip(df["layer"], df["head"])]
        metrics = [c for c in df.columns if c not in KEY_COLUMNS]
        for c in metrics:
            if pd.api.types.is_float_dtype(df[c]):
                df[c] = df[c].astype("float64")
        self.df = df[KEY_COLUMNS + metrics].sort_values(["layer", "head"]).reset_index(drop=True)
        self.model = model
        self.meta = dict(meta or {})

    @classmethod
    def from_arrays(cls, metrics: Mapping[str, Any], *, layers=None, heads=None, model=None, meta=None) -> "HeadTable":
        """Build from metric arrays shaped [n_layers, n_heads] (torch or numpy). `layers`/`heads`
        give the model indices of the rows and columns when they are a selection."""
        arrays = {k: np.asarray(v.detach().cpu().float() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
        shape = next(iter(arrays.values())).shape
        if any(a.shape != shape or a.ndim != 2 for a in arrays.values()):
            raise InputError("every metric array must have the same [n_layers, n_heads] shape")
        layers = list(range(shape[0])) if layers is None else list(layers)
        heads = list(range(shape[1])) if heads is None else list(heads)
        grid_l, grid_h = np.meshgrid(layers, heads, indexing="ij")
        df = pd.DataFrame({"layer": grid_l.ravel(), "head": grid_h.ravel()})
        for name, a in arrays.items():
            df[name] = a.ravel()
        return cls(df, model=model, meta=meta)

    @property
    def metrics(self) -> list[str]:
        return [c for c in self.df.columns if c not in KEY_COLUMNS]

    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        return f"HeadTable(model={self.model!r}, rows={len(self)}, metrics={self.metrics})"

    def _repr_html_(self) -> str:
        return self.df._repr_html_()

    def __getitem__(self, column: str) -> pd.Series:
        return self.df[column]

    def grid(self, metric: str) -> pd.DataFrame:
        """The metric as a layer × head DataFrame."""
        self._check_metric(metric)
        return self.df.pivot(index="layer", columns="head", values=metric)

    def top(self, metric: str, k: int = 10, *, ascending: bool = False) -> "HeadTable":
        """The k heads with the largest (or smallest) values of `metric`, in that order."""
        self._check_metric(metric)
        df = self.df.sort_values(metric, ascending=ascending, kind="stable").head(k)
        out = HeadTable(df, model=self.model, meta=self.meta)
        out.df = df.reset_index(drop=True)
        return out

    def heatmap(self, metric: str, *, title: str | None = None, **layout: Any):
        """A plotly heatmap of `metric` over layer (rows) × head (columns); hover shows the label."""
        import plotly.graph_objects as go

        grid = self.grid(metric)
        labels = [[head_label(l, h) for h in grid.columns] for l in grid.index]
        fig = go.Figure(
            go.Heatmap(
                z=grid.values, x=[f"H{h}" for h in grid.columns], y=[f"L{l}" for l in grid.index],
                text=labels, hovertemplate="%{text}: %{z:.4g}<extra></extra>", colorscale="Viridis",
                colorbar=dict(title=metric),
            )
        )
        fig.update_layout(
            title=title or f"{metric} ({self.model})" if self.model else title or metric,
            xaxis_title="head", yaxis_title="layer", yaxis_autorange="reversed",
            height=max(300, 22 * len(grid.index) + 120), **layout,
        )
        return fig

    def to_dict(self) -> dict[str, Any]:
        rows = [{k: _plain(v) for k, v in row.items()} for row in self.df.to_dict(orient="records")]
        return {"schema": SCHEMA, "model": self.model, "metrics": self.metrics, "meta": self.meta, "rows": rows}

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, default=str))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HeadTable":
        if data.get("schema") != SCHEMA:
            raise InputError(f"not a head table: schema is {data.get('schema')!r}, expected {SCHEMA!r}")
        df = pd.DataFrame(data["rows"], columns=KEY_COLUMNS + list(data.get("metrics", [])))
        return cls(df, model=data.get("model"), meta=data.get("meta"))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "HeadTable":
        from interp.output import read_json

        return cls.from_dict(read_json(path, "head table"))

    def to_csv(self, path: str | os.PathLike) -> None:
        self.df.to_csv(path, index=False)

    @classmethod
    def from_csv(cls, path: str | os.PathLike, *, model: str | None = None) -> "HeadTable":
        return cls(pd.read_csv(path), model=model)

    def _check_metric(self, metric: str) -> None:
        if metric not in self.metrics:
            raise InputError(f"no metric {metric!r} in this head table; it has {', '.join(self.metrics) or 'none'}")
