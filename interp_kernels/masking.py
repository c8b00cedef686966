"""Which keys a query sees: the mask geometry shared by every backend.

Query i sees key j when
  causal, no window:      j <= i
  causal, window w:       i - w < j <= i          (keys i-w+1 ... i)
  non-causal, no window:  every j
  non-causal, window w:   |i - j| < w             (symmetric band)
Positions are 0-based; queries and keys share the same positions 0 .. n-1.
"""
from __future__ import annotations

import torch


def key_bounds(q_start: int, q_stop: int, n: int, causal: bool, window: int | None) -> tuple[int, int]:
    """Half-open key range ``[lo, hi)`` that covers every key seen by queries ``q_start .. q_stop-1``."""
    hi = min(n, q_stop) if causal else n
    lo = 0
    if window is not None:
        lo = max(0, q_start - window + 1)
        if not causal:
            hi = min(n, q_stop - 1 + window)
    return lo, max(lo, hi)


def query_bounds(k_start: int, k_stop: int, n: int, causal: bool, window: int | None) -> tuple[int, int]:
    """Half-open query range ``[lo, hi)`` that covers every query seeing keys ``k_start .. k_stop-1``."""
    lo = k_start if causal else 0
    hi = n
    if window is not None:
        hi = min(n, k_stop - 1 + window)
        if not causal:
            lo = max(0, k_start - window + 1)
    return lo, max(lo, hi)


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, window: int | None) -> torch.Tensor | None:
    """Boolean ``[len(q_pos), len(k_pos)]``: True where the query sees the key; None when all do."""
    rel = q_pos[:, None] - k_pos[None, :]
    mask = None
    if causal:
        mask = rel >= 0
    if window is not None:
        band = rel < window if causal else rel.abs() < window
        mask = band if mask is None else mask & band
    if mask is not None and bool(mask.all()):
        return None
    return mask


def queries_per_key(n: int, causal: bool, window: int | None, device=None) -> torch.Tensor:
    """float32 ``[n]``: how many queries see key j (the denominator of α_j)."""
    j = torch.arange(n, device=device, dtype=torch.int64)
    if causal:
        count = n - j
        if window is not None:
            count = count.clamp(max=window)
    elif window is None:
        count = torch.full_like(j, n)
    else:
        count = (j + window - 1).clamp(max=n - 1) - (j - window + 1).clamp(min=0) + 1
    return count.clamp(min=0).to(torch.float32)
