"""Retrieval heads: cached decoding against TransformerLens' uncached forward, top-1 keys against
TL's eager pattern, Wu et al.'s hit rule and ROUGE-1 recall on hand-computed cases, masking, and a
light SmolLM2 needle test."""
import pytest
import torch

from circuits import retrieval as R
from interp.errors import InputError
from tests.tiny import random_prompts, tiny_gqa_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_gqa_model(seed=3)


@pytest.mark.parametrize("attention", ["sdpa", "kernels"])
def test_cached_decoding_reproduces_uncached_logits(tiny, attention):
    tokens = random_prompts([24], seed=1)[0][None]
    cache = R.new_cache(tiny, reserve=8)
    with torch.no_grad():
        ref = tiny(tokens)[0]  # [pos, vocab], TL's own uncached forward
        prefill = R.run_cached(tiny, tokens[:, :16], cache, attention=attention, last_only=False)[0]
        torch.testing.assert_close(prefill, ref[:16], atol=1e-4, rtol=1e-4)
        for i in range(16, 24):  # one token at a time through the cache
            step = R.run_cached(tiny, tokens[:, i:i + 1], cache, attention=attention)[0]
            torch.testing.assert_close(step, ref[i], atol=1e-4, rtol=1e-4)


def test_top1_and_greedy_tokens_match_tl_eager_pattern(tiny):
    prompt = random_prompts([20], seed=2)[0]
    dec = R.decode_with_top1(tiny, prompt, max_new_tokens=6)
    assert len(dec.tokens) == 6 and dec.top1.shape == (6, 3, 4)
    full = torch.cat([prompt, torch.tensor(dec.tokens[:-1])])[None]
    with torch.no_grad():
        logits, cache = tiny.run_with_cache(full, names_filter=lambda n: n.endswith("hook_pattern"))
    n = prompt.numel()
    for s in range(6):
        q = n - 1 + s  # the query of step s
        assert int(logits[0, q].argmax()) == dec.tokens[s]
        for layer in range(3):
            assert torch.equal(cache[f"blocks.{layer}.attn.hook_pattern"][0, :, q].argmax(-1), dec.top1[s, layer])


def test_masked_head_attends_uniformly(tiny):
    tokens = random_prompts([12], seed=4)[0][None]
    rows = {}
    cache = R.new_cache(tiny, reserve=2)

    def keep(pattern, hook):
        rows["p"] = pattern.detach().clone()

    with torch.no_grad(), tiny.hooks(fwd_hooks=R.query_zeroing_hooks(tiny.cfg, [(1, 2)])):
        R.run_cached(tiny, tokens[:, :-1], cache)
        with tiny.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", keep)]):
            R.run_cached(tiny, tokens[:, -1:], cache)
    row = rows["p"][0, :, 0]  # [head, key]
    torch.testing.assert_close(row[2], torch.full((12,), 1 / 12))
    assert row[1].max() > 2 / 12  # an unmasked head is not uniform


def test_step_hits_hand_case():
    prompt = torch.tensor([5, 6, 7, 8, 9, 10])
    span = (2, 5)  # tokens 7, 8, 9
    generated = [7, 8, 1]
    top1 = torch.zeros(3, 1, 2, dtype=torch.long)
    top1[:, 0, 0] = torch.tensor([2, 3, 4])  # head 0: in span; copies at steps 0, 1; step 2 token 9 ≠ 1
    top1[:, 0, 1] = torch.tensor([2, 0, 3])  # head 1: step 0 hit, step 1 outside span, step 2 wrong token
    hits = R.step_hits(top1, generated, prompt, span)
    torch.testing.assert_close(hits, torch.tensor([[2 / 3, 1 / 3]], dtype=torch.float64))


def test_rouge1_recall_hand_cases():
    ref = "eat a sandwich in the park"
    assert R.rouge1_recall(ref, "I would eat a sandwich") == pytest.approx(3 / 6)
    assert R.rouge1_recall(ref, "EAT a Sandwich, in the PARK!") == pytest.approx(1.0)
    assert R.rouge1_recall("a a b", "a") == pytest.approx(1 / 3)  # clipped counts
    assert R.rouge1_recall("walking dogs", "walked dog", stem=True) == pytest.approx(1.0)  # Porter stems
    assert R.rouge1_recall("walking dogs", "walked dog", stem=False) == 0.0


def test_bad_masked_head_is_input_error(tiny):
    with pytest.raises(InputError):
        R.decode_with_top1(tiny, torch.arange(1, 6), masked_heads=[(9, 0)])


