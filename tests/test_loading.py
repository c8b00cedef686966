"""load_model: parity with HF transformers' eager model, the cache, no network, tokenizer, bad input."""
import json

import pytest
import torch

import interp
import interp.loading
from conftest import NetworkCalled, no_network
from interp import InputError
from interp.model_source import resolve

PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The Eiffel Tower is located in the city of",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
]


def _max_logprob_gap(model, hf, tok, text):
    ids = tok(text, return_tensors="pt").input_ids
    assert torch.equal(model.to_tokens(text)[0], ids[0]), "to_tokens must tokenise as the model file says"
    with torch.no_grad():
        ours = model(ids).log_softmax(-1)
        ref = hf(ids).logits.float().log_softmax(-1)
    return (ours - ref).abs().max().item()


@pytest.fixture(scope="module")
def smollm2_hf(cache_dir):
    return interp.load_hf_model("smollm2-135m", cache_dir=cache_dir)


def test_smollm2_logprobs_match_hf_eager(smollm2, smollm2_hf, real_texts):
    hf, tok = smollm2_hf
    assert hf.config._attn_implementation == "eager"
    for text in PROMPTS + real_texts[:2]:
        assert _max_logprob_gap(smollm2, hf, tok, text) < 1e-3, text


def test_gemma3_logprobs_match_hf_eager_across_sliding_window(gemma3, cache_dir):
    hf, tok = interp.load_hf_model("gemma3-270m", cache_dir=cache_dir)
    long_text = " ".join(interp.texts.sample_texts(14, seed=3))  # > 600 tokens: local layers must slide
    assert tok(long_text, return_tensors="pt").input_ids.shape[1] > 600
    for text in PROMPTS[:2] + [long_text]:
        assert _max_logprob_gap(gemma3, hf, tok, text) < 1e-3
    assert gemma3.cfg.n_ctx == 32768 and gemma3.cfg.window_size == 512
    assert gemma3.cfg.attn_types.count("global") == 3


def test_models_solve_ioi_prompt(smollm2, gemma3):
    for model in (smollm2, gemma3):
        logits = model(PROMPTS[0])[0, -1]
        assert model.to_single_token(" Mary") == logits.argmax().item()


def test_second_load_reads_cache_without_transformers(smollm2, cache_dir, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("a cached load must not build the transformers model")

    monkeypatch.setattr(interp.loading, "_load_hf", forbidden)
    with no_network():
        again = interp.load_model("smollm2-135m", device="cpu", cache_dir=cache_dir)
    for (name, a), (_, b) in zip(smollm2.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), name
    assert again.cfg.model_name == "smollm2-135m" and again.source["kind"] == "gguf"


def test_no_network_guard_really_refuses():
    import socket

    with no_network(), pytest.raises(NetworkCalled):
        socket.create_connection(("127.0.0.1", 9))


def test_tokenizer_round_trips_and_bos_follows_model_file(smollm2, gemma3, real_texts):
    for model in (smollm2, gemma3):
        for text in real_texts + ["naïve café — 東京 🙂 tabs\tand\nnewlines"]:
            tokens = model.to_tokens(text, prepend_bos=False)[0]
            assert model.tokenizer.decode(tokens) == text
    assert smollm2.cfg.default_prepend_bos is False  # GGUF: tokenizer.ggml.add_bos_token = false
    assert gemma3.cfg.default_prepend_bos is True and gemma3.to_tokens("Hi")[0, 0] == gemma3.tokenizer.bos_token_id
    chat = smollm2.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nHi<|im_end|>" in chat


def test_user_model_is_returned_as_is():
    from tiny import tiny_gqa_model

    model = tiny_gqa_model()
    assert interp.load_model(model, device="cpu") is model


def test_local_hf_directory_loads_with_parity(tmp_path, smollm2_hf):
    """A tiny random Llama saved as an HF directory (with SmolLM2's tokenizer) converts exactly."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = smollm2_hf
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny-llama")
    tok.save_pretrained(tmp_path / "tiny-llama")
    with no_network():
        model = interp.load_model(tmp_path / "tiny-llama", device="cpu", cache_dir=tmp_path / "cache")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "tiny-llama", attn_implementation="eager").eval()
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        gap = (model(ids).log_softmax(-1) - hf(ids).logits.log_softmax(-1)).abs().max().item()
    assert gap < 1e-4 and model.cfg.n_key_value_heads == 2


def test_unknown_name_lists_available_models(cache_dir):
    with pytest.raises(InputError, match="unknown model 'gpt-17'; available: smollm2-135m, gemma3-270m"):
        interp.load_model("gpt-17", cache_dir=cache_dir)


def test_missing_truncated_and_foreign_files_are_named(tmp_path, cache_dir):
    with pytest.raises(InputError, match="does not exist"):
        interp.load_model(tmp_path / "absent.gguf", cache_dir=cache_dir)
    source = resolve("smollm2-135m", cache_dir).location
    cut = tmp_path / "cut.gguf"
    with open(source, "rb") as f:
        cut.write_bytes(f.read(5_000_000))
    with pytest.raises(InputError, match=f"{cut} is truncated"):
        interp.load_model(cut, cache_dir=cache_dir)
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(InputError, match="not a GGUF file"):
        interp.load_model(text, cache_dir=cache_dir)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="without config.json"):
        interp.load_model(tmp_path / "empty_dir", cache_dir=cache_dir)


def test_unsupported_architecture_is_named(tmp_path, cache_dir):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["WeirdNetForCausalLM"], "model_type": "weirdnet"}))
    with pytest.raises(InputError, match="unsupported architecture"):
        interp.load_model(folder, cache_dir=tmp_path / "c")


def test_hub_id_while_offline_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="hub id someone/some-model needs the network"):
        interp.load_model("someone/some-model", cache_dir=tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr("socket.create_connection", unreachable)
    with pytest.raises(InputError, match="unreachable"):
        interp.load_model("someone/some-model", cache_dir=tmp_path)


def _entry_of(source, cache_dir):
    """The cache entry folder of a model, named exactly (a glob would also match its .lock)."""
    return cache_dir / "models" / f"{resolve(str(source), cache_dir).cache_key}-v{interp.loading.CONVERTER_VERSION}"


@pytest.mark.parametrize("damage", ["interrupted", "truncated_weights", "broken_config"])
def test_corrupt_cache_entry_is_rebuilt_not_trusted(tmp_path, damage):
    """A damaged entry (an interrupted conversion without its 'done' marker, or a complete-looking one
    whose weights or config cannot be read) is converted again from the source, never read: the
    reloaded model computes what the transformers model computes."""
    from tests.tiny import save_tiny_hf

    hf = save_tiny_hf("llama", tmp_path / "tiny")
    root = tmp_path / "cache"
    interp.load_model(tmp_path / "tiny", device="cpu", cache_dir=root)
    entry = _entry_of(tmp_path / "tiny", root)
    assert interp.loading._is_complete(entry)
    if damage == "interrupted":
        (entry / "done").unlink()
        (entry / "model.safetensors").write_bytes(b"")
    elif damage == "truncated_weights":
        weights = entry / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (entry / "config.json").write_text("{not json")
    model = interp.load_model(tmp_path / "tiny", device="cpu", cache_dir=root)
    assert interp.loading._is_complete(entry)
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad():
        gap = (model(ids).log_softmax(-1) - hf(ids).logits.log_softmax(-1)).abs().max().item()
    assert gap < 1e-4
