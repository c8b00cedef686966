"""The per-query statistics returned next to the attention output."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class AttentionStats:
    """Per-query attention statistics; B batch, H query heads, N queries.

    lse       float32 [B, H, N]   natural-log log-sum-exp of the scaled, masked scores
    entropy   float32 [B, H, N]   entropy of the attention row, in nats
    max_prob  float32 [B, H, N]   largest attention probability of the row
    argmax    int64   [B, H, N]   key index of that probability (lowest index on ties)
    sink_mass float32 [B, H, N]   attention mass on keys 0 .. sink_tokens-1
    span_mass float32 [B, H, N, S] attention mass on each half-open key span

    A row that sees no key (not reachable through the public API, where every query sees
    itself) has lse = -inf, entropy 0, max_prob 0, argmax -1 and zero masses.
    """

    lse: torch.Tensor
    entropy: torch.Tensor
    max_prob: torch.Tensor
    argmax: torch.Tensor
    sink_mass: torch.Tensor
    span_mass: torch.Tensor

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Field names in declaration order."""
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The fields as a plain dict (same tensors, no copies)."""
        return {name: getattr(self, name) for name in self.names()}

    def to(self, device) -> "AttentionStats":
        """A copy with every field moved to ``device`` (dtypes unchanged)."""
        return AttentionStats(**{k: v.to(device) for k, v in self.to_dict().items()})

    def cpu(self) -> "AttentionStats":
        """A copy on the CPU."""
        return self.to("cpu")
