"""Task-agnostic circuit discovery: a computational graph of a TransformerLens model, edge
attribution patching (EAP, EAP-IG), exact edge patching, ACDC-style pruning and faithfulness curves.

Graph (names as auto-circuit writes them):
  sources (outputs)   "Resid Start" (the embedding), "A{l}.{h}" (head h's write z_h·W_O[h]), "MLP {l}"
  destinations        "A{l}.{h}.Q" (the residual copy head h's query reads), the K and V inputs,
  (inputs)            "MLP {l}" (the MLP's input), "Resid End" (the final norm's input)
Every destination's input is the sum of the outputs of all sources before it (plus constant biases),
so an edge u → v is one term of that sum. An edge is *removed* by replacing the term with the
source's ablation value: input_v = resid_v − Σ_{u removed} (out_u − ablated_u).
Order: Resid Start < layer l's Q/K/V < layer l's heads < MLP l's input < MLP l < layer l+1 … < Resid End.

GQA. A KV head computes one key and one value, shared by the n_heads / n_kv_heads query heads of
its group, from one input. The graph keeps that: K and V inputs exist once per KV head, named
"A{l}.KV{g}.K" / "A{l}.KV{g}.V" (g = KV head; it serves query heads g·r … g·r + r − 1 with
r = n_heads / n_kv_heads); patching an edge into it changes the keys or values all r heads read,
exactly as in the model. Without GQA (n_kv_heads = n_heads) the names are auto-circuit's
"A{l}.{h}.K" / "A{l}.{h}.V". Query inputs are per query head.

EAP (Syed et al. 2023): score(u → v) = Σ_prompts,positions (clean_u − ablated_u) · ∂metric/∂input_v
on the clean run, averaged over prompts (for logit_diff; for the kl metric, a cost, the sign is the
opposite), so a score is positive when the edge helps: the first-order loss when it is ablated: one clean forward + backward for every edge at once. The
input gradients come from hook_q/k/v and hook_mlp_in gradients: ∂m/∂input of head h's query =
LN1ᵀ(∂m/∂q_h · W_Q[h]ᵀ) (the norm's vector-Jacobian product at that layer's residual), so no split
copies are needed in the backward pass. EAP-IG (Hanna et al. 2024): the gradient is averaged over
m points (default 5) with input embeddings ablated + (k/m)(clean − ablated), k = 1 … m.
Ablation values (interp.patching): mean over the corrupted prompts of the same group by default.

Faithfulness (MIB, Mueller et al. 2025): f(C) = (m(C) − m(∅)) / (m(full) − m(∅)) with m the mean
logit difference, ∅ the empty circuit (every edge, or every head, ablated). `discover` selects a
circuit on one prompt set and measures every reported faithfulness on `eval_pairs` when given
(rows carry "split": "select" or "eval"). `mib_summary` gives MIB's CPR and CMD of a curve.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens import HookedTransformer

from interp.circuit import Circuit, Edge
from interp.errors import InputError
from interp.patching import (
    Ablation,
    PromptPairs,
    ablation_values,
    check_ablation,
    check_metric,
    final_logits,
    head_ablation_hooks,
    metric_per_prompt,
    patch_heads,
    run_last_logits,
)

METHODS = ("eap", "eap-ig", "acdc", "patching")


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
        src_names += [f"A{l}.{h}" for h in range(H)] + [f"MLP {l}"]
        src_pos += [l + 0.25] * H + [l + 0.75]
        kv = [f"A{l}.{g}" if K == H else f"A{l}.KV{g}" for g in range(K)]
        dst_names += [f"A{l}.{h}.Q" for h in range(H)] + [f"{n}.K" for n in kv] + [f"{n}.V" for n in kv] + [f"MLP {l}"]
        dst_pos += [float(l)] * (H + 2 * K) + [l + 0.5]
    dst_names.append("Resid End")
    dst_pos.append(float(L))
    allowed = torch.tensor(src_pos)[:, None] < torch.tensor(dst_pos)[None, :]
    return Graph(L, H, K, src_names, dst_names, allowed)


def check_model(model: HookedTransformer) -> None:
    cfg = model.cfg
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES  # OLMo 2/3: norm before the add

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


def _kv_weights(attn):
    """(W_K, W_V) per KV head: [n_kv, d_model, d_head]."""
    return (attn._W_K, attn._W_V) if hasattr(attn, "_W_K") else (attn.W_K, attn.W_V)


# ---------------------------------------------------------------------------------------------
# exact edge patching


@dataclass
class EdgeRunCache:
    """A recorded edge-patched run: resid_pre [layer, B, P, d] entering each block, resid_end
    [B, P, d] after the last block, delta [n_src, B, P, d] (each source's output − its ablation value)."""

    resid_pre: torch.Tensor
    resid_end: torch.Tensor
    delta: torch.Tensor


def run_with_edges(model: HookedTransformer, graph: Graph, part: PromptPairs, abl: Ablation,
                   keep: torch.Tensor, *, start_layer: int | None = None, cache: EdgeRunCache | None = None,
                   record: bool = False):
    """Run the clean prompts with only the edges in `keep` (Bool [n_src, n_dst]); every other edge
    carries its source's ablation value. → logits at the last positions [batch, vocab]
    (and an EdgeRunCache with `record`). With `start_layer` and the `cache` of a run whose edges into
    layers < start_layer were the same, only blocks start_layer … end are recomputed."""
    cfg, dev = model.cfg, model.cfg.device
    B, P = part.clean.shape
    removed = (graph.allowed & ~keep.bool()).float().to(dev)
    delta = torch.zeros(graph.n_src, B, P, cfg.d_model, device=dev, dtype=cfg.dtype)
    if start_layer is not None:
        n0 = graph.srcs_before(start_layer)
        delta[:n0] = cache.delta[:n0]
    resid_pre: list[torch.Tensor] = []
    embed = abl.embed.to(dev, cfg.dtype)  # ablation values are float32; the model may be bf16/fp16

    flat = delta.view(graph.n_src, -1)

    def correct(act, n_src, cols):  # act [B, P, (c,) d]; subtract Σ_u removed[u, c] · delta_u
        r = removed[:n_src, cols]
        if not bool(r.any()):
            return act
        if isinstance(cols, int):
            return act - (r[None] @ flat[:n_src]).view(B, P, cfg.d_model)
        corr = (r.T @ flat[:n_src]).view(len(cols), B, P, cfg.d_model)  # one GEMM, no copies of delta
        return act - corr.permute(1, 2, 0, 3)

    def on_embed(act, hook):
        delta[0] = act - embed
        return act

    def on_resid(layer):
        def hook(act, hook):
            if record:
                resid_pre.append(act.detach().clone())
            return act
        return hook

    def on_input(layer, cols):
        n = graph.srcs_before(layer)
        return lambda act, hook: correct(act, n, list(cols))

    def on_z(layer):
        W_O = model.blocks[layer].attn.W_O
        z_abl = abl.z[layer].to(dev, cfg.dtype)
        first = graph.head_src(layer, 0)

        def hook(z, hook):
            delta[first:first + cfg.n_heads] = torch.einsum("bphe,hed->hbpd", z - z_abl, W_O)
            return z
        return hook

    def on_mlp_in(layer):
        n = graph.mlp_src(layer)
        return lambda act, hook: correct(act, n, graph.mlp_dst(layer))

    def on_mlp_out(layer):
        mlp_abl = abl.mlp_out[layer].to(dev, cfg.dtype)

        def hook(act, hook):
            delta[graph.mlp_src(layer)] = act - mlp_abl
            return act
        return hook

    first = start_layer if start_layer is not None else 0
    hooks = [] if start_layer is not None else [("blocks.0.hook_resid_pre", on_embed)]
    for l in range(first, cfg.n_layers):
        hooks += [(f"blocks.{l}.hook_resid_pre", on_resid(l)),
                  (f"blocks.{l}.hook_q_input", on_input(l, graph.q_dsts(l))),
                  (f"blocks.{l}.hook_k_input", on_input(l, graph.k_dsts(l))),
                  (f"blocks.{l}.hook_v_input", on_input(l, graph.v_dsts(l))),
                  (f"blocks.{l}.attn.hook_z", on_z(l)),
                  (f"blocks.{l}.hook_mlp_in", on_mlp_in(l)),
                  (f"blocks.{l}.hook_mlp_out", on_mlp_out(l))]
    with torch.no_grad(), graph_hooks_enabled(model):
        if start_layer is None:
            end = model.run_with_hooks(part.clean.to(dev), fwd_hooks=hooks, stop_at_layer=cfg.n_layers)
        elif start_layer < cfg.n_layers:
            end = model.run_with_hooks(cache.resid_pre[start_layer].to(dev), fwd_hooks=hooks,
                                       start_at_layer=start_layer, stop_at_layer=cfg.n_layers)
        else:
            end = cache.resid_end.to(dev)
        logits = final_logits(model, correct(end, graph.n_src, graph.end_dst), part.last)
    if not record:
        return logits
    if start_layer is not None:
        resid_pre = list(cache.resid_pre[:start_layer]) + resid_pre
    return logits, EdgeRunCache(torch.stack(resid_pre), end.detach().clone(), delta)


# ---------------------------------------------------------------------------------------------
# edge attribution patching


@dataclass
class Attribution:
    """Edge scores from EAP / EAP-IG: scores [n_src, n_dst] (mean over prompts of the first-order
    loss of the metric when the edge is ablated: positive when the edge helps; 0 where no edge exists)."""

    graph: Graph
    scores: torch.Tensor
    method: str
    metric: str
    ablation: str
    clean_metric: float
    meta: dict[str, Any] = field(default_factory=dict)

    def ranked_edges(self, absolute: bool = True) -> torch.Tensor:
        """Every existing edge as (src, dst) rows [n_edges, 2], by |score| (or score) descending."""
        src, dst = self.graph.allowed.nonzero(as_tuple=True)
        values = self.scores[src, dst]
        order = (values.abs() if absolute else values).argsort(descending=True, stable=True)
        return torch.stack([src[order], dst[order]], 1)

    def top_mask(self, k: int, absolute: bool = True) -> torch.Tensor:
        """Bool [n_src, n_dst]: the k edges of largest |score| (or largest score)."""
        top = self.ranked_edges(absolute)[:k]
        mask = torch.zeros_like(self.graph.allowed)
        mask[top[:, 0], top[:, 1]] = True
        return mask

    def head_scores(self) -> torch.Tensor:
        """Node attribution of each head's output [layer, head]: Σ over its outgoing edges (the
        first-order loss of the metric when the head's whole output is ablated; positive = helps)."""
        g = self.graph
        rows = [[g.head_src(l, h) for h in range(g.n_heads)] for l in range(g.n_layers)]
        return self.scores.sum(1)[torch.tensor(rows)]


def attribute(model: HookedTransformer, pairs: PromptPairs, *, method: str = "eap", metric: str = "logit_diff",
              ablation: str | Ablation = "mean", steps: int = 5, batch_size: int = 16, seed: int = 0,
              progress: bool = False) -> Attribution:
    """Score every edge of the graph with EAP or EAP-IG (`steps` interpolation points)."""
    check_metric(metric)
    if method not in ("eap", "eap-ig"):
        raise InputError(f"attribution method {method!r} is not eap or eap-ig")
    if method == "eap" and metric == "kl":
        raise InputError("EAP with the kl metric is degenerate (its gradient at the clean run is zero); "
                         "use metric logit_diff or method eap-ig")
    if steps < 1:
        raise InputError(f"steps must be ≥ 1, got {steps}")
    graph = build_graph(model)
    abl = ablation if isinstance(ablation, Ablation) else ablation_values(model, pairs, ablation, seed=seed)
    scores = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64)
    clean_total = 0.0
    batches = list(pairs.batches(batch_size))
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=method, leave=False)
    with _frozen(model):
        for index, part in batches:
            part_abl = abl.select(index, part.clean.shape[1])
            s, clean = _batch_scores(model, graph, part, part_abl, method, metric, steps)
            scores += s
            clean_total += clean
    scores = torch.where(graph.allowed, scores / len(pairs), 0.0).to(torch.float32 if model.cfg.dtype != torch.float64 else torch.float64)
    return Attribution(graph, scores, method, metric, abl.kind, clean_total / len(pairs),
                       {"steps": steps if method == "eap-ig" else 1, "n_prompts": len(pairs)})


