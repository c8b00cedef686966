"""The computational graph of a TransformerLens model, as auto-circuit names it (sources, destinations, GQA inputs).

Block layouts the graph expresses (circuits/discovery/__init__.py has the names and EAP):

Sequential (GPT-2, Llama, ...): resid_mid = resid_pre + attn_out; resid_post = resid_mid + mlp_out,
so MLP l reads layer l's heads. Order: layer l's Q/K/V inputs < its heads < MLP l's input < MLP l.

Parallel attention + MLP (GPT-J, GPT-NeoX, Phi; cfg.parallel_attn_mlp): resid_post = resid_pre +
attn_out + mlp_out. TransformerLens feeds hook_mlp_in with resid_pre, like the q/k/v inputs, so MLP
l's input sits with layer l's attention inputs: layer l's heads are not upstream of MLP l (no edge).

Post-norm (Gemma 2/3: resid += ln1_post(attn_out), resid += ln2_post(mlp_out); OLMo 2/3: resid +=
ln1(attn_out), resid += ln2(mlp_out), with no norm on the block's inputs). The MLP is one source,
so its output is hook_mlp_out (after the norm) as before. A layer's heads no longer add linearly:
with c_h = z_h·W_O[h] + b_O/H [B, P, d] and the layer's pre-norm output a = Σ_h c_h, the norm gives
w ⊙ a / s (RMSNorm; LayerNorm centres a and adds b), s = sqrt(mean_d a² + eps) [B, P, 1], so head h's
write to the residual in a run is defined as w ⊙ c_h / s (+ b/H), with s the norm scale of THAT run.
Its ablation value is the same formula on the ablated z, with s computed from the ablated z's own
total, so the writes sum to the layer's real output in every run (clean, edge-patched, ablated) and
a fully ablated layer writes exactly its ablated output. An edge out of a post-normed head therefore
carries w ⊙ (c_h / s − c_h^abl / s^abl): the per-run scale is part of the edge's value (`head_writes`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from interp.errors import InputError
from interp.head_ids import HeadId

# ---------------------------------------------------------------------------------------------
# graph


@dataclass
class Graph:
    """Sources and destinations of a model's graph (module doc) and which edges exist.

    src_names [n_src], dst_names [n_dst]; allowed: Bool [n_src, n_dst] (source before destination).
    Index layout: source 0 is Resid Start; layer l's heads are 1 + l·(H+1) + h, its MLP 1 + l·(H+1) + H.
    Destinations of layer l start at l·(H + 2·K + 1): H query inputs, K key inputs, K value inputs,
    the MLP input; Resid End is last. parallel: the MLP reads the block's input (no head → own-MLP edge)."""

    n_layers: int
    n_heads: int
    n_kv: int
    src_names: list[str]
    dst_names: list[str]
    allowed: torch.Tensor
    parallel: bool = False

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

    def mlp_srcs_before(self, layer: int) -> int:
        """Number of sources MLP `layer`'s input can read (its own layer's heads only when sequential)."""
        return self.srcs_before(layer) if self.parallel else self.mlp_src(layer)

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
        dst_pos += [float(l)] * (H + 2 * K) + [float(l) if cfg.parallel_attn_mlp else l + 0.5]
    dst_names.append("Resid End")
    dst_pos.append(float(L))
    allowed = torch.tensor(src_pos)[:, None] < torch.tensor(dst_pos)[None, :]
    return Graph(L, H, K, src_names, dst_names, allowed, parallel=bool(cfg.parallel_attn_mlp))


def check_model(model: HookedTransformer) -> None:
    """Refuse, in one line naming the feature, a model whose blocks the graph cannot express."""
    cfg = model.cfg
    if cfg.attn_only:
        raise InputError(f"{cfg.model_name}: circuit discovery needs an MLP in every block; attention-only models "
                         "are not supported")
    if cfg.n_key_value_heads and cfg.n_heads % cfg.n_key_value_heads:
        raise InputError(f"{cfg.model_name}: {cfg.n_heads} heads do not split into {cfg.n_key_value_heads} KV groups")
    if cfg.n_key_value_heads and getattr(cfg, "ungroup_grouped_query_attention", False):
        raise InputError(f"{cfg.model_name}: circuit discovery needs grouped K/V inputs; "
                         "ungroup_grouped_query_attention is not supported")
    if getattr(cfg, "load_in_4bit", False):
        raise InputError(f"{cfg.model_name}: circuit discovery needs dense W_O weights; 4-bit models are not supported")
    for layer in range(cfg.n_layers):
        norm = attn_out_norm(model, layer)
        if norm is not None and type(norm).__name__ not in _SPLITTABLE_NORMS:
            raise InputError(f"{cfg.model_name}: the post-norm {type(norm).__name__} after attention cannot be split "
                             "into per-head writes (RMSNorm and LayerNorm can)")


# ---------------------------------------------------------------------------------------------
# post-norms: each head's write to the residual (module doc)

_SPLITTABLE_NORMS = ("RMSNorm", "RMSNormPre", "LayerNorm", "LayerNormPre")


def is_post_norm(model: HookedTransformer) -> bool:
    """OLMo 2/3 style: the block's norms act on the attention and MLP outputs, not on their inputs."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    return model.cfg.original_architecture in POST_NORM_ARCHITECTURES


def input_norm(model: HookedTransformer, layer: int):
    """The norm between the residual and the q/k/v inputs' projections (ln1), or None (OLMo 2/3)."""
    return None if is_post_norm(model) else model.blocks[layer].ln1


def attn_out_norm(model: HookedTransformer, layer: int):
    """The norm applied to layer `layer`'s attention output before it joins the residual, or None:
    ln1_post (Gemma 2/3, use_normalization_before_and_after), ln1 (OLMo 2/3)."""
    block = model.blocks[layer]
    if getattr(model.cfg, "use_normalization_before_and_after", False):
        return block.ln1_post
    return block.ln1 if is_post_norm(model) else None


def head_writes(model: HookedTransformer, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Each head's write to the residual stream [H, B, P, d] from z [B, P, H, d_head] (on z's device):
    z_h·W_O[h] without a post-norm (b_O is a constant outside the graph); with one, head h's share
    w ⊙ c_h / s (+ b/H) of the normed output, s from Σ_h c_h of this z (module doc)."""
    attn = model.blocks[layer].attn
    c = torch.einsum("bphe,hed->hbpd", z, attn.W_O)
    norm = attn_out_norm(model, layer)
    if norm is None:
        return c
    return split_norm(norm, c + attn.b_O.to(c.device) / c.shape[0])


def split_norm(norm, parts: torch.Tensor) -> torch.Tensor:
    """parts [n, ..., d] → each part's share [n, ..., d] of norm(Σ parts), with the norm's scale s of
    the sum (TransformerLens' RMSNorm / LayerNorm arithmetic: float32 for half models, eps inside
    the root); the shares sum to norm(Σ parts) up to rounding."""
    name = type(norm).__name__
    if name not in _SPLITTABLE_NORMS:
        raise InputError(f"the post-norm {name} cannot be split into per-head writes (RMSNorm and LayerNorm can)")
    dtype = parts.dtype
    x = parts if dtype in (torch.float32, torch.float64) else parts.float()
    if name.startswith("LayerNorm"):
        x = x - x.mean(-1, keepdim=True)
    scale = (x.sum(0).pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    out = (x / scale).to(dtype)
    if hasattr(norm, "w"):
        out = out * norm.w.to(out.device)
    if hasattr(norm, "b"):
        out = out + norm.b.to(out.device) / parts.shape[0]
    return out


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