@pytest.mark.slow
def test_needle_tests_place_the_answer(smollm2):
    tests = R.needle_tests(smollm2, [300, 600], [0.0, 0.5, 1.0], seed=1)
    assert len(tests) == 6
    for t in tests:
        assert abs(t.n_tokens - t.length) <= 2
        text = smollm2.tokenizer.decode(t.tokens[t.span[0]:t.span[1]])
        assert t.answer in text and len(text) < len(t.answer) + 8
    starts = [t.span[0] for t in tests if t.length == 600]
    assert starts == sorted(starts) and starts[-1] - starts[0] > 400
    with pytest.raises(InputError):
        R.needle_tests(smollm2, [20000], [0.5])


@pytest.mark.slow
def test_smollm2_answers_a_short_needle_and_some_head_retrieves(smollm2):
    tests = R.needle_tests(smollm2, [320], [0.5], seed=0)
    result = R.retrieval_scores(smollm2, tests, max_new_tokens=24)
    row = result.tests.iloc[0]
    assert row["recall"] > 0.5, row["answer"]
    assert result.table.df["retrieval_score"].max() > 0.1


def _windowed_model(window: int | None = 6):
    """A Gemma-3-like tiny model: local (sliding-window) and global layers, rotary, GQA, random weights
    (window None: the same weights with every layer global)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        d_model=32, d_head=8, n_layers=3, n_heads=4, n_key_value_heads=2, d_mlp=64, n_ctx=64, d_vocab=97,
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
        final_rms=True, seed=11, model_name="tiny-windowed", device="cpu",
        use_local_attn=window is not None, attn_types=["local", "global", "local"] if window else None,
        window_size=window)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.mul_(8.0)
            block.attn._W_K.mul_(8.0)
    return model.eval()


@pytest.mark.parametrize("attention", ["sdpa", "kernels"])
def test_sliding_window_decoding_matches_tl_uncached_forward(attention):
    """Prefill of 16 tokens and 12 decoding steps, window 6 (far shorter than the prompt), against
    TransformerLens' own uncached forward with its local-attention mask, position by position."""
    from interp.kernel_attention import layer_windows

    model = _windowed_model()
    assert layer_windows(model) == [6, None, 6]
    tokens = random_prompts([28], seed=7)[0][None]
    cache = R.new_cache(model, reserve=16)
    with torch.no_grad():
        ref = model(tokens)[0]
        prefill = R.run_cached(model, tokens[:, :16], cache, attention=attention, last_only=False)[0]
        torch.testing.assert_close(prefill, ref[:16], atol=1e-4, rtol=1e-4)
        for i in range(16, 28):
            step = R.run_cached(model, tokens[:, i:i + 1], cache, attention=attention)[0]
            torch.testing.assert_close(step, ref[i], atol=1e-4, rtol=1e-4)
        # the window matters: the same weights with global attention everywhere give other logits
        assert (_windowed_model(None)(tokens)[0, 16:] - ref[16:]).abs().max() > 1e-2


def test_sliding_window_top1_keys_match_tl_pattern():
    model = _windowed_model()
    prompt = random_prompts([20], seed=8)[0]
    dec = R.decode_with_top1(model, prompt, max_new_tokens=5)
    full = torch.cat([prompt, torch.tensor(dec.tokens[:-1])])[None]
    with torch.no_grad():
        _, cache = model.run_with_cache(full, names_filter=lambda n: n.endswith("hook_pattern"))
    for s in range(5):
        q = prompt.numel() - 1 + s
        for layer in range(3):
            tl = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, q].argmax(-1)
            assert torch.equal(tl, dec.top1[s, layer])
            if layer != 1:  # local layers: the top key lies inside the window
                assert int(dec.top1[s, layer].min()) > q - 6


class WordTokenizer:
    """Token i reads as the word "w{i}": decoded answers are real words for ROUGE, and no token ends a turn."""

    eos_token_id = pad_token_id = bos_token_id = None
    unk_token_id = 0
    padding_side = "right"

    def __len__(self):
        return 97

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{int(i)}" for i in ids)

    def convert_tokens_to_ids(self, token):
        return self.unk_token_id

    def convert_ids_to_tokens(self, ids):
        return [f"w{int(i)}" for i in ids]

    def convert_tokens_to_string(self, tokens):
        return " ".join(tokens)


def _greedy_reference(model, prompt, n, masked=()):
    """n greedy tokens from TL's uncached forward, each masked head's rotated query zeroed by a hook of our own."""
    def zero(head):
        def hook(q, hook):
            q = q.clone()
            q[:, :, head] = 0.0
            return q
        return hook

    hooks = [(f"blocks.{l}.attn.hook_rot_q", zero(h)) for l, h in masked]
    seq = prompt.tolist()
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model.run_with_hooks(torch.tensor(seq)[None], fwd_hooks=hooks)[0, -1].argmax()))
    return seq[prompt.numel():]


def _needle(prompt, answer):
    return R.NeedleTest(prompt, (2, 5), "needle", "question?", answer, prompt.numel(), 0.5)


