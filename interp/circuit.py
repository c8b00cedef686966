"""`Circuit`: a scored subgraph of a model for a task, with its faithfulness curve.

Node and edge names follow auto-circuit: `A{layer}.{head}` for attention heads (inputs
`A{l}.{h}.Q/.K/.V`), `MLP {layer}`, `Resid Start`, `Resid End`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from interp.errors import InputError

SCHEMA = "interp.circuit/1"
_HEAD = re.compile(r"^A(\d+)\.(\d+)")
_MLP = re.compile(r"^MLP (\d+)")
_KV = re.compile(r"^A(\d+)\.KV(\d+)")  # a GQA key/value input, shared by the query heads of KV head g


@dataclass
class Edge:
    src: str
    dst: str
    score: float


@dataclass
class Circuit:
    """nodes: names in the circuit; edges: scored (src → dst); faithfulness: rows of
    {n_edges, n_heads, value} where value is the circuit's metric over the full model's."""

    model: str
    task: str
    metric: str
    method: str
    nodes: list[str] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    faithfulness: list[dict[str, float]] = field(default_factory=list)
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def heads(self) -> list[tuple[int, int]]:
        """(layer, head) of every attention-head node, in layer order."""
        found = {(int(m[1]), int(m[2])) for n in self.nodes if (m := _HEAD.match(n))}
        return sorted(found)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"schema": SCHEMA, **{k: d[k] for k in ("model", "task", "metric", "method", "nodes", "edges", "faithfulness", "evidence")}}

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, default=float))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Circuit":
        if data.get("schema") != SCHEMA:
            raise InputError(f"not a circuit: schema is {data.get('schema')!r}, expected {SCHEMA!r}")
        edges = [Edge(e["src"], e["dst"], float(e["score"])) for e in data.get("edges", [])]
        return cls(
            model=data["model"], task=data["task"], metric=data["metric"], method=data["method"],
            nodes=list(data.get("nodes", [])), edges=edges, faithfulness=list(data.get("faithfulness", [])),
            evidence=dict(data.get("evidence", {})),
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Circuit":
        from interp.output import read_json

        return cls.from_dict(read_json(path, "circuit"))

    def graph_figure(self, max_edges: int = 300):
        """Plotly figure: nodes placed by layer (y) and head (x), the `max_edges` edges of largest
        |score| drawn with width ∝ |score|."""
        import plotly.graph_objects as go

        edges = sorted(self.edges, key=lambda e: -abs(e.score))[:max_edges]
        names = list(dict.fromkeys(self.nodes + [n for e in edges for n in (e.src, e.dst)]))
        top_layer = max((_position(n, 0)[1] for n in names), default=0.0) + 1
        pos = {n: _position(n, top_layer) for n in names}
        top = max((abs(e.score) for e in edges), default=1.0) or 1.0
        fig = go.Figure()
        for e in edges:
            (x0, y0), (x1, y1) = pos[e.src], pos[e.dst]
            fig.add_trace(go.Scatter(
                x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="text", text=f"{e.src} → {e.dst}: {e.score:.3g}",
                line=dict(width=0.5 + 4 * abs(e.score) / top, color="#c0392b" if e.score < 0 else "#2e86c1"),
                showlegend=False,
            ))
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pos.values()], y=[p[1] for p in pos.values()], mode="markers+text",
            text=list(pos), textposition="top center", marker=dict(size=12, color="#444"), showlegend=False,
            hovertext=[json.dumps(self.evidence.get(n, {}), default=float)[:300] for n in pos], hoverinfo="text",
        ))
        fig.update_layout(title=f"{self.task} circuit ({self.method}, {self.model})", xaxis_title="head",
                          yaxis_title="layer", height=700)
        return fig

    def faithfulness_figure(self):
        import plotly.graph_objects as go

        rows = self.faithfulness
        kinds = list(dict.fromkeys(r.get("kind", "edges") for r in rows))
        if kinds == ["edges"]:
            fig = go.Figure(go.Scatter(x=[r["n_edges"] for r in rows], y=[r["value"] for r in rows], mode="lines+markers"))
            fig.update_layout(title="faithfulness: circuit metric / full model metric", xaxis_title="edges kept",
                              yaxis_title="faithfulness")
            return fig
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("by edges kept", "by heads kept"))
        for kind in kinds:  # rows may carry "kind": edges / heads / acdc (one point)
            part = [r for r in rows if r.get("kind", "edges") == kind]
            col, x = (2, "n_heads") if kind == "heads" else (1, "n_edges")
            fig.add_trace(go.Scatter(x=[r[x] for r in part], y=[r["value"] for r in part], name=kind,
                                     mode="lines+markers" if len(part) > 1 else "markers"), row=1, col=col)
        fig.update_xaxes(type="log", row=1, col=1)
        fig.update_layout(title="faithfulness: circuit metric / full model metric (everything else ablated)",
                          yaxis_title="faithfulness")
        return fig

    def to_html(self, path: str | os.PathLike) -> Path:
        """Write a self-contained interactive page: the graph, the faithfulness curve, the edges and
        the evidence recorded for each node."""
        import pandas as pd

        from interp.report import Report

        report = Report(f"{self.task} circuit in {self.model}")
        summary = f"<p>method <b>{self.method}</b>, metric <b>{self.metric}</b>, {len(self.nodes)} nodes, {len(self.edges)} edges</p>"
        report.add("Graph", text=summary, figures=[self.graph_figure()])
        if self.faithfulness:
            report.add("Faithfulness", figures=[self.faithfulness_figure()])
        edges = pd.DataFrame([asdict(e) for e in self.edges], columns=["src", "dst", "score"])
        report.add("Edges", tables=[("edges by score", edges.sort_values("score", key=abs, ascending=False))])
        if self.evidence:
            rows = [{"node": n, **{k: v for k, v in ev.items()}} for n, ev in self.evidence.items()]
            report.add("Evidence per node", tables=[("evidence", pd.DataFrame(rows))])
        return report.write(path)


def _position(node: str, end_layer: float) -> tuple[float, float]:
    """(x, y) of a node: heads at (head, layer), MLPs left of their layer, the residual ends below/above."""
    if m := _HEAD.match(node):
        return float(m[2]), float(m[1])
    if m := _MLP.match(node):
        return -2.0, float(m[1]) + 0.5
    if m := _KV.match(node):
        return -1.0 + 0.25 * float(m[2]), float(m[1]) - 0.3
    return (-4.0, -1.0) if node.startswith("Resid Start") else (-4.0, end_layer)
