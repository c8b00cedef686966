"""`interp atlas`: every analysis on one model, as one offline HTML report and one JSON file."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd
from transformer_lens import HookedTransformer

from interp.head_stats import SUMMARY, head_summary
from interp.model_card import model_card
from interp.output import write_json
from interp.plugins import load_plugins
from interp.report import Report
from interp.texts import sample_texts


def run_atlas(model: HookedTransformer, out: Path, *, seed: int = 0, n_texts: int = 32, max_tokens: int = 128,
              progress: bool = True) -> dict[str, Any]:
    """Write `out/report.html` and `out/atlas.json`; return the JSON body."""
    card = model_card(model)
    texts = sample_texts(n_texts, seed=seed)
    report = Report(f"Attention-head atlas: {card['name']}")
    report.add("Model card", text=_card_html(card))
    body: dict[str, Any] = {"card": card, "texts": {"source": "Python reference documentation (pydoc_data)", "n": len(texts),
                                                    "max_tokens": max_tokens, "seed": seed}, "sections": {}}

    summary = head_summary(model, texts, max_tokens=max_tokens, progress=progress)
    body["sections"]["head_summary"] = summary.to_dict()
    legend = "".join(f"<li><b>{k}</b>: {html.escape(v)}</li>" for k, v in SUMMARY.items())
    n_tok = summary.meta["n_tokens"]
    report.add("Per-head output norms", text=f"<p>Means over {n_tok} tokens of {len(texts)} texts.</p><ul>{legend}</ul>",
               figures=[summary.heatmap(m) for m in ("z_norm", "result_norm", "v_norm")])
    report.add("Attention entropy and focus", text="<p>Per query, then averaged over every query position.</p>",
               figures=[summary.heatmap(m) for m in ("entropy", "max_prob", "sink_mass")],
               tables=[("lowest-entropy heads", summary.top("entropy", 10, ascending=True).df)])

    context = {"texts": texts, "seed": seed, "max_tokens": max_tokens, "progress": progress}
    for name, section in load_plugins().atlas_sections:
        part = section(model, context)
        report.add_section(part)
        body["sections"][name] = part.get("json", {})

    report.write(out / "report.html")
    write_json(out / "atlas.json", "atlas", card["name"], body)
    return body


def _card_html(card: dict[str, Any]) -> str:
    rows = {k: v for k, v in card.items() if k not in ("attention_layers", "source")}
    layout = card["attention_layers"]
    rows["attention_layers"] = ", ".join(f"{i}:{t}" for i, t in enumerate(layout)) if len(set(layout)) > 1 else f"all {layout[0]}"
    if card.get("source"):
        rows["source"] = f"{card['source'].get('kind')}: {card['source'].get('location')}"
    df = pd.DataFrame({"field": list(rows), "value": [str(v) for v in rows.values()]})
    return df.to_html(classes="data", index=False, border=0)
