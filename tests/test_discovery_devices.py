"""Circuit discovery on a model whose layers are split over two GPUs equals the single-GPU model.

TransformerLens places the blocks of a split model on different devices; every stored tensor a
discovery hook needs (ablation values, deltas, masks) must meet the activation on that block's
device. Skipped unless the machine has two CUDA GPUs (tests/test_plan.py has the split itself).
"""
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuits.discovery import attribute, build_graph, head_mask_ig, run_with_edges
from interp.patching import PromptPairs, ablation_values, patch_heads
from tests.tiny import random_prompts

KINDS = ("sequential", "parallel", "post-norm")


def _tiny(kind: str) -> HookedTransformer:
    """4 layers, GQA, random weights; parallel attention + MLP, or RMS post-norms (Gemma 2 style)."""
    cfg = HookedTransformerConfig(
        d_model=32, d_head=8, n_layers=4, n_heads=4, n_key_value_heads=2, d_mlp=64, n_ctx=64, d_vocab=97,
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
        final_rms=True, seed=0, device="cpu", parallel_attn_mlp=kind == "parallel",
        use_normalization_before_and_after=kind == "post-norm", model_name=f"tiny-{kind}",
    )
    return HookedTransformer(cfg).eval()


def _two_gpus():
    return torch.cuda.is_available() and torch.cuda.device_count() >= 2


@pytest.mark.parametrize("kind", KINDS)
def test_the_tiny_kinds_build_graphs_with_their_block_layout(kind):
    model = _tiny(kind)
    graph = build_graph(model)
    assert graph.parallel == (kind == "parallel")
    assert bool(graph.allowed[graph.head_src(1, 0), graph.mlp_dst(1)]) == (kind != "parallel")


@pytest.mark.cuda
@pytest.mark.skipif(not _two_gpus(), reason="needs two CUDA GPUs")
@pytest.mark.parametrize("kind", KINDS)
def test_discovery_on_a_model_split_over_two_gpus_equals_one_gpu(kind):
    from interp.devices import placement_summary, split_across_devices

    one = _tiny(kind).to("cuda:0")
    two = split_across_devices(_tiny(kind), 2, "cuda:0")
    assert placement_summary(two) == {"cuda:0": [0, 1], "cuda:1": [2, 3]}
    pairs = PromptPairs.from_lists(random_prompts([7] * 6, seed=1), random_prompts([7] * 6, seed=2),
                                   answer=[3] * 6, wrong=[5] * 6)
    ref_abl, abl = ablation_values(one, pairs, "mean"), ablation_values(two, pairs, "mean")
    assert torch.allclose(abl.z, ref_abl.z, atol=1e-6)
    for method in ("eap", "eap-ig"):
        ref = attribute(one, pairs, method=method, ablation=ref_abl, steps=2).scores
        got = attribute(two, pairs, method=method, ablation=abl, steps=2).scores
        assert (got - ref).abs().max() < 1e-5 * ref.abs().max()
    graph = build_graph(one)
    keep = graph.allowed & (torch.rand(graph.allowed.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    for mask in (keep, torch.zeros_like(keep)):
        ref_logits = run_with_edges(one, graph, pairs, ref_abl, mask)
        logits, cache = run_with_edges(two, graph, pairs, abl, mask, record=True)
        assert torch.allclose(logits.to("cuda:0"), ref_logits, atol=1e-5)
        trial = mask.clone()
        trial[:, graph.mlp_dst(3)] = True  # change only edges into layer 3: resume from the cache
        assert torch.allclose(run_with_edges(two, graph, pairs, abl, trial, start_layer=3, cache=cache).to("cuda:0"),
                              run_with_edges(one, graph, pairs, ref_abl, trial), atol=1e-5)
    ref_patch = patch_heads(one, pairs, ablation=ref_abl)["effect"]
    assert torch.allclose(patch_heads(two, pairs, ablation=abl)["effect"], ref_patch, atol=1e-5)
    assert torch.allclose(head_mask_ig(two, pairs, abl, steps=2), head_mask_ig(one, pairs, ref_abl, steps=2), atol=1e-5)


def test_blocks_the_graph_cannot_express_are_refused_in_one_line_naming_the_feature():
    from interp.errors import InputError

    attn_only = HookedTransformer(HookedTransformerConfig(d_model=16, d_head=4, n_layers=1, n_heads=4, n_ctx=8,
                                                          d_vocab=11, act_fn="gelu", attn_only=True, device="cpu"))
    ungrouped = _tiny("sequential")
    ungrouped.cfg.ungroup_grouped_query_attention = True
    for model, feature in [(attn_only, "attention-only"), (ungrouped, "ungroup_grouped_query_attention")]:
        with pytest.raises(InputError) as err:
            build_graph(model)
        assert feature in str(err.value) and "\n" not in str(err.value)
