"""`load_model`: any model source → a TransformerLens `HookedTransformer`, converted once and cached.

First load: transformers reads the source (GGUF dequantised to float32, or an HF checkpoint),
TransformerLens' weight conversion maps it into a HookedTransformer with LayerNorm folded and the
unembedding centred, and the processed weights, config and tokenizer are written to the cache as
safetensors + JSON. Later loads read only the cache (a few seconds, no transformers model built).
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
from interp.model_source import ModelSource, resolve
from interp.tl_config import architecture_of, config_from_json, config_to_json, tl_config_dict

log = logging.getLogger("interp")

CONVERTER_VERSION = 1  # bump when the conversion changes, so stale caches are rebuilt
_PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)


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
) -> HookedTransformer:
    """Load a model as a HookedTransformer, with no network call unless a hub id is named.

    name_or_path: an embedded name (`interp.available_models()`), a local `.gguf` file, a local
    Hugging Face model directory, a hub id (needs the network), or a HookedTransformer (returned,
    moved to `device`/`dtype`). device defaults to CUDA when present; dtype to float32.
    """
    if isinstance(name_or_path, HookedTransformer):
        return _place(name_or_path, device, dtype)
    root = cache_root(cache_dir)
    source = resolve(str(name_or_path), root)
    entry = root / "models" / f"{source.cache_key}-v{CONVERTER_VERSION}"
    if not _is_complete(entry):
        if source.kind == "hub":
            _require_network(source.location)
        with _entry_lock(entry):  # another process may be converting the same model
            if not _is_complete(entry):
                log.info("converting %s into a HookedTransformer (first load; cached in %s)", source.label, entry)
                _convert_into(source, entry)
    return _place(_load_cached(entry), device, dtype)


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
        _check_hf_config(source)
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
    return model.eval(), tokenizer


def _check_hf_config(source: ModelSource) -> None:
    """Name an architecture transformers cannot build before anything else is read."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(source.location, local_files_only=source.kind != "hub", trust_remote_code=False)
    except (ValueError, KeyError) as err:
        raw = json.loads((Path(source.location) / "config.json").read_text()) if source.kind == "hf_dir" else {}
        arch = (raw.get("architectures") or [raw.get("model_type", "?")])[0]
        raise InputError(f"unsupported architecture {arch} in {source.location} ({_first_line(err)})") from None


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


def _convert_into(source: ModelSource, entry: Path) -> None:
    """Convert a source and write it atomically into the cache entry `entry`."""
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict
    from transformer_lens import HookedTransformerConfig

    hf_model, tokenizer = _load_hf(source)
    cfg_dict = tl_config_dict(hf_model.config)
    cfg_dict.update(model_name=source.label, tokenizer_name=source.location, default_prepend_bos=_adds_bos(tokenizer))
    cfg = HookedTransformerConfig(**cfg_dict)
    state = _convert_weights(hf_model, cfg, get_pretrained_state_dict)
    del hf_model
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state, **_PROCESSING)
    _write_entry(entry, model, source)


def _convert_weights(hf_model: Any, cfg: Any, generic: Any) -> dict[str, torch.Tensor]:
    from transformer_lens.pretrained.weight_conversions import convert_gemma_weights, convert_llama_weights

    arch = architecture_of(hf_model.config)
    if arch == "LlamaForCausalLM":
        return convert_llama_weights(hf_model, cfg)
    if arch == "Gemma3ForCausalLM":
        return convert_gemma_weights(hf_model, cfg)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # TransformerLens' dispatcher accepts a local config dir
        hf_model.config.to_json_file(str(Path(tmp) / "config.json"))
        return generic(tmp, cfg, hf_model=hf_model)


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the model file asks for a BOS token in front of every text (GGUF add_bos_token)."""
    ids = tokenizer("a").input_ids
    return tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id


def _write_entry(entry: Path, model: HookedTransformer, source: ModelSource) -> None:
    from safetensors.torch import save_file

    tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params = {k: v.detach().contiguous() for k, v in model.named_parameters()}
    save_file(params, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(config_to_json(model.cfg))
    model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
    meta = dict(source=source.__dict__, converter_version=CONVERTER_VERSION, processing=_PROCESSING)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    (tmp / "done").write_text("ok\n")
    shutil.rmtree(entry, ignore_errors=True)
    tmp.rename(entry)


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
    model.source = json.loads((entry / "meta.json").read_text())["source"]
    return model.eval()


def _place(model: HookedTransformer, device: Any, dtype: Any) -> HookedTransformer:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is not None and dtype != model.cfg.dtype:
        model = model.to(dtype, print_details=False)
    return model.to(device, print_details=False)
