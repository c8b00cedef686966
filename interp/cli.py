"""The `interp` command line. Exit codes: 0 success, 2 bad usage or input (one line, no
traceback), 1 failure while running. Output folders are written whole or not at all."""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from typer._click import exceptions as click_errors  # typer >= 0.26 vendors click

from interp.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="interp-workbench: trace every attention head, find circuits, export reports.")

MODEL = typer.Option("smollm2-135m", "--model", "-m", help="embedded name, .gguf file, HF directory or hub id")
OUT = typer.Option(..., "--out", "-o", help="output folder (created; existing files of the same name are replaced)")
JSON = typer.Option(False, "--json", help="print the result as JSON on stdout")
SEED = typer.Option(0, "--seed", help="seed for every random choice")
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … (default: cuda when present)")
LOAD_OPTIONS: dict = {}  # load_model options every command's model gets: set by the global --dtype / --no-parity-check


@app.callback()
def _global_options(
    dtype: Optional[str] = typer.Option(None, "--dtype", help="weights and activations: float32 (default), bfloat16, "
                                        "float16 (converted and parity-checked in float32, then cast)"),
    no_parity_check: bool = typer.Option(False, "--no-parity-check", help="load a model even when its log-probs "
                                         "differ from transformers' by more than 1e-3 (the difference is recorded)"),
    n_devices: int = typer.Option(1, "--n-devices", min=1, help="split the model's layers over this many GPUs "
                                  "from --device (`interp plan` says how many a run needs)"),
):
    """interp-workbench: trace every attention head, find circuits, export reports."""
    from interp.loading import parse_dtype

    LOAD_OPTIONS.clear()
    LOAD_OPTIONS.update(dtype=parse_dtype(dtype), check=not no_parity_check)
    if n_devices != 1:
        LOAD_OPTIONS["n_devices"] = n_devices


class ChecksPassed(Exception):
    """Raised by `load_cli_model` inside `checks_only()`: the command's checks of its arguments all passed."""


_CHECKS_ONLY = contextvars.ContextVar("checks_only", default=False)


@contextlib.contextmanager
def checks_only():
    """Within the block a built-in command stops where it would load its model (every one checks all its
    arguments before that, and writes nothing): how a sweep checks each job before any job starts."""
    token = _CHECKS_ONLY.set(True)
    try:
        yield
    finally:
        _CHECKS_ONLY.reset(token)


def load_cli_model(model: str, device: Optional[str]):
    """The model a command's --model and --device name (InputError for a bad device)."""
    from interp.loading import load_model

    check_model(model, device)
    if _CHECKS_ONLY.get():
        raise ChecksPassed
    return load_model(model, device=device, **LOAD_OPTIONS)


def check_model(model: str, device: Optional[str] = None):
    """Resolve --model and check --device without loading any weights: the model's `ModelFacts` (layers,
    heads, context), against which a command checks its other arguments before it starts."""
    from interp.model_facts import model_facts

    if device is not None:
        _check_device(device)
    return model_facts(model)


def check_index(values: Optional[list[int]], upper: Optional[int], what: str, model: str) -> None:
    """Every index of --what lies in 0..upper-1 (upper None: unknown until the model loads)."""
    if values is None or upper is None:
        return
    bad = [v for v in values if not 0 <= v < upper]
    if bad:
        raise InputError(f"--{what} {bad[0]} is out of range; {model} has {what} 0-{upper - 1}")


def check_n_texts(n: int) -> None:
    """--n-texts asks for no more real-text passages than this Python's reference documentation gives."""
    from interp.texts import reference_paragraphs

    available = len(reference_paragraphs())
    if n > available:
        raise InputError(f"--n-texts {n}: this Python's reference documentation gives {available} passages; "
                         f"use at most {available}")


def check_tokens(n: int, facts, what: str, *, factor: int = 1) -> None:
    """`n` tokens (times `factor`, where the command builds longer inputs from it) fit the model's context."""
    if facts.n_ctx is not None and n * factor > facts.n_ctx:
        times = f" (x{factor} = {n * factor})" if factor > 1 else ""
        raise InputError(f"--{what} {n}{times} exceeds the context of {facts.name} ({facts.n_ctx} tokens); "
                         f"use at most {facts.n_ctx // factor}")


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device} is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} asked for CUDA, but this machine has no CUDA GPU; use --device cpu")


