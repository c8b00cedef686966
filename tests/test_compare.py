"""Both embedded models through the same taxonomy, side by side (Gemma's sliding windows included)."""
import pytest

from circuits.compare import model_taxonomy, summary_row
from circuits.reports.compare import figures


@pytest.fixture(scope="module")
def results(smollm2, gemma3, real_texts):
    return [model_taxonomy(m, real_texts[:3], dormant_texts=1, progress=False) for m in (smollm2, gemma3)]


def test_side_by_side_summary_and_figures(results):
    rows = [summary_row(r) for r in results]
    assert [r["name"] for r in rows] == ["smollm2-135m", "gemma3-270m"]
    assert [r["n_layers"] for r in rows] == [30, 18] and [r["n_key_value_heads"] for r in rows] == [3, 1]
    for row in rows:
        assert 0 <= row["sink_ratio_pct"] <= 100 and row["max_resid_peak"] > 1
    assert rows[0]["induction_heads_over_0.1"] >= 3  # SmolLM2's L17H3, L18H6, L18H7 …
    heat, curves, induction, overlaps = figures(results)
    assert [len(t.z) for t in overlaps.data] == [3, 3]  # first-token sink, duplicate-token, induction per model
    assert len(heat.data) == 2 and heat.data[1].z.shape == (18, 4)
    assert max(curves.data[2].x) == pytest.approx(1.0)  # Gemma drawn on relative depth


def test_overlaps_per_model_are_set_overlaps_of_its_own_tables(results):
    """The compare view's overlap of induction and duplicate-token heads is the Jaccard of the two top
    sets, recomputed here from the model's head-type table."""
    import math

    from circuits.compare import model_atlas

    for r in results:
        over = model_atlas(r).overlaps()
        n = r.card["n_layers"] * r.card["n_heads"]
        k = max(5, math.ceil(0.05 * n))
        top = {kind: set(r.types.top(kind, k).df["label"]) for kind in ("induction", "duplicate_token")}
        expect = len(top["induction"] & top["duplicate_token"]) / len(top["induction"] | top["duplicate_token"])
        assert over.k == k and over.jaccard.loc["induction", "duplicate-token"] == pytest.approx(expect)
