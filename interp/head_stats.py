"""Per-head summary statistics over real text: how much each head writes and how it attends."""
from __future__ import annotations

from collections.abc import Sequence

from transformer_lens import HookedTransformer

from interp.capture import capture
from interp.head_table import HeadTable

SUMMARY = {
    "z_norm": "mean L2 norm of the head's output z (before W_O)",
    "result_norm": "mean L2 norm of the head's write to the residual stream (z @ W_O)",
    "v_norm": "mean L2 norm of the value vectors the head reads",
    "entropy": "mean entropy of the head's attention per query (nats)",
    "max_prob": "mean largest attention probability per query",
    "sink_mass": "mean attention on the first token",
}


def head_summary(model: HookedTransformer, texts: Sequence[str], *, max_tokens: int = 128, progress: bool | None = None) -> HeadTable:
    """One capture pass over `texts` (each cut to `max_tokens` tokens) → a HeadTable with the
    mean over all tokens of each statistic in `SUMMARY`."""
    tokens = [model.to_tokens(t)[0, :max_tokens] for t in texts]
    cap = capture(model, tokens, names=list(SUMMARY), progress=progress)
    table = HeadTable.from_arrays(
        {name: cap.head_means(name) for name in SUMMARY}, model=model.cfg.model_name,
        meta={"analysis": "head_summary", "n_texts": len(tokens), "n_tokens": sum(cap.lengths), "max_tokens": max_tokens},
    )
    return table
