"""The fused CPU kernels (interp_kernels/cpu_fused.c through interp_kernels/cpu_fused.py): how they are built and loaded,
what happens without a compiler, and the cases test_kernels_reference does not reach (several threads,
long rows over many key blocks, ties across blocks, very large scores), all against the dense float64
oracle. Tolerances as in test_kernels_reference."""
import ctypes
import os

import pytest
import torch

import interp_kernels
from interp_kernels import cpu_fused, dispatch
from test_kernels_dense import assert_stats_close, dense_attention, max_rel_err, random_qkv

# every test but the fallback's needs the kernel built (the fallback test runs where it cannot be)
needs_kernel = pytest.mark.skipif(not cpu_fused.available(),
                                  reason=f"the fused CPU kernel cannot be built here: {cpu_fused.unavailable_reason()}")


@pytest.fixture
def rebuild(monkeypatch):
    """Forget the loaded library (and why it was missing) before and after the test."""
    def reset():
        cpu_fused.library.cache_clear()
        cpu_fused._problem.clear()
    reset()
    yield monkeypatch
    monkeypatch.undo()
    reset()


@needs_kernel
def test_builds_into_an_empty_cache_with_the_system_compiler(rebuild, tmp_path):
    rebuild.setenv("INTERP_KERNEL_CACHE", str(tmp_path / "cache"))
    assert cpu_fused.available(), cpu_fused.unavailable_reason()
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".so"]  # no object file or temp folder left
    q, k, v = random_qkv(1, 4, 2, 50, 16, spread=2.0)
    out, stats = interp_kernels.attention_with_stats(q, k, v, window=9, sink_tokens=3, spans=[(5, 20)], backend="cpu")
    assert_stats_close(out, stats, dense_attention(q, k, v, window=9, sink_tokens=3, spans=[(5, 20)]),
                       out_tol=1e-4, stat_tol=1e-4)


@pytest.mark.parametrize("how,reason", [("no compiler", "no C compiler found"),
                                        ("failing compiler", "could not compile cpu_fused.c"),
                                        ("turned off", "INTERP_CPU_KERNEL=0")])
def test_without_the_kernel_auto_falls_back_and_cpu_says_why(rebuild, tmp_path, how, reason):
    rebuild.setenv("INTERP_KERNEL_CACHE", str(tmp_path))
    if how == "no compiler":
        rebuild.delenv("CC", raising=False)
        rebuild.setenv("PATH", str(tmp_path))
    elif how == "failing compiler":
        rebuild.setenv("CC", "false")
    else:
        rebuild.setenv("INTERP_CPU_KERNEL", "0")
    q, k, v = random_qkv(1, 2, 1, 20, 16)
    assert not cpu_fused.available()
    assert reason in cpu_fused.unavailable_reason()
    assert dispatch._resolve_backend("auto", q) == "torch"
    out, stats = interp_kernels.attention_with_stats(q, k, v)
    assert_stats_close(out, stats, dense_attention(q, k, v), out_tol=1e-4, stat_tol=1e-4)
    with pytest.raises(ValueError, match=reason):
        interp_kernels.attention_with_stats(q, k, v, backend="cpu")


@needs_kernel
def test_loading_keeps_subnormal_numbers():
    """-ffast-math at link time would set flush-to-zero for the whole process (crtfastmath.o)."""
    assert cpu_fused.library() is not None
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    assert float(tiny * 1.0) > 0.0
    assert float(ctypes.c_double(1e-310).value * 1.0) > 0.0


@needs_kernel
def test_backend_cpu_needs_cpu_tensors():
    q, k, v = random_qkv(1, 2, 1, 8, 16)
    with pytest.raises(ValueError, match="CPU tensors"):
        dispatch._check_cpu(q.to("meta"))


@needs_kernel
def test_threads_match_dense_and_are_reproducible():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        q, k, v = random_qkv(2, 6, 2, 300, 16, spread=2.0)
        run = lambda: cpu_fused.forward(q, k, v, causal=True, window=70, scale=0.25,  # noqa: E731
                                        mass_ranges=[(0, 4), (10, 160)], tile_elements=6 * 40 * 128, min_rows=8)
        out, stats = run()
        again, stats_again = run()
        assert torch.equal(out, again) and torch.equal(stats.entropy, stats_again.entropy)
        ref = dense_attention(q, k, v, window=70, sink_tokens=4, spans=[(10, 160)])
        assert_stats_close(out, stats, ref, out_tol=1e-4, stat_tol=1e-4)
        got = lambda: cpu_fused.received(q, k, stats.lse, causal=True, window=70, scale=0.25,  # noqa: E731
                                         tile_elements=6 * 40 * 128, min_rows=8)
        first, second = got(), got()
        assert all(torch.equal(a, b) for a, b in zip(first, second))
        assert max_rel_err(first[0], ref["received"]) < 1e-4 and max_rel_err(first[1], ref["alpha"]) < 1e-4
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


