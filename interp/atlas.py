"""`interp atlas`: every analysis on one model, joined per head, as one offline HTML report and one
JSON file.

Each analysis section (registered by a plugin) adds its figures and tables and its JSON; every head
table in that JSON joins the `HeadAtlas`, whose taxonomies and labels give each head its card.
"""
from __future__ import annotations

import html
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from transformer_lens import HookedTransformer

from interp.errors import InputError
from interp.head_atlas import HeadAtlas, head_tables_in
from interp.head_cards import head_cards_html, head_finder_html
from interp.head_examples import MAX_EXAMPLE_TOKENS, attention_examples, example_texts
from interp.head_stats import SUMMARY, head_summary
from interp.model_card import model_card
from interp.output import write_json
from interp.plugins import load_plugins
from interp.report import Report
from interp.texts import sample_texts


@dataclass(frozen=True)
class AtlasConfig:
    """What `run_atlas` runs. sections: names of the plugin sections to run (None = all of them)."""

    seed: int = 0
    n_texts: int = 32            # real passages for the per-head summary and the text-based sections
    max_tokens: int = 128        # each passage cut to this many tokens
    example_tokens: int = 32     # example texts of the head cards cut to this many tokens (<= 64)
    sections: tuple[str, ...] | None = None
    progress: bool | None = None

    def check(self, available: list[str]) -> None:
        if self.n_texts < 1 or self.max_tokens < 2:
            raise InputError("the atlas needs at least one text of at least 2 tokens")
        if not 2 <= self.example_tokens <= MAX_EXAMPLE_TOKENS:
            raise InputError(f"example_tokens must be 2-{MAX_EXAMPLE_TOKENS}, not {self.example_tokens}")
        unknown = [s for s in (self.sections or ()) if s not in available]
        if unknown:
            raise InputError(f"unknown atlas section {unknown[0]!r}; choose from {', '.join(available)}")


def run_atlas(model: HookedTransformer, out: Path, config: AtlasConfig | None = None, **options: Any) -> dict[str, Any]:
    """Write `out/report.html` and `out/atlas.json`; return the JSON body.

    options: AtlasConfig fields, for `run_atlas(model, out, seed=1)`."""
    config = config or AtlasConfig(**options)
    plugins = load_plugins()
    config.check([name for name, _ in plugins.atlas_sections])
    card = model_card(model)
    texts = sample_texts(config.n_texts, seed=config.seed)
    report = Report(f"Attention-head atlas: {card['name']}")
    report.add("Model card", text=_card_html(card))
    atlas_section = report.add("Head atlas")
    body: dict[str, Any] = {"card": card, "config": asdict(config),
                            "texts": {"source": "Python reference documentation (pydoc_data)", "n": len(texts),
                                      "max_tokens": config.max_tokens, "seed": config.seed},
                            "sections": {}, "timings_s": {}}
    clock = time.perf_counter()
    summary = head_summary(model, texts, max_tokens=config.max_tokens, progress=config.progress)
    body["sections"]["head_summary"] = summary.to_dict()
    legend = "".join(f"<li><b>{k}</b>: {html.escape(v)}</li>" for k, v in SUMMARY.items())
    n_tok = summary.meta["n_tokens"]
    report.add("Per-head output norms", text=f"<p>Means over {n_tok} tokens of {len(texts)} texts.</p><ul>{legend}</ul>",
               figures=[summary.heatmap(m) for m in ("z_norm", "result_norm", "v_norm")])
    report.add("Attention entropy and focus", text="<p>Per query, then averaged over every query position.</p>",
               figures=[summary.heatmap(m) for m in ("entropy", "max_prob", "sink_mass")],
               tables=[("lowest-entropy heads", summary.top("entropy", 10, ascending=True).df)])
    body["timings_s"]["head_summary"] = round(time.perf_counter() - clock, 2)

    tables, labels = {"head_summary": summary}, []
    labellers = dict(plugins.head_labellers)
    context = {"texts": texts, "seed": config.seed, "max_tokens": config.max_tokens, "progress": config.progress}
    for name, section in plugins.atlas_sections:
        if config.sections is not None and name not in config.sections:
            continue
        clock = time.perf_counter()
        part = section(model, context)
        report.add_section(part)
        body["sections"][name] = part.get("json", {})
        tables.update(head_tables_in(body["sections"][name], name))
        if name in labellers:
            labels += labellers[name](body["sections"][name])
        body["timings_s"][name] = round(time.perf_counter() - clock, 2)

    clock = time.perf_counter()
    examples = attention_examples(model, example_texts(config.seed), max_tokens=config.example_tokens)
    atlas = HeadAtlas(card["name"], model.cfg.n_layers, model.cfg.n_heads, tables, plugins.taxonomies, labels, examples)
    whole = atlas.to_dict()
    body["head_atlas"] = {**atlas.record(), "overlaps": whole["overlaps"], "profiles": whole["profiles"]}
    _fill_atlas_section(atlas_section, atlas, whole)
    report.footer.append(head_cards_html(atlas, whole["profiles"]))
    body["timings_s"]["head_atlas"] = round(time.perf_counter() - clock, 2)

    report.write(out / "report.html")
    write_json(out / "atlas.json", "atlas", card["name"], body)
    return body


