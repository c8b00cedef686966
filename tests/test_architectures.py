"""Every architecture family through load_model and every analysis, on tiny random-weight models.

Each model is built with transformers (2 layers, d_model 64, 320-token vocabulary; tests/tiny.py),
saved with save_pretrained into a temporary directory and loaded with `interp.load_model(dir)`
with the network refused. References are independent of our code: transformers' own eager
float32 forward for log-probs, TransformerLens' attention pattern (run_with_cache) for the
attention statistics, the model's plain forward for the edge-level graph runs.
"""
import json

import pytest
import torch
from conftest import no_network

import interp
from circuits.discovery import acdc, attribute, build_graph, discover, run_with_edges
from circuits.heads import head_type_scores
from circuits.sinks import sink_scores
from interp import InputError
from interp.kernel_attention import unsupported_features
from interp.loading import parity_of
from interp.patching import PromptPairs, ablation_values
from tests import edge_reference
from tests.tiny import (
    ROPE_THRESHOLD,
    WINDOW,
    save_tiny_hf,
    tiny_hf_configs,
    tiny_tokenizer,
)

ARCHS = list(tiny_hf_configs())
LONG = ROPE_THRESHOLD + 16  # tokens: past the rope-scaling threshold and every sliding window
assert LONG > WINDOW


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """label → (HF model, its directory); built once per module."""
    root = tmp_path_factory.mktemp("archs")
    return {label: (save_tiny_hf(label, root / label), root / label) for label in ARCHS}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("arch-cache")


@pytest.fixture(scope="module")
def loaded(zoo, cache):
    """label → HookedTransformer, converted lazily (each test asks for its own) and kept."""
    models = {}

    def get(label):
        if label not in models:
            with no_network():
                models[label] = interp.load_model(zoo[label][1], device="cpu", cache_dir=cache)
        return models[label]

    return get


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _prompts(tok):
    texts = ["When Mary and John went to the store, John gave a drink to", "The Eiffel Tower is in"]
    ids = [torch.tensor(tok(t).input_ids) for t in texts]
    long = tok(" ".join(interp.texts.sample_texts(3, seed=4))).input_ids[:LONG]
    assert len(long) == LONG
    return ids + [torch.tensor(long)]


@pytest.mark.parametrize("label", ARCHS)
def test_logprobs_match_transformers(label, zoo, loaded, tok):
    hf, _ = zoo[label]
    model = loaded(label)
    gap = 0.0
    with torch.no_grad():
        for ids in _prompts(tok):
            ours = model(ids[None]).double().log_softmax(-1)
            ref = hf(ids[None]).logits.double().log_softmax(-1)
            gap = max(gap, (ours - ref).abs().max().item())
    print(f"PARITY {label} {type(hf).__name__} {gap:.1e}")
    assert gap < 1e-3
    parity = parity_of(model)
    assert parity.passed and parity.max_logprob_diff < 1e-3 and parity.enforced
    assert max(parity.prompt_lengths) > ROPE_THRESHOLD  # the load-time check covered the long range too
    assert model.cfg.original_architecture == type(hf).__name__


def _pattern_reference(model, tokens):
    """Per prompt: [layer, head, query, key] attention pattern from TransformerLens' own cache."""
    out = []
    with torch.no_grad():
        for t in tokens:
            _, c = model.run_with_cache(t[None], names_filter=lambda n: n.endswith("hook_pattern"))
            out.append(torch.stack([c["pattern", layer][0] for layer in range(model.cfg.n_layers)]).double())
    return out


