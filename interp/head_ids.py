"""Head identifiers: one helper for every spelling of "which head".

A head is `(layer, head)`; it is written `L{layer}H{head}` in tables and reports, `A{layer}.{head}` in
circuit graphs (auto-circuit's node names), and as a flat index `layer * n_heads + head` in tensors
shaped [n_layers * n_heads]. `HeadId.parse` reads all of them; use it instead of f-strings or divmod.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from interp.errors import InputError

_LABEL = re.compile(r"^\s*L(\d+)H(\d+)\s*$", re.IGNORECASE)
_NODE = re.compile(r"^\s*A(\d+)\.(\d+)\s*$")


@dataclass(frozen=True, order=True)
class HeadId:
    """One attention head: `layer` and `head` (query head) indices, both 0-based."""

    layer: int
    head: int

    @classmethod
    def parse(cls, value: "HeadLike", n_heads: int | None = None) -> "HeadId":
        """"L17H4", "A17.4", (17, 4), a HeadId, or a flat index (needs `n_heads`)."""
        if isinstance(value, HeadId):
            return value
        if isinstance(value, str):
            match = _LABEL.match(value) or _NODE.match(value)
            if not match:
                raise InputError(f"not a head: {value!r}; write it as L<layer>H<head> (e.g. L17H4) or A<layer>.<head>")
            return cls(int(match[1]), int(match[2]))
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls(int(value[0]), int(value[1]))
        if isinstance(value, int) or hasattr(value, "__index__"):
            if n_heads is None:
                raise InputError("a flat head index needs n_heads to be read")
            return cls.from_index(int(value), n_heads)
        raise InputError(f"not a head: {value!r}; write it as L<layer>H<head>, A<layer>.<head> or (layer, head)")

    @classmethod
    def from_index(cls, index: int, n_heads: int) -> "HeadId":
        """The head at flat position `index` of a [n_layers * n_heads] vector."""
        layer, head = divmod(int(index), int(n_heads))
        return cls(layer, head)

    def index(self, n_heads: int) -> int:
        """The flat position `layer * n_heads + head`."""
        return self.layer * n_heads + self.head

    @property
    def label(self) -> str:
        """`L{layer}H{head}`, as tables and reports write it."""
        return f"L{self.layer}H{self.head}"

    @property
    def node(self) -> str:
        """`A{layer}.{head}`, as circuit graphs (auto-circuit) name the head's output."""
        return f"A{self.layer}.{self.head}"

    def check(self, n_layers: int, n_heads: int, model: str = "the model") -> "HeadId":
        """Self, or InputError when the head does not exist in a model of that shape."""
        if not (0 <= self.layer < n_layers and 0 <= self.head < n_heads):
            raise InputError(f"{self.label} does not exist: {model} has layers 0-{n_layers - 1} and heads 0-{n_heads - 1}")
        return self

    def __str__(self) -> str:
        return self.label

    def __iter__(self):
        """`layer, head = head_id`, as with the (layer, head) tuples it replaces."""
        yield self.layer
        yield self.head


HeadLike = Union[HeadId, str, tuple, int]


def head_label(layer: int, head: int) -> str:
    """`L{layer}H{head}`."""
    return HeadId(int(layer), int(head)).label