@pytest.fixture()
def worded():
    model = tiny_gqa_model(seed=3)
    model.tokenizer = WordTokenizer()
    return model


def test_needle_accuracy_is_rouge1_recall_of_the_greedy_answer(worded):
    """Answers built from the tokens the model will generate: 3 of 4 answer words recalled -> 0.75 (passes),
    2 of 4 -> 0.5 (does not: a test passes above 0.5)."""
    prompts = random_prompts([14, 18], seed=12)
    firsts = []
    for p in prompts:
        generated = _greedy_reference(worded, p, 6)
        firsts.append(list(dict.fromkeys(generated))[:3])  # distinct generated words, in order
    assert all(len(f) == 3 for f in firsts)
    tests = [_needle(prompts[0], " ".join(f"w{t}" for t in firsts[0]) + " absent"),
             _needle(prompts[1], " ".join(f"w{t}" for t in firsts[1][:2]) + " missing words")]
    acc = R.needle_accuracy(worded, tests, max_new_tokens=6)
    assert acc["recall"].tolist() == [0.75, 0.5] and acc["passed"].tolist() == [True, False]
    assert acc["answer"].tolist() == [" ".join(f"w{t}" for t in _greedy_reference(worded, p, 6)) for p in prompts]


def test_masking_experiment_masks_the_right_heads_and_scores_their_answers(worded):
    from interp.head_table import HeadTable

    prompts = random_prompts([12, 15, 17], seed=21)
    tests = [_needle(p, " ".join(f"w{t}" for t in _greedy_reference(worded, p, 4))) for p in prompts]
    scores = torch.linspace(1.0, 0.0, 12).reshape(3, 4)[:, torch.tensor([2, 0, 3, 1])]  # a known order
    table = HeadTable.from_arrays({"retrieval_score": scores}, model="tiny-gqa")
    runs = R.masking_experiment(worded, tests, table, ks=[2], draws=3, seed=5, max_new_tokens=4)
    assert runs[["k", "masked", "draw"]].values.tolist() == [[0, "none", 0], [2, "top retrieval", 0],
                                                             [2, "random", 0], [2, "random", 1], [2, "random", 2]]
    ranked = table.df.sort_values("retrieval_score", ascending=False)
    top = [f"L{l}H{h}" for l, h in zip(ranked["layer"], ranked["head"])][:2]
    assert runs.loc[1, "heads"].split(",") == top == ["L0H1", "L0H3"]
    for row in runs.itertuples():
        heads = [tuple(map(int, x[1:].split("H"))) for x in row.heads.split(",")] if row.heads else []
        if row.masked == "random":
            assert len(set(heads)) == 2 and not {f"L{l}H{h}" for l, h in heads} & set(top)
        recalls = [R.rouge1_recall(t.answer, " ".join(f"w{x}" for x in _greedy_reference(worded, t.tokens, 4, heads)))
                   for t in tests]
        assert row.recall == pytest.approx(sum(recalls) / len(recalls), abs=1e-12)
        assert row.pass_rate == pytest.approx(sum(r > 0.5 for r in recalls) / len(recalls), abs=1e-12)
    assert runs.loc[0, "recall"] == 1.0  # unmasked, the answers are what the model says
    assert (runs["recall"] < 1.0).any()  # and masking changes some answer


# ---------------------------------------------------------------------------------------------
# one result shape: RetrievalConfig -> RetrievalResult, recorded whole in its JSON

def _strict_json(text):
    """json.loads that refuses NaN and Infinity (what allow_nan=False writers never emit)."""
    import json

    def refuse(name):
        raise AssertionError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_retrieval_scores_result_round_trips_through_strict_json(worded, tmp_path):
    from interp.head_table import HeadTable

    prompts = random_prompts([12, 15], seed=21)
    tests = [_needle(p, " ".join(f"w{t}" for t in _greedy_reference(worded, p, 4))) for p in prompts]
    result = R.retrieval_scores(worded, tests, max_new_tokens=4, seed=3)
    assert isinstance(result, R.RetrievalResult) and result.KIND == "retrieval"
    result.to_json(tmp_path / "r.json")
    body = _strict_json((tmp_path / "r.json").read_text())
    assert body["schema"] == "interp.retrieval/1" and body["model"] == worded.cfg.model_name
    # the config says how the tests were made: their lengths, depths and needles, no masking, no echo columns
    assert body["config"] == {"lengths": [12, 15], "depths": [0.5], "n_needles": 1, "seed": 3, "max_new_tokens": 4,
                              "threshold": 0.1, "mask_ks": [], "mask_draws": 2, "mask_length": None,
                              "echo_segment": None, "attention": "sdpa"}
    table = HeadTable.from_dict(body["heads"])
    assert len(table) == 3 * 4 and table.metrics == ["retrieval_score", "retrieval_head", "hit_tests"]
    assert set(table.metrics) <= set(body["heads"]["meta"]["columns"])
    assert [r["recall"] for r in body["tests"]] == [1.0, 1.0]  # the answers are what the model says
    assert body["accuracy_grid"] == {"12": {"0.5": 1.0}, "15": {"0.5": 1.0}} and body["masking"] is None
    assert body["params"]["n_tests"] == 2 and body["params"]["n_counted"] == 2
    assert "RetrievalResult" in result._repr_html_() and "retrieval_score" in result._repr_html_()


