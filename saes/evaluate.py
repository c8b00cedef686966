"""Evaluating a hook_z SAE on held-out text, with sae_lens' metric names.

- `l0`: mean number of active latents per token; `explained_variance`: 1 - sum|x - x_hat|^2 / sum|x - mean x|^2
  (over tokens, as sae_lens' evals compute it);
- `ce_loss_score` = (ce_loss_with_ablation - ce_loss_with_sae) / (ce_loss_with_ablation - ce_loss_without_sae),
  where "with_sae" splices the reconstruction into hook_z of every head and "with_ablation" zeroes hook_z;
  `kl_div_with_sae`, `kl_div_with_ablation` (KL(clean || patched), nats/token) and `kl_div_score`;
- `dead_features` / `dead_fraction` (never active on the held-out tokens, plus `frequency_tokens` when given:
  a latent that fires once in 10^5 tokens needs that many to show it is alive; `frequency_n_tokens` says how
  many were counted) and `dense_features` (active on more than `dense_threshold` of them);
- "dark matter" (Engels et al. 2024): `dark_matter_r2`, the share of the SAE error's variance that a least
  squares map from the input predicts on tokens not used to fit it, and `error_norm_r2` for the error's norm;
  `error_norm` (mean |x - x_hat|) and `relative_error_norm` (mean |x - x_hat| / mean |x|).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from interp.errors import InputError


def load_sae(path: str | Path, device: str | None = "cpu"):
    """An SAE directory (cfg.json + sae_weights.safetensors) through `sae_lens.SAE.load_from_disk`, with
    hook_z reshaping off: the functions here pass flattened [..., n_heads * d_head] inputs."""
    from sae_lens import SAE

    path = Path(path)
    sae_file_config(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sae = SAE.load_from_disk(str(path), device=device or "cpu")
    except (KeyError, ValueError, TypeError, OSError, RuntimeError) as err:  # a damaged cfg.json or weights file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise InputError(f"--sae {path}: sae_lens cannot load it ({type(err).__name__}: {first}); retrain it or "
                         "restore its files") from None
    sae.turn_off_forward_pass_hook_z_reshaping()
    _fold_checkpoint_scale(sae, path)
    return sae.eval()


def sae_file_config(path: str | Path) -> dict[str, Any]:
    """The checked cfg.json of an SAE directory, read without loading weights: a JSON object with integer
    d_in and d_sae and a hook name (top level or under metadata). InputError naming what is wrong."""
    import json

    path = Path(path)
    if not (path / "cfg.json").is_file() or not (path / "sae_weights.safetensors").is_file():
        raise InputError(f"--sae {path} is not an SAE directory (needs cfg.json and sae_weights.safetensors)")
    try:
        cfg = json.loads((path / "cfg.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"--sae {path}: cfg.json is not valid JSON ({getattr(err, 'msg', err)}); retrain the SAE "
                         "or restore the file") from None
    if not isinstance(cfg, dict):
        raise InputError(f"--sae {path}: cfg.json holds no SAE config (a JSON object is expected)")
    missing = [k for k in ("d_in", "d_sae") if not isinstance(cfg.get(k), int) or cfg[k] < 1]
    hook = cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name")
    if missing or not isinstance(hook, str):
        what = ", ".join(missing + ([] if isinstance(hook, str) else ["hook_name"]))
        raise InputError(f"--sae {path}: cfg.json lacks a valid {what}; it is not an SAE saved by sae_lens")
    return {**cfg, "hook_name": hook}


def hook_layer(hook: str) -> int:
    """The layer of `blocks.L.attn.hook_z` (InputError for any other hook)."""
    parts = hook.split(".")
    if len(parts) != 4 or parts[0] != "blocks" or parts[2] != "attn" or parts[3] != "hook_z" or not parts[1].isdigit():
        raise InputError(f"this SAE reads {hook!r}, not blocks.L.attn.hook_z; train one with `interp sae train`")
    return int(parts[1])


def _fold_checkpoint_scale(sae, path: Path) -> None:
    """A training checkpoint keeps its input scaling factor beside the weights (the final SAE has it folded
    in); fold it, so a checkpoint reads and writes hook_z in the model's units too."""
    import json

    scaler = path / "activation_scaler.json"
    if sae.cfg.normalize_activations != "expected_average_only_in" or not scaler.is_file():
        return
    factor = json.loads(scaler.read_text()).get("scaling_factor")
    if factor is not None:
        with torch.no_grad():
            sae.fold_activation_norm_scaling_factor(float(factor))
    sae.cfg.normalize_activations = "none"


