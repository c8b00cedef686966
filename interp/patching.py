"""Task-agnostic activation-patching primitives: prompt pairs, metrics, ablation values, exact
per-head (and per head × position) activation patching.

Nothing here knows about any task. A task is a `PromptPairs`: clean and corrupted prompts of equal
length, right-padded into [batch, pos] tensors, the index of each prompt's last real token, the
answer token and the "wrong" token a logit difference subtracts, and a group id per prompt (mean
ablation averages the corrupted prompts of one group position by position, so prompts in a group
must have one length; by default prompts are grouped by length).

Metrics read the next-token logits at each prompt's last position:
  logit_diff  logit[answer] − logit[wrong], averaged over prompts (Wang et al. 2022)
  kl          KL(p_clean ‖ p_patched) in nats, averaged over prompts (Conmy et al. 2023)

Ablation values replace a component's output by (Wang et al.; Conmy et al.; Chan et al.):
  corrupt     the same prompt's corrupted-run value (pairwise patching, Syed et al.'s EAP setting)
  mean        the mean over the corrupted prompts of the prompt's group, per position (Wang et al.);
              with `reference`, over the corrupted prompts of that group in a separate reference set
              (e.g. many ABC prompts per IOI template), so the mean never rests on a few prompts
  zero        zero
  resample    the corrupted-run value of another prompt of the same group (seeded permutation)
A head's output is its hook_z slice (its write to the residual is z_h · W_O[h]), an MLP's is
hook_mlp_out, the embedding's is blocks.0.hook_resid_pre.

Sign: a head's patching `effect` is positive when the head helps the metric: clean − patched for
logit_diff (ablating a helpful head lowers it), patched − clean for kl (ablating a head the clean
prediction needs moves the model away from it). The same sign as every head score in the workbench.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from interp.errors import InputError
from interp.progress import progress_bar

METRICS = ("logit_diff", "kl")
ABLATIONS = ("mean", "corrupt", "zero", "resample")


@dataclass
class PromptPairs:
    """clean, corrupt: LongTensor [batch, pos] (right-padded, position-aligned); last, answer, wrong,
    group: LongTensor [batch] (last real position; token the metric rewards; token it subtracts;
    mean-ablation group)."""

    clean: torch.Tensor
    corrupt: torch.Tensor
    last: torch.Tensor
    answer: torch.Tensor
    wrong: torch.Tensor
    group: torch.Tensor

    def __len__(self) -> int:
        return self.clean.shape[0]

    @classmethod
    def from_lists(cls, clean: Sequence[Sequence[int] | torch.Tensor], corrupt: Sequence[Sequence[int] | torch.Tensor],
                   answer: Sequence[int], wrong: Sequence[int], group: Sequence[int] | None = None,
                   pad: int = 0) -> PromptPairs:
        """Build from per-prompt token lists (clean[i] and corrupt[i] of equal length)."""
        clean = [torch.as_tensor(c, dtype=torch.long).flatten() for c in clean]
        corrupt = [torch.as_tensor(c, dtype=torch.long).flatten() for c in corrupt]
        if not clean or len(clean) != len(corrupt) or len(clean) != len(answer) or len(clean) != len(wrong):
            raise InputError("clean, corrupt, answer and wrong need the same number (≥ 1) of prompts")
        for i, (a, b) in enumerate(zip(clean, corrupt)):
            if len(a) != len(b) or len(a) == 0:
                raise InputError(f"prompt pair {i}: clean has {len(a)} tokens, corrupt {len(b)}; "
                                 "patching needs position-aligned pairs of equal, non-zero length")
        lengths = torch.tensor([len(c) for c in clean])
        if group is None:  # one group per length
            group = torch.unique(lengths, return_inverse=True)[1]
        group = torch.as_tensor(group, dtype=torch.long)
        for g in group.unique():
            if lengths[group == g].unique().numel() != 1:
                raise InputError(f"group {int(g)} mixes prompt lengths; mean ablation needs one length per group")
        n = int(lengths.max())
        pads = [torch.full((len(clean), n), pad, dtype=torch.long) for _ in range(2)]
        for i, (a, b) in enumerate(zip(clean, corrupt)):
            pads[0][i, : len(a)], pads[1][i, : len(b)] = a, b
        return cls(pads[0], pads[1], lengths - 1, torch.as_tensor(answer, dtype=torch.long),
                   torch.as_tensor(wrong, dtype=torch.long), group)

    def select(self, index: torch.Tensor | slice) -> PromptPairs:
        """The prompts at `index`, trimmed to their longest length."""
        last = self.last[index]
        n = int(last.max()) + 1
        return PromptPairs(self.clean[index, :n], self.corrupt[index, :n], last, self.answer[index],
                           self.wrong[index], self.group[index])

    def batches(self, size: int) -> Iterator[tuple[torch.Tensor, PromptPairs]]:
        """(indices, prompts) in batches of `size`, prompts of similar length together (less padding)."""
        order = torch.argsort(self.last, stable=True)
        for start in range(0, len(self), size):
            index = order[start:start + size]
            yield index, self.select(index)


# ---------------------------------------------------------------------------------------------
# metrics


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def metric_per_prompt(metric: str, logits: torch.Tensor, pairs: PromptPairs,
                      clean_logprobs: torch.Tensor | None = None) -> torch.Tensor:
    """logits [batch, vocab] at the last positions → metric per prompt [batch] (see module doc)."""
    if metric == "logit_diff":
        rows = torch.arange(len(pairs), device=logits.device)
        return logits[rows, pairs.answer.to(logits.device)] - logits[rows, pairs.wrong.to(logits.device)]
    if metric == "kl":
        if clean_logprobs is None:
            raise InputError("the kl metric needs the clean run's log-probabilities")
        logp = logits.float().log_softmax(-1)
        clean_logprobs = clean_logprobs.to(logp.device)  # a split model's logits are on its last GPU
        return (clean_logprobs.exp() * (clean_logprobs - logp)).sum(-1)
    check_metric(metric)
    raise AssertionError


def final_logits(model: HookedTransformer, resid: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """The residual after the last block [batch, pos, d_model] → next-token logits at `last` [batch, vocab]:
    TransformerLens' forward from there (final norm, unembedding, Gemma 2's final soft-cap) on those
    positions only."""
    resid = resid.to(model.unembed.W_U.device)  # the last block's device when layers are split over GPUs
    rows = torch.arange(resid.shape[0], device=resid.device)
    x = resid[rows, last.to(resid.device)][:, None]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    logits = model.unembed(x)[:, 0]
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return cap * torch.tanh(logits / cap) if cap is not None and cap > 0 else logits


def run_last_logits(model: HookedTransformer, tokens: torch.Tensor, last: torch.Tensor, fwd_hooks=(),
                    *, start_at_layer: int | None = None, resid: torch.Tensor | None = None) -> torch.Tensor:
    """Forward pass (no grad) with `fwd_hooks` → logits at `last` [batch, vocab]. With `start_at_layer`,
    `resid` [batch, pos, d_model] is the residual entering that layer."""
    L = model.cfg.n_layers
    with torch.no_grad():
        if start_at_layer is None:
            out = model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=list(fwd_hooks), stop_at_layer=L)
        else:
            out = model.run_with_hooks(resid, fwd_hooks=list(fwd_hooks), start_at_layer=start_at_layer,
                                       stop_at_layer=L)
        return final_logits(model, out, last)


# ---------------------------------------------------------------------------------------------
# ablation values


@dataclass
class Ablation:
    """Values that replace each component's output, for the prompts of a `PromptPairs` (same order):
    embed [batch, pos, d_model]; z [layer, batch, pos, head, d_head]; mlp_out [layer, batch, pos, d_model]."""

    kind: str
    embed: torch.Tensor
    z: torch.Tensor
    mlp_out: torch.Tensor

    def select(self, index, n_pos: int) -> Ablation:
        return Ablation(self.kind, self.embed[index, :n_pos], self.z[:, index, :n_pos], self.mlp_out[:, index, :n_pos])


def check_ablation(kind: str) -> None:
    if kind not in ABLATIONS:
        raise InputError(f"unknown ablation {kind!r}; choose one of {', '.join(ABLATIONS)}")


def ablation_values(model: HookedTransformer, pairs: PromptPairs, kind: str = "mean", *, seed: int = 0,
                    batch_size: int = 32, reference: PromptPairs | None = None) -> Ablation:
    """Run the corrupted prompts once and derive every component's replacement value (module doc).
    `reference` (mean only): the group means come from its corrupted prompts (every group of `pairs`
    must be one of its groups, with the same length)."""
    check_ablation(kind)
    if reference is not None:
        if kind != "mean":
            raise InputError(f"a reference set of prompts defines mean ablation only, not {kind!r}")
        return _reference_mean(model, pairs, reference, batch_size)
    embed, z, mlp = corrupted_run(model, pairs, batch_size)
    if kind == "zero":
        return Ablation(kind, torch.zeros_like(embed), torch.zeros_like(z), torch.zeros_like(mlp))
    if kind == "corrupt":
        return Ablation(kind, embed, z, mlp)
    g = torch.Generator().manual_seed(seed)
    out = [torch.empty_like(t) for t in (embed, z, mlp)]
    for group in pairs.group.unique():
        idx = (pairs.group == group).nonzero().flatten()
        if kind == "resample":
            src = idx[torch.randperm(len(idx), generator=g)]
            out[0][idx], out[1][:, idx], out[2][:, idx] = embed[src], z[:, src], mlp[:, src]
        else:  # mean
            out[0][idx] = embed[idx].mean(0, keepdim=True)
            out[1][:, idx] = z[:, idx].mean(1, keepdim=True)
            out[2][:, idx] = mlp[:, idx].mean(1, keepdim=True)
    return Ablation(kind, *out)


def _reference_mean(model: HookedTransformer, pairs: PromptPairs, reference: PromptPairs, batch_size: int) -> Ablation:
    """Mean ablation whose per-group, per-position means are taken over `reference`'s corrupted prompts."""
    embed_r, z_r, mlp_r = corrupted_run(model, reference, batch_size)
    B, P = pairs.clean.shape
    embed = torch.zeros(B, P, embed_r.shape[-1], dtype=embed_r.dtype)
    z = torch.zeros(z_r.shape[0], B, P, *z_r.shape[3:], dtype=z_r.dtype)
    mlp = torch.zeros(mlp_r.shape[0], B, P, mlp_r.shape[-1], dtype=mlp_r.dtype)
    for group in pairs.group.unique():
        idx = (pairs.group == group).nonzero().flatten()
        ref = (reference.group == group).nonzero().flatten()
        if len(ref) == 0:
            raise InputError(f"group {int(group)} has no prompts in the mean-ablation reference set")
        n, n_ref = int(pairs.last[idx[0]]) + 1, int(reference.last[ref[0]]) + 1
        if n != n_ref:
            raise InputError(f"group {int(group)}: prompts have {n} tokens, the reference set's {n_ref}; "
                             "mean ablation needs position-aligned groups")
        embed[idx, :n] = embed_r[ref, :n].mean(0, keepdim=True)
        z[:, idx, :n] = z_r[:, ref, :n].mean(1, keepdim=True)
        mlp[:, idx, :n] = mlp_r[:, ref, :n].mean(1, keepdim=True)
    return Ablation("mean", embed, z, mlp)