@pytest.mark.parametrize("label", ARCHS)
def test_every_analysis_runs_and_agrees_with_the_eager_pattern(label, loaded, tok):
    model = loaded(label)
    texts = interp.texts.sample_texts(3, seed=5, max_chars=160)
    tokens = [model.to_tokens(t)[0, :20] for t in texts]
    patterns = _pattern_reference(model, tokens)
    H = model.cfg.n_heads

    cap = interp.capture(model, tokens, names=["entropy", "sink_mass", "z"], progress=False)
    ent = torch.cat([-(p * p.clamp_min(1e-300).log()).sum(-1) for p in patterns], -1).mean(-1)  # [layer, head]
    assert torch.allclose(cap.head_means("entropy").double(), ent, atol=1e-4)
    assert cap.get("z", 0, 0).shape[-2:] == (H, model.cfg.d_head)

    table = interp.head_summary(model, texts, max_tokens=20, progress=False)
    sink = torch.cat([p[..., 0] for p in patterns], -1).mean(-1)
    assert torch.allclose(torch.tensor(table.grid("sink_mass").values), sink, atol=1e-4)

    # Gu et al.'s alpha of the first token: mean attention on key 0 over the queries that see it
    # (the queries that see key 0 are those TL's pattern does not mask: sliding windows end there)
    alpha = sink_scores(model, texts, max_tokens=20, progress=False)
    seen = [(p[..., 0] > 0).any(1, keepdim=True) for p in patterns]  # [layer, 1, query]
    ref = torch.stack([(p[..., 0] * s).sum(-1) / s.sum(-1) for p, s in zip(patterns, seen)]).mean(0)
    assert torch.allclose(torch.tensor(alpha.grid("alpha").values), ref, atol=1e-4)

    prev = head_type_scores(model, torch.stack(tokens), ["previous_token"])
    # TL's head_detector: Σ A·D / Σ A (Σ A = N unless learned sinks take some of each row's mass)
    prev_ref = torch.stack([torch.diagonal(p, offset=-1, dim1=-2, dim2=-1).sum(-1) / p.sum((-2, -1)) for p in patterns]).mean(0)
    assert torch.allclose(torch.tensor(prev.grid("previous_token").values), prev_ref, atol=1e-4)
    if unsupported_features(model):  # e.g. Gemma 2's soft-capping, Bloom's ALiBi: refuse, never a wrong number
        with pytest.raises(InputError, match="fast trace does not support"):
            head_type_scores(model, torch.stack(tokens), ["previous_token"], method="kernel")
    else:
        kern = head_type_scores(model, torch.stack(tokens), ["previous_token"], method="kernel")
        assert torch.allclose(torch.tensor(kern.grid("previous_token").values), prev_ref, atol=1e-4)

    _check_eap(model)


def _eap_pairs(model, n: int = 4, length: int = 6):
    g = torch.Generator().manual_seed(3)
    clean, corrupt = (torch.randint(3, model.cfg.d_vocab, (n, length), generator=g) for _ in range(2))
    return PromptPairs.from_lists(list(clean), list(corrupt), answer=[5] * n, wrong=[7] * n)


def _check_eap(model):
    """Edge-level runs reproduce the model's own clean and corrupted forwards (TransformerLens',
    float32, to 1e-5) and, for random edge sets, a TransformerLens-hook implementation of edge removal
    (tests/edge_reference.py); the graph's edges are exactly the dependencies of TransformerLens' forward
    (replacing a source's output changes a destination's input iff the edge exists: parallel blocks
    have no head → own-MLP edge); EAP scores every edge with a finite number."""
    pairs = _eap_pairs(model)
    abl = ablation_values(model, pairs, "corrupt")
    graph = build_graph(model)
    full = run_with_edges(model, graph, pairs, abl, graph.allowed)
    empty = run_with_edges(model, graph, pairs, abl, torch.zeros_like(graph.allowed))
    full_gap = (full - edge_reference.last_logits(model, pairs.clean, pairs.last)).abs().max().item()
    empty_gap = (empty - edge_reference.last_logits(model, pairs.corrupt, pairs.last)).abs().max().item()
    print(f"EDGES {model.cfg.original_architecture} {graph.n_edges} full {full_gap:.1e} empty {empty_gap:.1e}")
    assert full_gap < 1e-5 and empty_gap < 1e-5
    assert torch.equal(graph.allowed, edge_reference.dependencies(model, graph, pairs))
    gen = torch.Generator().manual_seed(1)
    # Circuits in between: every removed edge carries its source's corrupted write. Only these test a
    # post-norm's per-run scale (with every edge removed each z already is the corrupted z): a plain
    # z·W_O split misses Gemma 2's reference by 0.15, a scale frozen at the clean run by 0.02.
    for p in (0.3, 0.7):
        keep = graph.allowed & (torch.rand(graph.allowed.shape, generator=gen) < p)
        ref = edge_reference.kept_edges_logits(model, graph, pairs, keep)
        assert (run_with_edges(model, graph, pairs, abl, keep) - ref).abs().max() < 1e-5
    scores = attribute(model, pairs, method="eap", ablation=abl).scores
    assert torch.isfinite(scores).all() and scores.abs().max() > 0


