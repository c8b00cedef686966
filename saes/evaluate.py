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

`sae_eval_analysis` (`SAEEvalConfig` -> `SAEEvalResult`): those metrics on an SAE's held-out contexts
(`held_out_set`: exactly the ids its training.json recorded) with a per-head table of its layer
(decoder-norm shares and the polysemanticity estimate of saes.attribution), as `interp sae eval` and
the atlas section run it.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from interp.errors import InputError
from interp.head_table import HeadTable
from interp.progress import progress_bar
from interp.results import AnalysisResult, json_ready


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
    check_weight_shapes(path, cfg["d_in"], cfg["d_sae"])
    return {**cfg, "hook_name": hook}


# what sae_lens' SAEs save, as (rows, columns) of cfg.json's sizes
WEIGHT_SHAPES = {"W_enc": ("d_in", "d_sae"), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)}


def check_weight_shapes(path: Path, d_in: int, d_sae: int) -> None:
    """sae_weights.safetensors' header (read without loading a tensor) holds W_enc [d_in, d_sae], W_dec
    [d_sae, d_in] and b_dec [d_in] as cfg.json's sizes say; InputError naming the first that does not,
    so a damaged or mismatched weights file is refused before any model loads."""
    from safetensors import safe_open

    file = path / "sae_weights.safetensors"
    sizes = {"d_in": d_in, "d_sae": d_sae}
    try:
        with safe_open(str(file), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error type for a bad header
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise InputError(f"--sae {path}: sae_weights.safetensors is not a safetensors file ({first}); retrain the "
                         "SAE or restore the file") from None
    for name, dims in WEIGHT_SHAPES.items():
        want = tuple(sizes[d] for d in dims)
        if shapes.get(name) != want:
            got = "missing" if name not in shapes else f"shape {list(shapes[name])}"
            raise InputError(f"--sae {path}: sae_weights.safetensors' {name} is {got}, but cfg.json (d_in {d_in}, "
                             f"d_sae {d_sae}) needs {list(want)}; the two files do not belong together")


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
    """Latent activations for hook_z `z` [..., n_heads, d_head] -> [..., d_sae], on the SAE's device (a split
    model's hook_z lives on its layer's device)."""
    return sae.encode(z.flatten(-2).to(device=sae.W_enc.device, dtype=sae.W_enc.dtype))


@torch.no_grad()
def reconstruct(sae, z: torch.Tensor) -> torch.Tensor:
    """The SAE's reconstruction of hook_z, same shape, dtype and device as `z`."""
    return sae.decode(feature_acts(sae, z)).reshape(z.shape).to(device=z.device, dtype=z.dtype)


@torch.no_grad()
def evaluate_sae(model, sae, tokens: torch.Tensor, *, layer: int | None = None, batch_size: int = 8,
                 dense_threshold: float = 0.1, fit_fraction: float = 0.5, seed: int = 0,
                 frequency_tokens: torch.Tensor | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Metrics of `sae` on held-out `tokens` [n, seq] (int64), as described in the module docstring.

    frequency_tokens: more held-out contexts [m, seq'] on which only firing frequencies are counted (the model
    runs up to `layer`), for dead/dense features."""
    return _evaluate(model, sae, tokens, layer=layer, batch_size=batch_size, dense_threshold=dense_threshold,
                     fit_fraction=fit_fraction, seed=seed, frequency_tokens=frequency_tokens, progress=progress)[0]


@torch.no_grad()
def _evaluate(model, sae, tokens: torch.Tensor, *, layer: int | None, batch_size: int, dense_threshold: float,
              fit_fraction: float, seed: int, frequency_tokens: torch.Tensor | None,
              progress: bool | None) -> tuple[dict[str, Any], torch.Tensor]:
    """`evaluate_sae`'s metrics and the firing counts behind its dead / dense features (LongTensor [d_sae])."""
    layer = check_fits(model, sae, layer)
    z_name, resid_name = f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_resid_pre"
    sums = {"ce_clean": 0.0, "ce_sae": 0.0, "ce_zero": 0.0, "kl_sae": 0.0, "kl_zero": 0.0, "l0": 0.0}
    xs, errs = [], []
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    n_pred = 0
    for start in progress_bar(range(0, tokens.shape[0], batch_size), "SAE evaluation", progress, unit="batch"):
        batch = tokens[start:start + batch_size].to(model.cfg.device)
        logits, cache = model.run_with_cache(batch, names_filter=[z_name, resid_name])
        z, resid = cache[z_name], cache[resid_name]
        acts = feature_acts(sae, z)
        recon = sae.decode(acts).reshape(z.shape).to(device=z.device, dtype=z.dtype)
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
        fired += firing_counts(model, sae, frequency_tokens, layer=layer, batch_size=batch_size, progress=progress)
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
    return metrics, fired


@torch.no_grad()
def firing_counts(model, sae, tokens: torch.Tensor, *, layer: int, batch_size: int = 8,
                  progress: bool | None = None) -> torch.Tensor:
    """On how many of `tokens` [n, seq] each latent is active: LongTensor [d_sae]. The model runs up to `layer`."""
    z_name = f"blocks.{layer}.attn.hook_z"
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for start in progress_bar(range(0, tokens.shape[0], batch_size), "SAE firing counts", progress, unit="batch"):
        batch = tokens[start:start + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=[z_name], stop_at_layer=layer + 1)
        fired += (feature_acts(sae, cache[z_name]) != 0).flatten(0, -2).sum(0).cpu()
    return fired


def _run_from(model, resid: torch.Tensor, layer: int, z_name: str, replace) -> torch.Tensor:
    """Logits of the model run from block `layer`'s input `resid` with hook_z replaced (on a split model
    TransformerLens moves the residual to each block's device, and `replace` returns hook_z's device)."""
    return model.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=[(z_name, replace)])


def _next_token_loss(logp: torch.Tensor, tokens: torch.Tensor) -> float:
    """Summed next-token negative log-likelihood over all predicted positions (nats)."""
    return float(-logp[:, :-1].gather(-1, tokens[:, 1:, None].to(logp.device)).sum())


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


# ---------------------------------------------------------------------------------------------
# the held-out contexts an SAE may be evaluated on


def training_data(sae_path: Path) -> dict | None:
    """The `data` record of an SAE's training.json (corpus, seed, held-out fraction and context ids), or None
    for an SAE trained elsewhere or before it was recorded."""
    import json

    path = Path(sae_path) / "training.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("data")
    except json.JSONDecodeError:
        raise InputError(f"{path} is not valid JSON; retrain the SAE or remove the file") from None


def held_out_set(model, sae_path: Path, *, corpus: str | None, seed: int | None, context_size: int | None):
    """The contexts an SAE may be evaluated on, with a description: (tokens [n, ctx], ids or None, note).

    With a training.json: its corpus's held-out contexts, exactly the ids it recorded (a --seed other than the
    training seed is refused; a --corpus other than the training corpus is used whole, none of it was trained
    on). Without one: the corpus split rebuilt from --seed (default 0), as `interp sae train` would make it."""
    from saes.corpus import split_ids, token_contexts
    from saes.train import contexts_fingerprint

    data = training_data(sae_path)
    if data is None or "held_out_ids" not in data:
        corpus = corpus or "bible"
        tokens = token_contexts(model, corpus, context_size=context_size or 128)
        _, ids = split_ids(tokens.shape[0], 0.02, seed=0 if seed is None else seed)
        return tokens[ids], ids.tolist(), f"{corpus} contexts held out with seed {seed or 0} (no training record)"
    if seed is not None and seed != data["seed"]:
        raise InputError(f"--seed {seed}: {sae_path} was trained with seed {data['seed']}, which fixes its held-out "
                         f"contexts; drop --seed or pass --seed {data['seed']}")
    if corpus is not None and corpus != data["corpus"]:
        tokens = token_contexts(model, corpus, context_size=data.get("context_size") or context_size or 128)
        return tokens, None, f"{corpus} contexts (not the training corpus {data['corpus']})"
    if data["corpus"] == "tensor":
        raise InputError(f"{sae_path} was trained on contexts passed in from Python; evaluate it with "
                         "saes.evaluate.evaluate_sae on its held-out rows, or pass --corpus NAME for other text")
    tokens = token_contexts(model, data["corpus"], context_size=data.get("context_size") or context_size or 128)
    if contexts_fingerprint(tokens) != data["corpus_fingerprint"]:
        raise InputError(f"the corpus {data['corpus']!r} no longer packs into the contexts {sae_path} was trained "
                         "on (its files or the tokenizer changed); its held-out set cannot be rebuilt")
    ids = torch.tensor(data["held_out_ids"], dtype=torch.long)
    return tokens[ids], data["held_out_ids"], (f"{data['corpus']} contexts held out from training (seed "
                                                f"{data['seed']}, {data['held_out_fraction']:.0%})")


# ---------------------------------------------------------------------------------------------
# the analysis: metrics and per-head table of one SAE, as one typed result


@dataclass(frozen=True)
class SAEEvalConfig:
    """Options of `sae_eval_analysis` (recorded whole in its JSON)."""

    contexts: int = 32              # held-out contexts evaluated (the first ones of the held-out set)
    frequency_contexts: int = 0     # further held-out contexts on which only firing is counted (dead / dense)
    corpus: str | None = None       # None: the training corpus's held-out contexts; a name: that corpus, whole
    seed: int | None = None         # the training seed that fixed the held-out set (None: from training.json)
    batch_size: int = 8
    dense_threshold: float = 0.1    # a dense feature fires on more than this share of the counted tokens
    fit_fraction: float = 0.5       # dark matter: share of tokens the linear map is fitted on
    fit_seed: int = 0               # dark matter: seed of the fit / test split
    own: float = 0.5                # polysemanticity: a head owns a live feature whose decoder share is at least this
    distinct_cos: float = 0.5       # polysemanticity: owned features write different directions below this mean |cos|


@dataclass(repr=False)  # AnalysisResult's short repr, not every DataFrame
class SAEEvalResult(AnalysisResult):
    """`sae_eval_analysis`'s result. `table`: one row per head of the SAE's layer only (an SAE on
    blocks.L.attn.hook_z says nothing of other layers' heads, so their rows are absent; the head atlas
    reads absent heads as not measured):

    - `mean_share`: the head's share of the SAE's feature attribution, the mean over live features of its
      decoder-norm share |W_dec[i, head block]| / sum over heads (saes.attribution.head_attribution); sums
      to 1 over the layer's heads;
    - `top_features`: live features whose largest decoder share is this head (a count), `top_feature_share`
      the same as a share of the live features;
    - `owned_features`, `effective_features`, `mean_abs_cos`, `polysemantic`: the weight-based
      polysemanticity estimate (saes.attribution.head_polysemanticity, thresholds `own`, `distinct_cos`).

    Live features: those that fired on the counted tokens (not among `metrics["dead_features"]`).
    Extras: `metrics` (sae_lens names: l0, explained_variance, ce_loss_score, dead_fraction, ... as
    `evaluate_sae` returns them), `layer`, `sae` (its directory, or None for an SAE passed in loaded),
    `sae_config` (its sae_lens config), `evaluated_on` (what the tokens were), `context_ids` (the
    held-out context ids used, None when not from a recorded split) and `n_live`."""

    metrics: dict[str, Any]
    layer: int
    sae: str | None
    sae_config: dict[str, Any]
    evaluated_on: str
    context_ids: list[int] | None
    n_live: int

    KIND: ClassVar[str] = "sae_eval"

    def extras(self) -> dict[str, Any]:
        return json_ready({"sae": self.sae, "layer": self.layer, "evaluated_on": self.evaluated_on,
                           "context_ids": self.context_ids, "metrics": self.metrics, "n_live_features": self.n_live,
                           "sae_config": self.sae_config})


@torch.no_grad()
def sae_eval_analysis(model, sae, config: SAEEvalConfig | None = None, *, tokens: torch.Tensor | None = None,
                      texts: Sequence[str] | None = None, progress: bool | None = None, **fields: Any) -> SAEEvalResult:
    """Evaluate one hook_z SAE: `evaluate_sae`'s metrics and the per-head table of its layer (SAEEvalResult).

    sae: an SAE directory (loaded with `load_sae`) or a loaded sae_lens SAE. The tokens are, in this order:
    `tokens` [n, seq] when given; `texts` packed into the SAE's context size; else the directory's held-out
    contexts (`held_out_set` with the config's corpus and seed), firing also counted on the next
    `frequency_contexts` of them. At most `contexts` contexts are evaluated. `fields` are SAEEvalConfig fields."""
    from saes.attribution import head_attribution, head_polysemanticity

    c = config or SAEEvalConfig(**fields)
    path = None if hasattr(sae, "W_dec") else Path(sae)
    if path is not None:
        sae = load_sae(path, device=str(model.cfg.device))
    layer = check_fits(model, sae)
    tokens, ids, where, more = _eval_tokens(model, sae, path, c, tokens, texts)
    metrics, fired = _evaluate(model, sae, tokens, layer=layer, batch_size=c.batch_size,
                               dense_threshold=c.dense_threshold, fit_fraction=c.fit_fraction, seed=c.fit_seed,
                               frequency_tokens=more, progress=progress)
    alive = fired > 0
    poly = head_polysemanticity(sae, model, layer, alive=alive, own=c.own, distinct_cos=c.distinct_cos).df
    share = head_attribution(sae, model.cfg.n_heads)[alive]  # [live, n_heads]
    top = torch.bincount(share.argmax(1), minlength=model.cfg.n_heads) if len(share) else torch.zeros(model.cfg.n_heads)
    poly["top_features"] = top.long().numpy()
    poly["top_feature_share"] = top.double().numpy() / max(1, len(share))
    meta = {"analysis": "sae_eval", "layer": layer, "hook": f"blocks.{layer}.attn.hook_z", "n_live": len(share),
            "share": "decoder-norm share |W_dec[i, head]| / sum over heads, live features only"}
    table = HeadTable(poly, model=model.cfg.model_name, meta=meta)
    return SAEEvalResult(table, c, metrics, layer, None if path is None else str(path), json_ready(sae.cfg.to_dict()),
                         where, ids, len(share))


def _eval_tokens(model, sae, path: Path | None, c: SAEEvalConfig, tokens, texts):
    """(tokens [n, seq], held-out ids or None, description, frequency tokens or None) for `sae_eval_analysis`."""
    if tokens is not None:
        return tokens[: c.contexts], None, "tokens passed in", None
    if texts is not None:
        from saes.corpus import pack

        tok = model.tokenizer
        packed = pack(iter(texts), tok, sae.cfg.metadata.context_size or 128, separator=tok.eos_token_id)
        if not len(packed):
            raise InputError("the texts fill no context of the SAE's context size; give more or longer texts")
        return packed[: c.contexts], None, "the given texts", None
    if path is None:
        raise InputError("sae_eval_analysis needs tokens or texts for an SAE passed in loaded (no held-out record)")
    held, ids, where = held_out_set(model, path, corpus=c.corpus, seed=c.seed,
                                    context_size=sae.cfg.metadata.context_size)
    more = held[c.contexts:c.contexts + c.frequency_contexts] if c.frequency_contexts else None
    return held[: c.contexts], None if ids is None else ids[: c.contexts], where, more