def corrupted_run(model: HookedTransformer, pairs: PromptPairs, batch_size: int = 32):
    """embed [B, P, d], z [L, B, P, H, dh], mlp_out [L, B, P, d] of the corrupted prompts (CPU; float32,
    float64 for a float64 model)."""
    cfg = model.cfg
    B, P = pairs.corrupt.shape
    kw = {"dtype": torch.float64 if cfg.dtype == torch.float64 else torch.float32}
    embed = torch.zeros(B, P, cfg.d_model, **kw)
    z = torch.zeros(cfg.n_layers, B, P, cfg.n_heads, cfg.d_head, **kw)
    mlp = torch.zeros(cfg.n_layers, B, P, cfg.d_model, **kw)
    for index, part in pairs.batches(batch_size):
        n = part.corrupt.shape[1]

        def keep(target, layer, index=index, n=n):
            def hook(act, hook):
                if layer is None:
                    target[index, :n] = act.detach().cpu().to(target.dtype)
                else:
                    target[layer, index, :n] = act.detach().cpu().to(target.dtype)
            return hook

        hooks = [("blocks.0.hook_resid_pre", keep(embed, None))]
        for l in range(cfg.n_layers):
            hooks += [(f"blocks.{l}.attn.hook_z", keep(z, l)), (f"blocks.{l}.hook_mlp_out", keep(mlp, l))]
        with torch.no_grad():
            model.run_with_hooks(part.corrupt.to(cfg.device), fwd_hooks=hooks, stop_at_layer=cfg.n_layers)
    return embed, z, mlp


