"""Classic head types (circuits.heads): TransformerLens' head_detector as the reference, the eager
and kernel paths against each other, GQA mapping, sliding windows, long context, bad input."""
import numpy as np
import pytest
import torch
from head_reference import tl_head_scores as _tl_reference
from tiny import random_prompts, tiny_gqa_model
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import head_detector as hd

import interp
from circuits.reports.heads import atlas_section
from circuits.heads import (
    duplicate_token_pairs,
    head_type_scores,
    induction_pairs,
    previous_token_pairs,
    repeated_random_tokens,
)

TL_KINDS = ("previous_token", "duplicate_token", "induction")
ALL_KINDS = TL_KINDS + ("echo",)
FLAGS = [(False, False), (True, False), (False, True), (True, True)]  # (exclude_bos, exclude_current_token)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for this module: on 2 shared cores, two threads contending with another
    process ran SmolLM2's forward pass about 25× slower (measured: 12 s vs 0.5 s for 128 tokens)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _grid(table: interp.HeadTable, kind: str) -> torch.Tensor:
    return torch.tensor(table.grid(kind).values, dtype=torch.float64)


def _tiny_local_model(window: int = 4) -> HookedTransformer:
    """A Gemma-style tiny model: GQA, rotary, sliding-window layers 1 and 2, a global layer 0."""
    cfg = HookedTransformerConfig(
        d_model=32, d_head=8, n_layers=3, n_heads=4, n_key_value_heads=2, d_mlp=64, n_ctx=128, d_vocab=97,
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
        final_rms=True, seed=3, model_name="tiny-local", device="cpu",
        use_local_attn=True, attn_types=["global", "local", "local"], window_size=window,
    )
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.mul_(6.0)
            block.attn._W_K.mul_(6.0)
    return model.eval()


# --- definitions ----------------------------------------------------------------------------


def test_pairs_are_exactly_tl_detection_patterns():
    g = torch.Generator().manual_seed(0)
    for n, vocab in [(2, 2), (17, 3), (40, 6), (64, 50)]:  # small vocabularies: runs and many repeats
        t = torch.randint(0, vocab, (n,), generator=g)
        for pairs, tl in [(previous_token_pairs, hd.get_previous_token_head_detection_pattern),
                          (duplicate_token_pairs, hd.get_duplicate_token_head_detection_pattern),
                          (induction_pairs, hd.get_induction_head_detection_pattern)]:
            q, k = pairs(t)
            dense = torch.zeros(n, n)
            dense[q, k] = 1
            assert len(q) == int(dense.sum()), "each pair appears once"
            assert torch.equal(dense, tl(t[None])), (pairs.__name__, n)
    q, _ = duplicate_token_pairs(torch.arange(100).repeat(3))  # linear in N for bounded repeats
    assert len(q) == 100 * 3


@pytest.mark.parametrize("exclude_bos,exclude_current_token", FLAGS)
def test_tiny_gqa_both_paths_equal_tl_scoring(exclude_bos, exclude_current_token):
    model = tiny_gqa_model(n_heads=4, n_kv=2)
    tokens = torch.stack(random_prompts([40] * 3, d_vocab=8, seed=1))  # many duplicates
    flags = {"exclude_bos": exclude_bos, "exclude_current_token": exclude_current_token}
    for method in ("eager", "kernel"):
        table = head_type_scores(model, tokens, ALL_KINDS, method=method, **flags)
        assert table.meta["method"] == method
        for kind in TL_KINDS:
            ref = _tl_reference(model, tokens, kind, exclude_bos, exclude_current_token)
            assert (_grid(table, kind) - ref).abs().max() < 1e-6, (method, kind)
        assert table.df["echo"].equals(table.df["duplicate_token"]), "echo is the duplicate-token pattern"


def test_agrees_with_tl_detect_head_on_smollm2(smollm2, real_texts):
    """TL's detect_head takes strings; the last text is a passage written twice so that induction
    and duplicate scores spread. One cache per text is handed to detect_head (its list form would
    rerun the model once per kind) and the per-text scores are averaged as detect_head averages a list."""
    texts = [real_texts[0][:400], real_texts[1][:250] + " " + real_texts[1][:250]]
    caches = [smollm2.run_with_cache(smollm2.to_tokens(t), remove_batch_dim=True)[1] for t in texts]
    for flags in ({}, {"exclude_bos": True, "exclude_current_token": True}):
        ours = head_type_scores(smollm2, texts, TL_KINDS, **flags)
        assert ours.meta["method"] == "eager" and len(ours) == 30 * 9
        for kind in TL_KINDS:
            tl = torch.stack([hd.detect_head(smollm2, t, f"{kind}_head", cache=c, **flags)
                              for t, c in zip(texts, caches)]).mean(0).double()
            mine = _grid(ours, kind)
            pearson = np.corrcoef(mine.flatten().numpy(), tl.flatten().numpy())[0, 1]
            assert pearson >= 0.99, (kind, flags, pearson)
            assert (mine - tl).abs().max() < 1e-5, (kind, flags)


