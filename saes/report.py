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

from interp.cli import (
    DEVICE,
    JSON,
    MODEL,
    OUT,
    SEED,
    check_index,
    check_model,
    check_tokens,
    emit,
    load_cli_model,
)
from interp.errors import InputError
from saes.corpus import SOURCES_HELP
from saes.evaluate import SAEEvalResult, held_out_set, sae_eval_analysis
from saes.train import ARCHITECTURES, saes_root

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Attention-output SAEs on hook_z (sae_lens): train, evaluate, feature dashboards.")

SAE_OPT = typer.Option(None, "--sae", help="SAE directory (default: the newest one trained for --model)")
CORPUS_OPT = typer.Option("bible", "--corpus", help=SOURCES_HELP)
EVAL_CORPUS_OPT = typer.Option(None, "--corpus", help="text to evaluate on (default: the SAE's training corpus, on "
                               f"the contexts its training held out); {SOURCES_HELP}")
EVAL_SEED_OPT = typer.Option(None, "--seed", help="must match the training seed, which fixes the held-out contexts "
                             "(default: read from the SAE's training.json)")


def check_corpus(source: str) -> None:
    """The corpus names something that exists and its first document is text (InputError otherwise),
    checked before the model loads; the rest is read when the contexts are packed."""
    from saes.corpus import documents

    if next(iter(documents(source)), None) is None:
        raise InputError(f"--corpus {source} holds no text; give a corpus with at least one non-empty document")


def check_sae_args(facts, sae: Path | None, *, seed: int | None, corpus: str | None) -> tuple[Path, dict]:
    """An SAE directory for `facts`' model, its cfg.json read and checked against the model's layers and
    hook_z width, and --seed against its training record, all before the model loads."""
    from saes.evaluate import hook_layer, sae_file_config, training_data

    path = resolve_sae(sae, facts.name)
    cfg = sae_file_config(path)
    layer = hook_layer(cfg["hook_name"])
    if facts.n_layers is not None and layer >= facts.n_layers:
        raise InputError(f"the SAE reads layer {layer}; {facts.name} has layers 0-{facts.n_layers - 1}")
    if facts.n_heads is not None and facts.d_head is not None and cfg["d_in"] != facts.n_heads * facts.d_head:
        raise InputError(f"the SAE has d_in {cfg['d_in']} but {facts.name}'s hook_z has {facts.n_heads} x "
                         f"{facts.d_head} = {facts.n_heads * facts.d_head}; use an SAE trained on this model")
    data = training_data(path)
    if data and seed is not None and seed != data.get("seed"):
        raise InputError(f"--seed {seed}: {path} was trained with seed {data.get('seed')}, which fixes its held-out "
                         f"contexts; drop --seed or pass --seed {data.get('seed')}")
    if corpus is not None:
        check_corpus(corpus)
    elif data and data.get("corpus") == "tensor":
        raise InputError(f"{path} was trained on contexts passed in from Python; pass --corpus NAME to evaluate it "
                         "on other text")
    return path, cfg


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
    from interp.output import check_out
    from saes.train import train_sae

    facts = check_model(model, device)
    check_index([layer], facts.n_layers, "layers", facts.name)
    check_tokens(context_size, facts, "context-size")
    if architecture not in ARCHITECTURES:
        raise InputError(f"--architecture {architecture!r} is not one of {', '.join(ARCHITECTURES)}")
    if lm_dtype not in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16"):
        raise InputError(f"--lm-dtype {lm_dtype!r} is not auto, float32, bfloat16 or float16")
    if tokens < batch_tokens:
        raise InputError(f"--tokens {tokens} is fewer than one batch (--batch-tokens {batch_tokens})")
    if not lr > 0:
        raise InputError(f"--lr {lr} must be positive")
    check_corpus(corpus)
    if out is not None:
        check_out(out)
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