@contextlib.contextmanager
def _frozen(model):
    """No parameter gradients (only activation gradients are needed)."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in saved:
            p.requires_grad_(r)


def _batch_scores(model, graph: Graph, part: PromptPairs, abl: Ablation, method: str, metric: str, steps: int):
    """Σ over this batch's prompts of the edge scores [n_src, n_dst], and Σ of the clean metric."""
    alphas = [1.0] if method == "eap" else [k / steps for k in range(1, steps + 1)]
    clean = _grad_run(model, graph, part, abl, 1.0, metric, None, want_outputs=True)
    grads = clean["grads"] if method == "eap" else torch.zeros_like(clean["grads"])
    if method == "eap-ig":
        for a in alphas:
            run = clean if a == 1.0 else _grad_run(model, graph, part, abl, a, metric, clean["logprobs"])
            grads += run["grads"] / len(alphas)
    deltas = _deltas(model, graph, abl, clean)  # [n_src, B, P, d]
    sign = 1.0 if metric == "kl" else -1.0  # positive = helps: −Δlogit diff, +ΔKL when the edge is ablated
    scores = sign * (deltas.flatten(1) @ grads.flatten(1).T)
    return scores.cpu().double(), float(clean["metric"].sum())


def _grad_run(model, graph: Graph, part: PromptPairs, abl: Ablation, alpha: float, metric: str,
              clean_logprobs, want_outputs: bool = False) -> dict:
    """Forward + backward at input embedding ablated + alpha·(clean − ablated). Returns "grads"
    [n_dst, B, P, d] (∂ Σ_prompts metric / ∂ each destination's input), "metric" [B], "logprobs",
    and with want_outputs the clean outputs "embed", "z" [L, B, P, H, dh], "mlp_out" [L, B, P, d]."""
    cfg, dev = model.cfg, model.cfg.device
    acts: dict[tuple[str, int], torch.Tensor] = {}
    outputs: dict[tuple[str, int], torch.Tensor] = {}
    embed_abl = abl.embed.to(dev, cfg.dtype)

    def on_embed(act, hook):
        if want_outputs:
            outputs[("embed", 0)] = act.detach()
        x = embed_abl + alpha * (act - embed_abl) if alpha != 1.0 else act
        return x.detach().requires_grad_(True)

    def keep(name, layer, as_output=False):
        def hook(act, hook):
            if as_output:
                outputs[(name, layer)] = act.detach()
            else:
                acts[(name, layer)] = act
            return act
        return hook

    hooks = [("blocks.0.hook_resid_pre", on_embed)]
    for l in range(cfg.n_layers):
        hooks += [(f"blocks.{l}.hook_resid_pre", keep("resid", l)), (f"blocks.{l}.attn.hook_q", keep("q", l)),
                  (f"blocks.{l}.attn.hook_k", keep("k", l)), (f"blocks.{l}.attn.hook_v", keep("v", l)),
                  (f"blocks.{l}.hook_mlp_in", keep("mlp_in", l))]
        if want_outputs:
            hooks += [(f"blocks.{l}.attn.hook_z", keep("z", l, True)), (f"blocks.{l}.hook_mlp_out", keep("mlp_out", l, True))]
    saved = cfg.use_hook_mlp_in
    cfg.use_hook_mlp_in = True
    try:
        with torch.enable_grad():
            end = model.run_with_hooks(part.clean.to(dev), fwd_hooks=hooks, stop_at_layer=cfg.n_layers)
            logits = final_logits(model, end, part.last)
            logprobs = logits.detach().float().log_softmax(-1)
            values = metric_per_prompt(metric, logits, part, clean_logprobs if clean_logprobs is not None else logprobs)
            names = [(n, l) for l in range(cfg.n_layers) for n in ("q", "k", "v", "mlp_in")]
            live = [k for k in names if acts[k].requires_grad]  # a detached activation is a bypassed hook
            found = torch.autograd.grad(values.sum(), [acts[k] for k in live] + [end], allow_unused=True)
            by_name = dict(zip(live, found))
            got = [by_name.get(k) for k in names] + [found[-1]]
    finally:
        cfg.use_hook_mlp_in = saved
    hook_of = {"q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "mlp_in": "hook_mlp_in"}
    missing = [f"blocks.{l}.{hook_of[n]}" for (n, l), v in zip(names, got) if v is None]
    if got[-1] is None:
        missing.append(f"blocks.{cfg.n_layers - 1} output (the final residual)")
    if missing:  # a hook the metric does not depend on: the model bypasses it, so its edge scores would be 0
        raise RuntimeError(f"EAP: no gradient reaches {', '.join(missing[:4])}"
                           f"{f' and {len(missing) - 4} more' if len(missing) > 4 else ''}; the model's forward "
                           "bypasses these hook points, so their edges cannot be attributed")
    g = dict(zip(names, got))
    grads = torch.zeros(graph.n_dst, *part.clean.shape, cfg.d_model, device=dev, dtype=cfg.dtype)
    for l in range(cfg.n_layers):
        attn, x = model.blocks[l].attn, acts[("resid", l)].detach()
        W_K, W_V = _kv_weights(attn)
        q = _ln_vjp(model.blocks[l].ln1, x, torch.einsum("bphe,hde->bphd", g[("q", l)], attn.W_Q))
        k = _ln_vjp(model.blocks[l].ln1, x, torch.einsum("bphe,hde->bphd", g[("k", l)], W_K))
        v = _ln_vjp(model.blocks[l].ln1, x, torch.einsum("bphe,hde->bphd", g[("v", l)], W_V))
        grads[list(graph.q_dsts(l))] = q.permute(2, 0, 1, 3)
        grads[list(graph.k_dsts(l))] = k.permute(2, 0, 1, 3)
        grads[list(graph.v_dsts(l))] = v.permute(2, 0, 1, 3)
        grads[graph.mlp_dst(l)] = g[("mlp_in", l)]
    grads[graph.end_dst] = got[-1]
    out = {"grads": grads, "metric": values.detach(), "logprobs": logprobs}
    if want_outputs:
        out["embed"] = outputs[("embed", 0)]
        out["z"] = torch.stack([outputs[("z", l)] for l in range(cfg.n_layers)])
        out["mlp_out"] = torch.stack([outputs[("mlp_out", l)] for l in range(cfg.n_layers)])
    return out


def _ln_vjp(ln, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """gᵀ·∂ln(x)/∂x for one residual x [B, P, d] read by several heads, g [B, P, n, d] → [B, P, n, d]."""
    xe = x[:, :, None].expand_as(g).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (out,) = torch.autograd.grad(ln(xe), xe, g)
    return out


def _deltas(model, graph: Graph, abl: Ablation, clean: dict) -> torch.Tensor:
    """ablated − clean output of every source [n_src, B, P, d]."""
    cfg, dev = model.cfg, model.cfg.device
    B, P = clean["embed"].shape[:2]
    d = torch.zeros(graph.n_src, B, P, cfg.d_model, device=dev, dtype=cfg.dtype)
    d[0] = abl.embed.to(dev, cfg.dtype) - clean["embed"]
    for l in range(cfg.n_layers):
        first = graph.head_src(l, 0)
        dz = abl.z[l].to(dev, cfg.dtype) - clean["z"][l]
        d[first:first + cfg.n_heads] = torch.einsum("bphe,hed->hbpd", dz, model.blocks[l].attn.W_O)
        d[graph.mlp_src(l)] = abl.mlp_out[l].to(dev, cfg.dtype) - clean["mlp_out"][l]
    return d


# ---------------------------------------------------------------------------------------------
# evaluation: circuits with everything else ablated


def edge_circuit_metric(model, graph: Graph, pairs: PromptPairs, abl: Ablation, keep: torch.Tensor, metric: str,
                        clean_logprobs: torch.Tensor | None = None, batch_size: int = 16) -> float:
    """Mean metric of the clean prompts with only `keep` edges (the rest ablated)."""
    total = 0.0
    for index, part in pairs.batches(batch_size):
        logits = run_with_edges(model, graph, part, abl.select(index, part.clean.shape[1]), keep)
        lp = clean_logprobs[index] if clean_logprobs is not None else None
        total += float(metric_per_prompt(metric, logits, part, lp).sum())
    return total / len(pairs)


def head_circuit_metric(model, pairs: PromptPairs, abl: Ablation, kept_heads: torch.Tensor, metric: str,
                        clean_logprobs: torch.Tensor | None = None, batch_size: int = 32) -> float:
    """Mean metric with every head outside `kept_heads` (Bool [layer, head]) ablated; MLPs and the
    embedding intact (Wang et al.'s faithfulness setting)."""
    total = 0.0
    for index, part in pairs.batches(batch_size):
        hooks = head_ablation_hooks(abl.select(index, part.clean.shape[1]), ~kept_heads.bool(), model.cfg.device)
        logits = run_last_logits(model, part.clean, part.last, hooks)
        lp = clean_logprobs[index] if clean_logprobs is not None else None
        total += float(metric_per_prompt(metric, logits, part, lp).sum())
    return total / len(pairs)


def size_grid(n: int, points: int = 12, start: int = 1) -> list[int]:
    """About `points` sizes from `start` to n, evenly spaced on a log scale, always ending at n."""
    if n <= start:
        return [n]
    sizes = {round(math.exp(math.log(start) + (math.log(n) - math.log(start)) * i / (points - 1)))
             for i in range(points)}
    return sorted(s for s in sizes if start <= s <= n) if n in sizes else sorted(sizes | {n})


# MIB's circuit sizes, as fractions of the scored items (edges, or heads at node level), and its
# integration rule: MIB-circuit-track, MIB_circuit_track/evaluation.py, evaluate_area_under_curve
# (percentages = (.001, .002, .005, .01, .02, .05, .1, .2, .5, 1); k = int(pct · n); trapezoids on the
# linear fraction axis, log_scale=False as run_evaluation.py calls it; CPR = area under the
# faithfulness curve, from the signed ranking (abs=False); CMD = area of |1 − faithfulness|, from the
# ranking by |score| (abs=True), as print_results.py picks the abs-False / abs-True runs).
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def mib_sizes(n: int) -> list[int]:
    """MIB's circuit sizes for n scored items: int(fraction · n) for each of MIB_FRACTIONS."""
    return [int(f * n) for f in MIB_FRACTIONS]


def mib_area(values: Sequence[float], *, from_one: bool) -> float:
    """MIB's trapezoidal area over MIB_FRACTIONS: of the faithfulness values (CPR) or of |1 − value| (CMD)."""
    if len(values) != len(MIB_FRACTIONS):
        raise InputError(f"a MIB curve has {len(MIB_FRACTIONS)} points, got {len(values)}")
    y = [abs(1.0 - v) for v in values] if from_one else list(values)
    x = MIB_FRACTIONS
    return sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))


