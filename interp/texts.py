"""Real English text available offline on any Python install, for traces and the atlas.

Python ships its own reference documentation (`pydoc_data.topics`, about 0.7 MB of prose and code
examples, PSF licence); passages are cut from it at paragraph boundaries, deterministically.
"""
from __future__ import annotations

import random
import re
from pathlib import Path


def reference_paragraphs(min_chars: int = 200) -> list[str]:
    """Paragraphs of Python's reference documentation, each at least `min_chars` long, in a fixed order."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[name]):
            text = " ".join(para.split())
            if len(text) >= min_chars and not text.startswith((">>>", "***", "___")):
                paragraphs.append(text)
    return paragraphs


def sample_texts(n: int, *, seed: int = 0, min_chars: int = 200, max_chars: int = 1200) -> list[str]:
    """`n` distinct paragraphs chosen with `seed`, each cut to at most `max_chars` at a word boundary."""
    pool = reference_paragraphs(min_chars)
    picks = random.Random(seed).sample(pool, min(n, len(pool)))
    return [p if len(p) <= max_chars else p[:max_chars].rsplit(" ", 1)[0] for p in picks]


def _stdlib() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["stdlib"])


def _code_chunks(lines_per_chunk: int = 24) -> list[str]:
    """Consecutive lines of the Python standard library's own source, cut at blank lines."""
    chunks = []
    for path in sorted(_stdlib().glob("*.py")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for start in range(0, len(lines) - lines_per_chunk, lines_per_chunk * 4):
            chunk = "\n".join(lines[start:start + lines_per_chunk]).strip()
            if chunk.count("\n") >= lines_per_chunk // 2:
                chunks.append(chunk)
    return chunks


def _legal_paragraphs() -> list[str]:
    """Paragraphs of Python's licence (the PSF licence and its history), as shipped with Python."""
    text = (_stdlib() / "LICENSE.txt").read_text(encoding="utf-8")
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if len(p) > 150]


def _math_blocks() -> list[str]:
    """LaTeX formulae from the `.. math::` blocks of scipy.special's and scipy.stats' docstrings,
    joined a few at a time."""
    import scipy.special
    import scipy.stats

    blocks = []
    for module in (scipy.special, scipy.stats):
        for name in sorted(dir(module)):
            doc = getattr(getattr(module, name), "__doc__", None) or ""
            for m in re.finditer(r"\.\. math::\n((?:\n|[ \t]+.*\n)+)", doc):
                block = " ".join(m.group(1).split())
                if len(block) > 40:
                    blocks.append(block)
    return ["\n\n".join(blocks[i:i + 4]) for i in range(0, len(blocks) - 3, 4)]


def _unicode_lists(items: int = 40) -> list[str]:
    """Comma-separated runs of Unicode character names (a list, in real words), from unicodedata."""
    import unicodedata

    names = [unicodedata.name(chr(c), "") for c in range(0x20, 0x3000)]
    names = [n for n in names if n]
    return [", ".join(names[i:i + items]) for i in range(0, len(names) - items, items)]


DOMAINS = {
    "prose": "English prose: Python's reference documentation (pydoc_data)",
    "code": "Python source code: the standard library's own modules",
    "legal": "Legal text: Python's licence (LICENSE.txt shipped with Python)",
    "math": "Mathematical notation: LaTeX formulae from scipy.special and scipy.stats docstrings",
    "lists": "Lists: runs of Unicode character names (unicodedata)",
    "repeated": "Repeated tokens: a random token sequence followed by the same sequence again",
}


def domain_texts(domain: str, n: int, *, seed: int = 0) -> list[str]:
    """`n` texts of one domain from `DOMAINS`, chosen with `seed`. "repeated" is made of tokens,
    not text: use `repeated_token_prompts` for it."""
    from interp.errors import InputError

    pools = {"prose": reference_paragraphs, "code": _code_chunks, "legal": _legal_paragraphs,
             "math": _math_blocks, "lists": _unicode_lists}
    if domain not in pools:
        raise InputError(f"unknown text domain {domain!r}; choose from {', '.join(pools)} (or use repeated_token_prompts)")
    pool = pools[domain]()
    return random.Random(seed).sample(pool, min(n, len(pool)))


def repeated_token_prompts(model, n: int, length: int, *, seed: int = 0) -> list:
    """`n` prompts of `length` random vocabulary tokens repeated twice (BOS first when the model
    prepends one): the classic induction input."""
    import torch

    g = torch.Generator().manual_seed(seed)
    vocab = model.cfg.d_vocab
    bos = [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []
    prompts = []
    for _ in range(n):
        half = torch.randint(1000, min(vocab, 30000), (length // 2,), generator=g).tolist()
        prompts.append(torch.tensor(bos + half + half))
    return prompts