def evaluation_part(result: SAEEvalResult) -> dict:
    """A report part rendering `sae_eval_analysis`'s result: metrics, per-head table, live features by head."""
    import pandas as pd
    import plotly.express as px

    metrics, table, layer = result.metrics, result.table, result.layer
    fig = px.bar(x=table["label"], y=table["top_features"], labels={"x": "head", "y": "live features"},
                 title="live features by the head with the largest decoder share")
    keys = ["l0", "explained_variance", "ce_loss_score", "kl_div_score", "dead_fraction", "dark_matter_r2"]
    cfg = result.sae_config
    text = (f"<p>SAE <code>{result.sae or 'passed in'}</code> on <code>blocks.{layer}.attn.hook_z</code> "
            f"({cfg.get('d_sae')} latents, {cfg.get('architecture')}), evaluated on {metrics['n_tokens']} tokens "
            f"({result.evaluated_on}; firing counted on {metrics['frequency_n_tokens']}): "
            + ", ".join(f"{k} = {_fmt(metrics[k])}" for k in keys)
            + f". {int(table['polysemantic'].sum())} of {len(table)} heads look polysemantic by the weight-based "
            f"estimate (at least two owned features writing different directions; {result.n_live} live features).</p>")
    metric_table = pd.DataFrame([{"metric": k, "value": v} for k, v in metrics.items()])
    body = result.to_dict()
    del body["schema"], body["model"]
    return {"title": f"Attention-output SAE, layer {layer}", "text": text, "figures": [fig],
            "tables": [("metrics (sae_lens names)", metric_table), ("per-head table (the SAE's layer)", table.df)],
            "json": body}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@app.command("eval")
def eval_command(
    model: str = MODEL, out: Path = OUT, as_json: bool = JSON, seed: int | None = EVAL_SEED_OPT,
    device: str | None = DEVICE, sae: Path | None = SAE_OPT, corpus: str | None = EVAL_CORPUS_OPT,
    contexts: int = typer.Option(32, min=1, help="held-out contexts to evaluate on"),
    frequency_contexts: int = typer.Option(256, min=0, help="further held-out contexts on which only firing is "
                                           "counted, for dead and dense features (cheap: the model runs up to the layer)"),
):
    """L0, explained variance, CE loss recovered, KL, dead/dense features and dark matter on held-out text."""
    from interp.output import check_out, staged_output
    from interp.report import write_analysis

    path, _ = check_sae_args(check_model(model, device), sae, seed=seed, corpus=corpus)
    check_out(out)
    net = load_cli_model(model, device)
    result = sae_eval_analysis(net, path, contexts=contexts, corpus=corpus, seed=seed,
                               frequency_contexts=frequency_contexts)
    part = evaluation_part(result)
    with staged_output(out) as stage:
        write_analysis(stage, "sae_eval", net.cfg.model_name, part["json"], f"SAE evaluation: {net.cfg.model_name}", part)
    m = part["json"]["metrics"]
    emit(as_json, {"schema": "interp.sae_eval/1", "model": net.cfg.model_name, **part["json"]},
         f"{path}: L0 {m['l0']:.1f}, explained variance {m['explained_variance']:.3f}, CE loss recovered "
         f"{_fmt(m['ce_loss_score'])}, dead {m['dead_fraction']:.1%}; wrote {out}/sae_eval.html, sae_eval.json")


def features_part(net, sae_path: Path, *, features: list[int] | None, n_features: int, contexts: int,
                  corpus: str | None, seed: int | None, prompt: str | None) -> dict:
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
    tokens = held_out_set(net, sae_path, corpus=corpus, seed=seed, context_size=sae.cfg.metadata.context_size)[0][:contexts]
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
    model: str = MODEL, out: Path = OUT, as_json: bool = JSON, seed: int | None = EVAL_SEED_OPT,
    device: str | None = DEVICE, sae: Path | None = SAE_OPT, corpus: str | None = EVAL_CORPUS_OPT,
    features: str | None = typer.Option(None, help="feature ids, e.g. 3,17,40-42 (default: the most frequent)"),
    n_features: int = typer.Option(8, min=1, help="how many features when --features is not given"),
    contexts: int = typer.Option(32, min=1, help="held-out contexts to search for top activations"),
    prompt: str | None = typer.Option(None, help="also split the features' activation at this prompt's last "
                                         "token by head and source position"),
):
    """Feature dashboards: top-activating contexts, attribution to heads, logit effects."""
    from interp.cli import parse_indices
    from interp.output import check_out, staged_output
    from interp.report import write_analysis

    path, cfg = check_sae_args(check_model(model, device), sae, seed=seed, corpus=corpus)
    chosen = parse_indices(features, "features")
    check_index(chosen, cfg["d_sae"], "features", f"the SAE ({cfg['d_sae']} latents)")
    if prompt is not None and not prompt.strip():
        raise InputError("--prompt is empty; pass some text or leave it out")
    check_out(out)
    net = load_cli_model(model, device)
    part = features_part(net, path, features=chosen, n_features=n_features,
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
    result = sae_eval_analysis(model, found[0], contexts=8, texts=context.get("texts") or _atlas_texts(),
                               progress=context.get("progress"))
    return evaluation_part(result)


def _atlas_texts() -> list[str]:
    from interp.texts import sample_texts

    return sample_texts(16, seed=0)