def faithfulness(value: float, full: float, empty: float) -> float:
    """(m(C) − m(∅)) / (m(full) − m(∅)); NaN when the full and the empty model score the same."""
    gap = full - empty
    return (value - empty) / gap if abs(gap) > 1e-12 else float("nan")


def edge_curve(model, attribution: Attribution, pairs: PromptPairs, abl: Ablation,
               sizes: Sequence[int], batch_size: int = 16, *, absolute: bool = True,
               split: str = "select") -> list[dict[str, float]]:
    """Faithfulness by edges kept: the top-k edges (by |score|, or by score with absolute=False),
    every other edge ablated, on `pairs`. Row: kind "edges", n_edges, n_heads, value (normalised
    faithfulness, module doc), ratio (m(C) / m(full)), logit_diff, split."""
    full = _mean_logit_diff(model, pairs)
    graph = attribution.graph
    empty = edge_circuit_metric(model, graph, pairs, abl, torch.zeros_like(graph.allowed), "logit_diff",
                                batch_size=batch_size)
    rows = []
    for k in sizes:
        keep = attribution.top_mask(k, absolute=absolute)
        value = edge_circuit_metric(model, graph, pairs, abl, keep, "logit_diff", batch_size=batch_size)
        rows.append({"kind": "edges", "n_edges": int(k), "n_heads": len(_heads_in(graph, keep)),
                     "value": faithfulness(value, full, empty), "ratio": value / full, "logit_diff": value,
                     "split": split})
    return rows


