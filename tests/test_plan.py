"""`interp plan`: the memory estimate, against TransformerLens' own parameter counts and against
peaks measured on CPU for SmolLM2."""
import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from interp.cli import main
from interp.plan import ModelShape, devices_needed, plan_for_shape, shape_from_hf, shape_from_tl

GiB = 2**30


@pytest.mark.parametrize("variant", [
    dict(n_key_value_heads=2, gated_mlp=True, positional_embedding_type="rotary", rotary_dim=8),
    dict(gated_mlp=False, positional_embedding_type="standard", act_fn="gelu"),
    dict(n_key_value_heads=1, gated_mlp=True, positional_embedding_type="rotary", rotary_dim=8, use_qk_norm=True),
])
def test_parameter_count_matches_the_hooked_transformer_it_describes(variant):
    kwargs = dict(d_model=32, d_head=8, n_layers=3, n_heads=4, d_mlp=64, n_ctx=64, d_vocab=101, act_fn="silu",
                  normalization_type="RMSPre", device="cpu", seed=0)
    cfg = HookedTransformerConfig(**{**kwargs, **variant})
    model = HookedTransformer(cfg, move_to_device=False)
    shape = shape_from_tl(cfg.to_dict(), "tiny")
    assert shape.n_parameters() == sum(p.numel() for p in model.parameters())
    rotary = sum(b.numel() for name, b in model.named_buffers() if "rotary" in name)
    assert shape.rotary_elements(16) == rotary


def test_the_hf_config_of_a_model_gives_the_shape_of_its_conversion():
    from transformers import LlamaConfig

    hf = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=64)
    shape = shape_from_hf(hf, "tiny")
    assert shape == ModelShape(name="tiny", n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, d_head=8, d_mlp=64,
                               d_vocab=101, n_ctx=64, gated_mlp=True, rotary_dim=8, qk_norm=False)


def test_devices_split_the_weights_and_each_holds_one_layers_activations():
    assert devices_needed(weights=10 * GiB, activations=1 * GiB, device_memory=80 * GiB) == 1
    assert devices_needed(weights=140 * GiB, activations=2 * GiB, device_memory=80 * GiB) == 2  # 70 + 2 <= 72
    assert devices_needed(weights=140 * GiB, activations=3 * GiB, device_memory=80 * GiB) == 3  # 70 + 3 > 72
    assert devices_needed(weights=1 * GiB, activations=73 * GiB, device_memory=80 * GiB) is None


def test_eager_patterns_grow_with_the_square_of_the_length_and_fused_statistics_do_not():
    shape = ModelShape(name="m", n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, d_head=64, d_mlp=1536,
                       d_vocab=49152, n_ctx=32768, rotary_dim=64)
    short, long = (plan_for_shape(shape, length=n, device_memory=80 * GiB) for n in (4096, 16384))
    assert long.patterns_all_layers == 16 * short.patterns_all_layers == 30 * 9 * 16384**2 * 4
    assert long.kv_cache == 4 * short.kv_cache == 2 * 30 * 16384 * 3 * 64 * 4
    assert long.forward_fused < long.forward_eager / 5
    assert long.devices_patterns > long.devices_eager