# the matrix's models whose blocks are not plain sequential pre-norm: parallel attention + MLP
# (GPT-J, GPT-NeoX, Phi), post-norms (Gemma 2/3: before and after; OLMo 3: after only), and Phi-3
NEW_KINDS = ["gpt-j", "gpt-neox", "phi", "phi3", "gemma2", "gemma3", "olmo3"]


def test_the_new_kinds_are_the_matrix_s_parallel_and_post_norm_models(loaded):
    kinds = {label: (edge_reference.is_parallel(loaded(label)), edge_reference.is_post_normed(loaded(label)))
             for label in NEW_KINDS}
    assert kinds == {"gpt-j": (True, False), "gpt-neox": (True, False), "phi": (True, False), "phi3": (False, False),
                     "gemma2": (False, True), "gemma3": (False, True), "olmo3": (False, True)}
    n = {label: build_graph(loaded(label)).n_edges for label in ("gpt-j", "gpt2", "gemma2", "llama")}
    # 2 layers x 4 heads, 4 KV heads: parallel blocks lose the 2 x 4 head -> own-MLP edges
    assert n["gpt-j"] == n["gpt2"] - 8 and n["gemma2"] == n["llama"]


@pytest.mark.parametrize("label", NEW_KINDS)
def test_single_edges_and_eap_match_transformer_lens(label, loaded):
    """(1) A head's writes (post-normed: (result_h + b_O/H) / TL's hook_scale of this run · w) sum to
    TL's hook_attn_out; (2) removing any single edge equals TL's forward with that destination's
    input minus (clean − corrupted write of the source); (3) EAP equals autograd through TL's
    destination hooks; (4) EAP is the derivative of the exact effect: the effect of the edge carrying
    clean − eps·delta, divided by eps, tends to the EAP score (second-order remainder O(eps))."""
    model = loaded(label)
    pairs = _eap_pairs(model)
    abl = ablation_values(model, pairs, "corrupt")
    graph = build_graph(model)
    clean, corrupt = edge_reference.caches(model, pairs)
    writes = edge_reference.source_writes(model, clean)
    heads = torch.stack([writes[graph.head_src(l, 0):graph.head_src(l, 0) + graph.n_heads].sum(0)
                         for l in range(graph.n_layers)])
    assert (heads - edge_reference.attn_out(model, clean)).abs().max() < 1e-5
    deltas = writes - edge_reference.source_writes(model, corrupt)
    src, dst = graph.allowed.nonzero(as_tuple=True)
    gap = 0.0
    for s, d in zip(src.tolist(), dst.tolist()):
        keep = graph.allowed.clone()
        keep[s, d] = False
        ours = run_with_edges(model, graph, pairs, abl, keep)
        gap = max(gap, (ours - edge_reference.edge_removed_logits(model, graph, pairs, deltas, s, d)).abs().max().item())
    eap = attribute(model, pairs, method="eap", ablation=abl).scores
    ref = edge_reference.eap_reference(model, graph, pairs, deltas)
    eap_gap, scale = (eap - ref)[graph.allowed].abs().max().item(), ref[graph.allowed].abs().max().item()
    print(f"SINGLE-EDGE {label} {graph.n_edges} edges: max logit gap {gap:.1e}; EAP vs autograd {eap_gap:.1e} "
          f"(max |score| {scale:.2e})")
    assert gap < 1e-5
    assert eap_gap < 1e-4 * scale
    rows = torch.arange(len(pairs))
    base = edge_reference.last_logits(model, pairs.clean, pairs.last)
    metric = (base[rows, 5] - base[rows, 7]).mean()
    eps = 1e-2
    for i in eap[src, dst].abs().argsort(descending=True)[:3].tolist():
        s, d = int(src[i]), int(dst[i])
        lg = edge_reference.edge_removed_logits(model, graph, pairs, eps * deltas, s, d)
        slope = float(metric - (lg[rows, 5] - lg[rows, 7]).mean()) / eps
        assert slope == pytest.approx(float(eap[s, d]), rel=0.02), (graph.src_names[s], graph.dst_names[d])  # 1.3 % seen


