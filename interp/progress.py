"""One progress-bar policy for every loop that can run long.

`progress=None` (the default everywhere) shows a bar only once the loop has run for
`DELAY_S` seconds, so a long trace, capture, patching sweep or SAE collection always reports
itself and a fast library call never prints anything. `True` shows it at once, `False` never.
`INTERP_PROGRESS=0` in the environment turns every default bar off (for logs and CI); `=1` turns
them on at once. Bars go to stderr and vanish when done (`leave=False`), so stdout stays clean.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, TypeVar

T = TypeVar("T")
DELAY_S = 2.0  # seconds a loop runs before its bar appears (tqdm's `delay`)


def progress_bar(items: Iterable[T], desc: str, enabled: Optional[bool] = None, *, total: int | None = None,
                 unit: str = "it") -> Iterable[T]:
    """`items`, wrapped in a tqdm bar on stderr per the module's policy (`enabled`: None/True/False)."""
    on, delay = _policy(enabled)
    if not on:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit, leave=False, delay=delay, dynamic_ncols=True)


def progress_enabled(enabled: Optional[bool] = None) -> bool:
    """Whether a loop with its own bar (sae_lens' trainer, the sweep driver) shows it, per the policy."""
    return _policy(enabled)[0]


def _policy(enabled: Optional[bool]) -> tuple[bool, float]:
    """(show a bar, seconds before it appears) for a call's `progress` argument."""
    if enabled is not None:
        return bool(enabled), 0.0
    env = os.environ.get("INTERP_PROGRESS", "").strip().lower()
    if env in {"0", "false", "off", "no"}:
        return False, 0.0
    if env in {"1", "true", "on", "yes"}:
        return True, 0.0
    return True, DELAY_S
