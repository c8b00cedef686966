"""Fast trace: the model under fused-kernel attention against TransformerLens' eager path."""
import pytest
import torch

from interp.kernel_attention import extend_context, kernel_attention
from interp.stats_trace import stats_trace
from tiny import random_prompts, tiny_gqa_model


def _alpha_from_pattern(pattern: torch.Tensor) -> torch.Tensor:
    """α_j = Σ_{i≥j} A[i, j] / (number of queries that see j), from a full pattern [head, q, k] (causal)."""
    n = pattern.shape[-1]
    seen_by = pattern.new_tensor([n - j for j in range(n)], dtype=torch.float64)
    return pattern.double().sum(-2) / seen_by


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_tiny_model_outputs_hooks_and_stats_match_eager(backend):
    model = tiny_gqa_model(n_heads=4, n_kv=2)
    if backend == "triton":  # Triton needs a power-of-two head dim ≥ 16: rebuild with d_head 16
        from transformer_lens import HookedTransformer

        cfg = model.cfg.to_dict() | {"d_head": 16, "rotary_dim": 16, "d_model": 64}
        model = HookedTransformer(type(model.cfg)(**{k: v for k, v in cfg.items() if k in type(model.cfg).__dataclass_fields__ and k not in ("n_params",)})).eval()
    tokens = random_prompts([23])[0]
    eager_logits, cache = model.run_with_cache(tokens[None])
    seen = []
    with torch.no_grad(), kernel_attention(model, received=True, backend=backend) as trace:
        fast_logits = model.run_with_hooks(tokens[None], fwd_hooks=[
            (lambda name: name.endswith(("hook_z", "hook_pattern")), lambda act, hook: seen.append(hook.name))])
    torch.testing.assert_close(fast_logits, eager_logits, rtol=1e-4, atol=1e-4)
    assert not any(name.endswith("hook_pattern") for name in seen), "no pattern may exist in the fast path"
    assert sum(name.endswith("hook_z") for name in seen) == model.cfg.n_layers
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer][0].double()  # [head, q, k]
        stats = trace.layers[layer].stats
        torch.testing.assert_close(stats.entropy[0].double(), -(torch.special.xlogy(pattern, pattern)).sum(-1), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stats.max_prob[0].double(), pattern.amax(-1), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(stats.sink_mass[0].double(), pattern[..., 0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(trace.layers[layer].alpha[0].double(), _alpha_from_pattern(pattern), rtol=1e-4, atol=1e-6)


def test_real_models_match_eager_through_kernels(smollm2, gemma3):
    from interp.texts import sample_texts

    long_text = " ".join(sample_texts(14, seed=3))  # > 512 tokens for Gemma's sliding-window layers
    for model, text in ((smollm2, sample_texts(1, seed=5)[0]), (gemma3, long_text)):
        tokens = model.to_tokens(text)
        with torch.no_grad():
            eager = model(tokens).log_softmax(-1)
            with kernel_attention(model):
                fast = model(tokens).log_softmax(-1)
        assert (eager - fast).abs().max().item() < 1e-3, model.cfg.model_name


def test_stats_trace_head_table_matches_pattern_statistics(smollm2, real_texts):
    """The kernel trace's table and per-prompt statistics against TransformerLens' own eager pattern."""
    texts = real_texts[:2]
    trace = stats_trace(smollm2, texts, received=True, progress=False)
    table = trace.table.df.set_index("label")
    patterns = []  # per prompt: {layer: [head, q, k]}
    for text in texts:
        _, cache = smollm2.run_with_cache(text, names_filter=lambda n: n.endswith("hook_pattern"))
        patterns.append({layer: cache["pattern", layer][0].double() for layer in (0, 7, 29)})
    for layer in (0, 7, 29):
        alpha = [_alpha_from_pattern(p[layer]) for p in patterns]  # [head, key] per prompt
        alpha0 = torch.stack([a[:, 0] for a in alpha])  # [prompt, head]
        for head in range(9):
            label = f"L{layer}H{head}"
            assert table.loc[label, "alpha_first"] == pytest.approx(alpha0[:, head].mean().item(), abs=1e-5)
            assert table.loc[label, "sink_rate"] == (alpha0[:, head] > 0.3).float().mean().item()
        for i, p in enumerate(patterns):
            one = trace.per_prompt[i]
            torch.testing.assert_close(one["alpha"][layer].double(), alpha[i], rtol=1e-4, atol=1e-6)
            entropy = -torch.special.xlogy(p[layer], p[layer]).sum(-1)  # [head, q]
            torch.testing.assert_close(one["entropy"][layer].double(), entropy, rtol=1e-4, atol=1e-5)


def test_extended_context_runs_past_trained_length_and_keeps_early_positions():
    """In float64, so the comparison is of semantics: the tiny model's ×8 queries make attention nearly
    hard, and float32 rounding alone moves its logits by ~5e-4 (TL's own eager float32 vs float64)."""
    model = tiny_gqa_model(dtype=torch.float64)  # n_ctx 128
    tokens = random_prompts([200])[0][None]
    before = model(tokens[:, :100])
    with pytest.warns(UserWarning, match="context raised from 128 to 256"):
        extend_context(model, 256)
    with torch.no_grad():
        eager = model(tokens)
        with kernel_attention(model):
            fast = model(tokens)
    torch.testing.assert_close(fast, eager, rtol=0, atol=1e-9)
    torch.testing.assert_close(eager[:, :100], before, rtol=0, atol=1e-9)
