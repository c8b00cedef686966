"""SAEs for people: `interp sae train | eval | features` and the atlas section.

The atlas section runs when an SAE is given (`$INTERP_SAE`, a directory) or found for the model under
`cache_root()/saes/<model>/` (where `interp sae train` stores SAEs by default); otherwise it says how to
train one. It evaluates on a few held-out contexts only, to stay cheap.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from interp.cli import DEVICE, JSON, MODEL, OUT, SEED, emit, load_cli_model
from interp.errors import InputError
from saes.corpus import SOURCES_HELP
from saes.train import ARCHITECTURES, saes_root

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Attention-output SAEs on hook_z (sae_lens): train, evaluate, feature dashboards.")

SAE_OPT = typer.Option(None, "--sae", help="SAE directory (default: the newest one trained for --model)")
CORPUS_OPT = typer.Option("bible", "--corpus", help=SOURCES_HELP)


def find_saes(model_name: str) -> list[Path]:
    """SAE directories trained for `model_name` in the cache, newest first."""
    root = saes_root(model_name)
    found = [p.parent for p in root.glob("*/cfg.json")] if root.is_dir() else []
    return sorted(found, key=lambda p: (p / "cfg.json").stat().st_mtime, reverse=True)


def resolve_sae(sae: Path | None, model_name: str) -> Path:
    if sae is not None:
        return sae
    found = find_saes(model_name)
    if not found:
        raise InputError(f"no SAE trained for {model_name} in {saes_root(model_name)}; run `interp sae train "
                         f"--model {model_name} --layer L` or pass --sae DIR")
    return found[0]


def _held_out(model, corpus: str, n: int, seed: int, context_size: int | None = None, start: int = 0):
    """Held-out contexts start..start+n of `corpus` (the rows `interp sae train` kept out with this seed)."""
    from saes.corpus import split_contexts, token_contexts

    tokens = token_contexts(model, corpus, context_size=context_size or 128)
    _, held = split_contexts(tokens, 0.02, seed=seed)
    return held[start:start + n]


@app.command("train")
def train_command(
    model: str = MODEL, seed: int = SEED, device: str | None = DEVICE, as_json: bool = JSON,
    layer: int = typer.Option(..., "--layer", "-l", help="the layer whose hook_z (all heads) the SAE reads"),
    out: Path | None = typer.Option(None, "--out", "-o", help="SAE directory (default: the cache, where "  # noqa: B008
                                       "`interp sae eval` and the atlas find it)"),
    architecture: str = typer.Option("topk", help=f"one of {', '.join(ARCHITECTURES)}"),
    expansion: int = typer.Option(16, min=1, help="latents = expansion x n_heads x d_head"),
    k: int = typer.Option(24, min=1, help="active latents per token (topk, batchtopk)"),
    l1_coefficient: float = typer.Option(5.0, help="sparsity penalty (standard)"),
    l0_coefficient: float = typer.Option(1.0, help="sparsity penalty (jumprelu)"),
    tokens: int = typer.Option(2_000_000, min=1, help="training tokens"),
    corpus: str = CORPUS_OPT,
    context_size: int = typer.Option(128, min=8, help="tokens per context"),
    batch_tokens: int = typer.Option(1024, min=16, help="tokens per SAE training step (small batches: more steps "
                                     "for a small token budget)"),
    buffer_factor: int = typer.Option(16, min=2, help="the shuffling buffer holds this many batches of activations"),
    lr: float = typer.Option(2e-3, help="learning rate (Adam; 5 % warm-up, linear decay over the last 20 %)"),
    lm_dtype: str = typer.Option("auto", help="dtype of the model's forward passes: float32, bfloat16, or auto "
                                 "(bfloat16 where the device has native bf16 matmuls)"),
    autocast: bool | None = typer.Option(None, "--autocast/--no-autocast", help="SAE matmuls in bf16 (weights "
                                         "stay float32); default: where the device has native bf16 matmuls"),
    n_checkpoints: int = typer.Option(4, min=0, help="checkpoints during training"),
    resume: bool = typer.Option(True, help="continue from the newest checkpoint in the SAE directory"),
):
    """Train an SAE on blocks.L.attn.hook_z through sae_lens, with checkpoints; rerun to resume."""
    from saes.train import train_sae

    net = load_cli_model(model, device)
    path = train_sae(net, layer, architecture=architecture, expansion=expansion, k=k, l1_coefficient=l1_coefficient,
                     l0_coefficient=l0_coefficient, tokens=tokens, corpus=corpus, context_size=context_size,
                     batch_tokens=batch_tokens, buffer_factor=buffer_factor, lr=lr, out=out, n_checkpoints=n_checkpoints, resume=resume,
                     seed=seed, lm_dtype=lm_dtype, autocast=autocast)
    import json

    summary = json.loads((path / "training.json").read_text())
    summary.pop("history", None)
    emit(as_json, {"schema": "interp.sae_train/1", "model": net.cfg.model_name, "sae": str(path), **summary},
         f"trained {summary['architecture']} SAE on {summary['hook_name']} ({summary['d_sae']} latents, "
         f"{summary['trained_samples']} tokens, {summary['seconds']:.0f} s): {path}")


def evaluation_part(net, sae_path: Path, *, contexts: int, corpus: str, seed: int, texts: list[str] | None = None,
                    frequency_contexts: int = 0) -> dict:
    """Metrics, per-head polysemanticity and the head-attribution heatmap of one SAE (a report part).
    Evaluated on held-out contexts of `corpus`, or on `texts` packed into contexts when given; firing
    frequencies (dead/dense features) also over `frequency_contexts` further held-out contexts."""
    import pandas as pd
    import plotly.express as px

    from saes.attribution import head_attribution, head_polysemanticity
    from saes.evaluate import check_fits, evaluate_sae, load_sae

    sae = load_sae(sae_path, device=str(net.cfg.device))
    layer = check_fits(net, sae)
    if texts is not None:
        from saes.corpus import pack

        tok = net.tokenizer
        tokens = pack(iter(texts), tok, sae.cfg.metadata.context_size or 128, separator=tok.eos_token_id)[:contexts]
        corpus = "atlas"
    else:
        tokens = _held_out(net, corpus, contexts, seed, sae.cfg.metadata.context_size)
    more = _held_out(net, corpus, frequency_contexts, seed, sae.cfg.metadata.context_size, start=contexts) \
        if frequency_contexts and texts is None else None
    metrics = evaluate_sae(net, sae, tokens, layer=layer, frequency_tokens=more)
    alive = _alive(net, sae, tokens, layer)
    poly = head_polysemanticity(sae, net, layer, alive=alive)
    share = head_attribution(sae, net.cfg.n_heads)[alive]
    top_head = pd.Series(share.argmax(1).numpy()).value_counts().reindex(range(net.cfg.n_heads), fill_value=0)
    fig = px.bar(x=[f"L{layer}H{h}" for h in range(net.cfg.n_heads)], y=top_head.values,
                 labels={"x": "head", "y": "live features"}, title="live features by the head with the largest decoder share")
    keys = ["l0", "explained_variance", "ce_loss_score", "kl_div_score", "dead_fraction", "dark_matter_r2"]
    text = (f"<p>SAE <code>{sae_path}</code> on <code>blocks.{layer}.attn.hook_z</code> ({sae.cfg.d_sae} latents, "
            f"{sae.cfg.architecture()}), evaluated on {metrics['n_tokens']} held-out tokens ({corpus} texts; "
            f"firing counted on {metrics['frequency_n_tokens']}): "
            + ", ".join(f"{k} = {_fmt(metrics[k])}" for k in keys)
            + f". {int(poly.df['polysemantic'].sum())} of {net.cfg.n_heads} heads look polysemantic by the weight-based "
            "estimate (at least two owned features writing different directions).</p>")
    metric_table = pd.DataFrame([{"metric": k, "value": v} for k, v in metrics.items()])
    return {"title": f"Attention-output SAE, layer {layer}", "text": text, "figures": [fig],
            "tables": [("metrics (sae_lens names)", metric_table), ("per-head polysemanticity estimate", poly.df)],
            "json": {"sae": str(sae_path), "layer": layer, "metrics": metrics, "heads": poly.to_dict()}}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _alive(net, sae, tokens, layer):
    from saes.dashboards import activation_stats

    return activation_stats(net, sae, tokens, layer=layer, top=1, features=[0])["frequency"] > 0


@app.command("eval")
def eval_command(
    model: str = MODEL, out: Path = OUT, as_json: bool = JSON, seed: int = SEED, device: str | None = DEVICE,
    sae: Path | None = SAE_OPT, corpus: str = CORPUS_OPT,
    contexts: int = typer.Option(32, min=1, help="held-out contexts to evaluate on"),
    frequency_contexts: int = typer.Option(256, min=0, help="further held-out contexts on which only firing is "
                                           "counted, for dead and dense features (cheap: the model runs up to the layer)"),
):
    """L0, explained variance, CE loss recovered, KL, dead/dense features and dark matter on held-out text."""
    from interp.output import staged_output
    from interp.report import write_analysis

    net = load_cli_model(model, device)
    path = resolve_sae(sae, net.cfg.model_name)
    part = evaluation_part(net, path, contexts=contexts, corpus=corpus, seed=seed,
                           frequency_contexts=frequency_contexts)
    with staged_output(out) as stage:
        write_analysis(stage, "sae_eval", net.cfg.model_name, part["json"], f"SAE evaluation: {net.cfg.model_name}", part)
    m = part["json"]["metrics"]
    emit(as_json, {"schema": "interp.sae_eval/1", "model": net.cfg.model_name, **part["json"]},
         f"{path}: L0 {m['l0']:.1f}, explained variance {m['explained_variance']:.3f}, CE loss recovered "
         f"{_fmt(m['ce_loss_score'])}, dead {m['dead_fraction']:.1%}; wrote {out}/sae_eval.html, sae_eval.json")


def features_part(net, sae_path: Path, *, features: list[int] | None, n_features: int, contexts: int, corpus: str,
                  seed: int, prompt: str | None) -> dict:
    """Dashboards of chosen (or the most frequent) features, and a direct feature attribution of a prompt."""
    import pandas as pd
    import plotly.express as px

    from saes.attribution import attribution_frame, direct_feature_attribution
    from saes.dashboards import activation_stats, dashboard
    from saes.evaluate import check_fits, load_sae

    sae = load_sae(sae_path, device=str(net.cfg.device))
    layer = check_fits(net, sae)
    if features is not None and any(not 0 <= f < sae.cfg.d_sae for f in features):
        raise InputError(f"--features must be between 0 and {sae.cfg.d_sae - 1}")
    tokens = _held_out(net, corpus, contexts, seed, sae.cfg.metadata.context_size)
    stats = activation_stats(net, sae, tokens, layer=layer, features=features)
    if features is None:
        features = stats["frequency"].topk(n_features).indices.tolist()
    boards = [dashboard(net, sae, stats, f, layer=layer) for f in features]
    tables = []
    for b in boards:
        tables.append((f"feature {b['feature']}: top contexts (freq {b['frequency']:.4f}, top head {b['top_head']})",
                       pd.DataFrame(b["top_contexts"])))
        tables.append((f"feature {b['feature']}: direct logit effects", pd.DataFrame(b["logit_effects"])))
    shares = pd.DataFrame([{"feature": b["feature"], **b["head_attribution"]} for b in boards])
    figures = [px.imshow(shares.set_index("feature"), aspect="auto", title="head attribution (decoder-norm share)")]
    body: dict[str, Any] = {"sae": str(sae_path), "layer": layer, "features": boards}
    if prompt:
        toks = net.to_tokens(prompt)[0]
        acts = {}
        for f in features:
            res = direct_feature_attribution(net, sae, toks, f, layer=layer)
            acts[f] = res
        best = max(features, key=lambda f: acts[f]["pre_activation"])
        frame = attribution_frame(acts[best], net)
        figures.append(px.imshow(acts[best]["by_head_source"].numpy(), aspect="auto",
                                 labels={"x": "source position", "y": "head"},
                                 title=f"feature {best}: pre-activation at the last token split by head and source"))
        tables.append((f"direct feature attribution of feature {best} on the prompt", frame))
        body["prompt"] = {"text": prompt, "feature": best, "pre_activation": acts[best]["pre_activation"],
                          "bias": acts[best]["bias"], "by_head": acts[best]["by_head"].tolist()}
    text = (f"<p>{len(boards)} features of <code>{sae_path}</code> (layer {layer}) over {tokens.numel()} held-out tokens: "
            "top-activating contexts (the token in «»), each feature's share of every head by decoder norm, and the "
            "tokens its direct path (W_dec → W_O → W_U) raises and lowers.</p>")
    return {"title": f"SAE features, layer {layer}", "text": text, "figures": figures, "tables": tables, "json": body}


@app.command("features")
def features_command(
    model: str = MODEL, out: Path = OUT, as_json: bool = JSON, seed: int = SEED, device: str | None = DEVICE,
    sae: Path | None = SAE_OPT, corpus: str = CORPUS_OPT,
    features: str | None = typer.Option(None, help="feature ids, e.g. 3,17,40-42 (default: the most frequent)"),
    n_features: int = typer.Option(8, min=1, help="how many features when --features is not given"),
    contexts: int = typer.Option(32, min=1, help="held-out contexts to search for top activations"),
    prompt: str | None = typer.Option(None, help="also split the features' activation at this prompt's last "
                                         "token by head and source position"),
):
    """Feature dashboards: top-activating contexts, attribution to heads, logit effects."""
    from interp.cli import _parse_indices
    from interp.output import staged_output
    from interp.report import write_analysis

    net = load_cli_model(model, device)
    path = resolve_sae(sae, net.cfg.model_name)
    part = features_part(net, path, features=_parse_indices(features, "features"), n_features=n_features,
                         contexts=contexts, corpus=corpus, seed=seed, prompt=prompt)
    with staged_output(out) as stage:
        write_analysis(stage, "sae_features", net.cfg.model_name, part["json"], f"SAE features: {net.cfg.model_name}", part)
    emit(as_json, {"schema": "interp.sae_features/1", "model": net.cfg.model_name, **part["json"]},
         f"{len(part['json']['features'])} feature dashboards of {path}; wrote {out}/sae_features.html, sae_features.json")


def atlas_section(model, context: dict) -> dict[str, Any]:
    given = os.environ.get("INTERP_SAE")
    found = [Path(given)] if given else find_saes(model.cfg.model_name)
    if not found:
        return {"title": "Attention-output SAE", "json": {"sae": None},
                "text": f"<p>No SAE for {model.cfg.model_name}: train one with <code>interp sae train --model "
                        f"{model.cfg.model_name} --layer L</code> (stored in {saes_root(model.cfg.model_name)}, where "
                        "the atlas finds it) or set <code>INTERP_SAE</code> to an SAE directory.</p>"}
    # the atlas's own texts (not in the training corpus): no need to tokenise the whole corpus here
    return evaluation_part(model, found[0], contexts=8, corpus="bible", seed=context.get("seed", 0),
                           texts=context.get("texts") or _atlas_texts())


def _atlas_texts() -> list[str]:
    from interp.texts import sample_texts

    return sample_texts(16, seed=0)