def _fill_atlas_section(section, atlas: HeadAtlas, whole: dict[str, Any]) -> None:
    """The report's "Head atlas" section: how to open a head's card, how many heads each label
    has, and the taxonomy overlap matrices."""
    import plotly.graph_objects as go

    counts = pd.DataFrame(
        [{"label": t.name, "rule": f"{t.table}.{t.column} > {t.threshold:g}", "heads": len(atlas.heads_labelled(t.name)),
          "source": t.source} for t in atlas.taxonomies])
    direct = pd.Series([x.label for x in atlas.labels]).value_counts()
    given = pd.DataFrame({"label": direct.index, "heads": direct.to_numpy()})
    over = whole["overlaps"]
    names = over["taxonomies"]
    figures = [
        go.Figure(go.Heatmap(z=over[key], x=names, y=names, colorscale=scale, zmin=lo, zmax=1,
                             hovertemplate="%{y} × %{x}: %{z:.2f}<extra></extra>"))
        .update_layout(title=title, height=max(320, 30 * len(names) + 160), yaxis_autorange="reversed")
        for key, title, scale, lo in (("jaccard", f"Jaccard overlap of the top-{over['k']} heads", "Viridis", 0),
                                      ("spearman", "Spearman rank correlation of the scores over all heads", "RdBu", -1))
    ] if names else []
    section.text = (head_finder_html()
                    + f"<p>Every head table of every section below joins here per head ({len(atlas.tables)} tables). "
                      "A head's card lists each of its scores with its rank and percentile among the model's "
                      f"{atlas.n_layers * atlas.n_heads} heads, the labels it earns with their evidence, and its "
                      "attention on three short example texts. Labels come from the rules below (a score above a "
                      "stated threshold) and from analyses that name heads directly (IOI roles, switching heads).</p>")
    section.tables = [("head types read off scores", counts)] + ([("labels given by analyses", given)] if len(given) else [])
    section.figures = figures


def _card_html(card: dict[str, Any]) -> str:
    rows = {k: v for k, v in card.items() if k not in ("attention_layers", "source")}
    layout = card["attention_layers"]
    rows["attention_layers"] = ", ".join(f"{i}:{t}" for i, t in enumerate(layout)) if len(set(layout)) > 1 else f"all {layout[0]}"
    if card.get("source"):
        rows["source"] = f"{card['source'].get('kind')}: {card['source'].get('location')}"
    if card.get("parity"):  # log-prob agreement with transformers, measured when the model was converted
        from interp.parity import Parity

        rows["parity"] = Parity.from_dict(card["parity"]).line()
    df = pd.DataFrame({"field": list(rows), "value": [str(v) for v in rows.values()]})
    return df.to_html(classes="data", index=False, border=0)


__all__ = ["AtlasConfig", "run_atlas"]