def emit(as_json: bool, doc: dict, human: str) -> None:
    """Print the command's result: the JSON document with --json, else the one-line summary."""
    typer.echo(json.dumps(doc, indent=1, default=str) if as_json else human)


@app.command()
def models(as_json: bool = JSON):
    """List the embedded models, the converted models in the cache with their measured parity
    against transformers, and the architectures a local directory or hub id may have."""
    from interp.loading import cache_root, cached_entries
    from interp.model_registry import embedded_status
    from interp.tl_config import SUPPORTED_FAMILIES

    rows, cached = embedded_status(), cached_entries()
    doc = {"schema": "interp.models/1", "model": None, "cache": str(cache_root()), "models": rows, "cached": cached,
           "architectures": SUPPORTED_FAMILIES}
    lines = [f"{r['name']:<14} {'installed' if r['installed'] else 'not installed':<14} {r['description']}" for r in rows]
    lines.append(f"converted in the cache ({cache_root()}):" if cached else f"nothing converted yet in {cache_root()}")
    for c in cached:
        p = c["parity"]
        parity = "parity not measured" if not p else (f"parity {p['max_logprob_diff']:.1e} nats "
                                                      f"({'ok' if p['passed'] else 'ABOVE ' + format(p['tolerance'], 'g')})")
        lines.append(f"  {c['name']:<24} {parity:<32} {c['location']}")
    lines.append(f"also: any local .gguf file, local Hugging Face directory, or hub id of: {SUPPORTED_FAMILIES}")
    emit(as_json, doc, "\n".join(lines))


def parse_indices(text: Optional[str], what: str) -> Optional[list[int]]:
    """"0,2,5-7" → [0, 2, 5, 6, 7]; None stays None (meaning all)."""
    if text is None:
        return None
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        try:
            lo, hi = int(lo), int(hi or lo)
        except ValueError:
            raise InputError(f"--{what} {text!r} is not a list like 0,2,5-7") from None
        if hi < lo:
            raise InputError(f"--{what} {text!r}: the range {part} runs backwards; write it as {hi}-{lo}")
        out.extend(range(lo, hi + 1))
    if not out:
        raise InputError(f"--{what} {text!r} names no {what.rstrip('s')}; give a list like 0,2,5-7 or leave it out for all")
    return out


def _read_texts(text: Optional[list[str]], file: Optional[Path]) -> list[str]:
    texts = list(text or [])
    if any(not t.strip() for t in texts):
        raise InputError("a --text is empty; give each --text a prompt (an unset shell variable expands to '')")
    if file is not None:
        if file.is_dir():
            raise InputError(f"--file {file} is a folder; name a text file")
        if not file.is_file():
            raise InputError(f"--file {file} does not exist")
        from interp.output import read_text

        content = read_text(file, "--file")
        texts.extend(t.strip() for t in content.split("\n\n") if t.strip())
    if not texts:
        raise InputError("no input text: pass --text '...' or --file FILE (paragraphs separated by blank lines)")
    return texts


