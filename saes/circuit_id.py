"""SAE-based circuit identification (O'Neill & Bui 2024), and its agreement with the discovery engine.

Per attention head, a small SAE is trained on the head's output z (hook_z at the final position) over
positive prompts (the model does the task: clean IOI prompts it answers correctly) and negative prompts
(ABC-corrupted IOI prompts, where the task signal is absent). Each example is discretised to the head's
argmax latent (its "code"); a head scores by how often positives get a code that no negative gets
(fraction of positive examples). 5-10 examples per side and seconds of compute, as in the paper.

The per-head SAEs are tiny (d_head -> `n_latents`, ReLU, L1 penalty) and trained together as one batched
module in plain torch: sae_lens trains SAEs on activation streams, not hundreds of 10-example SAEs.
"""
from __future__ import annotations

from typing import Any

import torch

from interp.errors import InputError
from interp.head_ids import HeadId
from interp.head_table import HeadTable


@torch.no_grad()
def last_position_z(model, tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """hook_z of every layer at each prompt's last real token: [n, n_layers, n_heads, d_head]."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=names)
    rows = torch.arange(tokens.shape[0])
    return torch.stack([cache[n][rows, last] for n in names], 1).float().cpu()


def head_codes(z: torch.Tensor, *, n_latents: int = 16, l1: float = 1e-2, steps: int = 300, lr: float = 1e-2,
               seed: int = 0) -> torch.Tensor:
    """Train one small SAE per head on z [n, n_layers, n_heads, d_head] and return each example's code
    (argmax latent) per head: int64 [n, n_layers, n_heads]."""
    n, n_layers, n_heads, d = z.shape
    x = z.reshape(n, n_layers * n_heads, d).transpose(0, 1)                       # [H, n, d]
    x = x / x.norm(dim=-1).mean(-1, keepdim=True)[..., None].clamp_min(1e-8)     # unit mean norm per head
    g = torch.Generator().manual_seed(seed)
    h = x.shape[0]
    w_enc = (torch.randn(h, d, n_latents, generator=g) / d**0.5).requires_grad_()
    w_dec = (torch.randn(h, n_latents, d, generator=g) / n_latents**0.5).requires_grad_()
    b_enc = torch.zeros(h, 1, n_latents, requires_grad=True)
    b_dec = x.mean(1, keepdim=True).clone().requires_grad_()
    opt = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            acts = torch.relu((x - b_dec) @ w_enc + b_enc)
            recon = acts @ w_dec + b_dec
            loss = (recon - x).pow(2).sum(-1).mean() + l1 * (acts * w_dec.norm(dim=-1)[:, None]).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acts = torch.relu((x - b_dec) @ w_enc + b_enc)
    return acts.argmax(-1).transpose(0, 1).reshape(n, n_layers, n_heads)


def code_scores(codes: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per head, the fraction of positive examples whose code occurs in no negative example: [n_layers, n_heads]."""
    pos, neg = codes[positive], codes[~positive]
    if len(pos) == 0 or len(neg) == 0:
        raise InputError("SAE circuit identification needs at least one positive and one negative example")
    only_pos = (pos[:, None] != neg[None]).all(1)                                  # [n_pos, L, H]
    return only_pos.float().mean(0)


def sae_circuit_identification(model, data, *, n_examples: int = 10, n_latents: int = 16, steps: int = 300,
                               seed: int = 0) -> HeadTable:
    """Score every head on an IOI-like `TaskData` (circuits.ioi): `score` in [0, 1], `unique_codes` (distinct
    positive-only codes) and `rank`. Positives: clean prompts the model answers correctly (logit diff > 0);
    negatives: the same number of corrupted prompts."""
    pairs = data.pairs
    clean, corrupt = pairs.clean, pairs.corrupt
    last = pairs.last
    with torch.no_grad():
        logits = model(clean.to(model.cfg.device))[torch.arange(len(clean)), last]
    diff = logits.gather(1, pairs.answer[:, None].to(logits.device)) - logits.gather(1, pairs.wrong[:, None].to(logits.device))
    correct = (diff[:, 0] > 0).cpu().nonzero().flatten()[:n_examples]
    if len(correct) == 0:
        raise InputError(f"{model.cfg.model_name} answers none of the clean prompts correctly; nothing to contrast")
    neg_idx = torch.arange(len(corrupt))[:len(correct)]
    z = torch.cat([last_position_z(model, clean[correct], last[correct]),
                   last_position_z(model, corrupt[neg_idx], last[neg_idx])])
    positive = torch.cat([torch.ones(len(correct), dtype=torch.bool), torch.zeros(len(neg_idx), dtype=torch.bool)])
    codes = head_codes(z, n_latents=n_latents, steps=steps, seed=seed)
    scores = code_scores(codes, positive)
    unique = torch.tensor([[len(set(codes[positive, l, h].tolist()) - set(codes[~positive, l, h].tolist()))
                            for h in range(codes.shape[2])] for l in range(codes.shape[1])])
    table = HeadTable.from_arrays({"score": scores.numpy(), "unique_codes": unique.numpy()},
                                  model=model.cfg.model_name)
    table.df["rank"] = table.df["score"].rank(ascending=False, method="first").astype(int)
    return table


def compare_heads(table: HeadTable, reference, *, k: int | None = None) -> dict[str, Any]:
    """Precision and recall of the top-`k` heads by `score` (k = the reference's size by default) against a
    reference: a set of (layer, head) or an `interp.Circuit` (e.g. the discovery engine's), and the ROC-AUC.

    saes does not import circuits (dependencies point circuits -> saes): pass the engine's circuit in."""
    reference = set(reference.heads if hasattr(reference, "heads") else reference)  # Circuit.heads: a property
    if not reference:
        raise InputError("the reference circuit has no heads to compare with")
    df = table.df.sort_values("score", ascending=False, kind="stable")
    k = len(reference) if k is None else k
    top = {(int(r.layer), int(r.head)) for r in df.head(k).itertuples()}
    hits = len(top & reference)
    member = torch.tensor([(int(r.layer), int(r.head)) in reference for r in table.df.itertuples()])
    return {"k": k, "precision": hits / k, "recall": hits / len(reference),
            "roc_auc": roc_auc(torch.tensor(table.df["score"].to_numpy()), member),
            "top_heads": sorted(HeadId(l, h).node for l, h in top), "reference_heads": sorted(HeadId(l, h).node for l, h in reference)}


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Probability that a random member outscores a random non-member (ties count half)."""
    pos, neg = scores[labels.bool()].double(), scores[~labels.bool()].double()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None]).double().mean()
    ties = (pos[:, None] == neg[None]).double().mean()
    return float(greater + 0.5 * ties)

