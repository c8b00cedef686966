"""`load_model`: any model source → a TransformerLens `HookedTransformer`, converted once and cached.

First load: transformers reads the source (GGUF dequantised to float32, or an HF checkpoint;
float32, eager attention), TransformerLens' own per-architecture config conversion and weight
converter map it into a HookedTransformer (LayerNorm folded, writing weights and unembedding
centred where the architecture allows), the parity check (`interp.parity`) compares the two
models' log-probs, and the processed weights, config, tokenizer and measured parity are written
to the cache as safetensors + JSON. A conversion above the parity tolerance is refused (one
line naming the architecture, the unhandled config feature and the difference) unless
check=False. Later loads read only the cache (no transformers model built); the stored parity
is checked again and attached to the model (`parity_of(model)`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import torch
from transformer_lens import HookedTransformer

from interp.errors import InputError
from interp.devices import check_devices, split_across_devices
from interp.model_source import ModelSource, check_weights, resolve
from interp.parity import Parity, measure
from interp.tl_config import (check_causal_lm, check_supported, config_from_json,
                              config_to_json, tl_config_dict)

log = logging.getLogger("interp")

CONVERTER_VERSION = 2  # bump when the conversion changes, so stale caches are rebuilt (2: TL's own
#                        per-architecture conversion for every family, parity stored in meta.json)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: `cache_dir`, else $INTERP_CACHE, else ~/.cache/interp-workbench."""
    root = cache_dir or os.environ.get("INTERP_CACHE") or Path.home() / ".cache" / "interp-workbench"
    return Path(root).expanduser()


def load_model(
    name_or_path: str | os.PathLike | HookedTransformer,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    check: bool = True,
    n_devices: int = 1,
) -> HookedTransformer:
    """Load a model as a HookedTransformer, with no network call unless a hub id is named.

    name_or_path: an embedded name (`interp.available_models()`), a local `.gguf` file, a local
    Hugging Face model directory, a hub id (needs the network), or a HookedTransformer (returned,
    moved to `device`/`dtype`). device defaults to CUDA when present; dtype ("float32",
    "bfloat16", "float16" or a torch dtype) to float32: conversion and parity check always run in
    float32, then the weights are cast. check: refuse (InputError) a conversion whose log-probs
    differ from transformers' by more than `interp.parity.TOLERANCE`; False loads it anyway and
    records that in `parity_of(model).enforced`. n_devices: split the layers over that many GPUs
    from `device` (default cuda:0), see `interp.devices.split_across_devices`.
    """
    dtype = parse_dtype(dtype)
    if n_devices != 1:
        check_devices(n_devices, device)  # before any conversion
    if isinstance(name_or_path, HookedTransformer):
        return split_across_devices(_place(name_or_path, "cpu" if n_devices > 1 else device, dtype), n_devices, device)
    root = cache_root(cache_dir)
    source = resolve(str(name_or_path), root)
    entry = root / "models" / f"{source.cache_key}-v{CONVERTER_VERSION}"
    model = _read_entry(entry) if _is_complete(entry) else None
    if model is None:
        if source.kind == "hub":
            _require_network(source.location)
        with _entry_lock(entry):  # another process may be converting the same model
            model = _read_entry(entry) if _is_complete(entry) else None
            if model is None:
                _announce_conversion(source, entry)
                _convert_into(source, entry, check)
                model = _load_cached(entry)
    parity = parity_of(model)
    if parity is not None:
        _LOADED_PARITY[model.cfg.model_name] = parity
        if check and not parity.passed:
            raise InputError(refusal(model.cfg.original_architecture, parity))
        parity.enforced = check
        if not parity.passed:
            log.warning("%s loaded with the parity check off: %s", source.label, parity.line())
    return split_across_devices(_place(model, "cpu" if n_devices > 1 else device, dtype), n_devices, device)


def _read_entry(entry: Path) -> HookedTransformer | None:
    """The cached model, or None when a complete-looking entry cannot be read (truncated or corrupt
    files): such an entry is converted again, never trusted."""
    from safetensors import SafetensorError

    try:
        return _load_cached(entry)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError, InputError) as err:
        log.warning("the cache entry %s cannot be read (%s); converting the model again", entry, _first_line(err))
        return None


def _announce_conversion(source: ModelSource, entry: Path) -> None:
    """Say on stderr, also in a notebook with no logging set up, that a one-time conversion starts
    and about how long it takes (measured on 2 CPU cores of an AVX2 EPYC, 2026-12-07: SmolLM2's 98 MB
    GGUF in 32 s, Gemma 3's 253 MB GGUF in 95 s, each GGUF parsed once)."""
    import sys

    location = Path(source.location)
    size_mb = location.stat().st_size / 1e6 if location.is_file() else 0.0
    eta = f"about {max(20, round(size_mb * 0.35, -1)):.0f} s on 2 CPU cores, " if size_mb else ""
    print(f"interp: first load of {source.label}: converting it into a HookedTransformer once "
          f"({eta}then cached in {entry})", file=sys.stderr, flush=True)


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from "float32"/"bfloat16"/"float16" (or bf16, fp16, torch.*); InputError otherwise."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.").lower()
    if name not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of float32, bfloat16, float16")
    return DTYPES[name]