@needs_kernel
@pytest.mark.parametrize("causal,window", [(True, None), (True, 300), (False, None), (False, 200)])
def test_long_rows_over_many_key_blocks(causal, window):
    """900 keys in blocks of 128: the running max, Σ e, Σ e·x, masses and accumulator are rescaled
    whenever a later block holds a larger score."""
    q, k, v = random_qkv(1, 3, 1, 900, 16, spread=3.0)
    out, stats = cpu_fused.forward(q, k, v, causal=causal, window=window, scale=0.25,
                                   mass_ranges=[(0, 4), (100, 700), (899, 900)], tile_elements=3 * 40 * 128,
                                   min_rows=40)
    ref = dense_attention(q, k, v, causal=causal, window=window, sink_tokens=4, spans=[(100, 700), (899, 900)])
    assert_stats_close(out, stats, ref, out_tol=1e-4, stat_tol=1e-4)
    received, alpha = cpu_fused.received(q, k, stats.lse, causal=causal, window=window, scale=0.25,
                                         tile_elements=3 * 40 * 128, min_rows=40)
    assert max_rel_err(received, ref["received"]) < 1e-4 and max_rel_err(alpha, ref["alpha"]) < 1e-4


@needs_kernel
def test_ties_across_key_blocks_go_to_the_lowest_index():
    """All scores equal: every block ties with the running max, and the first key must win."""
    n = 600
    q = torch.zeros(1, 2, n, 16)
    k = torch.randn(1, 1, n, 16)
    _, stats = cpu_fused.forward(q, k, k, causal=True, window=None, scale=0.25, mass_ranges=[(0, 1)],
                                 tile_elements=2 * 8 * 128, min_rows=8)
    assert (stats.argmax == 0).all()
    expect = 1.0 / torch.arange(1, n + 1, dtype=torch.float32)
    torch.testing.assert_close(stats.max_prob[0, 0], expect)
    torch.testing.assert_close(stats.entropy[0, 1], torch.log(torch.arange(1, n + 1, dtype=torch.float32)))


@needs_kernel
def test_very_large_scores_keep_the_entropy_exact():
    """Scores in the hundreds: entropy = log z - Σ e·x / z adds two non-negative terms, so nearly
    hard rows keep an entropy near 0 instead of the difference of two large numbers."""
    q, k, v = random_qkv(1, 2, 1, 200, 32, spread=40.0)
    out, stats = cpu_fused.forward(q, k, v, causal=True, window=None, scale=32 ** -0.5, mass_ranges=[(0, 1)],
                                   tile_elements=2 * 16 * 128, min_rows=16)
    ref = dense_attention(q, k, v)
    assert float(ref["lse"].abs().max()) > 100
    assert_stats_close(out, stats, ref, out_tol=1e-4, stat_tol=1e-4)
    assert float((stats.entropy.double() - ref["entropy"]).abs().max()) < 1e-4


@needs_kernel
@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads Linux's /proc/cpuinfo")
def test_cache_key_names_the_cpu(rebuild, tmp_path):
    """-march=native code is only valid on the CPU that built it: a library built on one CPU is never
    loaded on another (the key includes /proc/cpuinfo's model and flags), and the same CPU reuses it."""
    identity = cpu_fused._cpu_identity()
    assert "flags" in identity or "Features" in identity
    rebuild.setenv("INTERP_KERNEL_CACHE", str(tmp_path))
    built = []
    for cpu in ("model name : cpu A\nflags : avx2", "model name : cpu B\nflags : avx2", "model name : cpu A\nflags : avx2"):
        cpu_fused.library.cache_clear()
        rebuild.setattr(cpu_fused, "_cpu_identity", lambda cpu=cpu: cpu)
        assert cpu_fused.available(), cpu_fused.unavailable_reason()
        built.append(sorted(p.name for p in tmp_path.iterdir()))
    assert len(built[0]) == 1 and len(built[1]) == 2 and built[2] == built[1]