def head_curve(model, ranking: Sequence[tuple[int, int]], pairs: PromptPairs, abl: Ablation,
               sizes: Sequence[int], graph: Graph | None = None, batch_size: int = 32, *,
               split: str = "select") -> list[dict[str, float]]:
    """Faithfulness by heads kept: the first k heads of `ranking` kept, every other head's output
    ablated (MLPs kept), on `pairs`. value = (m(C) − m(no head)) / (m(full) − m(no head)); ratio = m(C) / m(full)."""
    cfg = model.cfg
    graph = graph or build_graph(model)
    full = _mean_logit_diff(model, pairs)
    none = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.bool)
    empty = head_circuit_metric(model, pairs, abl, none, "logit_diff", batch_size=batch_size)
    rows = []
    for k in sizes:
        kept = none.clone()
        for l, h in ranking[:k]:
            kept[l, h] = True
        value = empty if k == 0 else head_circuit_metric(model, pairs, abl, kept, "logit_diff", batch_size=batch_size)
        rows.append({"kind": "heads", "n_heads": int(k), "n_edges": _edges_among_heads(graph, kept),
                     "value": faithfulness(value, full, empty), "ratio": value / full, "logit_diff": value,
                     "split": split})
    return rows


def mib_summary(model, pairs: PromptPairs, abl: Ablation, *, edge_scores: Attribution | None = None,
                head_scores: torch.Tensor | None = None, batch_size: int = 16) -> dict[str, Any]:
    """MIB's circuit-track summaries on `pairs` (the held-out prompts): the faithfulness curves at
    MIB's sizes (fractions of edges, or of heads for node-level `head_scores` [layer, head]), CPR
    (signed ranking) and CMD (|score| ranking). → {"level", "n_items", "fractions", "sizes",
    "signed", "absolute" (faithfulness lists), "cpr", "cmd"}."""
    if (edge_scores is None) == (head_scores is None):
        raise InputError("mib_summary needs edge scores or head scores (one of them)")
    out: dict[str, Any] = {"fractions": list(MIB_FRACTIONS)}
    if edge_scores is not None:
        n = edge_scores.graph.n_edges
        sizes = mib_sizes(n)
        for absolute in (False, True):  # the last size is the whole graph: the full model, faithfulness 1
            rows = edge_curve(model, edge_scores, pairs, abl, sizes[:-1], batch_size, absolute=absolute, split="eval")
            out["absolute" if absolute else "signed"] = [r["value"] for r in rows] + [1.0]
        out.update(level="edges", n_items=n)
    else:
        cfg = model.cfg
        n = cfg.n_layers * cfg.n_heads
        sizes = mib_sizes(n)
        graph = build_graph(model)
        flat = head_scores.flatten()
        for absolute in (False, True):
            order = (flat.abs() if absolute else flat).argsort(descending=True, stable=True)
            ranking = [divmod(int(i), cfg.n_heads) for i in order]
            rows = head_curve(model, ranking, pairs, abl, sizes, graph, batch_size=2 * batch_size, split="eval")
            out["absolute" if absolute else "signed"] = [r["value"] for r in rows]
        out.update(level="heads", n_items=n)
    out["sizes"] = sizes
    out["cpr"] = mib_area(out["signed"], from_one=False)
    out["cmd"] = mib_area(out["absolute"], from_one=True)
    return out


