"""Both embedded models through the same taxonomy, side by side (Gemma's sliding windows included)."""
import pytest

from circuits.compare import figures, model_taxonomy, summary_row


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
    heat, curves, induction = figures(results)
    assert len(heat.data) == 2 and heat.data[1].z.shape == (18, 4)
    assert max(curves.data[2].x) == pytest.approx(1.0)  # Gemma drawn on relative depth
