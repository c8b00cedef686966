"""The CPU backends (the chunked PyTorch reference and the fused C block kernel, interp_kernels/cpu_fused)
against the dense float64 oracle, plus the public interface.

Tolerances (max |error| over max(1, max |expected|), per field): float32 inputs 1e-4 for
everything. fp16/bf16 inputs are compared with the oracle run on the same rounded inputs; the
backend computes in float32, so stats keep 1e-4 and only `out`, rounded to the input dtype,
is looser: 2e-3 (fp16), 1.6e-2 (bf16). argmax is compared where the top-2 probability gap
exceeds 1e-3.
"""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import interp_kernels
from interp_kernels import cpu_fused, dispatch, reference
from interp_kernels.masking import key_bounds, queries_per_key
from test_kernels_dense import assert_stats_close, dense_attention, dense_mask, max_rel_err, random_qkv

OUT_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

CASES = [  # (B, H, H_kv, N, d, causal, window, sink_tokens, spans)
    (2, 4, 4, 1, 16, True, None, 1, [(0, 1)]),
    (1, 3, 1, 17, 32, True, None, 4, [(2, 5), (10, 40)]),
    (2, 4, 1, 77, 16, True, 8, 1, [(0, 77), (30, 31)]),
    (1, 6, 2, 130, 64, True, 33, 4, []),
    (1, 4, 4, 77, 16, False, None, 1, [(5, 9)]),
    (2, 3, 1, 130, 16, False, 10, 4, [(0, 3), (64, 130), (7, 7)]),
]


# The fused kernel with its default tiles (one key block at these sizes) and with tiles small enough
# that every row spans several key blocks (the running max, Σ e and accumulator rescaled across them).
FORWARDS = {
    "reference": reference.forward,
    "fused": cpu_fused.forward,
    "fused-small-tiles": lambda *a, **kw: cpu_fused.forward(*a, tile_elements=1024, min_rows=4, **kw),
}
needs_cc = pytest.mark.skipif(not cpu_fused.available(),
                              reason=f"the fused CPU kernel cannot be built here: {cpu_fused.unavailable_reason()}")
PATHS = [pytest.param(name, marks=[needs_cc] if name != "reference" else []) for name in FORWARDS]
CPU_BACKENDS = ["torch", pytest.param("cpu", marks=needs_cc)]
RECEIVED = {
    "reference": reference.received,
    "fused": cpu_fused.received,
    "fused-small-tiles": lambda *a, **kw: cpu_fused.received(*a, tile_elements=1024, min_rows=4, **kw),
}


def _ids(case):
    b, h, hkv, n, d, causal, window, sink, spans = case
    return f"N{n}-d{d}-g{h // hkv}-{'causal' if causal else 'full'}-w{window}-s{sink}-{len(spans)}spans"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("chunk", [None, 7])
def test_forward_matches_dense(case, chunk, path):
    b, h, hkv, n, d, causal, window, sink, spans = case
    q, k, v = random_qkv(b, h, hkv, n, d, spread=2.0)
    ranges = [(0, min(sink, n))] + [(min(a, n), min(z, n)) for a, z in spans]
    out, stats = FORWARDS[path](q, k, v, causal=causal, window=window, scale=d ** -0.5,
                                mass_ranges=ranges, chunk_size=chunk)
    ref = dense_attention(q, k, v, causal=causal, window=window, sink_tokens=sink, spans=spans)
    assert_stats_close(out, stats, ref, out_tol=1e-4, stat_tol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype, backend):
    q, k, v = random_qkv(2, 6, 2, 45, 32, dtype=dtype, spread=2.0)
    out, stats = interp_kernels.attention_with_stats(q, k, v, window=20, sink_tokens=4, spans=[(3, 9)], backend=backend)
    assert out.dtype == dtype
    ref = dense_attention(q, k, v, window=20, sink_tokens=4, spans=[(3, 9)])
    assert_stats_close(out, stats, ref, out_tol=OUT_TOL[dtype], stat_tol=1e-4)


