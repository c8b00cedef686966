"""Dense float64 attention written straight from the definitions: the oracle for the kernel
tests (imported by test_kernels_reference / test_kernels_triton), plus checks of the oracle
itself. Independent of interp_kernels/: it materialises the full N×N pattern."""
import math

import pytest
import torch
import torch.nn.functional as F


def dense_mask(n: int, causal: bool, window) -> torch.Tensor:
    """[n, n] bool, True where query i sees key j."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    mask = torch.ones(n, n, dtype=torch.bool)
    if causal:
        mask &= j <= i
    if window is not None:
        mask &= (i - j < window) if causal else ((i - j).abs() < window)
    return mask


def dense_attention(q, k, v, *, causal=True, window=None, scale=None, sink_tokens=1, spans=()):
    """Everything the kernels compute, from the materialised float64 pattern.

    Returns a dict of float64 tensors (argmax int64): out, lse, entropy, max_prob, argmax,
    sink_mass, span_mass, received, alpha, and gap (top-1 minus top-2 probability, inf for a
    row with one visible key) for judging argmax ties.
    """
    q, k, v = (x.double() for x in (q, k, v))
    b, h, n, d = q.shape
    group = h // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    mask = dense_mask(n, causal, window)
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~mask, -math.inf)
    p = torch.softmax(scores, dim=-1)
    top = p.topk(min(2, n), dim=-1).values
    gap = top[..., 0] - top[..., 1] if n > 1 else torch.full_like(top[..., 0], math.inf)
    gap = torch.where(mask.sum(-1) == 1, math.inf, gap)
    masses = [p[..., a:z].sum(-1) for a, z in spans]
    received = p.sum(dim=-2)
    return {
        "out": p @ v,
        "lse": torch.logsumexp(scores, dim=-1),
        "entropy": -torch.special.xlogy(p, p).sum(-1),
        "max_prob": p.max(-1).values,
        "argmax": p.argmax(-1),
        "sink_mass": p[..., :sink_tokens].sum(-1),
        "span_mass": torch.stack(masses, -1) if masses else p.new_zeros(b, h, n, 0),
        "received": received,
        "alpha": received / mask.sum(0).double(),
        "gap": gap,
    }


def max_rel_err(actual, expected) -> float:
    """Largest absolute difference over the larger of 1 and the largest |expected|."""
    actual, expected = actual.double(), expected.double()
    if expected.numel() == 0:
        return 0.0
    return float((actual - expected).abs().max() / max(1.0, float(expected.abs().max())))


def assert_stats_close(out, stats, ref, *, out_tol, stat_tol, gap_min=1e-3):
    """Compare a backend's (out, stats) with dense_attention's dict."""
    assert max_rel_err(out, ref["out"]) < out_tol, "out"
    for name in ("lse", "entropy", "max_prob", "sink_mass", "span_mass"):
        value = getattr(stats, name)
        assert value.dtype == torch.float32, name
        assert value.shape == ref[name].shape, name
        assert max_rel_err(value, ref[name]) < stat_tol, name
    assert stats.argmax.dtype == torch.int64
    clear = ref["gap"] > gap_min
    assert torch.equal(stats.argmax[clear], ref["argmax"][clear]), "argmax"


def random_qkv(b, h, hkv, n, d, dtype=torch.float32, seed=0, spread=1.0):
    """Random q, k, v ([B, H, N, d], [B, H_kv, N, d] ×2); spread scales q to sharpen patterns."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, h, n, d, generator=g) * spread).to(dtype)
    k = torch.randn(b, hkv, n, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, n, d, generator=g).to(dtype)
    return q, k, v


@pytest.mark.parametrize("causal,window", [(True, None), (True, 3), (False, None), (False, 4)])
def test_dense_oracle_is_a_distribution(causal, window):
    q, k, v = random_qkv(1, 4, 2, 9, 8)
    ref = dense_attention(q, k, v, causal=causal, window=window, spans=[(0, 9)])
    torch.testing.assert_close(ref["span_mass"][..., 0], torch.ones(1, 4, 9, dtype=torch.float64))
    assert torch.allclose(ref["received"].sum(-1), torch.full((1, 4), 9.0, dtype=torch.float64))
    assert (ref["entropy"] >= 0).all() and (ref["max_prob"] <= 1).all()


def test_dense_oracle_matches_sdpa():
    q, k, v = random_qkv(2, 6, 2, 11, 8)
    ref = dense_attention(q, k, v, causal=True)
    expect = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(3, 1),
                                            v.double().repeat_interleave(3, 1), is_causal=True)
    torch.testing.assert_close(ref["out"], expect)


def test_dense_oracle_uniform_row():
    q = torch.zeros(1, 1, 5, 4)
    k = torch.randn(1, 1, 5, 4)
    ref = dense_attention(q, k, k, causal=True)
    torch.testing.assert_close(ref["entropy"][0, 0], torch.log(torch.arange(1, 6, dtype=torch.float64)))
    harmonic = sum(1 / i for i in range(1, 6))
    torch.testing.assert_close(ref["alpha"][0, 0, 0], torch.tensor(harmonic / 5, dtype=torch.float64))