@app.command()
def trace(
    model: str = MODEL, out: Path = OUT, as_json: bool = JSON, seed: int = SEED, device: Optional[str] = DEVICE,
    text: Optional[list[str]] = typer.Option(None, "--text", "-t", help="a prompt (repeatable)"),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="text file; blank lines separate prompts"),
    layers: Optional[str] = typer.Option(None, help="layers, e.g. 0,3,10-12 (default all)"),
    heads: Optional[str] = typer.Option(None, help="heads in each layer, e.g. 0-3 (default all)"),
    what: str = typer.Option("z,v_norm,resid_norm,entropy,sink_mass", help="activations to keep, comma-separated"),
    max_pattern_tokens: int = typer.Option(1024, help="refuse full attention patterns for longer prompts"),
    stats: bool = typer.Option(False, "--stats", help="fused-kernel attention statistics at any length, no pattern "
                               "(OUT/stats/); replaces the activation capture"),
    sink_tokens: int = typer.Option(1, min=1, help="with --stats: keys that count as the sink"),
    received: bool = typer.Option(False, "--received", help="with --stats: also alpha of every key (a second, key-major pass)"),
):
    """Capture per-head activations (OUT/capture) or, with --stats, per-head attention statistics
    from the fused kernels (OUT/stats); both with a per-head summary in OUT/trace.json."""
    from interp.output import check_out, staged_output, write_json

    texts = _read_texts(text, file)
    facts = check_model(model, device)
    check_out(out)
    check_index(parse_indices(layers, "layers"), facts.n_layers, "layers", facts.name)
    check_index(parse_indices(heads, "heads"), facts.n_heads, "heads", facts.name)
    if max_pattern_tokens < 1:
        raise InputError(f"--max-pattern-tokens {max_pattern_tokens} must be at least 1")
    if not stats:
        from interp.capture import ACTIVATIONS

        names = [w.strip() for w in what.split(",") if w.strip()]
        unknown = [x for x in names if x not in ACTIVATIONS]
        if unknown or not names:
            raise InputError(f"--what: unknown activation {unknown[0] if unknown else '(none)'!r}; choose from "
                             f"{', '.join(ACTIVATIONS)}")
    net = load_cli_model(model, device)
    with staged_output(out) as stage:
        if stats:
            body = _trace_stats(net, texts, stage, sink_tokens, received)
        else:
            body = _trace_capture(net, texts, stage, what, layers, heads, max_pattern_tokens)
        write_json(stage / "trace.json", "trace", net.cfg.model_name, body)
    doc = {"schema": "interp.trace/1", "model": net.cfg.model_name, **body}
    emit(as_json, doc, f"traced {len(texts)} prompts ({sum(body['lengths'])} tokens) of {net.cfg.model_name}; "
                        f"wrote {out}/trace.json and {out}/{'stats' if stats else 'capture'}/")


def _trace_capture(net, texts, stage: Path, what, layers, heads, max_pattern_tokens) -> dict:
    from interp.capture import HEAD_SCALARS, capture
    from interp.head_table import HeadTable

    names = [w.strip() for w in what.split(",") if w.strip()]
    cap = capture(net, texts, names=names, layers=parse_indices(layers, "layers"), heads=parse_indices(heads, "heads"),
                  out_dir=stage / "capture", max_pattern_tokens=max_pattern_tokens)
    scalar = [n for n in cap.names if n in HEAD_SCALARS]
    table = HeadTable.from_arrays({n: cap.head_means(n) for n in scalar}, layers=cap.layers, heads=cap.heads,
                                  model=net.cfg.model_name) if scalar else None
    return {"mode": "capture", "n_prompts": len(texts), "lengths": cap.lengths, "names": cap.names, "layers": cap.layers,
            "heads": cap.heads, "capture": "capture/capture.json", "head_means": table.to_dict() if table else None}


def _trace_stats(net, texts, stage: Path, sink_tokens: int, received: bool) -> dict:
    from interp.stats_trace import stats_trace

    result = stats_trace(net, texts, sink_tokens=sink_tokens, received=received, out_dir=stage / "stats")
    return {"mode": "stats", "n_prompts": len(texts), "lengths": [len(t) for t in result.tokens],
            "stats": "stats/stats.json", "head_means": result.table.to_dict()}


@app.command()
def atlas(
    model: str = MODEL, out: Path = OUT, as_json: bool = JSON, seed: int = SEED, device: Optional[str] = DEVICE,
    n_texts: int = typer.Option(32, min=1, help="real-text passages to run"),
    max_tokens: int = typer.Option(128, min=2, help="tokens per passage"),
    sections: Optional[str] = typer.Option(None, "--sections", help="comma-separated atlas sections to run (default: all)"),
):
    """The main job: every analysis on one model → OUT/report.html (offline) and OUT/atlas.json."""
    from interp.atlas import AtlasConfig, run_atlas
    from interp.output import check_out, staged_output
    from interp.plugins import load_plugins

    names = tuple(s.strip() for s in sections.split(",") if s.strip()) if sections is not None else None
    if names == ():
        raise InputError(f"--sections {sections!r} names no section; list some (e.g. head_types,sinks) or leave "
                         "it out for all")
    config = AtlasConfig(seed=seed, n_texts=n_texts, max_tokens=max_tokens, sections=names)
    config.check([name for name, _ in load_plugins().atlas_sections])
    facts = check_model(model, device)
    check_tokens(max_tokens, facts, "max-tokens")
    check_n_texts(n_texts)
    check_out(out)
    net = load_cli_model(model, device)
    with staged_output(out) as stage:
        body = run_atlas(net, stage, config)
    doc = {"schema": "interp.atlas/1", "model": net.cfg.model_name, **body}
    emit(as_json, doc, f"atlas of {net.cfg.model_name}: {out}/report.html and {out}/atlas.json")


