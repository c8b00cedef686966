"""The Triton kernels against the dense float64 oracle.

Without a GPU they run under TRITON_INTERPRET=1 (set by tests/conftest.py, and below when this
file runs on its own) at small shapes with 16×16 blocks, so short sequences still cross several
blocks, ragged edges and all three loop segments. Tolerances as in test_kernels_reference:
float32 1e-4; fp16/bf16 `out` 2e-3 / 1.6e-2 (p is rounded to the input dtype for the p·v dot,
as in FlashAttention) and stats 2e-3, masses 2e-4 on CUDA (their dot is IEEE float32, not tf32).
CUDA-only tests are marked `cuda`; the ahead-of-time compile test needs the ptxas in the
triton wheel, not a GPU.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

import interp_kernels  # noqa: E402
from interp_kernels import triton_forward, triton_received  # noqa: E402
from test_kernels_dense import assert_stats_close, dense_attention, max_rel_err, random_qkv  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OUT_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
STAT_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-3}
REPO = Path(__file__).resolve().parents[1]

CASES = [  # (B, H, H_kv, N, d, causal, window, sink_tokens, spans)
    (2, 2, 2, 1, 16, True, None, 1, [(0, 1)]),
    (1, 3, 1, 17, 16, True, None, 4, [(2, 5)]),
    (1, 4, 1, 77, 16, True, 20, 1, [(0, 77), (30, 31)]),
    (1, 2, 2, 130, 16, True, 33, 4, []),
    (1, 2, 1, 77, 32, False, None, 1, [(5, 9)]),
    (1, 3, 1, 61, 16, False, 10, 4, [(0, 3), (40, 61)]),
]


def _ids(case):
    b, h, hkv, n, d, causal, window, sink, spans = case
    return f"N{n}-d{d}-g{h // hkv}-{'causal' if causal else 'full'}-w{window}-s{sink}-{len(spans)}spans"


def _run(q, k, v, *, causal=True, window=None, sink=1, spans=(), block=None):
    ranges = [(0, min(sink, q.shape[2]))] + [(min(a, q.shape[2]), min(z, q.shape[2])) for a, z in spans]
    q, k, v = (x.to(DEVICE) for x in (q, k, v))
    out, stats = triton_forward.forward(q, k, v, causal=causal, window=window, scale=q.shape[-1] ** -0.5,
                                        mass_ranges=ranges, block=block)
    return out.cpu(), stats.cpu()


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_forward_matches_dense(case):
    b, h, hkv, n, d, causal, window, sink, spans = case
    q, k, v = random_qkv(b, h, hkv, n, d, spread=2.0)
    out, stats = _run(q, k, v, causal=causal, window=window, sink=sink, spans=spans)
    ref = dense_attention(q, k, v, causal=causal, window=window, sink_tokens=sink, spans=spans)
    assert_stats_close(out, stats, ref, out_tol=1e-4, stat_tol=1e-4)


@pytest.mark.parametrize("d,n", [(64, 40), (128, 33), (256, 20)])
def test_head_dims(d, n):
    q, k, v = random_qkv(1, 2, 1, n, d, spread=2.0)
    out, stats = _run(q, k, v, window=11, sink=4, spans=[(1, 6)])
    ref = dense_attention(q, k, v, window=11, sink_tokens=4, spans=[(1, 6)])
    assert_stats_close(out, stats, ref, out_tol=1e-4, stat_tol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    q, k, v = random_qkv(1, 4, 2, 50, 32, dtype=dtype, spread=2.0)
    out, stats = _run(q, k, v, window=19, sink=4, spans=[(3, 9)])
    assert out.dtype == dtype
    ref = dense_attention(q, k, v, window=19, sink_tokens=4, spans=[(3, 9)])
    assert_stats_close(out, stats, ref, out_tol=OUT_TOL[dtype], stat_tol=STAT_TOL[dtype])


@pytest.mark.parametrize("block", [(32, 16, 1, 1), (16, 32, 1, 1)])
@pytest.mark.parametrize("causal,window", [(True, 21), (False, 13)])
def test_unequal_blocks(block, causal, window):
    q, k, v = random_qkv(1, 2, 1, 70, 16, spread=2.0)
    out, stats = _run(q, k, v, causal=causal, window=window, spans=[(10, 50)], block=block)
    ref = dense_attention(q, k, v, causal=causal, window=window, spans=[(10, 50)])
    assert_stats_close(out, stats, ref, out_tol=1e-4, stat_tol=1e-4)


@pytest.mark.parametrize("window", [15, 16, 17, 31])
@pytest.mark.parametrize("causal", [True, False])
def test_windows_at_block_edges(causal, window):
    """Windows one off a multiple of the 16-wide blocks move the mask-free segment's bounds."""
    q, k, v = random_qkv(1, 1, 1, 64, 16, spread=2.0)
    out, stats = _run(q, k, v, causal=causal, window=window, spans=[(16, 33)])
    ref = dense_attention(q, k, v, causal=causal, window=window, spans=[(16, 33)])
    assert_stats_close(out, stats, ref, out_tol=1e-4, stat_tol=1e-4)
    received, alpha = triton_received.received(q.to(DEVICE), k.to(DEVICE), ref["lse"].float().to(DEVICE),
                                               causal=causal, window=window, scale=0.25)
    assert max_rel_err(received.cpu(), ref["received"]) < 1e-4
    assert max_rel_err(alpha.cpu(), ref["alpha"]) < 1e-4


