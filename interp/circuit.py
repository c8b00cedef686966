"""`Circuit`: a scored subgraph of a model for a task, with its faithfulness curve.

Node and edge names follow auto-circuit: `A{layer}.{head}` for attention heads (inputs
`A{l}.{h}.Q/.K/.V`), `MLP {layer}`, `Resid Start`, `Resid End`.

A circuit says one thing (DESIGN.md): kind "heads" is a set of heads and no edges (every other
head's output ablated, MLPs and the embedding intact); kind "edges" is a set of edges whose nodes
are exactly the components the edges touch (a destination input such as "A3.2.Q" or "A3.KV1.K"
counts as its component "A3.2" / "A3.KV1"). Schema interp.circuit/2 records the kind; files of
schema interp.circuit/1 still load (kind "edges" when they hold edges, else "heads"; their node
lists are not checked, since /1 circuits could mix a head ranking with edges).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from interp.errors import InputError

SCHEMA = "interp.circuit/2"
SCHEMAS_READ = ("interp.circuit/1", SCHEMA)
KINDS = ("heads", "edges")
_HEAD = re.compile(r"^A(\d+)\.(\d+)")
_MLP = re.compile(r"^MLP (\d+)")
_KV = re.compile(r"^A(\d+)\.KV(\d+)")  # a GQA key/value input, shared by the query heads of KV head g


@dataclass
class Edge:
    src: str
    dst: str
    score: float


def component(name: str) -> str:
    """The component a node or edge endpoint belongs to: "A3.2.Q" → "A3.2", "A3.KV1.K" → "A3.KV1"."""
    return name.rsplit(".", 1)[0] if name.endswith((".Q", ".K", ".V")) else name


def edge_nodes(edges: list[Edge]) -> list[str]:
    """The components a list of edges touches (sources and destinations), in first-seen order."""
    return list(dict.fromkeys(component(n) for e in edges for n in (e.src, e.dst)))


@dataclass
class Circuit:
    """kind: "heads" (a node circuit: heads, possibly other components, and no edges) or "edges" (nodes are the edges' endpoints);
    nodes: names in the circuit; edges: scored (src → dst), score positive when the edge helps the
    metric; metric: what scored the components; faithfulness: curve rows of {kind, n_edges, n_heads,
    value, ...} where value is (m(C) − m(∅)) / (m(full) − m(∅)) on the prompts named by the row's
    "split"; evidence: per-node numbers. Construction checks that nodes and edges agree with kind."""

    model: str
    task: str
    metric: str
    method: str
    nodes: list[str] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    faithfulness: list[dict[str, float]] = field(default_factory=list)
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)
    kind: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = "edges" if self.edges else "heads"
        self.validate()

    def validate(self) -> None:
        """Raise InputError when nodes and edges do not say one thing for this kind."""
        if self.kind not in KINDS:
            raise InputError(f"circuit kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "heads":
            if self.edges:
                raise InputError(f"a head circuit has no edges (got {len(self.edges)}); use kind='edges'")
            return
        want = edge_nodes(self.edges)
        if sorted(set(self.nodes)) != sorted(want):
            extra, missing = sorted(set(self.nodes) - set(want)), sorted(set(want) - set(self.nodes))
            raise InputError(f"an edge circuit's nodes are its edges' endpoints: {len(extra)} nodes touch no edge "
                             f"{extra[:3]}, {len(missing)} endpoints are not nodes {missing[:3]}")

    @classmethod
    def from_edges(cls, edges: list[Edge], **fields: Any) -> "Circuit":
        """An edge circuit whose nodes are its edges' endpoints."""
        return cls(nodes=edge_nodes(edges), edges=edges, kind="edges", **fields)

    @property
    def heads(self) -> list[tuple[int, int]]:
        """(layer, head) of every attention-head node, in layer order."""
        found = {(int(m[1]), int(m[2])) for n in self.nodes if (m := _HEAD.match(n))}
        return sorted(found)

    def _repr_html_(self) -> str:
        """Inline in Jupyter: what the circuit is, its nodes, its strongest edges and its held-out faithfulness."""
        import html as _html

        held = [r for r in self.faithfulness if r.get("split") == "eval"]
        faith = f"; held-out faithfulness at {held[-1].get('n_heads', '?')} heads: {held[-1]['value']:.3g}" if held else ""
        top = sorted(self.edges, key=lambda e: -abs(e.score))[:10]
        rows = "".join(f"<tr><td>{_html.escape(e.src)}</td><td>{_html.escape(e.dst)}</td><td>{e.score:.4g}</td></tr>"
                       for e in top)
        edges = f"<table><tr><th>src</th><th>dst</th><th>score</th></tr>{rows}</table>" if top else ""
        return (f"<div><b>{_html.escape(self.kind)} circuit</b> of {_html.escape(str(self.model))} for "
                f"{_html.escape(str(self.task))} ({_html.escape(str(self.method))}, metric {_html.escape(str(self.metric))}): "
                f"{len(self.nodes)} nodes, {len(self.edges)} edges{faith}<br>"
                f"nodes: {_html.escape(', '.join(self.nodes[:40]))}{' …' if len(self.nodes) > 40 else ''}{edges}</div>")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        keys = ("model", "task", "kind", "metric", "method", "nodes", "edges", "faithfulness", "summary", "evidence")
        return {"schema": SCHEMA, **{k: d[k] for k in keys}}

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, default=float))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Circuit":
        if data.get("schema") not in SCHEMAS_READ:
            raise InputError(f"not a circuit: schema is {data.get('schema')!r}, expected one of {', '.join(SCHEMAS_READ)}")
        edges = [Edge(e["src"], e["dst"], float(e["score"])) for e in data.get("edges", [])]
        nodes = list(data.get("nodes", []))
        if data["schema"] == "interp.circuit/1":  # /1 did not say its kind; its nodes could mix rankings
            kind = "edges" if edges else "heads"
            nodes = edge_nodes(edges) if edges else nodes
        else:
            kind = data.get("kind", "")
        return cls(
            model=data["model"], task=data["task"], metric=data["metric"], method=data["method"],
            nodes=nodes, edges=edges, faithfulness=list(data.get("faithfulness", [])),
            evidence=dict(data.get("evidence", {})), kind=kind, summary=dict(data.get("summary", {})),
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
        summary = (f"<p>{self.kind} circuit; method <b>{self.method}</b>, metric <b>{self.metric}</b>, "
                   f"{len(self.nodes)} nodes, {len(self.edges)} edges</p>")
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
