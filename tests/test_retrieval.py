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

    with torch.no_grad(), tiny.hooks(fwd_hooks=R._mask_hooks(tiny.cfg, [(1, 2)])):
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