# ---------------------------------------------------------------------------------------------
# exact activation patching


@dataclass
class CleanRun:
    """The clean run of a batch: resid_pre [layer, batch, pos, d_model] entering each block, the
    last-position log-probs [batch, vocab] and the metric per prompt [batch]."""

    resid_pre: torch.Tensor
    logprobs: torch.Tensor
    metric: torch.Tensor


def clean_run(model: HookedTransformer, pairs: PromptPairs, metric: str) -> CleanRun:
    cfg = model.cfg
    resid = []
    hooks = [(f"blocks.{l}.hook_resid_pre", lambda act, hook: resid.append(act.detach().to(cfg.device)))
             for l in range(cfg.n_layers)]
    logits = run_last_logits(model, pairs.clean, pairs.last, hooks)
    logprobs = logits.float().log_softmax(-1)
    return CleanRun(torch.stack(resid), logprobs, metric_per_prompt(metric, logits, pairs, logprobs))


def patch_heads(model: HookedTransformer, pairs: PromptPairs, *, metric: str = "logit_diff",
                ablation: str | Ablation = "corrupt", heads: Sequence[tuple[int, int]] | None = None,
                by_position: bool = False, batch_size: int = 16, seed: int = 0, progress: bool | None = None) -> dict:
    """Exact activation patching: for each head, run the clean prompts with that head's output
    (hook_z) replaced by its ablation value — at every position, or with `by_position` at one
    position at a time — and read the metric.

    Heads of one layer run together: the clean residual entering the layer is repeated once per
    variant and the forward pass starts there (start_at_layer), so layers below are not recomputed.
    Returns {"heads": [(l, h)], "clean": mean clean metric, "patched": Tensor [n_heads] (mean over
    prompts) or [n_heads, pos] with by_position (positions a prompt lacks count as unpatched),
    "effect": positive when the head helps (clean − patched for logit_diff, patched − clean for kl;
    module doc)}.
    """
    check_metric(metric)
    cfg = model.cfg
    heads = [(int(l), int(h)) for l, h in (heads if heads is not None else
                                           [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)])]
    for l, h in heads:
        if not (0 <= l < cfg.n_layers and 0 <= h < cfg.n_heads):
            raise InputError(f"head L{l}H{h} does not exist: the model has {cfg.n_layers} layers × {cfg.n_heads} heads")
    abl = ablation if isinstance(ablation, Ablation) else ablation_values(model, pairs, ablation, seed=seed)
    n_pos = pairs.clean.shape[1]
    total = torch.zeros(len(heads), n_pos) if by_position else torch.zeros(len(heads))
    clean_total = 0.0
    layers = sorted({l for l, _ in heads})
    for index, part in progress_bar(list(pairs.batches(batch_size)), "patching", progress):
        part_abl = abl.select(index, part.clean.shape[1])
        run = clean_run(model, part, metric)
        clean_total += float(run.metric.sum())
        for layer in layers:
            rows = [i for i, (l, _) in enumerate(heads) if l == layer]
            for i, value in _patch_layer(model, part, part_abl, run, layer, [heads[r][1] for r in rows],
                                         metric, by_position).items():
                if by_position:
                    total[rows[i], : value.shape[0]] += value
                    total[rows[i], value.shape[0]:] += float(run.metric.sum())
                else:
                    total[rows[i]] += value
    clean = clean_total / len(pairs)
    patched = total / len(pairs)
    effect = clean - patched if metric == "logit_diff" else patched - clean
    return {"heads": heads, "clean": clean, "patched": patched, "effect": effect}


