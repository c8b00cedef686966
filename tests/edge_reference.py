"""Independent references for edge-level discovery, computed from TransformerLens' own forward.

Everything here reads TransformerLens hook points (split q/k/v input copies, hook_mlp_in,
hook_result, the post-norms' hook_scale) and patches them directly; nothing calls circuits.discovery
except for the graph's index layout (which destination is which hook).
"""
import torch

from interp.patching import PromptPairs

POST_NORM_ARCHS = ("Olmo2ForCausalLM", "Olmo3ForCausalLM")  # TL: norms after attention / MLP, none before


def last_logits(model, tokens: torch.Tensor, last: torch.Tensor, fwd_hooks=()) -> torch.Tensor:
    """TransformerLens' own forward (every position, final soft-cap included) → logits at `last` [B, vocab]."""
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))
    return logits[torch.arange(len(tokens)), last]


def is_parallel(model) -> bool:
    return bool(model.cfg.parallel_attn_mlp)


def is_post_normed(model) -> bool:
    return bool(model.cfg.use_normalization_before_and_after) or model.cfg.original_architecture in POST_NORM_ARCHS


def _attn_post_norm(model, layer: int):
    """(hook name of the norm's scale, the norm) applied to layer's attention output, or (None, None)."""
    if model.cfg.use_normalization_before_and_after:
        return f"blocks.{layer}.ln1_post.hook_scale", model.blocks[layer].ln1_post
    if model.cfg.original_architecture in POST_NORM_ARCHS:
        return f"blocks.{layer}.ln1.hook_scale", model.blocks[layer].ln1
    return None, None


class split_hooks:
    """Context: TransformerLens' split q/k/v inputs, per-head results and hook_mlp_in switched on."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        for f in (self.model.set_use_split_qkv_input, self.model.set_use_attn_result, self.model.set_use_hook_mlp_in):
            f(True)

    def __exit__(self, *exc):
        for f in (self.model.set_use_split_qkv_input, self.model.set_use_attn_result, self.model.set_use_hook_mlp_in):
            f(False)


def caches(model, pairs: PromptPairs):
    """TransformerLens' caches of the clean and the corrupted prompts (split hooks on)."""
    with split_hooks(model), torch.no_grad():
        _, clean = model.run_with_cache(pairs.clean)
        _, corrupt = model.run_with_cache(pairs.corrupt)
    return clean, corrupt


def source_writes(model, cache) -> torch.Tensor:
    """[n_src, B, P, d]: what each source adds to the residual in this run: the embedding
    (blocks.0.hook_resid_pre), each head's hook_result (after a post-norm: (result_h + b_O/H) /
    hook_scale · w, the norm's own scale of this run), each MLP's hook_mlp_out."""
    cfg = model.cfg
    out = [cache["blocks.0.hook_resid_pre"]]
    for layer in range(cfg.n_layers):
        result = cache[f"blocks.{layer}.attn.hook_result"]  # [B, P, H, d]
        name, norm = _attn_post_norm(model, layer)
        if name is not None:
            result = (result + model.blocks[layer].attn.b_O / cfg.n_heads) / cache[name][:, :, None] * norm.w
        out += [result[:, :, h] for h in range(cfg.n_heads)] + [cache[f"blocks.{layer}.hook_mlp_out"]]
    return torch.stack(out)


def attn_out(model, cache) -> torch.Tensor:
    """[layer, B, P, d]: TransformerLens' hook_attn_out (after any post-norm)."""
    return torch.stack([cache[f"blocks.{layer}.hook_attn_out"] for layer in range(model.cfg.n_layers)])


def dst_hook(graph, dst: int) -> tuple[str, int | None]:
    """The TransformerLens hook carrying destination `dst`'s input, and its head slot (None: whole tensor)."""
    for layer in range(graph.n_layers):
        for kind, rng in (("q", graph.q_dsts(layer)), ("k", graph.k_dsts(layer)), ("v", graph.v_dsts(layer))):
            if dst in rng:
                return f"blocks.{layer}.hook_{kind}_input", dst - rng.start
        if dst == graph.mlp_dst(layer):
            return f"blocks.{layer}.hook_mlp_in", None
    return f"blocks.{graph.n_layers - 1}.hook_resid_post", None


def _source_hook(model, graph, src: int, corrupt_cache):
    """A hook replacing source `src`'s output by its corrupted-run value (hook_z slice for a head)."""
    if src == 0:
        return "blocks.0.hook_resid_pre", lambda x, hook: corrupt_cache["blocks.0.hook_resid_pre"]
    layer, h = divmod(src - 1, graph.n_heads + 1)
    if h == graph.n_heads:
        name = f"blocks.{layer}.hook_mlp_out"
        return name, lambda x, hook: corrupt_cache[name]
    name = f"blocks.{layer}.attn.hook_z"

    def hook(z, hook):
        z = z.clone()
        z[:, :, h] = corrupt_cache[name][:, :, h]
        return z
    return name, hook