def _mean_logit_diff(logits, pairs):
    rows = torch.arange(len(pairs))
    return float((logits[rows, pairs.answer] - logits[rows, pairs.wrong]).mean())


@pytest.mark.parametrize("label", ["gpt-j", "gemma2"])
def test_acdc_and_discover_run_end_to_end_on_parallel_and_post_norm_models(label, loaded):
    """ACDC's pruned circuit and discover's edge circuit, re-evaluated with TransformerLens hooks
    alone (tests/edge_reference.py), give the logit difference and faithfulness they report."""
    model = loaded(label)
    pairs = _eap_pairs(model, n=8)
    abl = ablation_values(model, pairs, "corrupt")
    graph = build_graph(model)
    attribution = attribute(model, pairs, method="eap-ig", ablation=abl, steps=2)
    result = acdc(model, attribution, pairs, abl, n_candidates=40, tau=0.02, metric="logit_diff")
    assert result["n_kept"] <= 40 and not (result["keep"] & ~graph.allowed).any()
    ref = edge_reference.kept_edges_logits(model, graph, pairs, result["keep"])
    assert result["value"] == pytest.approx(_mean_logit_diff(ref, pairs), abs=1e-5)

    circuit, details = discover(model, pairs, method="acdc", ablation="corrupt", steps=2, acdc_candidates=40,
                                acdc_metric="logit_diff", tau=0.02, curve_points=4)
    assert circuit.kind == "heads" and details["graph_edges"] == graph.n_edges
    edges = details["edge_circuit"].edges
    keep = torch.zeros_like(graph.allowed)
    for e in edges:
        keep[graph.src_names.index(e.src), graph.dst_names.index(e.dst)] = True
    held = details["held_out_rows"]["edges"]
    assert held["n_edges"] == len(edges) == int(keep.sum())
    full = _mean_logit_diff(edge_reference.last_logits(model, pairs.clean, pairs.last), pairs)
    empty = _mean_logit_diff(edge_reference.last_logits(model, pairs.corrupt, pairs.last), pairs)
    value = _mean_logit_diff(edge_reference.kept_edges_logits(model, graph, pairs, keep), pairs)
    assert held["logit_diff"] == pytest.approx(value, abs=1e-5)
    assert held["value"] == pytest.approx((value - empty) / (full - empty), abs=1e-4)


# Half-precision runs against the float32 model (measured, max over the tiny matrix: EAP 1.9e-2 of the
# largest score in bf16 and 3.2e-3 in fp16; the every-edge-removed circuit 4.2e-3 / 5.6e-4 off TL's
# corrupted forward on logits of about 0.55; head entropy 1.3e-3 / 1.5e-4 nats off TL's float32 pattern;
# z 1.9e-3 / 2.2e-4 off TL's float32 hook_z, whose entries reach 0.30)
EAP_TOL = {torch.bfloat16: 5e-2, torch.float16: 1e-2}
EMPTY_TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
ENTROPY_TOL = {torch.bfloat16: 5e-3, torch.float16: 1e-3}
Z_TOL = {torch.bfloat16: 5e-3, torch.float16: 5e-4}