def _mean_logit_diff(model, pairs: PromptPairs) -> float:
    total = 0.0
    for _, part in pairs.batches(32):
        total += float(metric_per_prompt("logit_diff", run_last_logits(model, part.clean, part.last), part).sum())
    return total / len(pairs)


def _heads_in(graph: Graph, keep: torch.Tensor) -> set[tuple[int, int]]:
    """Heads a set of edges touches, as a source or through their query input."""
    heads = set()
    src, dst = keep.nonzero(as_tuple=True)
    for s in src.unique().tolist():
        if (h := graph.head_of_src(s)) is not None:
            heads.add(h)
    for d in dst.unique().tolist():
        name = graph.dst_names[d]
        if name.endswith(".Q"):
            layer, head = name[1:-2].split(".")
            heads.add((int(layer), int(head)))
    return heads


def _edges_among_heads(graph: Graph, kept: torch.Tensor) -> int:
    """Edges left when the heads outside `kept` are ablated: from the embedding, MLPs and kept heads
    into MLPs, Resid End, kept heads' queries and the K/V inputs of groups with a kept head."""
    src_ok = torch.ones(graph.n_src, dtype=torch.bool)
    dst_ok = torch.ones(graph.n_dst, dtype=torch.bool)
    r = graph.n_heads // graph.n_kv
    for l in range(graph.n_layers):
        for h in range(graph.n_heads):
            src_ok[graph.head_src(l, h)] = bool(kept[l, h])
            dst_ok[graph.q_dsts(l)[h]] = bool(kept[l, h])
        for g in range(graph.n_kv):
            any_kept = bool(kept[l, g * r:(g + 1) * r].any())
            dst_ok[graph.k_dsts(l)[g]] = dst_ok[graph.v_dsts(l)[g]] = any_kept
    return int((graph.allowed & src_ok[:, None] & dst_ok[None, :]).sum())


