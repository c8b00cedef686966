"""A model split over two GPUs computes what it computes on one, through every analysis that hooks it.

TransformerLens moves the residual stream to each block's device; hook tensors then live on their
layer's device. These tests need two CUDA GPUs (`pytest -m cuda tests/test_split_model.py` on a
machine that has them); on one GPU or none they are skipped.
"""
import pytest
import torch

from tiny import tiny_gqa_model

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.device_count() >= 2),
                                                   reason="needs two CUDA GPUs")]
LAYERS = 4


@pytest.fixture(scope="module")
def pair():
    from interp.devices import placement_summary, split_across_devices

    one = tiny_gqa_model(n_layers=LAYERS).to("cuda:0")
    two = split_across_devices(tiny_gqa_model(n_layers=LAYERS), 2, "cuda:0")
    assert placement_summary(two) == {"cuda:0": [0, 1], "cuda:1": [2, 3]}
    return one, two


def _prompts(n=3, length=40):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, 97, (length - i,), generator=g) for i in range(n)]


@pytest.mark.parametrize("name", ["z", "pattern", "result_norm", "entropy", "v_norm", "rot_k"])
def test_capture_on_a_split_model_equals_one_device(pair, name):
    from interp.capture import capture

    one, two = (capture(m, _prompts(), names=[name]) for m in pair)
    for layer in range(LAYERS):
        for i in range(3):
            assert torch.allclose(two.get(name, layer, i), one.get(name, layer, i), atol=1e-5), (name, layer, i)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_the_statistics_trace_on_a_split_model_equals_one_device(pair, backend):
    from interp.stats_trace import stats_trace

    one, two = (stats_trace(m, _prompts(), received=True, backend=backend) for m in pair)
    for col in ("entropy", "max_prob", "sink_mass", "alpha_first"):
        assert torch.allclose(torch.tensor(two.table.grid(col).to_numpy()), torch.tensor(one.table.grid(col).to_numpy()),
                              atol=1e-4), col


@pytest.mark.parametrize("method", ["eager", "kernel"])
def test_head_types_on_a_split_model_equal_one_device(pair, method):
    from circuits.heads import head_type_scores, repeated_random_tokens

    tokens = repeated_random_tokens(pair[0], n_tokens=16, batch=2, seed=0)
    one, two = (head_type_scores(m, tokens.cpu(), ("previous_token", "induction"), method=method) for m in pair)
    for col in ("previous_token", "induction"):
        assert torch.allclose(torch.tensor(two.grid(col).to_numpy()), torch.tensor(one.grid(col).to_numpy()), atol=1e-4)


def test_greedy_decoding_on_a_split_model_equals_one_device(pair):
    from interp.decoding import decode_with_top1

    prompt = _prompts(1, 24)[0]
    one, two = (decode_with_top1(m, prompt, max_new_tokens=8) for m in pair)
    assert two.tokens == one.tokens and torch.equal(two.top1, one.top1)


@pytest.fixture(scope="module")
def sae(pair):
    """A random sae_lens StandardSAE on hook_z of layer 2 (the second GPU's first layer), on cuda:0."""
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = pair[0].cfg
    torch.manual_seed(0)
    return StandardSAE(StandardSAEConfig(d_in=cfg.n_heads * cfg.d_head, d_sae=32, device="cuda:0"))


def test_sae_evaluation_on_a_split_model_equals_one_device(pair, sae):
    """Splicing the reconstruction into hook_z on cuda:1, the losses on the last device, the firing counts."""
    from saes.evaluate import evaluate_sae, firing_counts

    tokens = torch.stack([p[:30] for p in _prompts(4, 40)])
    one, two = (evaluate_sae(m, sae, tokens, layer=2, batch_size=2, frequency_tokens=tokens[:2]) for m in pair)
    for key in ("l0", "explained_variance", "ce_loss_with_sae", "ce_loss_with_ablation", "kl_div_with_sae",
                "dead_features", "error_norm"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), key
    assert torch.equal(*(firing_counts(m, sae, tokens, layer=2) for m in pair))


def test_sae_attribution_on_a_split_model_equals_one_device(pair, sae):
    from saes.attribution import direct_feature_attribution
    from saes.dashboards import logit_effects

    prompt = _prompts(1, 20)[0]
    one, two = (direct_feature_attribution(m, sae, prompt, 3, layer=2) for m in pair)
    assert torch.allclose(two["by_head_source"], one["by_head_source"], atol=1e-6)
    assert two["activation"] == pytest.approx(one["activation"], abs=1e-5)
    a, b = (logit_effects(m, sae, 3, layer=2) for m in pair)
    assert list(a["token"]) == list(b["token"])