def dependencies(model, graph, pairs: PromptPairs) -> torch.Tensor:
    """Bool [n_src, n_dst]: does replacing source u's output (by its corrupted value) in
    TransformerLens' forward change destination v's input at all? (bit-exact comparison)"""
    clean, corrupt = caches(model, pairs)
    names = sorted({dst_hook(graph, d)[0] for d in range(graph.n_dst)})
    out = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    for s in range(graph.n_src):
        run = _run_patched(model, pairs, names, _source_hook(model, graph, s, corrupt))
        for d in range(graph.n_dst):
            name, idx = dst_hook(graph, d)
            a, b = run[name], clean[name]
            a, b = (a, b) if idx is None else (a[:, :, idx], b[:, :, idx])
            out[s, d] = not torch.equal(a, b)
    return out


def _run_patched(model, pairs, names, patch) -> dict:
    """{hook name: activation} for `names` in the clean run with the `patch` hook applied."""
    store = {}

    def keep(x, hook):
        store[hook.name] = x.detach().clone()
        return x
    with split_hooks(model), torch.no_grad():
        model.run_with_hooks(pairs.clean, fwd_hooks=[patch] + [(n, keep) for n in names])
    return store


def edge_removed_logits(model, graph, pairs: PromptPairs, deltas: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    """Last-position logits [B, vocab] of the clean run with destination dst's input minus deltas[src]
    (deltas [n_src, B, P, d]: clean − ablated writes): the one edge src → dst carries its ablated value."""
    name, idx = dst_hook(graph, dst)

    def hook(x, hook):
        x = x.clone()
        if idx is None:
            x -= deltas[src]
        else:
            x[:, :, idx] -= deltas[src]
        return x
    with split_hooks(model):
        return last_logits(model, pairs.clean, pairs.last, [(name, hook)])


def eap_reference(model, graph, pairs: PromptPairs, deltas: torch.Tensor) -> torch.Tensor:
    """[n_src, n_dst] EAP scores by autograd through TransformerLens' destination input hooks:
    mean over prompts of Σ_pos deltas[u] · ∂(logit[answer] − logit[wrong]) / ∂ input_v."""
    names = sorted({dst_hook(graph, d)[0] for d in range(graph.n_dst)})
    acts = {}

    def leaf(x, hook):
        return x.detach().requires_grad_(True)

    def keep(x, hook):
        x.retain_grad()
        acts[hook.name] = x
        return x
    try:
        with split_hooks(model), torch.enable_grad():
            logits = model.run_with_hooks(pairs.clean, fwd_hooks=[("blocks.0.hook_resid_pre", leaf)]
                                          + [(n, keep) for n in names])
            rows = torch.arange(len(pairs))
            (logits[rows, pairs.last, pairs.answer] - logits[rows, pairs.last, pairs.wrong]).sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
    grads = []
    for d in range(graph.n_dst):
        name, idx = dst_hook(graph, d)
        g = acts[name].grad
        grads.append(g if idx is None else g[:, :, idx])
    return torch.einsum("sbpd,tbpd->st", deltas, torch.stack(grads)) / len(pairs)


def kept_edges_logits(model, graph, pairs: PromptPairs, keep: torch.Tensor) -> torch.Tensor:
    """Last-position logits [B, vocab] of the clean prompts with only the edges in `keep` (Bool
    [n_src, n_dst]), each removed edge u → v carrying u's corrupted-run write instead of its write in
    THIS run. Built from TransformerLens hooks alone: sources' writes are read as the forward produces
    them (hook_result, and for a post-normed layer the norm's hook_scale of this run), destinations'
    inputs are corrected at their split input hooks."""
    _, corrupt = caches(model, pairs)
    ablated = source_writes(model, corrupt)
    removed = graph.allowed & ~keep.bool()
    cfg, writes = model.cfg, {}
    hooks = [("blocks.0.hook_resid_pre", lambda x, hook: writes.__setitem__(0, x))]
    for layer in range(cfg.n_layers):
        first = graph.head_src(layer, 0)
        name, norm = _attn_post_norm(model, layer)

        def on_result(r, hook, first=first):
            for h in range(cfg.n_heads):
                writes[first + h] = r[:, :, h]
            writes["result", first] = r

        def on_scale(scale, hook, first=first, norm=norm, layer=layer):
            r = writes["result", first] + model.blocks[layer].attn.b_O / cfg.n_heads
            for h in range(cfg.n_heads):
                writes[first + h] = r[:, :, h] / scale * norm.w

        hooks.append((f"blocks.{layer}.attn.hook_result", on_result))
        if name is not None:
            hooks.append((name, on_scale))
        mlp = graph.mlp_src(layer)
        hooks.append((f"blocks.{layer}.hook_mlp_out", lambda x, hook, mlp=mlp: writes.__setitem__(mlp, x)))
    by_hook: dict[str, list[tuple[int, int | None]]] = {}
    for d in range(graph.n_dst):
        name, idx = dst_hook(graph, d)
        by_hook.setdefault(name, []).append((d, idx))

    def correct(x, hook):
        x = x.clone()
        for d, idx in by_hook[hook.name]:
            for u in removed[:, d].nonzero().flatten().tolist():
                fix = writes[u] - ablated[u]
                if idx is None:
                    x -= fix
                else:
                    x[:, :, idx] -= fix
        return x
    hooks += [(name, correct) for name in by_hook]
    with split_hooks(model):
        return last_logits(model, pairs.clean, pairs.last, hooks)
