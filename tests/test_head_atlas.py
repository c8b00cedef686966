"""The head atlas: head ids, ranks and percentiles, labels, taxonomy overlaps and attention examples,
each checked against an independent computation (scipy's ranks and correlations, sets by hand, and
attention recomputed in float64 from the rotated queries and keys)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from interp import InputError
from interp.head_atlas import HeadAtlas, HeadLabel, Taxonomy, head_profile, head_tables_in
from interp.head_examples import attention_examples
from interp.head_ids import HeadId
from interp.head_table import HeadTable

N_LAYERS, N_HEADS = 3, 4


def test_head_ids_read_every_spelling_and_refuse_the_rest():
    assert HeadId.parse("L17H4") == HeadId.parse("A17.4") == HeadId.parse((17, 4)) == HeadId(17, 4)
    assert HeadId.parse(17 * 9 + 4, n_heads=9) == HeadId(17, 4)
    assert HeadId(17, 4).index(9) == 157 and HeadId.from_index(157, 9) == HeadId(17, 4)
    assert HeadId(17, 4).label == "L17H4" and HeadId(17, 4).node == "A17.4"
    for bad in ("L17", "17.4", "head 3", (1, 2, 3)):
        with pytest.raises(InputError, match="not a head"):
            HeadId.parse(bad)
    with pytest.raises(InputError, match="needs n_heads"):
        HeadId.parse(5)
    with pytest.raises(InputError, match="L3H0 does not exist: m has layers 0-2 and heads 0-3"):
        HeadId(3, 0).check(N_LAYERS, N_HEADS, "m")


def _table(values: np.ndarray, name: str, rows=None) -> HeadTable:
    table = HeadTable.from_arrays({name: values.reshape(N_LAYERS, N_HEADS)}, model="m")
    if rows is not None:
        table.df = table.df.iloc[rows].reset_index(drop=True)
    return table


@pytest.fixture
def atlas():
    rng = np.random.default_rng(0)
    a = rng.normal(size=N_LAYERS * N_HEADS)
    a[5] = a[7]  # a tie
    b = a * 0.5 + rng.normal(size=a.size)
    c = rng.normal(size=a.size)
    tables = {"x": HeadTable.from_arrays({"a": a.reshape(N_LAYERS, N_HEADS), "b": b.reshape(N_LAYERS, N_HEADS)}, model="m"),
              "partial": _table(c, "c", rows=[0, 2, 4, 6, 8, 10])}  # only six heads measured
    taxa = [Taxonomy("A", "x", "a", 0.5), Taxonomy("B", "x", "b", 0.0), Taxonomy("C", "partial", "c", -10.0),
            Taxonomy("ghost", "absent", "a", 0.0)]
    labels = [HeadLabel("L1H2", "IOI name mover", "direct effect 2.1", "ioi")]
    return HeadAtlas("m", N_LAYERS, N_HEADS, tables, taxa, labels), a, b, c


def test_profile_ranks_and_percentiles_follow_scipy(atlas):
    atlas, a, b, c = atlas
    rank = stats.rankdata(-a, method="min")  # 1 = largest, ties share the best rank
    pct = 100 * stats.rankdata(a, method="max") / a.size
    for flat in range(a.size):
        s = atlas.profile(HeadId.from_index(flat, N_HEADS)).score("x", "a")
        assert s.value == a[flat] and s.rank == rank[flat] and s.percentile == pytest.approx(pct[flat])
        assert s.n_heads == a.size
    assert atlas.profile("L1H1").score("x", "a").rank == atlas.profile("L1H3").score("x", "a").rank
    measured = atlas.profile("L1H0").score("partial", "c")  # flat 4: the third of six measured heads
    sub = c[[0, 2, 4, 6, 8, 10]]
    assert measured.rank == stats.rankdata(-sub, method="min")[2] and measured.n_heads == 6
    assert all(s.table != "partial" for s in atlas.profile("L0H1").scores), "an unmeasured head has no score"


def test_labels_follow_the_rules_and_keep_direct_labels(atlas):
    atlas, a, b, c = atlas
    assert [t.name for t in atlas.taxonomies] == ["A", "B", "C"], "a taxonomy on a missing table is dropped"
    expect_a = {HeadId.from_index(i, N_HEADS).label for i in np.flatnonzero(a > 0.5)}
    assert set(atlas.heads_labelled("A")) == expect_a
    assert set(atlas.heads_labelled("C")) == {"L0H0", "L0H2", "L1H0", "L1H2", "L2H0", "L2H2"}
    p = atlas.profile("L1H2")
    assert ("IOI name mover", "direct effect 2.1") in [(x.label, x.evidence) for x in p.labels]
    first_a = next(x for x in atlas.profile(sorted(expect_a)[0]).labels if x.label == "A")
    assert "> 0.5" in first_a.evidence and f"of {a.size}" in first_a.evidence


def test_overlaps_match_sets_and_scipy_spearman(atlas):
    atlas, a, b, c = atlas
    over = atlas.overlaps(k=4)
    top = lambda v: set(np.argsort(-v, kind="stable")[:4])  # noqa: E731
    assert over.jaccard.loc["A", "B"] == pytest.approx(len(top(a) & top(b)) / len(top(a) | top(b)))
    assert over.spearman.loc["A", "B"] == pytest.approx(stats.spearmanr(a, b).statistic)
    measured = [0, 2, 4, 6, 8, 10]
    assert over.spearman.loc["A", "C"] == pytest.approx(stats.spearmanr(a[measured], c[measured]).statistic)
    assert np.allclose(np.diag(over.jaccard), 1) and (over.jaccard.to_numpy() == over.jaccard.to_numpy().T).all()


def test_atlas_round_trips_through_its_json_record(atlas, tmp_path):
    atlas, a, b, c = atlas
    body = {"model": "m", "card": {"name": "m", "n_layers": N_LAYERS, "n_heads": N_HEADS}, "head_atlas": atlas.record()}
    again = HeadAtlas.from_json(body)
    assert head_profile(body, "L2H3").to_dict() == atlas.profile("L2H3").to_dict()
    assert again.overlaps().to_dict() == atlas.overlaps().to_dict()
    with pytest.raises(InputError, match="no atlas at"):
        head_profile(tmp_path, "L0H0")


def test_head_tables_are_found_anywhere_in_section_json():
    t = _table(np.arange(12.0), "v")
    found = head_tables_in({"heads": t.to_dict(), "other": {"deep": t.to_dict(), "n": 3}, "rows": [1]}, "sec")
    assert sorted(found) == ["sec.heads", "sec.other.deep"]
    assert found["sec.heads"].df["v"].tolist() == list(np.arange(12.0))


@pytest.mark.slow
def test_attention_examples_equal_softmax_of_rotated_queries_and_keys(smollm2):
    """The stored percentages are the attention recomputed in float64 from hook_rot_q / hook_rot_k
    (causal softmax of q·k / sqrt(d_head)), rounded."""
    text = "The cat sat on the mat. The cat sat on the mat."
    examples = attention_examples(smollm2, [text], max_tokens=12)
    tokens = smollm2.to_tokens(text)[:, :12]
    layers = (0, 15, 29)
    _, cache = smollm2.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_rot_q", "hook_rot_k")))
    n = tokens.shape[1]
    assert examples["texts"][0]["tokens"] == smollm2.to_str_tokens(tokens[0])
    for layer in layers:
        q = cache[f"blocks.{layer}.attn.hook_rot_q"][0].double()  # [pos, head, d]
        k = cache[f"blocks.{layer}.attn.hook_rot_k"][0].double()  # [pos, kv_head, d]
        k = k.repeat_interleave(smollm2.cfg.n_heads // k.shape[1], dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
        reference = (scores.softmax(-1) * 100).numpy()
        for head in range(smollm2.cfg.n_heads):
            rows = examples["patterns"][HeadId(layer, head).label][0]
            assert [len(r) for r in rows] == list(range(1, n + 1))
            got = np.zeros((n, n))
            for qi, row in enumerate(rows):
                got[qi, : len(row)] = row
            assert np.abs(got - reference[head]).max() <= 0.5 + 1e-6, (layer, head)


def test_profile_is_shown_inline_in_jupyter(atlas):
    atlas, *_ = atlas
    page = atlas.profile("L1H2")._repr_html_()
    assert "L1H2" in page and "IOI name mover" in page and "<table" in page
    assert isinstance(atlas.profile("L1H2").df, pd.DataFrame)


def test_head_id_unpacks_like_the_tuple_it_replaces():
    layer, head = HeadId.parse("L17H4")
    assert (layer, head) == (17, 4) and tuple(HeadId(2, 3)) == (2, 3)