def smallest_reaching(rows: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first curve row whose value reaches `target` (rows in increasing size), or None."""
    return next((r for r in rows if r["value"] >= target), None)


# ---------------------------------------------------------------------------------------------
# ACDC-style pruning


def acdc(model: HookedTransformer, attribution: Attribution, pairs: PromptPairs, abl: Ablation, *,
         n_candidates: int = 200, tau: float = 0.01, metric: str = "kl", progress: bool = False) -> dict:
    """Conmy et al.'s pruning over the edges attribution proposes: start from the circuit of the
    `n_candidates` edges of largest |score| (everything else ablated); visit destinations from
    Resid End backwards (reverse topological order); for each incoming edge (smallest |score|
    first) remove it, run the model for real, and keep it removed when the metric (KL to the clean
    model by default; with logit_diff, the drop in logit difference) rises by less than `tau`.
    All prompts run as one batch; blocks below the destination's layer are reused from a cache.
    Returns {"keep": Bool [n_src, n_dst], "n_start", "n_kept", "n_runs", "metric", "value"}."""
    check_metric(metric)
    graph = attribution.graph
    keep = attribution.top_mask(n_candidates)
    clean_lp = torch.zeros(len(pairs), model.cfg.d_vocab_out)
    for index, part in pairs.batches(32):
        clean_lp[index] = run_last_logits(model, part.clean, part.last).float().log_softmax(-1).cpu()
    clean_lp = clean_lp.to(model.cfg.device)
    sign = -1.0 if metric == "logit_diff" else 1.0  # "cost" rises as the circuit gets worse

    def cost(logits):
        return sign * float(metric_per_prompt(metric, logits, pairs, clean_lp).mean())

    logits, cache = run_with_edges(model, graph, pairs, abl, keep, record=True)
    current = cost(logits)
    runs = 1
    dsts = sorted({int(d) for d in keep.nonzero(as_tuple=True)[1]}, key=lambda d: (graph.dst_layer(d), d), reverse=True)
    order = []
    for d in dsts:
        srcs = keep[:, d].nonzero().flatten().tolist()
        order += [(s, d) for s in sorted(srcs, key=lambda s: abs(float(attribution.scores[s, d])))]
    it = order
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(order, desc="acdc", leave=False)
    layer_of_cache = graph.n_layers
    for s, d in it:
        layer = graph.dst_layer(d)
        if layer < layer_of_cache:  # moving down: refresh the cache for the current circuit
            _, cache = run_with_edges(model, graph, pairs, abl, keep, record=True)
            runs += 1
            layer_of_cache = layer
        trial = keep.clone()
        trial[s, d] = False
        value = cost(run_with_edges(model, graph, pairs, abl, trial, start_layer=layer, cache=cache))
        runs += 1
        if value - current < tau:
            keep, current = trial, value
    return {"keep": keep, "n_start": len(order), "n_kept": int(keep.sum()), "n_runs": runs, "metric": metric,
            "value": sign * current, "tau": tau}


# ---------------------------------------------------------------------------------------------
# one call: scores, curves, circuit


def discover(model: HookedTransformer, pairs: PromptPairs, *, task: str = "task", method: str = "eap",
             metric: str = "logit_diff", ablation: str | Ablation = "mean", eval_pairs: PromptPairs | None = None,
             eval_ablation: str | Ablation | None = None, steps: int = 5, target: float = 0.8,
             acdc_candidates: int = 200, tau: float = 0.01, acdc_metric: str = "kl", acdc_prompts: int = 16,
             curve_points: int = 10, head_sizes: Sequence[int] | None = None,
             max_curve_heads: int | None = None, edge_curves: bool = True, head_ranking: str = "mask-ig",
             batch_size: int = 16, seed: int = 0, progress: bool = False) -> tuple[Circuit, dict[str, Any]]:
    """Find a task's circuits on `pairs` (the selection prompts) and measure their faithfulness on
    `eval_pairs` (held-out prompts; without them the selection prompts, and rows say split "select").

    method: "eap" / "eap-ig" score every edge with `metric` (EAP refuses kl: its gradient at the
    clean run is zero; EAP-IG on kl works, its path starts at the ablated input); "acdc" prunes the
    EAP-IG proposal with real forward passes (first `acdc_prompts` prompts, metric `acdc_metric`);
    "patching" scores heads by exact activation patching (no edges).

    Two circuits, each faithful on its own terms:
    - the head circuit (returned; kind "heads", no edges): the first k heads of `head_ranking`
      ("mask-ig": integrated gradients on a head-output mask, `head_mask_ig`; "score": the method's
      head scores), every other head ablated, MLPs intact; k the smallest size of `head_sizes`
      (default: a log grid of `curve_points` sizes plus every 2 % of heads up to 15 %) whose selection-split faithfulness reaches `target` (the largest size when none does);
    - the edge circuit (details["edge_circuit"]; kind "edges", nodes = its edges' endpoints): the
      smallest top-|score| edge set reaching `target` on the selection split (the ACDC result for
      acdc); None for patching.
    Faithfulness is MIB's normalised (m(C) − m(∅)) / (m(full) − m(∅)) of the logit difference.
    Returns (head circuit, details: head_scores (positive = helps), ranking, head_circuit (the
    chosen selection row), held_out (the chosen circuits' held-out rows), attribution, edge_circuit)."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if head_ranking not in ("mask-ig", "score"):
        raise InputError(f"head_ranking must be mask-ig or score, got {head_ranking!r}")
    check_metric(metric)
    if method == "eap" and metric == "kl":
        raise InputError("EAP with the kl metric is degenerate (KL to the clean model has zero gradient at the clean "
                         "run, so every score is 0); use --metric logit_diff, or method eap-ig / acdc")
    if not isinstance(ablation, Ablation):
        check_ablation(ablation)
    cfg = model.cfg
    graph = build_graph(model)
    abl = ablation if isinstance(ablation, Ablation) else ablation_values(model, pairs, ablation, seed=seed)
    held_out = eval_pairs is not None
    ev_pairs = eval_pairs if held_out else pairs
    ev_abl = abl if not held_out else (eval_ablation if isinstance(eval_ablation, Ablation) else ablation_values(
        model, eval_pairs, eval_ablation or abl.kind, seed=seed))
    ev_split = "eval" if held_out else "select"
    details: dict[str, Any] = {"graph_edges": graph.n_edges, "n_prompts": len(pairs), "ablation": abl.kind,
                               "n_eval_prompts": len(ev_pairs), "held_out": held_out, "metric": metric}
    attribution = None
    if method == "patching":
        patched = patch_heads(model, pairs, metric=metric, ablation=abl, batch_size=batch_size, progress=progress)
        head_scores = patched["effect"].view(cfg.n_layers, cfg.n_heads)
    else:
        attr_method = "eap-ig" if method == "acdc" else method
        attribution = attribute(model, pairs, method=attr_method, metric=metric, ablation=abl, steps=steps,
                                batch_size=batch_size, seed=seed, progress=progress)
        head_scores = attribution.head_scores()
    details["head_scores"] = head_scores
    if head_ranking == "mask-ig":
        rank_scores = head_mask_ig(model, pairs, abl, steps=steps, batch_size=batch_size)
        order = rank_scores.flatten().argsort(descending=True, stable=True)  # most helpful first
        details["head_rank_scores"] = rank_scores
    else:
        order = head_scores.flatten().argsort(descending=True, stable=True)  # positive = helps: most helpful first
    ranking = [divmod(int(i), cfg.n_heads) for i in order]
    n_all = cfg.n_layers * cfg.n_heads
    n_heads_max = max_curve_heads or n_all
    if head_sizes is None:
        step = max(1, round(0.02 * n_all))
        head_sizes = set(size_grid(n_heads_max, curve_points)) | set(range(0, int(0.15 * n_all) + 1, step))
    head_sizes = sorted({int(k) for k in head_sizes if 0 <= int(k) <= n_heads_max} | {0})
    select_rows = head_curve(model, ranking, pairs, abl, head_sizes, graph, batch_size=2 * batch_size, split="select")
    chosen_heads = smallest_reaching(select_rows, target) or select_rows[-1]
    eval_rows = head_curve(model, ranking, ev_pairs, ev_abl, head_sizes, graph, batch_size=2 * batch_size,
                           split=ev_split) if held_out else []
    k_heads = int(chosen_heads["n_heads"])
    nodes = [f"A{l}.{h}" for l, h in sorted(ranking[:k_heads])]
    held = {"heads": next((r for r in eval_rows if r["n_heads"] == k_heads), chosen_heads)}
    details.update(head_circuit=chosen_heads, ranking=ranking, head_curve_select=select_rows, head_curve_eval=eval_rows)
    edge_circuit = None
    edge_rows: list[dict] = []
    if attribution is not None:
        details["attribution"] = attribution
        if edge_curves or method == "acdc":
            edge_sizes = size_grid(graph.n_edges, curve_points, start=10)
            sel_edges = edge_curve(model, attribution, pairs, abl, edge_sizes, batch_size=batch_size, split="select")
            chosen = smallest_reaching(sel_edges, target) or sel_edges[-1]
            keep = attribution.top_mask(int(chosen["n_edges"]))
            edge_rows = sel_edges
            if held_out:
                edge_rows = sel_edges + edge_curve(model, attribution, ev_pairs, ev_abl, edge_sizes,
                                                   batch_size=batch_size, split="eval")
            held["edges"] = next(r for r in edge_rows if r["split"] == ev_split and r["n_edges"] == chosen["n_edges"])
        else:
            keep = attribution.top_mask(max(1, graph.n_edges // 100))
        if method == "acdc":
            sub = pairs.select(slice(0, min(acdc_prompts, len(pairs))))
            sub_abl = abl.select(slice(0, len(sub)), sub.clean.shape[1])
            result = acdc(model, attribution, sub, sub_abl, n_candidates=acdc_candidates, tau=tau,
                          metric=acdc_metric, progress=progress)
            keep = result["keep"]
            full = _mean_logit_diff(model, ev_pairs)
            empty = edge_circuit_metric(model, graph, ev_pairs, ev_abl, torch.zeros_like(graph.allowed), "logit_diff",
                                        batch_size=batch_size)
            value = edge_circuit_metric(model, graph, ev_pairs, ev_abl, keep, "logit_diff", batch_size=batch_size)
            result["faithfulness"] = faithfulness(value, full, empty)
            details["acdc"] = {k: v for k, v in result.items() if k != "keep"}
            held["edges"] = {"kind": "acdc", "n_edges": result["n_kept"], "n_heads": len(_heads_in(graph, keep)),
                             "value": result["faithfulness"], "ratio": value / full, "logit_diff": value,
                             "split": ev_split}
            edge_rows.append(held["edges"])
        src, dst = keep.nonzero(as_tuple=True)
        scores = attribution.scores[src, dst]
        order = scores.abs().argsort(descending=True)
        edges = [Edge(graph.src_names[src[i]], graph.dst_names[dst[i]], float(scores[i])) for i in order.tolist()]
        edge_circuit = Circuit.from_edges(edges, model=cfg.model_name, task=task, metric=metric, method=method,
                                          faithfulness=edge_rows, summary={"held_out": held.get("edges")})
    details.update(held_out_rows=held, edge_circuit=edge_circuit)
    circuit = Circuit(model=cfg.model_name, task=task, metric=metric, method=method, kind="heads", nodes=nodes,
                      faithfulness=select_rows + eval_rows,
                      summary={"held_out": held["heads"], "selected_on": chosen_heads, "ranking": head_ranking,
                               "target": target},
                      evidence={f"A{l}.{h}": {"score": float(head_scores[l, h]), "rank": i + 1}
                                for i, (l, h) in enumerate(ranking) if f"A{l}.{h}" in nodes})
    return circuit, details


# ---------------------------------------------------------------------------------------------
# head ranking for head-level circuits


def head_mask_ig(model: HookedTransformer, pairs: PromptPairs, abl: Ablation, *, steps: int = 5,
                 batch_size: int = 16) -> torch.Tensor:
    """Integrated gradients over a mask on every head's output: z_h = ablated_h + a_h·(z_h − ablated_h),
    all a_h moving together from 0 (every head ablated) to 1 (the full model), gradient averaged at
    a = k/steps, k = 1 … steps. → [layer, head]: each head's share of logit diff(full) − logit
    diff(all heads ablated) (the shares sum to that difference up to the discretisation). Unlike
    EAP's single-head first-order scores, they are measured along the way to the
    everything-else-ablated state the head faithfulness curve evaluates, so they rank heads for it."""
    cfg, dev = model.cfg, model.cfg.device
    total = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64)
    with _frozen(model):
        for index, part in pairs.batches(batch_size):
            part_abl = abl.select(index, part.clean.shape[1])
            for k in range(1, steps + 1):
                mask = torch.full((cfg.n_layers, cfg.n_heads), k / steps, device=dev, requires_grad=True)

                def hook(z, hook, mask=mask, part_abl=part_abl):
                    l = hook.layer()
                    za = part_abl.z[l].to(dev, z.dtype)
                    return za + mask[l][None, None, :, None] * (z - za)

                with torch.enable_grad():
                    end = model.run_with_hooks(part.clean.to(dev), stop_at_layer=cfg.n_layers,
                                               fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook) for l in range(cfg.n_layers)])
                    value = metric_per_prompt("logit_diff", final_logits(model, end, part.last), part).sum()
                    (grad,) = torch.autograd.grad(value, mask)
                total += grad.double().cpu() / steps
    return (total / len(pairs)).float()