@pytest.mark.parametrize("args, message", [
    (["--dtype", "int8"], "--dtype int8 is not one of"),
    (["--device-memory", "lots"], "is not a size"),
    (["--device-memory", "0"], "a device needs some memory"),
])
def test_plan_bad_input_answers_with_one_line_and_exit_2(capsys, args, message):
    assert main(["plan", "--model", "smollm2-135m", "--length", "64", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


MEASURE = textwrap.dedent('''
    """Peak RSS above the baseline while each forward runs (sampled every 0.5 ms), after a warm-up."""
    import gc, json, os, sys, threading, time
    import torch
    torch.set_num_threads(1)
    import interp
    from interp.kernel_attention import kernel_attention

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def peak(fn, warm=False):
        if warm:  # the first forward grows the rotary tables and starts thread pools once
            fn()
        gc.collect()
        base, top, stop = rss(), [0], threading.Event()
        def sample():
            while not stop.is_set():
                top[0] = max(top[0], rss())
                time.sleep(0.0005)
        thread = threading.Thread(target=sample)
        thread.start()
        try:
            out = fn()
            top[0] = max(top[0], rss())
        finally:
            stop.set()
            thread.join()
        del out
        return top[0] - base

    model = interp.load_model(sys.argv[1], device="cpu")
    tokens = torch.randint(1, 1000, (1, int(sys.argv[2])), generator=torch.Generator().manual_seed(0))
    last = model.cfg.n_layers

    def fused():
        with kernel_attention(model):
            return model(tokens, stop_at_layer=last)

    with torch.no_grad():
        out = {"weights": sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]),
               "forward": peak(lambda: model(tokens), warm=True),
               "patterns": peak(lambda: model.run_with_cache(tokens, names_filter=lambda h: h.endswith("hook_pattern"))[1]),
               "blocks_eager": peak(lambda: model(tokens, stop_at_layer=last)),
               "blocks_fused": peak(fused)}
    print(json.dumps(out))
''')


@pytest.mark.slow
def test_estimate_matches_measured_cpu_peaks_for_smollm2(smollm2, tmp_path, cache_dir):
    """Tolerance 20 % of the measured peak. glibc's dynamic mmap threshold would keep freed blocks of
    a warm-up resident (so they never show in the RSS delta); MALLOC_MMAP_THRESHOLD_ fixes it so that
    every large tensor is its own mapping, returned when freed, and RSS follows live tensors."""
    from interp.plan import activation_peak, model_shape

    length = 1024
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1", "INTERP_CACHE": str(cache_dir)}
    run = subprocess.run([sys.executable, str(script), "smollm2-135m", str(length)], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    shape = model_shape("smollm2-135m")
    plan = plan_for_shape(shape, length=length, device_memory=80 * GiB)
    assert plan.weights == pytest.approx(measured["weights"], rel=1e-3)
    estimates = {"forward": plan.forward_eager, "patterns": plan.forward_eager + plan.patterns_all_layers,
                 "blocks_eager": activation_peak(shape, length, 1, 4, fused=False, logits=False),
                 "blocks_fused": activation_peak(shape, length, 1, 4, fused=True, logits=False, threads=1)}
    for key, estimate in estimates.items():
        assert estimate == pytest.approx(measured[key], rel=0.2), (key, estimate / 2**20, measured[key] / 2**20)
    # the GGUF's own config, read without converting, describes the same model as the cached conversion
    from transformers import AutoConfig
    from pathlib import Path

    gguf = Path(smollm2.source["location"])
    hf = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    assert shape_from_hf(hf, shape.name) == shape


# ------------------------------------------------------------------ one model over several GPUs

def test_layers_are_split_contiguously_and_evenly_in_the_order_the_forward_moves_the_residual():
    from transformer_lens.utilities.multi_gpu import get_device_for_block_index

    from interp.devices import layer_devices

    for n_layers, k, first in [(30, 4, 0), (18, 2, 0), (62, 8, 0), (30, 3, 2), (3, 3, 0)]:
        placed = [d.index for d in layer_devices(n_layers, k, torch.device("cuda", first))]
        sizes = [placed.count(first + j) for j in range(k)]
        assert placed == sorted(placed) and set(placed) == set(range(first, first + k))
        assert max(sizes) - min(sizes) <= 1, (n_layers, k, sizes)
        cfg = SimpleNamespace(n_layers=n_layers, n_devices=k, device=f"cuda:{first}")  # what TL's rule reads
        assert placed == [get_device_for_block_index(i, cfg).index for i in range(n_layers)]


def test_a_split_over_more_gpus_than_the_machine_has_is_refused_in_one_line():
    from interp.devices import split_across_devices
    from interp.errors import InputError

    model = HookedTransformer(HookedTransformerConfig(d_model=8, d_head=4, n_layers=2, n_heads=2, n_ctx=8, d_vocab=11,
                                                      act_fn="gelu", device="cpu"))
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(InputError, match=f"this machine has {have}"):
        split_across_devices(model, max(2, have + 1), "cuda")
    with pytest.raises(InputError, match="is not one"):
        split_across_devices(model, 2, "cpu")
    assert split_across_devices(model, 1) is model


def _two_gpus():
    return torch.cuda.is_available() and torch.cuda.device_count() >= 2


@pytest.mark.cuda
@pytest.mark.skipif(not _two_gpus(), reason="needs two CUDA GPUs")
def test_a_model_split_over_two_gpus_computes_what_it_computes_on_one():
    """Logits, every layer's pattern, the fused statistics and hook_z (SAE activations) of a split
    model equal the single-GPU model's."""
    from tiny import tiny_gqa_model

    from interp.devices import placement_summary, split_across_devices
    from interp.kernel_attention import kernel_attention

    one = tiny_gqa_model(n_layers=4).to("cuda:0")
    two = split_across_devices(tiny_gqa_model(n_layers=4), 2, "cuda:0")
    assert placement_summary(two) == {"cuda:0": [0, 1], "cuda:1": [2, 3]}
    tokens = torch.randint(1, 97, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_logits, ref = one.run_with_cache(tokens.to("cuda:0"))
        logits, cache = two.run_with_cache(tokens.to("cuda:0"))
        assert torch.allclose(logits.to("cuda:0"), ref_logits, atol=1e-5)
        for layer in range(4):
            for hook in ("attn.hook_pattern", "attn.hook_z"):
                name = f"blocks.{layer}.{hook}"
                assert torch.allclose(cache[name].to("cuda:0"), ref[name], atol=1e-5), name
        with kernel_attention(one) as ref_trace:
            one(tokens.to("cuda:0"))
        with kernel_attention(two) as trace:
            two(tokens.to("cuda:0"))
        for layer in range(4):
            assert torch.allclose(trace.layers[layer].stats.entropy, ref_trace.layers[layer].stats.entropy, atol=1e-4)


def test_load_model_refuses_a_split_over_missing_gpus_before_reading_the_model():
    import interp
    from interp.errors import InputError

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(InputError, match="--n-devices"):
        interp.load_model("/no/such/model.gguf", n_devices=have + 2)
