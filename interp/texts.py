"""Real English text available offline on any Python install, for traces and the atlas.

Python ships its own reference documentation (`pydoc_data.topics`, about 0.7 MB of prose and code
examples, PSF licence); passages are cut from it at paragraph boundaries, deterministically.
"""
from __future__ import annotations

import random
import re


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