def _patch_layer(model, part: PromptPairs, abl: Ablation, run: CleanRun, layer: int, heads: list[int],
                 metric: str, by_position: bool) -> dict[int, torch.Tensor]:
    """Summed metric over the batch for each head of `layer` patched ({i: scalar} or {i: [pos]})."""
    B, P = part.clean.shape
    variants = [(i, None) for i in range(len(heads))] if not by_position else \
        [(i, p) for i in range(len(heads)) for p in range(P)]
    out: dict[int, torch.Tensor] = {}
    chunk = max(1, 256 // B)
    for start in range(0, len(variants), chunk):
        block = variants[start:start + chunk]
        k = len(block)
        z_abl = abl.z[layer]

        def hook(z, hook, block=block, z_abl=z_abl):
            z, z_abl = z.clone(), z_abl.to(z.device, z.dtype)
            for j, (i, p) in enumerate(block):
                rows = slice(j * B, (j + 1) * B)
                if p is None:
                    z[rows, :, heads[i]] = z_abl[:, :, heads[i]]
                else:
                    z[rows, p, heads[i]] = z_abl[:, p, heads[i]]
            return z

        resid = run.resid_pre[layer].repeat(k, 1, 1)
        logits = run_last_logits(model, None, part.last.repeat(k), [(f"blocks.{layer}.attn.hook_z", hook)],
                                 start_at_layer=layer, resid=resid)
        values = metric_per_prompt(metric, logits, _repeat(part, k), run.logprobs.repeat(k, 1)).view(k, B)
        for j, (i, p) in enumerate(block):
            s = values[j].sum().cpu()
            if p is None:
                out[i] = s
            else:
                out.setdefault(i, torch.zeros(P))[p] = s
    return out


def _repeat(part: PromptPairs, k: int) -> PromptPairs:
    return PromptPairs(*(t.repeat(k, *([1] * (t.dim() - 1))) for t in
                         (part.clean, part.corrupt, part.last, part.answer, part.wrong, part.group)))


def head_ablation_hooks(ablation: Ablation, ablate: torch.Tensor, device=None) -> list:
    """Forward hooks replacing the output (hook_z) of every head where `ablate` [layer, head] (bool)
    is True by its ablation value (node ablation: all of the head's outgoing edges). The values move to
    each hook's activation device (`device` is kept for callers and no longer needed)."""
    hooks = []
    for layer in range(ablate.shape[0]):
        idx = ablate[layer].nonzero().flatten().tolist()
        if not idx:
            continue
        z_abl = ablation.z[layer]

        def hook(z, hook, idx=idx, z_abl=z_abl):
            z = z.clone()
            z[:, :, idx] = z_abl[:, : z.shape[1], idx].to(z.device, z.dtype)
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    return hooks