def _check_half_eap(model, f32, dtype):
    """Every edge's EAP score within EAP_TOL[dtype] of the float32 run's (relative to its largest),
    and the circuit with every edge removed within EMPTY_TOL[dtype] of TL's corrupted forward."""
    pairs = _eap_pairs(f32)
    graph = build_graph(model)
    scores = attribute(model, pairs, method="eap", ablation="mean").scores
    ref = attribute(f32, pairs, method="eap", ablation="mean").scores
    assert scores.shape == ref.shape and torch.isfinite(scores).all()
    gap = (scores.float() - ref)[graph.allowed].abs().max() / ref[graph.allowed].abs().max()
    assert gap < EAP_TOL[dtype]
    abl = ablation_values(model, pairs, "corrupt")
    empty = run_with_edges(model, graph, pairs, abl, torch.zeros_like(graph.allowed)).float()
    corrupt = edge_reference.last_logits(model, pairs.corrupt, pairs.last).float()
    assert (empty - corrupt).abs().max() < EMPTY_TOL[dtype]


@pytest.mark.parametrize("label", ["gpt-j", "gemma2", "olmo3"])
def test_bf16_eap_on_parallel_and_post_norm_models(label, zoo, cache):
    with no_network():
        model = interp.load_model(zoo[label][1], device="cpu", cache_dir=cache, dtype=torch.bfloat16)
        f32 = interp.load_model(zoo[label][1], device="cpu", cache_dir=cache)
    _check_half_eap(model, f32, torch.bfloat16)


def test_kernel_features_are_named(loaded):
    assert unsupported_features(loaded("gemma2")) == ["attention soft-capping"]
    assert unsupported_features(loaded("llama3-rope")) == []
    assert loaded("llama3-rope").cfg.use_NTK_by_parts_rope  # converted by TL, not ignored
    assert loaded("qwen2-yarn").cfg.use_yarn_rope and loaded("mistral").cfg.window_size == WINDOW


def _yarn_llama(folder):
    """A Llama with DeepSeek-style YaRN (mscale, mscale_all_dim), which TransformerLens cannot express."""
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ROPE_THRESHOLD, "rope_theta": 1e4,
            "mscale": 1.0, "mscale_all_dim": 0.5}
    return save_tiny_hf("llama", folder, rope_parameters=rope)


def _entries(cache):
    return sorted(p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")) \
        if (cache / "models").is_dir() else []


def test_unhandled_rope_scaling_is_refused_in_one_line_and_caches_nothing(tmp_path):
    _yarn_llama(tmp_path / "yarn")
    cache = tmp_path / "cache"
    with no_network(), pytest.raises(InputError) as err:
        interp.load_model(tmp_path / "yarn", device="cpu", cache_dir=cache)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("LlamaForCausalLM does not convert faithfully")
    assert "rope_scaling.rope_type=yarn with mscale/mscale_all_dim" in message and "--no-parity-check" in message
    gap = float(message.split("differ from transformers' by ")[1].split(" nats")[0])
    assert gap > 1e-3
    assert _entries(cache) == []

    with no_network():
        model = interp.load_model(tmp_path / "yarn", device="cpu", cache_dir=cache, check=False)
    parity = parity_of(model)
    assert not parity.passed and not parity.enforced and parity.max_logprob_diff == pytest.approx(gap, rel=1e-2)
    assert interp.model_card(model)["parity"]["max_logprob_diff"] == parity.max_logprob_diff
    assert len(_entries(cache)) == 1
    meta = json.loads((cache / "models" / _entries(cache)[0] / "meta.json").read_text())
    assert meta["parity"]["passed"] is False
    with pytest.raises(InputError, match="does not convert faithfully"):  # the cached entry is checked again
        interp.load_model(tmp_path / "yarn", device="cpu", cache_dir=cache)


def _bad_inputs(tmp_path):
    """name → (directory, expected message fragment)."""
    import transformers

    out = {}
    d = tmp_path / "no-weights"
    d.mkdir()
    transformers.LlamaConfig(**tiny_hf_configs()["llama"][1]).save_pretrained(d)
    out["no weights"] = (d, "has config.json but no weight files")
    d = tmp_path / "bad-json"
    d.mkdir()
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    out["invalid json"] = (d, "config.json is not valid JSON")
    for name, cls, kwargs, what in [
        ("bert", "BertConfig", dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, architectures=["BertForMaskedLM"]), "encoder-only"),
        ("t5", "T5Config", dict(vocab_size=64, d_model=32, num_layers=1, num_heads=2, d_ff=64, d_kv=16,
                                architectures=["T5ForConditionalGeneration"]), "encoder-decoder (seq2seq)"),
        ("falcon", "FalconConfig", dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        architectures=["FalconForCausalLM"]), "unsupported architecture FalconForCausalLM"),
    ]:
        d = tmp_path / name
        getattr(transformers, cls)(**kwargs).save_pretrained(d)
        torch.save({}, d / "pytorch_model.bin")  # a weight file is present; the config alone must be refused
        out[name] = (d, what)
    return out