@app.command()
def sweep(
    spec: Path = typer.Argument(..., help="sweep spec (TOML): jobs as a product of models × analyses × parameters"),
    out: Path = OUT, as_json: bool = JSON,
    address: Optional[str] = typer.Option(None, "--address", help="an existing Ray cluster (host:port, ray://host:port "
                                          "or auto); default: a local Ray instance with this machine's CPUs"),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", min=0, help="runs again of a failed job "
                                              "(default: the spec's [sweep] max_retries, else 1)"),
):
    """Run many analyses on Ray, one job per folder OUT/jobs/<id>/; rerun to run only the missing and failed."""
    from interp.sweep import check_address, load_spec, run_sweep

    plan = load_spec(spec, max_retries=max_retries)  # every check before Ray starts
    check_address(address)
    result = run_sweep(plan, out, address=address)
    doc = {"schema": "interp.sweep_run/1", "model": None, "out": str(out), "ran": result.ran, "skipped": result.skipped,
           "failed": result.failed, "seconds": round(result.seconds, 2)}
    failures = "".join(f"\n  failed {job}: {err}" for job, err in result.failed.items())
    emit(as_json, doc, f"sweep: {len(result.ran)} ran, {len(result.skipped)} already done, {len(result.failed)} failed "
                       f"in {result.seconds:.0f} s; wrote {out}/summary.html and summary.json{failures}")
    return 0 if result.ok else 1


@app.command()
def plan(
    model: str = MODEL, as_json: bool = JSON,
    length: int = typer.Option(..., "--length", "-n", min=1, help="tokens per sequence"),
    batch: int = typer.Option(1, "--batch", "-b", min=1, help="sequences per forward pass"),
    dtype: str = typer.Option("float32", help="dtype of weights and activations: float32, bfloat16, float16"),
    device_memory: Optional[str] = typer.Option(None, "--device-memory", help="memory of one device, e.g. 80GB "
                                                "(default: the first CUDA GPU's, else this machine's RAM)"),
):
    """Memory a run needs (weights, KV, activations; eager pattern vs fused statistics) and how many devices."""
    from interp.plan import format_plan, plan_memory

    estimate = plan_memory(model, length=length, batch=batch, dtype=dtype, device_memory=device_memory)
    emit(as_json, {"schema": "interp.plan/1", "model": estimate.model, **estimate.to_dict()}, format_plan(estimate))


def _register_plugins() -> None:
    from interp.plugins import load_plugins

    if getattr(app, "_interp_plugins", False):  # main() may run more than once in a process (tests)
        return
    app._interp_plugins = True
    registry = load_plugins()
    for name, fn in registry.commands:
        app.command(name)(fn)
    for name, group in registry.groups:
        app.add_typer(group, name=name)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the `interp` script: maps errors to one line and an exit code."""
    logging.basicConfig(level=logging.INFO, format="interp: %(message)s", stream=sys.stderr)
    _register_plugins()
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="interp", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except (InputError, click_errors.UsageError) as err:
        message = err.format_message() if isinstance(err, click_errors.ClickException) else str(err)
        typer.echo(f"interp: error: {message}", err=True)
        code = 2
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interp: interrupted", err=True)
        code = 130
    except Exception as err:  # a failure while running: one line, unless debugging
        if os.environ.get("INTERP_DEBUG"):
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        typer.echo(f"interp: failed: {type(err).__name__}: {first} (set INTERP_DEBUG=1 for the traceback)", err=True)
        code = 1
    if argv is None:
        sys.exit(code)
    return code
