"""Capture: values against TransformerLens' own cache, padding invariance, streaming, bad input."""
import pytest
import torch

from interp import InputError
from interp.capture import Capture, capture
from tiny import random_prompts, tiny_gqa_model

NAMES = ["q", "k", "v", "rot_q", "rot_k", "z", "result", "v_norm", "z_norm", "result_norm", "pattern",
         "resid", "resid_norm", "entropy", "max_prob", "sink_mass"]


def _reference(model, tokens, layer):
    """What each capture name means, computed from TransformerLens' run_with_cache on one prompt."""
    model.cfg.use_attn_result = True
    try:
        _, cache = model.run_with_cache(tokens[None])
    finally:
        model.cfg.use_attn_result = False
    group = model.cfg.n_heads // model.cfg.n_key_value_heads
    kv = lambda name: cache[name, layer][0].repeat_interleave(group, dim=1)
    pattern = cache["pattern", layer][0].double()
    return {
        "q": cache["q", layer][0], "k": kv("k"), "v": kv("v"), "rot_q": cache["rot_q", layer][0],
        "rot_k": kv("rot_k"), "z": cache["z", layer][0], "result": cache["result", layer][0],
        "v_norm": kv("v").norm(dim=-1), "z_norm": cache["z", layer][0].norm(dim=-1),
        "result_norm": cache["result", layer][0].norm(dim=-1), "pattern": cache["pattern", layer][0],
        "resid": cache["resid_pre", layer][0], "resid_norm": cache["resid_pre", layer][0].norm(dim=-1),
        "entropy": -(pattern * pattern.clamp_min(1e-300).log()).sum(-1).T,
        "max_prob": pattern.amax(-1).T, "sink_mass": pattern[..., 0].T,
    }


def test_every_name_matches_transformer_lens_cache_under_padding():
    model = tiny_gqa_model()
    prompts = random_prompts([5, 17, 11, 3])
    cap = capture(model, prompts, names=NAMES, batch_tokens=10_000, progress=False)  # one padded batch
    for i, tokens in enumerate(prompts):
        for layer in range(model.cfg.n_layers):
            ref = _reference(model, tokens, layer)
            for name in NAMES:
                got = cap.get(name, layer, i)
                assert got.shape == ref[name].shape, (name, layer, i)
                # float32: batched and single runs round differently (~1e-6 relative; keys reach ~20)
                torch.testing.assert_close(got.double(), ref[name].double(), rtol=1e-4, atol=1e-4, msg=f"{name} L{layer} p{i}")


def test_selected_layers_and_heads_only():
    model = tiny_gqa_model()
    prompts = random_prompts([6, 9])
    cap = capture(model, prompts, names=["z", "k"], layers=[1], heads=[1, 3], progress=False)
    assert set(cap.store) == {f"{n}.L1.{i}" for n in ("z", "k") for i in range(2)}
    ref = _reference(model, prompts[1], 1)
    torch.testing.assert_close(cap.get("z", 1, 1), ref["z"][:, [1, 3]])
    torch.testing.assert_close(cap.get("k", 1, 1), ref["k"][:, [1, 3]])  # KV head 0 serves 1, KV head 1 serves 3


def test_streaming_to_disk_equals_memory(tmp_path):
    model = tiny_gqa_model()
    prompts = random_prompts([4, 12, 7, 30, 2])
    in_ram = capture(model, prompts, names=["z", "resid_norm"], batch_tokens=32, progress=False)
    on_disk = capture(model, prompts, names=["z", "resid_norm"], batch_tokens=32, out_dir=tmp_path / "cap", progress=False)
    assert not on_disk.store and len(list((tmp_path / "cap").glob("shard-*.safetensors"))) > 1
    reopened = Capture.load(tmp_path / "cap")
    assert reopened.lengths == [4, 12, 7, 30, 2]
    for i in range(5):
        torch.testing.assert_close(reopened.get("z", 2, i), in_ram.get("z", 2, i))
        torch.testing.assert_close(reopened.get("resid_norm", 0, i), in_ram.get("resid_norm", 0, i))
    assert reopened.cat("z", 0).shape == (55, 4, 8)


def test_bad_requests_are_input_errors():
    model = tiny_gqa_model()
    prompts = random_prompts([4])
    with pytest.raises(InputError, match="layer 7 does not exist"):
        capture(model, prompts, layers=[7], progress=False)
    with pytest.raises(InputError, match="head 4 does not exist"):
        capture(model, prompts, heads=[4], progress=False)
    with pytest.raises(InputError, match="unknown activation 'attn'"):
        capture(model, prompts, names=["attn"], progress=False)
    with pytest.raises(InputError, match="max_pattern_tokens"):
        capture(model, random_prompts([40]), names=["pattern"], max_pattern_tokens=32, progress=False)
    with pytest.raises(InputError, match="no prompts"):
        capture(model, [], progress=False)


def test_real_model_padding_changes_nothing(smollm2, real_texts):
    """Batched (right-padded) capture of texts of different lengths equals each text run alone."""
    names = ["z", "v", "result_norm", "entropy", "resid_norm"]
    layers = [0, 14, 29]
    batched = capture(smollm2, real_texts, names=names, layers=layers, batch_tokens=100_000, progress=False)
    assert len(set(batched.lengths)) > 1
    for i, text in enumerate(real_texts[:3]):
        alone = capture(smollm2, [text], names=names, layers=layers, progress=False)
        for name in names:
            for layer in layers:
                torch.testing.assert_close(batched.get(name, layer, i), alone.get(name, layer, 0), rtol=1e-4, atol=2e-5)