def test_bad_model_directories_are_named_before_weights_are_read(tmp_path):
    cache = tmp_path / "cache"
    for name, (folder, fragment) in _bad_inputs(tmp_path).items():
        with no_network(), pytest.raises(InputError) as err:
            interp.load_model(folder, cache_dir=cache)
        assert fragment in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
    assert "Gemma 2" in str(err.value) and "GPT-2" in str(err.value)  # the unsupported one lists the families
    assert _entries(cache) == []


def _cli(capsys, *argv):
    from interp.cli import main

    with no_network():
        code = main(list(argv))
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("interp: error:")]
    return code, captured.out, errors, captured.err


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    for name, (folder, fragment) in _bad_inputs(tmp_path).items():  # refused from config.json alone: one line
        code, _, errors, err = _cli(capsys, "trace", "--model", str(folder), "--out", str(tmp_path / "out"), "-t", "hi")
        assert code == 2 and len(errors) == 1 and fragment in errors[0], (name, err)
        assert [line for line in err.splitlines() if line.strip()] == errors, (name, err)
    _yarn_llama(tmp_path / "yarn")  # refused after conversion (the parity check): the conversion notice comes first
    code, _, errors, err = _cli(capsys, "trace", "--model", str(tmp_path / "yarn"), "--out", str(tmp_path / "out"), "-t", "hi")
    assert code == 2 and len(errors) == 1 and "rope_scaling.rope_type=yarn" in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() and _entries(tmp_path / "cache") == []
    code, _, errors, _ = _cli(capsys, "--dtype", "int3", "models")
    assert code == 2 and "is not one of float32, bfloat16, float16" in errors[0]