def sae_layer(sae) -> int:
    """The layer of a hook_z SAE, from its hook name."""
    return hook_layer(sae.cfg.metadata.hook_name or "")


def check_fits(model, sae, layer: int | None = None) -> int:
    layer = sae_layer(sae) if layer is None else layer
    d_in = model.cfg.n_heads * model.cfg.d_head
    if sae.cfg.d_in != d_in:
        raise InputError(f"the SAE has d_in {sae.cfg.d_in} but {model.cfg.model_name}'s hook_z has "
                         f"{model.cfg.n_heads} x {model.cfg.d_head} = {d_in}; use an SAE trained on this model")
    if not 0 <= layer < model.cfg.n_layers:
        raise InputError(f"the SAE reads layer {layer}; {model.cfg.model_name} has layers 0-{model.cfg.n_layers - 1}")
    return layer


@torch.no_grad()
def feature_acts(sae, z: torch.Tensor) -> torch.Tensor:
    """Latent activations for hook_z `z` [..., n_heads, d_head] -> [..., d_sae]."""
    return sae.encode(z.flatten(-2).to(sae.W_enc.dtype))


@torch.no_grad()
def reconstruct(sae, z: torch.Tensor) -> torch.Tensor:
    """The SAE's reconstruction of hook_z, same shape as `z`."""
    return sae.decode(feature_acts(sae, z)).reshape(z.shape).to(z.dtype)


@torch.no_grad()
def evaluate_sae(model, sae, tokens: torch.Tensor, *, layer: int | None = None, batch_size: int = 8,
                 dense_threshold: float = 0.1, fit_fraction: float = 0.5, seed: int = 0,
                 frequency_tokens: torch.Tensor | None = None) -> dict[str, Any]:
    """Metrics of `sae` on held-out `tokens` [n, seq] (int64), as described in the module docstring.

    frequency_tokens: more held-out contexts [m, seq'] on which only firing frequencies are counted (the model
    runs up to `layer`), for dead/dense features."""
    layer = check_fits(model, sae, layer)
    z_name, resid_name = f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_resid_pre"
    sums = {"ce_clean": 0.0, "ce_sae": 0.0, "ce_zero": 0.0, "kl_sae": 0.0, "kl_zero": 0.0, "l0": 0.0}
    xs, errs = [], []
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    n_pred = 0
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size].to(model.cfg.device)
        logits, cache = model.run_with_cache(batch, names_filter=[z_name, resid_name])
        z, resid = cache[z_name], cache[resid_name]
        acts = feature_acts(sae, z)
        recon = sae.decode(acts).reshape(z.shape).to(z.dtype)
        patched = {
            "sae": _run_from(model, resid, layer, z_name, lambda _z, hook, r=recon: r),
            "zero": _run_from(model, resid, layer, z_name, lambda _z, hook: torch.zeros_like(_z)),
        }
        clean_logp = logits.log_softmax(-1)
        sums["ce_clean"] += _next_token_loss(clean_logp, batch)
        for key, out in patched.items():
            logp = out.log_softmax(-1)
            sums[f"ce_{key}"] += _next_token_loss(logp, batch)
            sums[f"kl_{key}"] += float((clean_logp.exp() * (clean_logp - logp)).sum(-1).sum())
        sums["l0"] += float((acts != 0).sum())
        fired += (acts != 0).flatten(0, -2).sum(0).cpu()
        xs.append(z.flatten(-2).flatten(0, 1).float().cpu())
        errs.append((z - recon).flatten(-2).flatten(0, 1).float().cpu())
        n_pred += batch.shape[0] * (batch.shape[1] - 1)
    n_tok = int(tokens.numel())
    x, err = torch.cat(xs), torch.cat(errs)
    metrics = {
        "l0": sums["l0"] / n_tok,
        "explained_variance": float(1 - err.pow(2).sum() / (x - x.mean(0)).pow(2).sum()),
        "ce_loss_without_sae": sums["ce_clean"] / n_pred,
        "ce_loss_with_sae": sums["ce_sae"] / n_pred,
        "ce_loss_with_ablation": sums["ce_zero"] / n_pred,
        "kl_div_with_sae": sums["kl_sae"] / n_tok,
        "kl_div_with_ablation": sums["kl_zero"] / n_tok,
    }
    metrics["ce_loss_score"] = _score(metrics["ce_loss_with_ablation"], metrics["ce_loss_with_sae"],
                                      metrics["ce_loss_without_sae"])
    metrics["kl_div_score"] = _score(metrics["kl_div_with_ablation"], metrics["kl_div_with_sae"], 0.0)
    n_freq = n_tok
    if frequency_tokens is not None and frequency_tokens.numel():
        fired += firing_counts(model, sae, frequency_tokens, layer=layer, batch_size=batch_size)
        n_freq += int(frequency_tokens.numel())
    freq = fired.double() / n_freq
    metrics.update({
        "d_sae": int(sae.cfg.d_sae), "n_tokens": n_tok, "frequency_n_tokens": n_freq,
        "dead_features": int((fired == 0).sum()), "dead_fraction": float((fired == 0).double().mean()),
        "dense_features": int((freq > dense_threshold).sum()), "dense_threshold": dense_threshold,
        "error_norm": float(err.norm(dim=-1).mean()),
        "relative_error_norm": float(err.norm(dim=-1).mean() / x.norm(dim=-1).mean()),
        **dark_matter(x, err, fit_fraction=fit_fraction, seed=seed),
    })
    return metrics