@pytest.mark.parametrize("causal,window", [(True, None), (True, 9), (False, None), (False, 7)])
def test_received_matches_dense(causal, window):
    q, k, v = random_qkv(1, 6, 2, 53, 16, spread=2.0)
    ref = dense_attention(q, k, v, causal=causal, window=window)
    lse = ref["lse"].float().to(DEVICE)
    received, alpha = triton_received.received(q.to(DEVICE), k.to(DEVICE), lse, causal=causal,
                                               window=window, scale=0.25)
    assert max_rel_err(received.cpu(), ref["received"]) < 1e-4
    assert max_rel_err(alpha.cpu(), ref["alpha"]) < 1e-4


@pytest.mark.parametrize("block", [(32, 16, 1, 1), (16, 32, 1, 1)])
def test_received_unequal_blocks_and_deterministic(block):
    q, k, v = random_qkv(2, 3, 1, 45, 16, spread=2.0)
    ref = dense_attention(q, k, v, window=12)
    q, k, lse = q.to(DEVICE), k.to(DEVICE), ref["lse"].float().to(DEVICE)
    first = triton_received.received(q, k, lse, causal=True, window=12, scale=0.25, block=block)
    second = triton_received.received(q, k, lse, causal=True, window=12, scale=0.25, block=block)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert max_rel_err(first[1].cpu(), ref["alpha"]) < 1e-4


def test_public_api_triton_backend_matches_dense():
    """attention_with_stats / attention_received with backend='triton' against the float64 oracle."""
    q, k, v = random_qkv(1, 4, 1, 37, 16, spread=2.0)
    ref = dense_attention(q, k, v, window=15, sink_tokens=4, spans=[(2, 30)])
    q, k, v = (x.to(DEVICE) for x in (q, k, v))
    out, stats = interp_kernels.attention_with_stats(q, k, v, window=15, sink_tokens=4, spans=[(2, 30)], backend="triton")
    assert_stats_close(out.cpu(), stats.cpu(), ref, out_tol=1e-4, stat_tol=1e-4)
    received, alpha = interp_kernels.attention_received(q, k, stats.lse, window=15, backend="triton")
    assert max_rel_err(received.cpu(), ref["received"]) < 1e-4
    assert max_rel_err(alpha.cpu(), ref["alpha"]) < 1e-4


def test_triton_backend_rejects_what_it_cannot_run():
    q, k, v = random_qkv(1, 2, 1, 8, 16)
    with pytest.raises(ValueError, match="spans"):
        interp_kernels.attention_with_stats(q, k, v, spans=[(0, 1)] * 64, backend="triton")
    with pytest.raises(ValueError, match="head dim"):
        interp_kernels.attention_with_stats(*random_qkv(1, 2, 1, 8, 24), backend="triton")
    with pytest.raises(ValueError, match="float"):
        interp_kernels.attention_with_stats(*random_qkv(1, 2, 1, 8, 16, dtype=torch.float64), backend="triton")


def test_interpreter_refuses_triton_and_numpy_versions_that_cannot_run_it():
    """Triton <= 3.6's interpreter does int() of one-element arrays, an error since numpy 2.4: with
    triton 3.6.0 and numpy 2.4.6 35 of these tests fail inside Triton, with numpy 2.3.5 they pass."""
    import numpy

    from interp_kernels.dispatch import interpreter_problem

    assert "triton>=3.7 or numpy<2.4" in interpreter_problem("3.6.0", "2.4.6")
    assert "triton>=3.7" in interpreter_problem("3.5.1", "2.5.2")
    assert interpreter_problem("3.6.0", "2.3.5") is None
    assert interpreter_problem("3.7.0", "2.5.2") is None
    assert interpreter_problem(triton.__version__, numpy.__version__) is None  # the suite's own versions