_LOADED_PARITY: dict[str, Parity] = {}  # model name -> parity of the models load_model returned in this process


def parity_of_name(model_name: str | None) -> Parity | None:
    """The parity of a model this process loaded by that name (what reports that only know the
    model's name print in their header); None when none was."""
    return _LOADED_PARITY.get(model_name) if model_name else None


def parity_of(model: HookedTransformer) -> Parity | None:
    """The parity measured when `model` was converted (None for a model not loaded by load_model).

    Reports read `parity_of(model).to_dict()` (JSON) or `.line()` (one human line)."""
    return getattr(model, "parity", None)


def refusal(architecture: str, parity: Parity) -> str:
    """The one-line refusal of a conversion that failed the parity check."""
    what = ", ".join(parity.unhandled) or "no config feature identified"
    return (f"{architecture} does not convert faithfully: log-probs differ from transformers' by "
            f"{parity.max_logprob_diff:.3g} nats (tolerance {parity.tolerance:g}); not handled: {what}; "
            f"load anyway with check=False / --no-parity-check")


@contextlib.contextmanager
def _entry_lock(entry: Path) -> Iterator[None]:
    """Hold an exclusive lock on `entry` (a sibling `.lock` file) across processes."""
    import fcntl

    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_name(entry.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_complete(entry: Path) -> bool:
    """A cache entry counts only once its last file, `done`, is written."""
    return (entry / "done").is_file()


def load_hf_model(name_or_path: str, *, cache_dir: str | os.PathLike | None = None) -> tuple[Any, Any]:
    """The transformers model (float32, eager attention) and tokenizer for a source: the reference
    the HookedTransformer is converted from and checked against."""
    return _load_hf(resolve(str(name_or_path), cache_root(cache_dir)))


def _load_hf(source: ModelSource) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.kind == "hub":
        _require_network(source.location)
    where = dict(local_files_only=source.kind != "hub", trust_remote_code=False)
    if source.kind == "gguf":
        path = Path(source.location)
        where.update(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    else:
        where.update(pretrained_model_name_or_path=source.location)
        check_hf_config(source)
    with _gguf_parsed_once() if source.kind == "gguf" else contextlib.nullcontext():
        try:
            tokenizer = AutoTokenizer.from_pretrained(**where)
        except (ValueError, OSError) as err:
            raise InputError(f"no usable tokenizer in {source.location} ({_first_line(err)}); add the model's tokenizer files") from None
        try:
            model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32, attn_implementation="eager")
        except ValueError as err:
            if "not supported" in str(err) or "Unrecognized" in str(err):
                raise InputError(f"unsupported architecture in {source.location}: {_first_line(err)}") from None
            raise
        except OSError as err:
            raise InputError(f"cannot read the weights in {source.location} ({_first_line(err)})") from None
    return model.eval(), tokenizer


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, `gguf.GGUFReader(path)` parses each file once. transformers builds a reader
    for the tokenizer's config, the model's config and the weights, and each parses every metadata
    field in Python: for Gemma 3's 262,144-token vocabulary that is about 35 s per reader on one core.
    A reader is read-only (a memory map of the file), so one can serve all three."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def check_hf_config(source: ModelSource) -> None:
    """Name an architecture transformers or TransformerLens cannot handle before weights are read."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.location, local_files_only=source.kind != "hub", trust_remote_code=False)
    except (ValueError, KeyError) as err:
        raw = json.loads((Path(source.location) / "config.json").read_text()) if source.kind == "hf_dir" else {}
        arch = (raw.get("architectures") or [raw.get("model_type", "?")])[0]
        raise InputError(f"unsupported architecture {arch} in {source.location} ({_first_line(err)})") from None
    check_causal_lm(config, source.location)
    check_supported(config)
    if source.kind == "hf_dir":
        check_weights(Path(source.location))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _require_network(hub_id: str) -> None:
    """Refuse a hub id at once when offline, rather than after transformers' retries."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise InputError(f"hub id {hub_id} needs the network but HF_HUB_OFFLINE=1; pass a local .gguf file or model directory")
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        raise InputError(
            f"hub id {hub_id} needs the network, which is unreachable (offline); pass a local .gguf file or model directory"
        ) from None


def _convert_into(source: ModelSource, entry: Path, check: bool) -> None:
    """Convert a source, measure its parity, and write it atomically into the cache entry `entry`
    (nothing is written when the parity check refuses it)."""
    hf_model, tokenizer = _load_hf(source)
    model, processing = convert(hf_model, tokenizer, name=source.label, tokenizer_name=source.location)
    parity = measure(model, hf_model, tokenizer)
    del hf_model
    if check and not parity.passed:
        raise InputError(refusal(model.cfg.original_architecture, parity))
    log.info("%s: %s", source.label, parity.line())
    _write_entry(entry, model, source, parity, processing)


def processing_for(cfg: Any) -> dict[str, bool]:
    """TransformerLens' weight processing, minus the steps an architecture does not allow (the
    same exceptions HookedTransformer.from_pretrained makes): post-norm blocks cannot fold norms
    or centre writing weights, shortformer positions cannot fold or centre, and a soft-capped
    output cannot centre the unembedding (softcap is not shift-invariant)."""
    from transformer_lens.utilities.activation_functions import softcap_enabled
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    post_norm = cfg.original_architecture in POST_NORM_ARCHITECTURES
    shortformer = cfg.positional_embedding_type == "shortformer"
    return dict(fold_ln=not (post_norm or shortformer), center_writing_weights=not (post_norm or shortformer),
                center_unembed=not (shortformer or softcap_enabled(cfg.output_logits_soft_cap)),
                fold_value_biases=True)


def convert(hf_model: Any, tokenizer: Any, *, name: str, tokenizer_name: str | None = None) -> tuple[HookedTransformer, dict]:
    """An in-memory transformers causal LM → (float32 HookedTransformer, the processing applied),
    through TransformerLens' config conversion and its weight converter for the architecture."""
    import tempfile

    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict

    cfg_dict = tl_config_dict(hf_model.config)
    cfg_dict.update(model_name=name, tokenizer_name=tokenizer_name, default_prepend_bos=_adds_bos(tokenizer),
                    dtype=torch.float32)
    cfg = HookedTransformerConfig(**cfg_dict)
    # get_pretrained_state_dict dispatches on cfg.original_architecture and takes the in-memory
    # model; it wants an existing path as the "name" (a directory holding the config), never a hub call.
    with tempfile.TemporaryDirectory(prefix="interp-hfcfg-") as tmp:
        hf_model.config.to_json_file(str(Path(tmp) / "config.json"))
        state = get_pretrained_state_dict(tmp, cfg, hf_model=hf_model, dtype=torch.float32)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    processing = processing_for(cfg)
    model.load_and_process_state_dict(state, **processing)
    return model.eval(), processing


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the model file asks for a BOS token in front of every text (GGUF add_bos_token)."""
    ids = tokenizer("a").input_ids
    return tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id


def _write_entry(entry: Path, model: HookedTransformer, source: ModelSource, parity: Parity, processing: dict) -> None:
    from safetensors.torch import save_file

    tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        params = {k: v.detach().contiguous() for k, v in model.named_parameters()}
        save_file(params, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(config_to_json(model.cfg))
        model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        meta = dict(source=source.__dict__, converter_version=CONVERTER_VERSION, processing=processing,
                    parity=parity.to_dict())
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        (tmp / "done").write_text("ok\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(entry, ignore_errors=True)
    tmp.rename(entry)


def cached_entries(cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Complete cache entries of this converter version: name, source, entry folder, parity (dict or None)."""
    folder = cache_root(cache_dir) / "models"
    rows = []
    for entry in sorted(folder.glob(f"*-v{CONVERTER_VERSION}")) if folder.is_dir() else []:
        if not _is_complete(entry):
            continue
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        rows.append(dict(name=meta["source"]["label"], kind=meta["source"]["kind"], location=meta["source"]["location"],
                         entry=str(entry), parity=meta.get("parity")))
    return rows


def _load_cached(entry: Path) -> HookedTransformer:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    cfg = config_from_json((entry / "config.json").read_text())
    # add_bos_token=True is what TransformerLens' set_tokenizer would otherwise reload it with;
    # whether BOS is prepended is then decided by cfg.default_prepend_bos (from the model file).
    tokenizer = AutoTokenizer.from_pretrained(str(entry / "tokenizer"), local_files_only=True, add_bos_token=True)
    # TransformerLens 3.9's to_str_tokens mis-shapes tokens when "gemma" is in name_or_path.
    tokenizer.name_or_path = f"interp-cache/{entry.name.split('-v')[0][-16:]}"
    cfg.init_weights = False  # the weights come from the cache; skip random initialisation
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    params = load_file(str(entry / "model.safetensors"))
    if {k for k, _ in model.named_parameters()} != set(params):
        raise InputError(f"the model cache entry {entry} does not match its config; delete it and load again")
    model.load_state_dict(params, strict=False, assign=True)
    meta = json.loads((entry / "meta.json").read_text())
    model.source = meta["source"]
    model.parity = Parity.from_dict(meta["parity"]) if meta.get("parity") else None
    return model.eval()


def _place(model: HookedTransformer, device: Any, dtype: torch.dtype | None) -> HookedTransformer:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is not None and dtype != model.cfg.dtype:
        model = model.to(dtype, print_details=False)
        model.cfg.dtype = dtype
    return model.to(device, print_details=False)
