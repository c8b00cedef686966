"""Self-contained HTML reports: plotly.js inlined once, so a report opens offline, with no CDN."""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table.data{border-collapse:collapse;font-size:13px;margin:1em 0}
table.data td,table.data th{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.data th{background:#f3f3f3}nav a{margin-right:1em}.note{color:#555}
"""


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[Any] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.title.lower())


class Report:
    """An ordered list of sections (text, plotly figures, tables) rendered to one HTML file."""

    def __init__(self, title: str):
        self.title = title
        self.sections: list[Section] = []
        self.footer: list[str] = []  # raw HTML appended to the body (e.g. the head cards' panel and script)

    def add(self, title: str, *, text: str = "", figures=(), tables=()) -> Section:
        """Add a section. `text` is HTML; `tables` are (caption, DataFrame) pairs."""
        section = Section(title, text, list(figures), list(tables))
        self.sections.append(section)
        return section

    def add_section(self, part: dict) -> Section:
        """Add a section given as a dict with "title" and optional "text", "figures", "tables"
        (the shape analyses return for the atlas)."""
        return self.add(part["title"], text=part.get("text", ""), figures=part.get("figures", []),
                        tables=part.get("tables", []))

    def to_html(self) -> str:
        from plotly.offline import get_plotlyjs

        nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in self.sections)
        body = "\n".join(_render(s) for s in self.sections)
        return (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{_STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head>"
            f"<body><h1>{html.escape(self.title)}</h1><nav>{nav}</nav>{body}{''.join(self.footer)}</body></html>"
        )

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically: the file appears complete or not at all."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(self.to_html(), encoding="utf-8")
        tmp.replace(path)
        return path


def _render(section: Section) -> str:
    parts = [f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>', section.text]
    for caption, df in section.tables:
        parts.append(f"<h4>{html.escape(caption)}</h4>")
        parts.append(df.to_html(classes="data", index=False, float_format=lambda x: f"{x:.4g}", border=0))
    for fig in section.figures:
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
    parts.append("</section>")
    return "\n".join(parts)


def write_analysis(folder: Path, kind: str, model: str | None, body: dict[str, Any], title: str, part: dict) -> None:
    """An analysis command's output: `folder/{kind}.json` (schema interp.{kind}/1) and
    `folder/{kind}.html`, a report with the one section `part`. Both carry the parity against
    transformers that `load_model` measured for `model` (when this process loaded it)."""
    from interp.loading import parity_of_name
    from interp.output import write_json

    parity = parity_of_name(model)
    if parity is not None:
        body = {**body, "parity": parity.to_dict()}
    write_json(folder / f"{kind}.json", kind, model, body)
    report = Report(title)
    if parity is not None:
        report.add("Model conversion", text=f"<p class='note'>{html.escape(model)}: {html.escape(parity.line())}</p>")
    report.add_section(part)
    report.write(folder / f"{kind}.html")