def test_rows_that_see_no_key_are_defined():
    """Not reachable through the API (window >= 1); the kernels' window=0 reaches it."""
    q, k, v = random_qkv(1, 2, 1, 20, 16)
    out, stats = _run(q, k, v, window=0, spans=[(0, 20)])
    assert (out == 0).all() and torch.isneginf(stats.lse).all()
    assert (stats.entropy == 0).all() and (stats.max_prob == 0).all() and (stats.argmax == -1).all()
    assert (stats.sink_mass == 0).all() and (stats.span_mass == 0).all()
    received, alpha = triton_received.received(q.to(DEVICE), k.to(DEVICE), stats.lse.to(DEVICE),
                                               causal=True, window=0, scale=0.25)
    assert (received == 0).all() and (alpha == 0).all()


def test_received_ignores_rows_with_lse_minus_inf():
    q, k, v = random_qkv(1, 2, 1, 40, 16)
    ref = dense_attention(q, k, v, causal=False)
    lse = ref["lse"].float().clone()
    lse[:, :, [3, 20, 39]] = float("-inf")
    received, _ = triton_received.received(q.to(DEVICE), k.to(DEVICE), lse.to(DEVICE), causal=False,
                                           window=None, scale=0.25)
    p = torch.softmax(q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2) * 0.25, -1)
    p[:, :, [3, 20, 39]] = 0
    assert max_rel_err(received.cpu(), p.sum(-2)) < 1e-4


def test_argmax_ties_go_to_lowest_index_across_blocks():
    q = torch.zeros(1, 1, 40, 16)
    k = torch.randn(1, 1, 40, 16)
    _, stats = _run(q, k, k)
    assert (stats.argmax == 0).all()


_AOT_SCRIPT = textwrap.dedent("""
    import sys, torch
    from interp_kernels import aot, triton_forward, triton_received
    from interp_kernels.triton_common import SHARED_MEMORY_BY_ARCH, dtype_bytes
    # Every config the H100/H200 autotuning benchmarks for the SmolLM2/Llama head dims in bf16,
    # then one config per other arch, dtype and masking.
    jobs = [(aot.compile_forward, 128, torch.bfloat16, 90, True, None, c)
            for c in aot.configs_for(triton_forward, 128, torch.bfloat16, 90)]
    jobs += [(aot.compile_received, 128, torch.bfloat16, 90, True, None, c)
             for c in aot.configs_for(triton_received, 128, torch.bfloat16, 90)]
    jobs += [(aot.compile_forward, 64, torch.float32, 90, True, None, None),
             (aot.compile_forward, 256, torch.bfloat16, 90, True, 512, None),
             (aot.compile_forward, 128, torch.float16, 80, False, 256, None),
             (aot.compile_forward, 64, torch.bfloat16, 86, True, None, None),
             (aot.compile_received, 64, torch.float16, 80, False, 256, None)]
    for fn, d, dtype, arch, causal, window, config in jobs:
        c = fn(d, dtype, arch, causal=causal, window=window, config=config)
        assert c.asm["cubin"], fn.__name__
        assert c.metadata.shared <= SHARED_MEMORY_BY_ARCH[arch], (fn.__name__, d, arch, c.metadata.shared)
        print(fn.__name__, d, dtype, arch, config, "shared", c.metadata.shared)
        ttir, ptx = c.asm["ttir"], c.asm["ptx"]
        # 64-bit block starts: the row strides are widened to i64 before they scale a block start.
        strides = ("stride_qn", "stride_kn", "stride_vn", "stride_on") if fn is aot.compile_forward else \\
            ("stride_qn", "stride_kn")
        for name in strides:
            assert f"arith.extsi %{name} : i32 to i64" in ttir, (fn.__name__, name, "32-bit offsets")
        if dtype == torch.float32:  # IEEE float32 dots run on CUDA cores
            continue
        t = "bf16" if dtype == torch.bfloat16 else "f16"
        # sm_90 uses wgmma for tiles of 64+ rows a warp group, mma.sync for smaller ones (BLOCK_M 32)
        mmas = ("wgmma.mma_async", "mma.sync") if arch >= 90 else ("mma.sync",)
        lines = ptx.splitlines()
        assert any(any(m in line for m in mmas) and f".{t}.{t}" in line for line in lines), \\
            (fn.__name__, d, arch, "no tensor-core MMA on the inputs")
        # The sink/span masses of half inputs are IEEE float32 dots: no tf32 MMA anywhere.
        assert not any("mma" in line and "tf32" in line for line in lines), (fn.__name__, d, arch, "tf32 MMA")
    print("jobs", len(jobs))
""")


