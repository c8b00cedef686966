"""HeadTable and Circuit: round trips, ordering, figures, schema checks."""
import json

import numpy as np
import pandas as pd
import pytest

from interp import InputError
from interp.circuit import Circuit, Edge
from interp.head_table import HeadTable


def _table():
    rng = np.random.default_rng(0)
    return HeadTable.from_arrays({"score": rng.normal(size=(3, 4)), "mass": rng.random((3, 4)).astype("float32")}, model="tiny",
                                 meta={"analysis": "unit"})


def test_from_arrays_is_tidy_and_labelled():
    t = _table()
    assert list(t.df.columns) == ["layer", "head", "label", "score", "mass"]
    assert len(t) == 12 and t.df.loc[5, "label"] == "L1H1"
    grid = t.grid("score")
    assert grid.shape == (3, 4) and grid.loc[2, 3] == t.df.query("layer == 2 and head == 3")["score"].item()


def test_json_and_csv_round_trip(tmp_path):
    t = _table()
    t.to_json(tmp_path / "t.json")
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["schema"] == "interp.heads/1" and doc["model"] == "tiny"
    assert set(doc["rows"][0]) == {"layer", "head", "label", "score", "mass"}
    back = HeadTable.from_json(tmp_path / "t.json")
    pd.testing.assert_frame_equal(back.df, t.df)
    assert back.meta == {"analysis": "unit"}
    t.to_csv(tmp_path / "t.csv")
    pd.testing.assert_frame_equal(HeadTable.from_csv(tmp_path / "t.csv").df, t.df)


def test_top_orders_and_heatmap_shows_the_grid():
    t = _table()
    top = t.top("score", 3)
    expected = t.df.sort_values("score", ascending=False)["label"].head(3).tolist()
    assert top["label"].tolist() == expected
    assert t.top("mass", 2, ascending=True)["mass"].is_monotonic_increasing
    fig = t.heatmap("mass")
    np.testing.assert_allclose(np.asarray(fig.data[0].z), t.grid("mass").values)
    with pytest.raises(InputError, match="no metric 'nope'"):
        t.heatmap("nope")


def test_wrong_schema_is_refused(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"schema": "interp.circuit/1"}))
    with pytest.raises(InputError, match="not a head table"):
        HeadTable.from_json(tmp_path / "c.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        HeadTable.from_json(tmp_path / "bad.json")


def test_circuit_json_has_the_design_schema_and_round_trips(tmp_path):
    c = Circuit(model="tiny", task="ioi", metric="logit_diff", method="eap",
                nodes=["A0.1", "A2.3", "Resid End"],
                edges=[Edge("A0.1", "A2.3.V", 0.5), Edge("A2.3", "Resid End", -1.25)],
                faithfulness=[{"n_edges": 1, "n_heads": 1, "value": 0.4}, {"n_edges": 2, "n_heads": 2, "value": 0.9}],
                evidence={"A2.3": {"role": "name mover", "copy_score": 0.8}})
    c.to_json(tmp_path / "c.json")
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["schema"] == "interp.circuit/2" and doc["kind"] == "edges"
    assert {"model", "task", "metric", "method", "nodes", "edges", "faithfulness"} <= set(doc)
    assert doc["edges"][1] == {"src": "A2.3", "dst": "Resid End", "score": -1.25}
    back = Circuit.from_json(tmp_path / "c.json")
    assert back == c and back.heads == [(0, 1), (2, 3)]
    page = c.to_html(tmp_path / "c.html").read_text()
    assert "A2.3" in page and "name mover" in page and "<script src=" not in page


def test_circuit_renders_inline_with_its_held_out_faithfulness():
    edges = [Edge("A0.1", "A2.3.Q", 0.5), Edge("Resid Start", "A0.1.V", -2.0)]
    c = Circuit.from_edges(edges, model="tiny", task="ioi", metric="logit_diff", method="eap",
                           faithfulness=[{"kind": "edges", "n_edges": 2, "n_heads": 2, "value": 0.4, "split": "select"},
                                         {"kind": "edges", "n_edges": 2, "n_heads": 2, "value": 0.93, "split": "eval"}])
    page = c._repr_html_()
    assert "edges circuit" in page and "held-out faithfulness at 2 heads: 0.93" in page
    table = page[page.index("<table>"):]
    assert table.index("Resid Start") < table.index("A2.3.Q"), "the strongest edge (|score| 2.0) is listed first"
