"""Edge attribution patching (EAP, EAP-IG): every edge scored from one clean forward + backward per batch."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens import HookedTransformer

from circuits.discovery.graph import (
    Graph,
    build_graph,
    head_writes,
    input_norm,
    kv_weights,
)
from interp.errors import InputError
from interp.patching import (
    Ablation,
    PromptPairs,
    ablation_values,
    check_metric,
    final_logits,
    metric_per_prompt,
)
from interp.progress import progress_bar

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
              progress: bool | None = None) -> Attribution:
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
    with frozen_parameters(model):
        for index, part in progress_bar(batches, method, progress):
            part_abl = abl.select(index, part.clean.shape[1])
            s, clean = _batch_scores(model, graph, part, part_abl, method, metric, steps)
            scores += s
            clean_total += clean
    scores = torch.where(graph.allowed, scores / len(pairs), 0.0).to(torch.float32 if model.cfg.dtype != torch.float64 else torch.float64)
    return Attribution(graph, scores, method, metric, abl.kind, clean_total / len(pairs),
                       {"steps": steps if method == "eap-ig" else 1, "n_prompts": len(pairs)})


@contextlib.contextmanager
def frozen_parameters(model):
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
    and with want_outputs the clean outputs "embed" [B, P, d], "z" (per layer [B, P, H, dh]), "mlp_out"
    (per layer [B, P, d]), each on its layer's device."""
    cfg, dev = model.cfg, model.cfg.device
    acts: dict[tuple[str, int], torch.Tensor] = {}
    outputs: dict[tuple[str, int], torch.Tensor] = {}
    embed_abl = abl.embed.to(dev, cfg.dtype)

    def on_embed(act, hook):
        if want_outputs:
            outputs[("embed", 0)] = act.detach()
        base = embed_abl.to(act.device)
        x = base + alpha * (act - base) if alpha != 1.0 else act
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
        attn, x, ln = model.blocks[l].attn, acts[("resid", l)].detach(), input_norm(model, l)
        W_K, W_V = kv_weights(attn)
        for dsts, name, W in ((graph.q_dsts(l), "q", attn.W_Q), (graph.k_dsts(l), "k", W_K), (graph.v_dsts(l), "v", W_V)):
            grad = _ln_vjp(ln, x, torch.einsum("bphe,hde->bphd", g[(name, l)], W))
            grads[list(dsts)] = grad.permute(2, 0, 1, 3).to(dev)
        grads[graph.mlp_dst(l)] = g[("mlp_in", l)].to(dev)
    grads[graph.end_dst] = got[-1].to(dev)
    out = {"grads": grads, "metric": values.detach(), "logprobs": logprobs}
    if want_outputs:
        out["embed"] = outputs[("embed", 0)]
        out["z"] = [outputs[("z", l)] for l in range(cfg.n_layers)]  # each on its layer's device
        out["mlp_out"] = [outputs[("mlp_out", l)] for l in range(cfg.n_layers)]
    return out


def _ln_vjp(ln, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """gᵀ·∂ln(x)/∂x for one residual x [B, P, d] read by several heads, g [B, P, n, d] → [B, P, n, d]
    (g itself when no norm sits between the residual and the projections: ln None)."""
    if ln is None:
        return g
    xe = x[:, :, None].expand_as(g).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (out,) = torch.autograd.grad(ln(xe), xe, g)
    return out


def _deltas(model, graph: Graph, abl: Ablation, clean: dict) -> torch.Tensor:
    """ablated − clean output of every source [n_src, B, P, d] (a head's output: `head_writes`)."""
    cfg, dev = model.cfg, model.cfg.device
    B, P = clean["embed"].shape[:2]
    d = torch.zeros(graph.n_src, B, P, cfg.d_model, device=dev, dtype=cfg.dtype)
    d[0] = abl.embed.to(dev, cfg.dtype) - clean["embed"]
    for l in range(cfg.n_layers):
        first, z, mlp = graph.head_src(l, 0), clean["z"][l], clean["mlp_out"][l]
        ablated = head_writes(model, l, abl.z[l].to(z.device, cfg.dtype))
        d[first:first + cfg.n_heads] = (ablated - head_writes(model, l, z)).to(dev)
        d[graph.mlp_src(l)] = (abl.mlp_out[l].to(mlp.device, cfg.dtype) - mlp).to(dev)
    return d