def _ptxas() -> Path:
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.slow
@pytest.mark.skipif(not _ptxas().exists(), reason="triton wheel has no NVIDIA backend/ptxas: cannot compile for CUDA")
def test_autotune_configs_compile_for_sm90_sm86_and_sm80(tmp_path):
    """Without a GPU: the kernels compile to cubin for sm_90 (every autotuned bf16 d=128 config),
    sm_86 and sm_80, fit the per-block shared memory, use tensor cores on the inputs, run the
    masses in float32 (no tf32) and widen row strides to 64 bits."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = int(done.stdout.strip().splitlines()[-1].split()[-1])
    assert jobs >= 12 and done.stdout.count("shared") == jobs


def test_pruning_keeps_a_config_for_every_head_dim_and_arch():
    from interp_kernels import aot

    for module in (triton_forward, triton_received):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            for d in (16, 32, 64, 128, 256):
                for arch in (80, 86, 90):
                    assert aot.configs_for(module, d, dtype, arch), (module.__name__, dtype, d, arch)


def test_interpreter_autotunes_over_one_small_config():
    """Under TRITON_INTERPRET the autotuners hold only the 16x16 interpreter config: no benchmarking."""
    if not os.environ.get("TRITON_INTERPRET"):
        pytest.skip("interpreter only")
    for module in (triton_forward, triton_received):
        for tuned in (module._TUNED_HALF, module._TUNED_FP32):
            assert len(tuned.configs) == 1
            assert tuple(tuned.configs[0].kwargs.values()) == module.INTERPRET_CONFIG[:2]


_OFFSETS_SCRIPT = textwrap.dedent("""
    import os, sys, tempfile
    import torch
    sys.path.insert(0, "tests")
    from interp_kernels import triton_forward, triton_received
    from test_kernels_dense import assert_stats_close, dense_attention, max_rel_err
    # Rows 2^24 elements apart: offsets reach 160 * 2^24 > 2^31. The rows live in a sparse file
    # (5 GiB of address space, ~1 MiB of touched pages); the interpreter does int32 arithmetic
    # like the GPU, so 32-bit offsets would wrap and read the wrong rows (or fault).
    n, d, stride = 160, 16, 1 << 24
    path = tempfile.mktemp(dir=sys.argv[1])
    with open(path, "wb") as f:
        f.truncate(n * stride * 2)
    base = torch.from_file(path, shared=True, size=n * stride, dtype=torch.float16)
    g = torch.Generator().manual_seed(0)
    views = []
    for i in range(3):  # q, k, v side by side inside each far-apart row
        view = base.as_strided((1, 1, n, d), (n * stride, n * stride, stride, 1), storage_offset=i * d)
        view.copy_((torch.randn(1, 1, n, d, generator=g) * 2).half())
        views.append(view)
    q, k, v = views
    ref = dense_attention(q.clone(), k.clone(), v.clone(), window=70, sink_tokens=4, spans=[(100, 150)])
    out, stats = triton_forward.forward(q, k, v, causal=True, window=70, scale=d ** -0.5,
                                        mass_ranges=[(0, 4), (100, 150)])
    assert_stats_close(out, stats, ref, out_tol=2e-3, stat_tol=2e-3)
    received, _ = triton_received.received(q, k, ref["lse"].float(), causal=True, window=70, scale=d ** -0.5)
    assert max_rel_err(received, ref["received"]) < 2e-3
    os.remove(path)
    print("ok")
