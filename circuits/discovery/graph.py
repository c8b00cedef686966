"""The computational graph of a TransformerLens model, as auto-circuit names it (sources, destinations, GQA inputs)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from interp.head_ids import HeadId
from interp.errors import InputError

# ---------------------------------------------------------------------------------------------
# graph


@dataclass
class Graph:
    """Sources and destinations of a model's graph (module doc) and which edges exist.

    src_names [n_src], dst_names [n_dst]; allowed: Bool [n_src, n_dst] (source before destination).
    Index layout: source 0 is Resid Start; layer l's heads are 1 + l·(H+1) + h, its MLP 1 + l·(H+1) + H.
    Destinations of layer l start at l·(H + 2·K + 1): H query inputs, K key inputs, K value inputs,
    the MLP input; Resid End is last."""

    n_layers: int
    n_heads: int
    n_kv: int
    src_names: list[str]
    dst_names: list[str]
    allowed: torch.Tensor

    @property
    def n_src(self) -> int:
        return len(self.src_names)

    @property
    def n_dst(self) -> int:
        return len(self.dst_names)

    @property
    def n_edges(self) -> int:
        return int(self.allowed.sum())

    def head_src(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_src(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def srcs_before(self, layer: int) -> int:
        """Number of sources that precede layer `layer`'s attention."""
        return 1 + layer * (self.n_heads + 1)

    def dst_base(self, layer: int) -> int:
        return layer * (self.n_heads + 2 * self.n_kv + 1)

    def q_dsts(self, layer: int) -> range:
        b = self.dst_base(layer)
        return range(b, b + self.n_heads)

    def k_dsts(self, layer: int) -> range:
        b = self.dst_base(layer) + self.n_heads
        return range(b, b + self.n_kv)

    def v_dsts(self, layer: int) -> range:
        b = self.dst_base(layer) + self.n_heads + self.n_kv
        return range(b, b + self.n_kv)

    def mlp_dst(self, layer: int) -> int:
        return self.dst_base(layer) + self.n_heads + 2 * self.n_kv

    @property
    def end_dst(self) -> int:
        return self.n_dst - 1

    def dst_layer(self, dst: int) -> int:
        """The block a destination belongs to (n_layers for Resid End)."""
        return min(dst // (self.n_heads + 2 * self.n_kv + 1), self.n_layers)

    def component(self, name: str) -> str:
        """A destination's component: "A3.2.Q" → "A3.2", "A3.KV1.K" → "A3.KV1"; others unchanged."""
        return name.rsplit(".", 1)[0] if name.endswith((".Q", ".K", ".V")) else name

    def head_of_src(self, src: int) -> tuple[int, int] | None:
        if src == 0:
            return None
        layer, h = divmod(src - 1, self.n_heads + 1)
        return (layer, h) if h < self.n_heads else None


def build_graph(model: HookedTransformer) -> Graph:
    cfg = model.cfg
    check_model(model)
    L, H = cfg.n_layers, cfg.n_heads
    K = cfg.n_key_value_heads or H
    src_names, src_pos = ["Resid Start"], [-1.0]
    dst_names, dst_pos = [], []
    for l in range(L):
        src_names += [HeadId(l, h).node for h in range(H)] + [f"MLP {l}"]
        src_pos += [l + 0.25] * H + [l + 0.75]
        kv = [HeadId(l, g).node if K == H else f"A{l}.KV{g}" for g in range(K)]
        dst_names += [f"A{l}.{h}.Q" for h in range(H)] + [f"{n}.K" for n in kv] + [f"{n}.V" for n in kv] + [f"MLP {l}"]
        dst_pos += [float(l)] * (H + 2 * K) + [l + 0.5]
    dst_names.append("Resid End")
    dst_pos.append(float(L))
    allowed = torch.tensor(src_pos)[:, None] < torch.tensor(dst_pos)[None, :]
    return Graph(L, H, K, src_names, dst_names, allowed)


def check_model(model: HookedTransformer) -> None:
    cfg = model.cfg
    from transformer_lens.utilities.architectures import (
        POST_NORM_ARCHITECTURES,  # OLMo 2/3: norm before the add
    )

    post_norm = getattr(cfg, "use_normalization_before_and_after", False) or cfg.original_architecture in POST_NORM_ARCHITECTURES
    if cfg.attn_only or cfg.parallel_attn_mlp or post_norm:
        raise InputError(f"{cfg.model_name}: circuit discovery needs sequential attention + MLP blocks whose "
                         "outputs add directly to the residual stream (no parallel blocks, no post-norms)")
    if cfg.n_key_value_heads and cfg.n_heads % cfg.n_key_value_heads:
        raise InputError(f"{cfg.model_name}: {cfg.n_heads} heads do not split into {cfg.n_key_value_heads} KV groups")


@contextlib.contextmanager
def graph_hooks_enabled(model: HookedTransformer):
    """Temporarily turn on the split q/k/v input and hook_mlp_in hook points (restored after)."""
    cfg = model.cfg
    saved = cfg.use_split_qkv_input, cfg.use_hook_mlp_in
    cfg.use_split_qkv_input, cfg.use_hook_mlp_in = True, True
    try:
        yield
    finally:
        cfg.use_split_qkv_input, cfg.use_hook_mlp_in = saved


def kv_weights(attn):
    """(W_K, W_V) per KV head: [n_kv, d_model, d_head]."""
    return (attn._W_K, attn._W_V) if hasattr(attn, "_W_K") else (attn.W_K, attn.W_V)
