"""interp.patching against independent references: TransformerLens' own patching functions,
hand-built ablation values and a direct metric computation."""
import pytest
import torch
from transformer_lens import patching as tl_patching

from interp.errors import InputError
from interp.patching import (
    PromptPairs,
    ablation_values,
    metric_per_prompt,
    patch_heads,
    run_last_logits,
)
from tests.tiny import random_prompts, tiny_gqa_model

ANSWER, WRONG = 3, 5


@pytest.fixture(scope="module")
def model():
    return tiny_gqa_model(seed=0)


def _pairs(n=6, length=7):
    return PromptPairs.from_lists(random_prompts([length] * n, seed=1), random_prompts([length] * n, seed=2),
                                  answer=[ANSWER] * n, wrong=[WRONG] * n)


def _tl_metric(logits):
    return (logits[:, -1, ANSWER] - logits[:, -1, WRONG]).mean()


def test_head_patching_matches_transformer_lens(model):
    pairs = _pairs()
    # noising: run the clean prompts, patch in the corrupted run's head outputs
    _, corrupt_cache = model.run_with_cache(pairs.corrupt)
    ref = tl_patching.get_act_patch_attn_head_out_all_pos(model, pairs.clean, corrupt_cache, _tl_metric)
    ours = patch_heads(model, pairs, ablation="corrupt", batch_size=4)
    assert ours["patched"].view(3, 4) == pytest.approx(ref.detach(), abs=1e-4)
    assert ours["clean"] == pytest.approx(float(_tl_metric(model(pairs.clean).detach())), abs=1e-4)


def test_head_by_position_patching_matches_transformer_lens(model):
    pairs = _pairs(n=3, length=5)
    _, corrupt_cache = model.run_with_cache(pairs.corrupt)
    ref = tl_patching.get_act_patch_attn_head_out_by_pos(model, pairs.clean, corrupt_cache, _tl_metric)  # [L, pos, H]
    heads = [(0, 1), (2, 3), (1, 0)]
    ours = patch_heads(model, pairs, ablation="corrupt", heads=heads, by_position=True)
    for i, (l, h) in enumerate(heads):
        assert ours["patched"][i] == pytest.approx(ref[l, :, h].detach(), abs=1e-4)


def test_mean_ablation_is_the_group_mean_of_the_corrupted_run(model):
    clean = random_prompts([5, 5, 6, 6, 6], seed=3)
    corrupt = random_prompts([5, 5, 6, 6, 6], seed=4)
    pairs = PromptPairs.from_lists(clean, corrupt, answer=[1] * 5, wrong=[2] * 5)
    abl = ablation_values(model, pairs, "mean")
    _, c5 = model.run_with_cache(torch.stack(corrupt[:2]))
    _, c6 = model.run_with_cache(torch.stack(corrupt[2:]))
    assert abl.z[1, 0, :5] == pytest.approx(c5["blocks.1.attn.hook_z"].mean(0), abs=1e-5)
    assert abl.z[1, 4, :6] == pytest.approx(c6["blocks.1.attn.hook_z"].mean(0), abs=1e-5)
    assert abl.mlp_out[2, 3, :6] == pytest.approx(c6["blocks.2.hook_mlp_out"].mean(0), abs=1e-5)
    zero = ablation_values(model, pairs, "zero")
    assert float(zero.z.abs().sum()) == 0.0
    resample = ablation_values(model, pairs, "resample", seed=1)
    rows = {tuple(resample.embed[i, :6].flatten()[:3].tolist()) for i in range(2, 5)}
    assert rows == {tuple(c6["blocks.0.hook_resid_pre"][i].flatten()[:3].tolist()) for i in range(3)}


def test_padded_prompts_read_their_own_last_position(model):
    clean = random_prompts([4, 7], seed=5)
    pairs = PromptPairs.from_lists(clean, random_prompts([4, 7], seed=6), answer=[1, 2], wrong=[3, 4])
    got = run_last_logits(model, pairs.clean, pairs.last)
    alone = model(clean[0][None])[0, -1].detach()
    assert got[0] == pytest.approx(alone, abs=1e-4)
    ld = metric_per_prompt("logit_diff", got, pairs)
    assert float(ld[1]) == pytest.approx(float(got[1, 2] - got[1, 4]))
    # KL(clean ‖ patched) in nats, per prompt: torch's kl_div in float64 as the reference
    corrupt = run_last_logits(model, pairs.corrupt, pairs.last)
    clean_logprobs = got.log_softmax(-1)
    kl = metric_per_prompt("kl", corrupt, pairs, clean_logprobs)
    ref = torch.nn.functional.kl_div(corrupt.double().log_softmax(-1), clean_logprobs.double(), log_target=True,
                                     reduction="none").sum(-1)
    assert (ref > 1e-3).all()
    torch.testing.assert_close(kl.double(), ref, rtol=1e-4, atol=1e-6)


def test_bad_input_is_one_line(model):
    with pytest.raises(InputError, match="equal"):
        PromptPairs.from_lists([[1, 2, 3]], [[1, 2]], answer=[1], wrong=[2])
    with pytest.raises(InputError, match="ablation"):
        ablation_values(model, _pairs(), "median")
    with pytest.raises(InputError, match="does not exist"):
        patch_heads(model, _pairs(), heads=[(7, 0)])


def test_mean_ablation_over_a_reference_set_is_that_sets_group_mean(model):
    """With `reference`, each prompt's mean-ablation value is the mean over the reference set's
    corrupted prompts of its group (hand-computed from TransformerLens caches), not of its own pairs."""
    pairs = PromptPairs.from_lists(random_prompts([5, 6, 5], seed=3), random_prompts([5, 6, 5], seed=4),
                                   answer=[1] * 3, wrong=[2] * 3, group=[0, 1, 0])
    ref_tokens = random_prompts([5] * 4 + [6] * 3, seed=9)
    reference = PromptPairs.from_lists(ref_tokens, ref_tokens, answer=[0] * 7, wrong=[0] * 7, group=[0] * 4 + [1] * 3)
    abl = ablation_values(model, pairs, "mean", reference=reference)
    _, c5 = model.run_with_cache(torch.stack(ref_tokens[:4]))
    _, c6 = model.run_with_cache(torch.stack(ref_tokens[4:]))
    for i in (0, 2):
        assert abl.z[2, i, :5] == pytest.approx(c5["blocks.2.attn.hook_z"].mean(0), abs=1e-5)
        assert abl.embed[i, :5] == pytest.approx(c5["blocks.0.hook_resid_pre"].mean(0), abs=1e-5)
    assert abl.mlp_out[1, 1, :6] == pytest.approx(c6["blocks.1.hook_mlp_out"].mean(0), abs=1e-5)
    bad = PromptPairs.from_lists(ref_tokens[:2], ref_tokens[:2], answer=[0] * 2, wrong=[0] * 2, group=[0, 0])
    with pytest.raises(InputError, match="group 1"):
        ablation_values(model, pairs, "mean", reference=bad)