@torch.no_grad()
def firing_counts(model, sae, tokens: torch.Tensor, *, layer: int, batch_size: int = 8) -> torch.Tensor:
    """On how many of `tokens` [n, seq] each latent is active: LongTensor [d_sae]. The model runs up to `layer`."""
    z_name = f"blocks.{layer}.attn.hook_z"
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=[z_name], stop_at_layer=layer + 1)
        fired += (feature_acts(sae, cache[z_name]) != 0).flatten(0, -2).sum(0).cpu()
    return fired


def _run_from(model, resid: torch.Tensor, layer: int, z_name: str, replace) -> torch.Tensor:
    """Logits of the model run from block `layer`'s input `resid` with hook_z replaced."""
    return model.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=[(z_name, replace)])


def _next_token_loss(logp: torch.Tensor, tokens: torch.Tensor) -> float:
    """Summed next-token negative log-likelihood over all predicted positions (nats)."""
    return float(-logp[:, :-1].gather(-1, tokens[:, 1:, None]).sum())


def _score(ablated: float, patched: float, clean: float) -> float | None:
    gap = ablated - clean
    return None if abs(gap) < 1e-12 else (ablated - patched) / gap


def dark_matter(x: torch.Tensor, err: torch.Tensor, *, fit_fraction: float = 0.5, seed: int = 0) -> dict[str, float]:
    """How much of the SAE error `err` [n, d] is a linear function of the input `x` [n, d].

    Fits least squares (with a bias) on a random `fit_fraction` of the rows and reports, on the others,
    R^2 of the error vector (1 - residual SS / total SS, summed over dimensions) and of its norm; None when
    there are too few rows to fit (the fit half needs more than d + 1)."""
    n, d = x.shape
    n_fit = int(n * fit_fraction)
    if n_fit <= d + 1 or n - n_fit < 2:
        return {"dark_matter_r2": None, "error_norm_r2": None, "dark_matter_tokens": n}  # too few tokens to fit
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fit, test = order[:n_fit], order[n_fit:]
    design = torch.cat([x, torch.ones(n, 1)], 1).double()
    results = {}
    for name, target in (("dark_matter_r2", err.double()), ("error_norm_r2", err.double().norm(dim=-1, keepdim=True))):
        coef = torch.linalg.lstsq(design[fit], target[fit]).solution
        resid = target[test] - design[test] @ coef
        total = (target[test] - target[fit].mean(0)).pow(2).sum()
        results[name] = float(1 - resid.pow(2).sum() / total)
    results["dark_matter_tokens"] = n
    return results
