"""Tiny random-weight models for unit tests (no download, built in milliseconds)."""
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig


def tiny_gqa_model(seed: int = 0, n_layers: int = 3, n_heads: int = 4, n_kv: int = 2, d_vocab: int = 97) -> HookedTransformer:
    """A Llama-like model: rotary, RMS norm, gated MLP, grouped-query attention, random weights."""
    cfg = HookedTransformerConfig(
        d_model=32, d_head=8, n_layers=n_layers, n_heads=n_heads, n_key_value_heads=n_kv, d_mlp=64,
        n_ctx=128, d_vocab=d_vocab, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=8, gated_mlp=True, final_rms=True, seed=seed, model_name="tiny-gqa", device="cpu",
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
