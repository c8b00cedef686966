"""Both embedded models through the same taxonomy, side by side (Gemma's sliding windows included)."""
import pytest
import torch
from head_reference import tl_head_scores

from circuits.compare import model_taxonomy, summary_row
from circuits.heads import repeated_random_tokens
from circuits.reports.compare import figures


@pytest.fixture(scope="module")
def results(smollm2, gemma3, real_texts):
    return [model_taxonomy(m, real_texts[:3], dormant_texts=1, progress=False) for m in (smollm2, gemma3)]


def _sink_ratio_reference(model, texts) -> float:
    """Gu et al.'s Sink_0^0.3 in %, from TransformerLens' eager patterns of each text cut to 64 tokens:
    the share of (text, head) with α_0 = mean attention on the first token > 0.3."""
    hits = []
    for text in texts:
        _, cache = model.run_with_cache(model.to_tokens(text)[:, :64], names_filter=lambda n: n.endswith("hook_pattern"))
        alpha = torch.stack([cache["pattern", layer][0, :, :, 0].double().mean(-1) for layer in range(model.cfg.n_layers)])
        hits.append(alpha > 0.3)
    return 100 * torch.stack(hits).double().mean().item()


def test_side_by_side_summary_and_figures(results, smollm2, gemma3, real_texts):
    rows = [summary_row(r) for r in results]
    assert [r["name"] for r in rows] == ["smollm2-135m", "gemma3-270m"]
    assert [r["n_layers"] for r in rows] == [30, 18] and [r["n_key_value_heads"] for r in rows] == [3, 1]
    for row, model in zip(rows, (smollm2, gemma3)):
        assert row["sink_ratio_pct"] == pytest.approx(_sink_ratio_reference(model, real_texts[:3]), rel=1e-6)  # one head flipping: 0.1 %
        # TL's induction score on the taxonomy's input: 4 × (128 random tokens twice), seed 0
        tl = tl_head_scores(model, repeated_random_tokens(model, 128, batch=4, seed=0), "induction", False, False)
        assert row["induction_heads_over_0.1"] == int((tl > 0.1).sum())
        assert row["max_resid_peak"] > 1
    assert rows[0]["induction_heads_over_0.1"] >= 3  # SmolLM2's L17H3, L18H6, L18H7 …
    heat, curves, induction, overlaps = figures(results)
    assert [len(t.z) for t in overlaps.data] == [3, 3]  # first-token sink, duplicate-token, induction per model
    assert len(heat.data) == 2 and heat.data[1].z.shape == (18, 4)
    assert max(curves.data[2].x) == pytest.approx(1.0)  # Gemma drawn on relative depth


def test_overlaps_per_model_are_set_overlaps_of_its_own_tables(results):
    """The compare view's overlap of induction and duplicate-token heads is the Jaccard of the two top
    sets, recomputed here from the model's head-type table; k defaults to 5 % of the heads, at least 5."""
    from circuits.compare import model_atlas

    for r, default_k in zip(results, (14, 5)):  # 270 heads → 14; 72 heads → 5
        atlas = model_atlas(r)
        assert atlas.overlaps().k == default_k
        for k in (default_k, 9):
            over = atlas.overlaps(k)
            top = {kind: set(r.types.top(kind, k).df["label"]) for kind in ("induction", "duplicate_token")}
            expect = len(top["induction"] & top["duplicate_token"]) / len(top["induction"] | top["duplicate_token"])
            assert over.k == k and over.jaccard.loc["induction", "duplicate-token"] == pytest.approx(expect)
