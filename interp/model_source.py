"""Resolve what a user names (embedded model, .gguf file, HF directory, hub id) into a `ModelSource`."""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from interp.errors import InputError
from interp.model_registry import EMBEDDED

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are. `kind` is "gguf", "hf_dir" or "hub"."""

    kind: str
    label: str          # the name reports show: the embedded name, file stem or hub id
    location: str       # file path, directory or hub id
    fingerprint: str    # changes whenever the weights could have changed

    @property
    def cache_key(self) -> str:
        safe = re.sub(r"[^\w.\-]+", "_", self.label)[:60]
        return f"{safe}-{self.fingerprint[:16]}"


def resolve(name_or_path: str, cache_dir: Path) -> ModelSource:
    """Turn a model name or path into a source; InputError with the fix when it names nothing usable."""
    text = str(name_or_path)
    if text in EMBEDDED:
        path = EMBEDDED[text].locate(cache_dir)
        return ModelSource("gguf", text, str(path), _file_fingerprint(path))
    path = Path(text).expanduser()
    if path.is_file():
        _check_gguf(path)
        return ModelSource("gguf", path.stem, str(path.resolve()), _file_fingerprint(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path} is a directory without config.json; name a Hugging Face model directory or a .gguf file")
        _check_hf_dir(path)
        files = sorted(p for p in path.iterdir() if p.is_file())
        return ModelSource("hf_dir", path.name, str(path.resolve()), _dir_fingerprint(files))
    if text.endswith(".gguf") or os.sep in text and not _HUB_ID.match(text) or text.startswith((".", "~")):
        raise InputError(f"model file {text} does not exist; check the path")
    official = _transformer_lens_name(text)
    if official is not None:  # TransformerLens' names and aliases ("gpt2-small", "pythia-70m") → the hub id
        return ModelSource("hub", official, official, hashlib.sha256(official.encode()).hexdigest())
    if _HUB_ID.match(text):
        return ModelSource("hub", text, text, hashlib.sha256(text.encode()).hexdigest())
    raise InputError(
        f"unknown model {text!r}; available: {', '.join(EMBEDDED)} "
        f"(or a local .gguf file, a local Hugging Face directory, a hub id like org/name, or a TransformerLens "
        f"model name like gpt2-small)"
    )


WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")


def _transformer_lens_name(text: str) -> str | None:
    """The hub id TransformerLens' model table gives a name or alias (no network), if it is a
    transformers checkpoint (not one of TransformerLens' own .pth toy models)."""
    from transformer_lens.loading_from_pretrained import make_model_alias_map

    official = make_model_alias_map().get(text.lower())
    if official is None or official.startswith(("NeelNanda/", "ArthurConmy/", "Baidicoot/")):
        return None
    return official


def _check_hf_dir(path: Path) -> None:
    """An HF directory needs a config.json that parses (its weights are checked once its
    architecture is known to be supported: `check_weights`)."""
    import json

    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        where = f" (line {err.lineno}, column {err.colno}: {err.msg})" if isinstance(err, json.JSONDecodeError) else ""
        raise InputError(f"{path / 'config.json'} is not valid JSON{where}; fix it or save the model again with "
                         f"save_pretrained") from None


def check_weights(path: Path) -> None:
    """InputError unless the HF directory holds at least one weight file."""
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise InputError(f"{path} has config.json but no weight files (model.safetensors or pytorch_model.bin); "
                         f"save the model there with save_pretrained, or copy its weight files in")


def _check_gguf(path: Path) -> None:
    """A .gguf must start with the GGUF magic and be complete; anything else is named and refused."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise InputError(f"{path} is not a GGUF file (no GGUF header); pass a .gguf model file or a model directory")
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except Exception as err:  # the reader raises several kinds on a cut-off file
        raise InputError(f"{path} is truncated or corrupt ({type(err).__name__}: {err}); download or copy it again") from None
    if end > path.stat().st_size:
        raise InputError(f"{path} is truncated ({path.stat().st_size} of {end} bytes); download or copy it again")


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


def _dir_fingerprint(files: list[Path]) -> str:
    parts = [f"{p.name}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