def test_public_api_defaults_and_scale():
    q, k, v = random_qkv(1, 4, 2, 23, 16)
    out, stats = interp_kernels.attention_with_stats(q, k, v)
    assert_stats_close(out, stats, dense_attention(q, k, v), out_tol=1e-4, stat_tol=1e-4)
    out, stats = interp_kernels.attention_with_stats(q, k, v, scale=0.9, causal=False)
    assert_stats_close(out, stats, dense_attention(q, k, v, scale=0.9, causal=False), out_tol=1e-4, stat_tol=1e-4)
    assert stats.span_mass.shape == (1, 4, 23, 0)


def test_spans_are_clipped_and_validated():
    q, k, v = random_qkv(1, 2, 1, 10, 16)
    _, stats = interp_kernels.attention_with_stats(q, k, v, sink_tokens=50, spans=[(0, 1000), (8, 100), (20, 30)])
    ones = torch.ones(1, 2, 10)
    torch.testing.assert_close(stats.sink_mass, ones)
    torch.testing.assert_close(stats.span_mass[..., 0], ones)
    assert (stats.span_mass[..., 2] == 0).all()
    for bad in ([(5, 2)], [(-1, 3)], [(1, 2, 3)], [3]):
        with pytest.raises(ValueError):
            interp_kernels.attention_with_stats(q, k, v, spans=bad)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_strided_inputs_from_bnhd_layout(backend):
    """Hook tensors arrive as [B, N, H, d]; permuted views must give the same answer."""
    q, k, v = random_qkv(2, 6, 3, 19, 16)
    qp, kp, vp = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not qp.is_contiguous()
    out_a, stats_a = interp_kernels.attention_with_stats(q, k, v, window=5, backend=backend)
    out_b, stats_b = interp_kernels.attention_with_stats(qp, kp, vp, window=5, backend=backend)
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(stats_a.entropy, stats_b.entropy)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float64_inputs_compute_in_float64(backend):
    q, k, v = random_qkv(1, 2, 1, 33, 16, dtype=torch.float64, spread=3.0)
    out, stats = interp_kernels.attention_with_stats(q, k, v, backend=backend)
    ref = dense_attention(q, k, v)
    assert out.dtype == torch.float64 and stats.lse.dtype == torch.float32
    assert max_rel_err(out, ref["out"]) < 1e-12


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_argmax_ties_go_to_lowest_index(backend):
    q = torch.zeros(1, 1, 6, 16)
    k = torch.randn(1, 1, 6, 16)
    _, stats = interp_kernels.attention_with_stats(q, k, k, causal=True, backend=backend)
    assert stats.argmax.tolist() == [[[0] * 6]]
    torch.testing.assert_close(stats.max_prob[0, 0], 1.0 / torch.arange(1, 7, dtype=torch.float32))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("causal,window", [(True, None), (True, 6), (False, None), (False, 5)])
@pytest.mark.parametrize("chunk", [None, 9])
def test_received_matches_dense(causal, window, chunk, path):
    q, k, v = random_qkv(2, 6, 2, 41, 16, spread=2.0)
    _, stats = interp_kernels.attention_with_stats(q, k, v, causal=causal, window=window)
    received, alpha = RECEIVED[path](q, k, stats.lse, causal=causal, window=window, scale=0.25, chunk_size=chunk)
    ref = dense_attention(q, k, v, causal=causal, window=window)
    assert received.dtype == alpha.dtype == torch.float32
    assert max_rel_err(received, ref["received"]) < 1e-4
    assert max_rel_err(alpha, ref["alpha"]) < 1e-4