# --- the two paths ------------------------------------------------------------------------------


def test_eager_and_kernel_paths_agree_on_smollm2(smollm2):
    tokens = repeated_random_tokens(smollm2, 40, 2, batch=2, seed=1)
    """Both paths reproduce TransformerLens' head_detector; echo (no TL detector) agrees across the paths."""
    for exclude_bos in (False, True):
        eager = head_type_scores(smollm2, tokens, ALL_KINDS, method="eager", exclude_bos=exclude_bos)
        kernel = head_type_scores(smollm2, tokens, ALL_KINDS, method="kernel", exclude_bos=exclude_bos)
        for kind in TL_KINDS:
            tl = _tl_reference(smollm2, tokens, kind, exclude_bos, False)
            for path, table in (("eager", eager), ("kernel", kernel)):
                assert (_grid(table, kind) - tl).abs().max() < 1e-5, (kind, exclude_bos, path)
        assert (_grid(eager, "echo") - _grid(kernel, "echo")).abs().max() < 1e-5, exclude_bos


def test_kernel_path_at_2048_tokens_finds_induction_heads(smollm2):
    """2 × 1024 random tokens: "auto" takes the kernel path. Measured: induction L18H7 0.40 / 0.33,
    L17H3 0.32 / 0.25, L18H6 0.31 / 0.21, L23H2 0.17 / 0.13, L20H6 0.14 / 0.11 (seed 0 / seed 1),
    median head 1e-4; previous-token L16H0 0.87."""
    tokens = repeated_random_tokens(smollm2, 1024, 2, seed=0)
    table = head_type_scores(smollm2, tokens, ("previous_token", "induction"))
    assert table.meta["method"] == "kernel" and table.meta["n_tokens"] == 2048
    induction, previous = table["induction"], table["previous_token"]
    assert induction.max() > 0.25 and (induction > 0.1).sum() >= 3
    assert induction.median() < 0.02
    assert previous.max() > 0.6
    assert set(table.top("induction", 3)["label"]) <= {"L17H3", "L17H4", "L18H6", "L18H7", "L23H2", "L20H6"}


def test_gqa_query_heads_read_their_own_kv_head():
    """Zero KV head 1's keys: exactly the query heads it serves (2 and 3 of 4, h // 2) attend
    uniformly, so their scores are the uniform-attention values computed from the tokens alone."""
    model = tiny_gqa_model(n_heads=4, n_kv=2)
    with torch.no_grad():
        for block in model.blocks:
            block.attn._W_K[1] = 0
            block.attn._b_K[1] = 0
    tokens = torch.stack(random_prompts([30, 30], d_vocab=6, seed=2))
    n = tokens.shape[1]
    row_weight = 1.0 / torch.arange(1, n + 1, dtype=torch.float64)  # uniform attention of query i
    uniform = {"previous_token": row_weight[1:].sum() / n}
    copies = torch.stack([(row[None, :] == row[:, None]).tril(-1).sum(1) for row in tokens]).double()
    uniform["duplicate_token"] = (copies * row_weight).sum(1).mean() / n
    for method in ("eager", "kernel"):
        table = head_type_scores(model, tokens, ("previous_token", "duplicate_token"), method=method)
        for kind, value in uniform.items():
            grid = _grid(table, kind)
            assert torch.allclose(grid[:, 2:], torch.full_like(grid[:, 2:], float(value)), atol=1e-6), (method, kind)
            assert (grid[:, :2] - value).abs().max() > 1e-3, "heads of KV head 0 are not uniform"


def test_sliding_window_layers_see_only_their_window():
    model = _tiny_local_model(window=4)
    period = torch.stack(random_prompts([8, 8], d_vocab=97, seed=4)).repeat(1, 3)  # copies 8 apart > window
    dense = torch.stack(random_prompts([36, 36], d_vocab=5, seed=5))  # copies at every distance
    for flags in FLAGS[::3]:
        for method in ("eager", "kernel"):
            table = head_type_scores(model, period, ALL_KINDS, method=method, exclude_bos=flags[0], exclude_current_token=flags[1])
            for kind in ("duplicate_token", "induction"):
                grid = _grid(table, kind)
                assert (grid[1:] == 0).all(), (method, kind, "local layers cannot see copies 8 tokens back")
                assert grid[0].max() > 0, "the global layer can"
        eager = head_type_scores(model, dense, ALL_KINDS, method="eager", exclude_bos=flags[0], exclude_current_token=flags[1])
        kernel = head_type_scores(model, dense, ALL_KINDS, method="kernel", exclude_bos=flags[0], exclude_current_token=flags[1])
        for kind in TL_KINDS:
            ref = _tl_reference(model, dense, kind, *flags)
            assert (_grid(eager, kind) - ref).abs().max() < 1e-6, kind
            assert (_grid(kernel, kind) - ref).abs().max() < 1e-6, kind