def test_retrieval_analysis_takes_a_config_or_its_fields_not_both(worded):
    with pytest.raises(InputError, match="not both"):
        R.retrieval_analysis(worded, R.RetrievalConfig(), lengths=(64,))
    with pytest.raises(InputError, match="--depths must lie in"):
        R.retrieval_analysis(worded, lengths=(64,), depths=(1.5,), max_new_tokens=8)


@pytest.mark.slow
def test_retrieval_analysis_is_one_typed_result_that_records_its_config(smollm2, tmp_path):
    """The analysis composes its parts: scores on the seeded needle tests, echo/induction columns from
    circuits.heads on the seeded repeated blocks, masking of the table's own top heads; all of it in one JSON."""
    import numpy as np

    from circuits.heads import head_type_scores, repeated_random_tokens
    from interp.head_table import HeadTable

    result = R.retrieval_analysis(smollm2, lengths=(256,), depths=(0.5,), max_new_tokens=12, mask_ks=(2,),
                                  mask_draws=1, echo_segment=16, progress=False)
    assert result.config == R.RetrievalConfig(lengths=(256,), depths=(0.5,), max_new_tokens=12, mask_ks=(2,),
                                              mask_draws=1, echo_segment=16)
    table = result.table
    assert len(table) == 30 * 9 and table.metrics == ["retrieval_score", "retrieval_head", "hit_tests", "echo",
                                                      "induction"]
    assert set(table.metrics) <= set(table.meta["columns"])
    alone = R.retrieval_scores(smollm2, R.needle_tests(smollm2, [256], [0.5], seed=0), max_new_tokens=12)
    assert np.array_equal(table["retrieval_score"], alone.table["retrieval_score"])
    blocks = repeated_random_tokens(smollm2, 16, 2, batch=4, seed=0)
    razor = head_type_scores(smollm2, blocks, ("echo", "induction"), progress=False)
    assert np.allclose(table["induction"], razor["induction"], atol=1e-12)
    top2 = table.df.sort_values("retrieval_score", ascending=False, kind="stable")["label"].tolist()[:2]
    assert result.masking["heads"].tolist()[1].split(",") == top2 and len(result.masking) == 3
    result.to_json(tmp_path / "retrieval.json")
    body = _strict_json((tmp_path / "retrieval.json").read_text())
    assert body["config"]["lengths"] == [256] and body["config"]["mask_ks"] == [2] and body["config"]["echo_segment"] == 16
    assert HeadTable.from_dict(body["heads"]).df.equals(table.df)
    assert body["accuracy_grid"] == {"256": {"0.5": float(result.tests["recall"].iloc[0])}}
    assert [r["k"] for r in body["masking"]] == [0, 2, 2] and set(body["seconds"]) == {"retrieval_scores",
                                                                                      "echo_induction", "masking"}


@pytest.mark.slow
def test_retrieval_command_json_carries_the_config(smollm2, tmp_path):
    from tests.test_cli import run

    out = tmp_path / "r"
    proc = run("retrieval", "--out", str(out), "--lengths", "256", "--depths", "0.5", "--mask-ks", "",
               "--max-new-tokens", "8", "--seed", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    printed, written = _strict_json(proc.stdout), _strict_json((out / "retrieval.json").read_text())
    expected = {"lengths": [256], "depths": [0.5], "n_needles": 1, "seed": 2, "max_new_tokens": 8, "threshold": 0.1,
                "mask_ks": [], "mask_draws": 2, "mask_length": None, "echo_segment": 128, "attention": "sdpa"}
    for doc in (printed, written):
        assert doc["schema"] == "interp.retrieval/1" and doc["config"] == expected
        assert len(doc["heads"]["rows"]) == 270 and doc["masking"] is None


def test_retrieval_result_repr_is_short(worded):
    prompts = random_prompts([12], seed=21)
    result = R.retrieval_scores(worded, [_needle(prompts[0], "w1 w2")], max_new_tokens=2)
    assert repr(result) == ("RetrievalResult(model='tiny-gqa', heads=12, metrics=['retrieval_score', "
                            "'retrieval_head', 'hit_tests'])")