def test_received_public_api_and_sink_alpha():
    q, k, v = random_qkv(1, 9, 3, 64, 16, spread=2.0)
    _, stats = interp_kernels.attention_with_stats(q, k, v)
    received, alpha = interp_kernels.attention_received(q, k, stats.lse)
    ref = dense_attention(q, k, v)
    assert max_rel_err(alpha, ref["alpha"]) < 1e-4
    torch.testing.assert_close(received.sum(-1), torch.full((1, 9), 64.0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(alpha[..., 0], received[..., 0] / 64)


@pytest.mark.parametrize("path", PATHS)
def test_received_ignores_rows_with_lse_minus_inf(path):
    q, k, v = random_qkv(1, 2, 1, 40, 16)
    ref = dense_attention(q, k, v, causal=False)
    lse = ref["lse"].float().clone()
    lse[:, :, [3, 20, 39]] = float("-inf")
    received, _ = RECEIVED[path](q, k, lse, causal=False, window=None, scale=0.25, chunk_size=16)
    p = torch.softmax(q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2) * 0.25, -1)
    p[:, :, [3, 20, 39]] = 0
    assert max_rel_err(received, p.sum(-2)) < 1e-4


def test_queries_per_key_counts_the_mask():
    cases = [(1, True, None), (13, True, None), (13, True, 4), (13, False, None), (13, False, 4), (5, False, 9)]
    for n, causal, window in cases:
        expect = dense_mask(n, causal, window).sum(0).float()
        assert torch.equal(queries_per_key(n, causal, window), expect)


@pytest.mark.parametrize("path", PATHS)
def test_rows_that_see_no_key_are_defined(path):
    """Not reachable through the API (window >= 1); the backend's window=0 reaches it."""
    q, k, v = random_qkv(1, 2, 1, 12, 16)
    out, stats = FORWARDS[path](q, k, v, causal=True, window=0, scale=0.25, mass_ranges=[(0, 1), (2, 5)])
    assert (out == 0).all()
    assert torch.isneginf(stats.lse).all()
    assert (stats.entropy == 0).all() and (stats.max_prob == 0).all() and (stats.argmax == -1).all()
    assert (stats.sink_mass == 0).all() and (stats.span_mass == 0).all()
    received, alpha = RECEIVED[path](q, k, stats.lse, causal=True, window=0, scale=0.25)
    assert (received == 0).all() and (alpha == 0).all()


class _LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return result


@pytest.mark.parametrize("backend,budget", [("torch", reference.DEFAULT_TILE_ELEMENTS),
                                            pytest.param("cpu", cpu_fused.TILE_ELEMENTS, marks=needs_cc)])
def test_cpu_backends_never_build_an_n_by_n_tile(backend, budget):
    n = 4096
    q, k, v = random_qkv(1, 1, 1, n, 16)
    watch = _LargestTensor()
    with watch:
        _, stats = interp_kernels.attention_with_stats(q, k, v, backend=backend)
        interp_kernels.attention_received(q, k, stats.lse, backend=backend)
    assert budget * 4 <= n * n
    assert watch.largest <= max(budget, reference.DEFAULT_TILE_ELEMENTS)


def _tile(heads, n, c0, rows, causal, window):
    lo, hi = key_bounds(c0, c0 + rows, n, causal, window)
    return heads * rows * (hi - lo)


@pytest.mark.parametrize("causal, window", [(True, None), (True, 50), (False, None), (False, 50)])
def test_chunks_fill_the_tile_budget_and_cover_every_row(causal, window):
    """Each chunk is the largest that keeps heads × rows × keys seen within the budget (checked by
    counting the keys each row sees), the chunks cover every row once, and `chunks` is that split."""
    n, heads, budget = 1000, 3, 30_000
    c0, sizes = 0, []
    while c0 < n:
        rows = reference.chunk_rows(heads, n, c0, causal, window, tile_elements=budget)
        assert _tile(heads, n, c0, rows, causal, window) <= budget
        assert c0 + rows == n or _tile(heads, n, c0, rows + 1, causal, window) > budget
        sizes.append(rows)
        c0 += rows
    assert c0 == n
    assert sizes == [c1 - c0 for c0, c1 in reference.chunks(heads, n, causal, window, tile_elements=budget)]


def test_causal_chunks_take_more_rows_where_queries_see_few_keys():
    sizes = [c1 - c0 for c0, c1 in reference.chunks(3, 1000, True, None, tile_elements=30_000)]
    assert sizes[0] == 100 and sizes[-2] == 10  # 100 × 100 keys, then 10 × ~1000 keys per head


def test_row_max_matches_max_with_ties_to_the_lowest_index():
    g = torch.Generator().manual_seed(0)
    for k in (5, 128, 300, 1000):
        s = torch.randint(0, 6, (3, 7, k), generator=g).float()  # many ties
        s[0, 0] = -math.inf
        m, arg = reference.row_max(s)
        expect_m, expect_arg = s.max(-1)
        assert torch.equal(m, expect_m) and torch.equal(arg, expect_arg)


def test_validation_errors(monkeypatch):
    q, k, v = random_qkv(1, 4, 3, 8, 16)
    with pytest.raises(ValueError, match="multiple"):
        interp_kernels.attention_with_stats(q, k, k)
    q, k, v = random_qkv(1, 4, 2, 8, 16)
    for kwargs in ({"window": 0}, {"window": 2.5}, {"sink_tokens": -1}, {"backend": "cuda"}):
        with pytest.raises(ValueError):
            interp_kernels.attention_with_stats(q, k, v, **kwargs)
    with pytest.raises(ValueError):
        interp_kernels.attention_with_stats(q, k[:, :, :5], v)
    with pytest.raises(ValueError):
        interp_kernels.attention_received(q, k, torch.zeros(1, 4, 7))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        interp_kernels.attention_with_stats(q, k, v, backend="triton")


@needs_cc
def test_auto_uses_the_fused_kernel_on_cpu():
    q, k, v = random_qkv(1, 2, 1, 9, 16)
    assert dispatch._resolve_backend("auto", q) == "cpu"
    out_auto, _ = interp_kernels.attention_with_stats(q, k, v, backend="auto")
    out_cpu, _ = interp_kernels.attention_with_stats(q, k, v, backend="cpu")
    assert torch.equal(out_auto, out_cpu)


def test_stats_container():
    q, k, v = random_qkv(1, 2, 1, 9, 16)
    _, stats = interp_kernels.attention_with_stats(q, k, v, spans=[(0, 2)])
    assert interp_kernels.AttentionStats.names() == ("lse", "entropy", "max_prob", "argmax", "sink_mass", "span_mass")
    exported = stats.to_dict()
    assert set(exported) == set(stats.names()) and exported["lse"] is stats.lse
    moved = stats.to("cpu")
    assert isinstance(moved, interp_kernels.AttentionStats) and torch.equal(moved.argmax, stats.argmax)
    assert math.isclose(float(stats.cpu().sink_mass[0, 0, 0]), 1.0)


def test_inference_only_outputs_carry_no_grad():
    q, k, v = (x.requires_grad_() for x in random_qkv(1, 2, 1, 9, 16))
    out, stats = interp_kernels.attention_with_stats(q, k, v)
    received, alpha = interp_kernels.attention_received(q, k, stats.lse)
    assert not any(t.requires_grad for t in (out, stats.lse, received, alpha))


def test_chunks_spread_over_threads_match_dense_and_are_reproducible():
    """With several torch threads the CPU chunks run on that many Python threads (run_chunks)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        q, k, v = random_qkv(2, 6, 2, 90, 16, spread=2.0)
        assert reference.workers("cpu", 10) == 2
        out, stats = reference.forward(q, k, v, causal=True, window=40, scale=0.25, mass_ranges=[(0, 4), (10, 60)],
                                       chunk_size=7)
        ref = dense_attention(q, k, v, window=40, sink_tokens=4, spans=[(10, 60)])
        assert_stats_close(out, stats, ref, out_tol=1e-4, stat_tol=1e-4)
        first = reference.received(q, k, stats.lse, causal=True, window=40, scale=0.25, chunk_size=7)
        second = reference.received(q, k, stats.lse, causal=True, window=40, scale=0.25, chunk_size=7)
        assert all(torch.equal(a, b) for a, b in zip(first, second))
        assert max_rel_err(first[0], ref["received"]) < 1e-4
        assert torch.get_num_threads() == 2  # restored after the worker threads ran single-threaded
    finally:
        torch.set_num_threads(saved)


def test_key_blocks_merge_to_the_dense_result(monkeypatch):
    """Long rows come in key blocks merged by log-sum-exp weights (entropy by the chain rule)."""
    monkeypatch.setattr(reference, "DEFAULT_TILE_ELEMENTS", 3 * 40 * 256)  # key blocks of 256 at 40 rows
    monkeypatch.setattr(reference, "MIN_ROWS", 40)
    q, k, v = random_qkv(1, 3, 1, 900, 16, spread=3.0)
    for causal, window in [(True, None), (True, 300), (False, None), (False, 200)]:
        out, stats = reference.forward(q, k, v, causal=causal, window=window, scale=0.25,
                                       mass_ranges=[(0, 4), (100, 700), (899, 900)])
        ref = dense_attention(q, k, v, causal=causal, window=window, sink_tokens=4, spans=[(100, 700), (899, 900)])
        assert_stats_close(out, stats, ref, out_tol=1e-4, stat_tol=1e-4)