def test_cli_no_parity_check_and_dtype_load_and_models_lists_parity(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    _yarn_llama(tmp_path / "yarn")
    save_tiny_hf("qwen2", tmp_path / "qwen2")
    code, _, errors, err = _cli(capsys, "--no-parity-check", "trace", "--model", str(tmp_path / "yarn"),
                                "--out", str(tmp_path / "o1"), "-t", "The cat sat on the mat.")
    assert code == 0 and not errors, err
    code, _, errors, err = _cli(capsys, "--dtype", "bfloat16", "trace", "--model", str(tmp_path / "qwen2"),
                                "--out", str(tmp_path / "o2"), "-t", "The cat sat on the mat.")
    assert code == 0 and not errors, err
    code, out, _, _ = _cli(capsys, "models", "--json")
    doc = json.loads(out)
    parity = {c["name"]: c["parity"] for c in doc["cached"]}
    assert parity["yarn"]["passed"] is False and parity["yarn"]["max_logprob_diff"] > 1e-3
    assert parity["qwen2"]["passed"] is True and parity["qwen2"]["max_logprob_diff"] < 1e-3
    code, out, _, _ = _cli(capsys, "models")
    assert "yarn" in out and "ABOVE" in out and "Gemma 2" in out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_head_summary_capture_and_eap(dtype, zoo, cache):
    """A Llama loaded in bf16/fp16: head entropies against TL's float32 pattern, z against TL's
    float32 hook_z, EAP against the float32 run."""
    with no_network():
        model = interp.load_model(zoo["llama"][1], device="cpu", cache_dir=cache, dtype=dtype)
        f32 = interp.load_model(zoo["llama"][1], device="cpu", cache_dir=cache)
    assert model.cfg.dtype == dtype and model.W_Q.dtype == dtype
    assert parity_of(model).max_logprob_diff < 1e-3  # measured in float32 at conversion
    texts = interp.texts.sample_texts(2, seed=5, max_chars=120)
    tokens = [f32.to_tokens(t)[0, :16] for t in texts]
    patterns = _pattern_reference(f32, tokens)
    entropy = torch.cat([-(p * p.clamp_min(1e-300).log()).sum(-1) for p in patterns], -1).mean(-1)  # [layer, head]
    table = interp.head_summary(model, texts, max_tokens=16, progress=False)
    assert (torch.tensor(table.grid("entropy").values) - entropy).abs().max() < ENTROPY_TOL[dtype]
    cap = interp.capture(model, tokens[:1], names=["z"], progress=False)
    _, c = f32.run_with_cache(tokens[0][None], names_filter=lambda n: n.endswith("hook_z"))
    z, z_ref = cap.get("z", 1, 0).float(), c["z", 1][0]
    assert (z - z_ref).abs().max() < Z_TOL[dtype]
    _check_half_eap(model, f32, dtype)


@pytest.mark.parametrize("label", ["gemma2", "olmo3", "llama", "gpt2"])
def test_ioi_direct_effects_of_a_layer_s_heads_sum_to_its_residual_write(label, loaded):
    """IOI role evidence: Σ over a layer's heads of the direct effect on logit(IO) − logit(S) = what the layer's
    attention adds to the residual (TL's hook_resid_mid − hook_resid_pre, after any post-norm) at the end
    position, through the final norm, onto W_U[IO] − W_U[S]. A plain z·W_O misses on gemma2 and olmo3."""
    from circuits.ioi import TaskData, ioi_head_evidence

    model = loaded(label)
    g = torch.Generator().manual_seed(5)
    clean = torch.randint(3, model.cfg.d_vocab, (4, 9), generator=g)
    clean[:, 5] = clean[:, 1]  # S at 1 and 5, IO at 3, end at 8
    pairs = PromptPairs.from_lists(list(clean), list(torch.randint(3, model.cfg.d_vocab, (4, 9), generator=g)),
                                   answer=clean[:, 3].tolist(), wrong=clean[:, 1].tolist())
    positions = [{"IO": 3, "S1": 1, "S2": 5, "end": 8}] * 4
    got = ioi_head_evidence(model, TaskData("toy", [""] * 4, [""] * 4, pairs, positions), n=4)["dla_logit_diff"]
    _, cache = model.run_with_cache(pairs.clean)
    direction = (model.W_U[:, pairs.answer] - model.W_U[:, pairs.wrong]).detach().double().T  # [B, d]
    w = model.ln_final.w.detach().double() if hasattr(model.ln_final, "w") else 1.0
    for layer in range(model.cfg.n_layers):
        write = (cache[f"blocks.{layer}.hook_resid_mid"] - cache[f"blocks.{layer}.hook_resid_pre"])[:, 8].double()
        write = write / cache["ln_final.hook_scale"][:, 8].double()
        if model.cfg.normalization_type in ("LN", "LNPre"):
            write = write - write.mean(-1, keepdim=True)
        ref = float(((write * w) * direction).sum(-1).mean())
        assert float(got[layer].sum()) == pytest.approx(ref, abs=1e-4 * max(1.0, abs(ref))), (label, layer)


@pytest.mark.parametrize("label", ["gemma2", "olmo3", "llama", "gpt2"])
def test_copy_score_ov_writes_are_what_the_blocks_compute_on_one_token(label, loaded):
    """Copy-score inputs: a head's OV write from embedding + MLP 0, against TransformerLens' own blocks on a
    one-token sequence (attention is then 1 on the token): block 0 with its attention output zeroed gives the
    input; block l with every other head's z zeroed, b_V and b_O removed, gives the head's residual write
    (hook_resid_mid − hook_resid_pre, after any post-norm)."""
    from circuits.ioi import ov_writes

    model = loaded(label)
    ids = torch.tensor([5, 11, 40])
    heads = [(0, 1), (1, 0), (1, model.cfg.n_heads - 1)]
    got = ov_writes(model, ids, heads)
    with torch.no_grad():
        store = {}

        def keep(name):
            def hook(act, hook):
                store[name] = act.detach()
            return hook

        zero_attn = ("blocks.0.hook_attn_out", lambda act, hook: torch.zeros_like(act))
        with model.hooks(fwd_hooks=[zero_attn, ("blocks.0.hook_resid_post", keep("x"))]):
            model.blocks[0](model.embed(ids[:, None]))
        x = store["x"]
        for l, h in heads:
            attn = model.blocks[l].attn
            b_v = attn.b_V[h].detach().clone()

            def only_h(z, hook, h=h, b_v=b_v):
                keep_h = torch.zeros_like(z)
                keep_h[:, :, h] = z[:, :, h] - b_v
                return keep_h

            saved = attn.b_O.detach().clone()
            attn.b_O.zero_()
            try:
                with model.hooks(fwd_hooks=[(f"blocks.{l}.attn.hook_z", only_h),
                                            (f"blocks.{l}.hook_resid_pre", keep("pre")),
                                            (f"blocks.{l}.hook_resid_mid", keep("mid"))]):
                    model.blocks[l](x)
            finally:
                attn.b_O.copy_(saved)
            ref = (store["mid"] - store["pre"])[:, 0]
            assert float(ref.abs().max()) > 1e-4
            torch.testing.assert_close(got[(l, h)], ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("label", ["gemma2", "olmo3", "llama", "gpt2"])
def test_direct_logit_attribution_of_a_layer_s_heads_sums_to_its_residual_write(label, loaded):
    """Σ over a layer's heads of DLA = the change of what the layer's attention adds to the residual
    (TL's hook_resid_mid − hook_resid_pre, after any post-norm), clean − corrupted, at the last
    position, through the clean run's final-norm scale onto W_U[answer] − W_U[wrong]."""
    from circuits.attribution import direct_logit_attribution

    model = loaded(label)
    pairs = _eap_pairs(model)
    got = direct_logit_attribution(model, pairs, ablation_values(model, pairs, "corrupt")).double()
    _, clean = model.run_with_cache(pairs.clean)
    _, bad = model.run_with_cache(pairs.corrupt)
    direction = (model.W_U[:, 5] - model.W_U[:, 7]).detach().double()
    w = model.ln_final.w.detach().double() if hasattr(model.ln_final, "w") else 1.0  # folded into W_U
    for layer in range(model.cfg.n_layers):
        write = lambda c: (c[f"blocks.{layer}.hook_resid_mid"] - c[f"blocks.{layer}.hook_resid_pre"])[:, -1].double()
        change = (write(clean) - write(bad)) / clean["ln_final.hook_scale"][:, -1].double()
        if model.cfg.normalization_type in ("LN", "LNPre"):
            change = change - change.mean(-1, keepdim=True)
        ref = float(((change * w) @ direction).mean())
        assert float(got[layer].sum()) == pytest.approx(ref, abs=1e-5 * max(1.0, abs(ref))), (label, layer)