# --- inputs, helpers, atlas -----------------------------------------------------------------------


def test_inputs_as_texts_tensors_and_lists_give_one_table(smollm2, real_texts):
    text = real_texts[3]
    toks = smollm2.to_tokens(text)[0, :40]
    retokenized = smollm2.to_tokens(smollm2.to_string(toks))  # a text is scored as to_tokens reads it
    as_text = head_type_scores(smollm2, smollm2.to_string(toks), ("previous_token",))
    as_batch = head_type_scores(smollm2, toks[None], ("previous_token",))
    as_list = head_type_scores(smollm2, [toks, toks.tolist()], ("previous_token",))
    as_retokenized = head_type_scores(smollm2, retokenized, ("previous_token",))
    assert np.allclose(as_text["previous_token"], as_retokenized["previous_token"], atol=1e-6)
    assert np.allclose(as_list["previous_token"], as_batch["previous_token"], atol=1e-6)
    assert list(as_batch.df.columns) == ["layer", "head", "label", "previous_token"]


def test_repeated_random_tokens(smollm2, monkeypatch):
    toks = repeated_random_tokens(smollm2, 50, 3, batch=2, seed=7)
    assert toks.shape == (2, 150) and toks.dtype == torch.long
    assert torch.equal(toks[:, :50], toks[:, 50:100]) and torch.equal(toks[:, :50], toks[:, 100:])
    assert not torch.equal(toks[0], toks[1])
    assert torch.equal(toks, repeated_random_tokens(smollm2, 50, 3, batch=2, seed=7))
    assert not set(toks.flatten().tolist()) & set(smollm2.tokenizer.all_special_ids)
    monkeypatch.setattr(smollm2.cfg, "default_prepend_bos", True)  # as a model that prepends BOS
    with_bos = repeated_random_tokens(smollm2, 50, 2, seed=7)
    assert with_bos.shape == (1, 101) and int(with_bos[0, 0]) == smollm2.tokenizer.bos_token_id
    assert torch.equal(with_bos[0, 1:51], with_bos[0, 51:])


@pytest.mark.parametrize("call,needle", [
    (lambda m: head_type_scores(m, torch.tensor([[1, 2, 3]]), ("induction", "copy_suppression")), "unknown head kind 'copy_suppression'"),
    (lambda m: head_type_scores(m, torch.tensor([[1, 2, 3]]), method="flash"), "unknown method 'flash'"),
    (lambda m: head_type_scores(m, torch.tensor([[5]])), "at least 2 tokens"),
    (lambda m: head_type_scores(m, torch.rand(1, 4)), "integer token ids"),
    (lambda m: head_type_scores(m, torch.tensor([[1, 500]])), "token ids must lie in 0..96"),
    (lambda m: head_type_scores(m, torch.zeros(1, 200, dtype=torch.long)), "exceeds the model's context of 128"),
    (lambda m: head_type_scores(m, ["a text"]), "no tokenizer"),
    (lambda m: head_type_scores(m, []), "no sequences"),
    (lambda m: repeated_random_tokens(m, 100, 2), "exceed the model's context"),
])
def test_bad_input_raises_one_line(call, needle):
    with pytest.raises(interp.InputError) as err:
        call(tiny_gqa_model())
    message = str(err.value)
    assert needle in message and "\n" not in message


def test_atlas_section(smollm2, real_texts):
    """The section renders head_types_analysis: its previous-token column is head_type_scores on the
    texts cut to max_tokens, its induction column head_type_scores on the seeded repeated blocks."""
    part = atlas_section(smollm2, {"texts": real_texts[:2], "seed": 3, "max_tokens": 24, "progress": False})
    assert part["title"] == "Classic head types" and "random tokens repeated twice" in part["text"]
    assert len(part["figures"]) == 3 and all(type(f).__name__ == "Figure" for f in part["figures"])
    assert [c for c, _ in part["tables"]] == ["top previous_token heads", "top duplicate_token heads", "top induction heads"]
    assert all(len(df) == 10 for _, df in part["tables"])
    body = part["json"]
    assert body["config"] == {"seed": 3, "max_tokens": 24, "n_repeated": 4, "method": "auto"}
    table = interp.HeadTable.from_dict(body["heads"])
    assert len(table) == 270 and table.metrics == ["previous_token", "duplicate_token", "induction", "echo"]
    texts = [smollm2.to_tokens(t)[0, :24] for t in real_texts[:2]]
    prev = head_type_scores(smollm2, texts, ("previous_token",), progress=False)
    assert np.allclose(table["previous_token"], prev["previous_token"], atol=1e-12)
    blocks = repeated_random_tokens(smollm2, 24, 2, batch=4, seed=3)
    ind = head_type_scores(smollm2, blocks, ("induction",), progress=False)
    assert np.allclose(table["induction"], ind["induction"], atol=1e-12)