""")


def test_row_offsets_past_two_to_the_31_elements(tmp_path):
    """Strided q/k/v whose row offsets exceed 2^31 elements (e.g. [B, N, H, d] views at long N)."""
    if DEVICE == "cuda":
        pytest.skip("runs through the interpreter's int32 arithmetic; the AOT test checks the compiled form")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _OFFSETS_SCRIPT, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (done.returncode, done.stderr[-3000:])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("d,h,hkv", [(64, 9, 3), (128, 32, 8)])
def test_cuda_bf16_against_dense_float64(d, h, hkv):
    """The public bf16 API at both model shapes against the float64 oracle (run on the CPU), and the
    received pass deterministic from run to run."""
    q, k, v = random_qkv(2, h, hkv, 1000, d, dtype=torch.bfloat16, spread=2.0)
    ref = dense_attention(q, k, v, sink_tokens=4, spans=[(0, 100)])
    q, k, v = q.cuda(), k.cuda(), v.cuda()
    out, stats = interp_kernels.attention_with_stats(q, k, v, sink_tokens=4, spans=[(0, 100)], backend="triton")
    assert_stats_close(out.cpu(), stats.cpu(), ref, out_tol=OUT_TOL[torch.bfloat16], stat_tol=STAT_TOL[torch.bfloat16])
    first = interp_kernels.attention_received(q, k, stats.lse, backend="triton")
    second = interp_kernels.attention_received(q, k, stats.lse, backend="triton")
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert max_rel_err(first[0].cpu(), ref["received"]) < 1e-3 and max_rel_err(first[1].cpu(), ref["alpha"]) < 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_float32_and_window_against_dense():
    q, k, v = random_qkv(1, 4, 2, 300, 64, spread=2.0)
    out, stats = interp_kernels.attention_with_stats(q.cuda(), k.cuda(), v.cuda(), window=100, spans=[(5, 50)])
    ref = dense_attention(q, k, v, window=100, spans=[(5, 50)])
    assert_stats_close(out.cpu(), stats.cpu(), ref, out_tol=1e-4, stat_tol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("causal,window", [(True, None), (True, 128), (False, None), (False, 64)])
def test_cuda_kernels_against_dense_float64(dtype, causal, window):
    """The kernels on the GPU against the float64 oracle: every dtype, windows, GQA, with the
    first config this GPU's pruning keeps (one compile per case; autotuning is tested below).
    Masses (sink, spans) are IEEE float32 dots whatever the input dtype: held to 2e-4 (through
    tf32 they were about 2e-3 off)."""
    from interp_kernels import aot

    props = torch.cuda.get_device_properties(0)
    arch = props.major * 10 + props.minor
    arch = arch if arch in aot.SHARED_MEMORY_BY_ARCH else 80
    q, k, v = random_qkv(1, 8, 2, 700, 64, dtype=dtype, spread=2.0)
    spans = [(10, 300), (650, 700)]
    ranges = [(0, 4)] + spans
    qc, kc, vc = q.cuda(), k.cuda(), v.cuda()
    out, stats = triton_forward.forward(qc, kc, vc, causal=causal, window=window, scale=0.125, mass_ranges=ranges,
                                        block=aot.configs_for(triton_forward, 64, dtype, arch)[0])
    ref = dense_attention(q, k, v, causal=causal, window=window, sink_tokens=4, spans=spans)
    assert_stats_close(out.cpu(), stats.cpu(), ref, out_tol=OUT_TOL[dtype], stat_tol=STAT_TOL[dtype])
    for name in ("sink_mass", "span_mass"):
        assert max_rel_err(getattr(stats, name).cpu(), ref[name]) < 2e-4, name
    received, alpha = triton_received.received(qc, kc, stats.lse, causal=causal, window=window, scale=0.125,
                                               block=aot.configs_for(triton_received, 64, dtype, arch)[0])
    assert max_rel_err(received.cpu(), ref["received"]) < 1e-3
    assert max_rel_err(alpha.cpu(), ref["alpha"]) < 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_autotuning_picks_a_config_and_keeps_it():
    q, k, v = (x.cuda() for x in random_qkv(1, 9, 3, 1500, 64, dtype=torch.bfloat16, spread=2.0))
    first, _ = interp_kernels.attention_with_stats(q, k, v, backend="triton")
    picked = triton_forward.best_configs()
    assert picked and all({"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"} <= set(c) for c in picked.values())
    again, _ = interp_kernels.attention_with_stats(q, k, v, backend="triton")
    assert torch.equal(first, again) and triton_forward.best_configs() == picked  # cached: no re-tuning
    ref, _ = interp_kernels.attention_with_stats(q, k, v, backend="torch")
    assert max_rel_err(first, ref) < OUT_TOL[torch.bfloat16]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_strided_inputs_use_their_strides():
    """[B, N, H, d] activations transposed to [B, H, N, d] (row stride H·d), as the model swap could pass."""
    q, k, v = random_qkv(1, 6, 2, 500, 64, dtype=torch.bfloat16, spread=2.0)
    qt, kt, vt = (x.transpose(1, 2).contiguous().cuda().transpose(1, 2) for x in (q, k, v))
    assert qt.stride(2) == 6 * 64
    out, stats = triton_forward.forward(qt, kt, vt, causal=True, window=None, scale=0.125, mass_ranges=[(0, 1)])
    ref = dense_attention(q, k, v)
    assert_stats_close(out.cpu(), stats.cpu(), ref, out_tol=OUT_TOL[torch.bfloat16], stat_tol=STAT_TOL[torch.bfloat16])
