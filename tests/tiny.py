"""Tiny random-weight models for unit tests (no download, built in milliseconds)."""
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig


def tiny_gqa_model(seed: int = 0, n_layers: int = 3, n_heads: int = 4, n_kv: int = 2, d_vocab: int = 97,
                   dtype: torch.dtype = torch.float32) -> HookedTransformer:
    """A Llama-like model: rotary, RMS norm, gated MLP, grouped-query attention, random weights."""
    cfg = HookedTransformerConfig(
        d_model=32, d_head=8, n_layers=n_layers, n_heads=n_heads, n_key_value_heads=n_kv, d_mlp=64,
        n_ctx=128, d_vocab=d_vocab, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=8, gated_mlp=True, final_rms=True, seed=seed, model_name="tiny-gqa", device="cpu", dtype=dtype,
    )
    model = HookedTransformer(cfg)
    with torch.no_grad():  # larger than init scale so attention is far from uniform
        for block in model.blocks:
            block.attn.W_Q.mul_(8.0)
            block.attn._W_K.mul_(8.0)  # with GQA, W_K is a repeat_interleave copy of _W_K
    return model.eval()


def random_prompts(lengths, d_vocab: int = 97, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, d_vocab, (n,), generator=g) for n in lengths]


# ---------------------------------------------------------------------------------------------
# Tiny random-weight Hugging Face models, one per architecture, saved with save_pretrained.

TINY_VOCAB = 320
D, LAYERS, HEADS, CTX = 64, 2, 4, 128
ROPE_THRESHOLD = 24  # original_max_position_embeddings of the rope-scaled tiny configs (tokens)
WINDOW = 8           # sliding window of the local-attention tiny configs (tokens)


def tiny_tokenizer():
    """A byte-level BPE tokenizer (TINY_VOCAB entries, BOS prepended) trained on the bundled texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from interp.texts import sample_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=["<bos>", "<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sample_texts(20, seed=0), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def _common(**extra):
    return dict(vocab_size=TINY_VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=2, **extra)


def _llama_like(**extra):
    base = dict(hidden_size=D, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                num_key_value_heads=2, max_position_embeddings=CTX)
    return _common(**{**base, **extra})


def _llama3_rope():
    return {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": ROPE_THRESHOLD, "rope_theta": 500000.0}


def tiny_hf_configs() -> dict[str, tuple[str, dict]]:
    """Architecture label → (transformers config class name, its keyword arguments): 2 layers,
    d_model 64, a 320-token vocabulary; each exercises the feature its family is known for."""
    return {
        "gpt2": ("GPT2Config", _common(n_embd=D, n_layer=LAYERS, n_head=HEADS, n_positions=CTX)),  # learned positions
        "gpt-neo": ("GPTNeoConfig", _common(hidden_size=D, num_layers=LAYERS, num_heads=HEADS, max_position_embeddings=CTX,
                                           attention_types=[[["global", "local"], 1]], window_size=WINDOW)),
        "gpt-j": ("GPTJConfig", _common(n_embd=D, n_layer=LAYERS, n_head=HEADS, rotary_dim=8, n_positions=CTX)),  # parallel
        "gpt-neox": ("GPTNeoXConfig", _common(hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                              intermediate_size=128, rotary_pct=0.25, max_position_embeddings=CTX)),
        "opt": ("OPTConfig", _common(hidden_size=D, num_hidden_layers=LAYERS, ffn_dim=128, num_attention_heads=HEADS,
                                     max_position_embeddings=CTX, word_embed_proj_dim=D)),
        "llama": ("LlamaConfig", _llama_like()),  # GQA
        "llama3-rope": ("LlamaConfig", _llama_like(rope_parameters=_llama3_rope())),
        "mistral": ("MistralConfig", _llama_like(sliding_window=WINDOW)),  # sliding window on every layer
        "mixtral": ("MixtralConfig", _llama_like(num_local_experts=4, num_experts_per_tok=2, sliding_window=None)),
        "qwen2": ("Qwen2Config", _llama_like()),  # q/k/v biases
        "qwen2-yarn": ("Qwen2Config", _llama_like(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4,
                                                                   "original_max_position_embeddings": ROPE_THRESHOLD})),
        "qwen3": ("Qwen3Config", _llama_like(head_dim=16)),  # QK-norm
        "gemma": ("GemmaConfig", _llama_like(head_dim=16, num_key_value_heads=1)),  # MQA
        "gemma2": ("Gemma2Config", _llama_like(head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=16,
                                               attn_logit_softcapping=50.0, final_logit_softcapping=30.0)),
        "gemma3": ("Gemma3TextConfig", _llama_like(head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=16,
                                                   layer_types=["sliding_attention", "full_attention"])),
        "phi": ("PhiConfig", _common(hidden_size=D, intermediate_size=128, num_hidden_layers=LAYERS,
                                     num_attention_heads=HEADS, partial_rotary_factor=0.5, max_position_embeddings=CTX)),
        "phi3": ("Phi3Config", _llama_like(num_key_value_heads=HEADS)),
        "bloom": ("BloomConfig", _common(hidden_size=D, n_layer=LAYERS, n_head=HEADS)),  # ALiBi
        "olmo3": ("Olmo3Config", _llama_like(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"])),
        "olmoe": ("OlmoeConfig", _llama_like(num_experts=4, num_experts_per_tok=2)),  # MoE, QK-norm
        "apertus": ("ApertusConfig", _llama_like()),  # xIELU activation
        "gpt-oss": ("GptOssConfig", _llama_like(  # MoE, learned attention sinks, YaRN on every layer
            head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ROPE_THRESHOLD,
                             "rope_theta": 1e4, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False})),
    }


def save_tiny_hf(label: str, folder, *, seed: int = 0, **overrides):
    """Build the tiny model `label` with random weights (scaled up so attention is far from
    uniform), save it and the tiny tokenizer into `folder`; returns the model (float32, eager)."""
    import transformers

    cls_name, kwargs = tiny_hf_configs()[label]
    config = getattr(transformers, cls_name)(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("q_proj", "k_proj", "query_key_value", "c_attn", "q_attn", "qkv_proj")) \
                    and name.endswith("weight"):
                p.mul_(4.0)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return model.eval()
