"""hook_z SAEs on a tiny random GQA model: training with checkpoints and resume through sae_lens,
evaluation against TransformerLens' own hooked runs, attribution sums against the encoder's hook."""
import json

import numpy as np
import pytest
import torch
from tiny import tiny_gqa_model

LAYER = 1


@pytest.fixture(scope="module")
def tiny():
    return tiny_gqa_model()


@pytest.fixture(scope="module")
def corpus():
    return torch.randint(1, 97, (300, 32), generator=torch.Generator().manual_seed(0))


def _train(tiny, corpus, out, **kw):
    from saes.train import train_sae

    args = {"tokens": 4096, "batch_tokens": 256, "corpus": corpus, "out": out, "n_checkpoints": 2,
            "store_batch_prompts": 8, "progress": False, "lr": 3e-3}
    args.update(kw)
    return train_sae(tiny, LAYER, **args)


@pytest.fixture(scope="module")
def trained(tiny, corpus, tmp_path_factory):
    return _train(tiny, corpus, tmp_path_factory.mktemp("sae") / "topk", k=6)


def test_interrupted_run_resumes_from_its_checkpoint(tiny, corpus, tmp_path):
    from sae_lens.training._interruption import InterruptedException
    from safetensors.torch import load_file

    from saes.train import latest_checkpoint

    out = tmp_path / "run"
    with pytest.raises(InterruptedException):
        _train(tiny, corpus, out, k=6, stop_after_steps=5)
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and int(ckpt.name) == 5 * 256
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert state["n_training_steps"] == 5 and state["n_training_samples"] == 5 * 256
    assert json.loads((out / "training.json").read_text())["status"] == "interrupted"
    saved = load_file(str(ckpt / "sae_weights.safetensors"))

    seen = []
    _train(tiny, corpus, out, k=6, on_step=lambda step, running: seen.append(step))
    summary = json.loads((out / "training.json").read_text())
    assert seen[0] == 6 and seen[-1] == 16  # the resumed run continues the step count, not from 0
    assert summary["status"] == "complete" and summary["steps"] == 16 and summary["trained_samples"] == 4096
    assert summary["resumed_from"] == str(ckpt) and "seconds_total" in summary
    final = load_file(str(out / "sae_weights.safetensors"))
    assert not torch.equal(final["W_enc"], saved["W_enc"])  # it kept training after loading the checkpoint


@pytest.mark.parametrize("architecture", ["standard", "jumprelu"])
def test_other_architectures_train_and_load(tiny, corpus, tmp_path, architecture):
    from sae_lens import SAE

    out = _train(tiny, corpus, tmp_path / architecture, architecture=architecture, tokens=1024, n_checkpoints=0)
    sae = SAE.load_from_disk(str(out))
    assert sae.cfg.architecture() == architecture and sae.cfg.d_in == 4 * 8 and sae.cfg.d_sae == 16 * 32


def test_saved_sae_splices_into_hook_z_with_sae_lens_reshaping(tiny, corpus, trained):
    """sae_lens' own loader (hook_z reshaping on) and our flattened path give the same reconstruction."""
    from sae_lens import SAE

    from saes.evaluate import load_sae, reconstruct

    raw = SAE.load_from_disk(str(trained))
    assert raw.cfg.reshape_activations == "hook_z" and raw.cfg.metadata.hook_name == f"blocks.{LAYER}.attn.hook_z"
    _, cache = tiny.run_with_cache(corpus[:2], names_filter=[f"blocks.{LAYER}.attn.hook_z"])
    z = cache[f"blocks.{LAYER}.attn.hook_z"]
    with torch.no_grad():
        theirs = raw(z)
    assert theirs.shape == z.shape
    torch.testing.assert_close(reconstruct(load_sae(trained), z), theirs)


def test_evaluation_matches_full_hooked_runs(tiny, corpus, trained):
    from saes.evaluate import evaluate_sae, feature_acts, load_sae, reconstruct

    sae = load_sae(trained)
    tokens = corpus[-6:]
    m = evaluate_sae(tiny, sae, tokens, batch_size=4)
    name = f"blocks.{LAYER}.attn.hook_z"
    with torch.no_grad():
        clean = tiny(tokens, return_type="loss")
        with_sae = tiny.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(name, lambda z, hook: reconstruct(sae, z))])
        zero = tiny.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(name, lambda z, hook: z * 0)])
        _, cache = tiny.run_with_cache(tokens, names_filter=[name])
    assert m["ce_loss_without_sae"] == pytest.approx(float(clean), rel=1e-5)
    assert m["ce_loss_with_sae"] == pytest.approx(float(with_sae), rel=1e-5)
    assert m["ce_loss_with_ablation"] == pytest.approx(float(zero), rel=1e-5)
    # the score's error bound propagated from the losses' 1e-5 relative one (its denominator is small here)
    bound = 1e-5 * float(abs(zero) + abs(with_sae) + 2 * abs(clean)) / float(abs(zero - clean))
    assert m["ce_loss_score"] == pytest.approx(float((zero - with_sae) / (zero - clean)), abs=bound)
    x = cache[name].flatten(-2).flatten(0, 1).double()
    err = x - reconstruct(sae, cache[name]).flatten(-2).flatten(0, 1).double()
    assert m["explained_variance"] == pytest.approx(float(1 - err.pow(2).sum() / (x - x.mean(0)).pow(2).sum()), rel=1e-4)
    acts = feature_acts(sae, cache[name])
    assert m["l0"] == pytest.approx(6.0)  # top-k with k = 6
    assert m["dead_features"] == int(((acts > 0).flatten(0, 1).sum(0) == 0).sum())
    with torch.no_grad():  # KL(clean || patched) per token, from TL's full hooked forwards, float64
        clean_logp = tiny(tokens).double().log_softmax(-1)
        for key, hook in (("sae", lambda z, hook: reconstruct(sae, z)), ("ablation", lambda z, hook: z * 0)):
            logp = tiny.run_with_hooks(tokens, fwd_hooks=[(name, hook)]).double().log_softmax(-1)
            kl = float((clean_logp.exp() * (clean_logp - logp)).sum(-1).mean())
            assert m[f"kl_div_with_{key}"] == pytest.approx(kl, rel=1e-4)
    assert m["kl_div_score"] == pytest.approx(1 - m["kl_div_with_sae"] / m["kl_div_with_ablation"], rel=1e-6)


def test_dead_and_dense_features_also_count_the_frequency_tokens(tiny, corpus, trained):
    from saes.evaluate import evaluate_sae, load_sae

    sae = load_sae(trained)
    tokens, more = corpus[-6:], corpus[-40:-6]
    m = evaluate_sae(tiny, sae, tokens, batch_size=4, frequency_tokens=more)
    name = f"blocks.{LAYER}.attn.hook_z"
    with torch.no_grad():  # sae_lens' own encoder on TransformerLens' full forward (no stop_at_layer)
        _, cache = tiny.run_with_cache(torch.cat([tokens, more]), names_filter=[name])
        fired = (sae.encode(cache[name].flatten(-2)) != 0).flatten(0, 1).sum(0)
    assert m["n_tokens"] == 6 * 32 and m["frequency_n_tokens"] == 40 * 32
    assert m["dead_features"] == int((fired == 0).sum())
    assert m["dense_features"] == int((fired / (40 * 32) > m["dense_threshold"]).sum())


def test_top_k_latents_start_at_centred_training_activations(tiny, corpus, tmp_path):
    """With lr 0 the saved SAE is its initialisation: every decoder row points along one training token's
    hook_z minus b_dec (the mean), and the encoder is the decoder's transpose."""
    from saes.evaluate import load_sae

    out = _train(tiny, corpus, tmp_path / "init", k=6, tokens=1024, lr=0.0, n_checkpoints=0,
                 lm_dtype="float32", autocast=False)
    sae = load_sae(out)
    name = f"blocks.{LAYER}.attn.hook_z"
    with torch.no_grad():
        _, cache = tiny.run_with_cache(corpus, names_filter=[name])
    z = cache[name].flatten(-2).flatten(0, 1).double()
    torch.testing.assert_close(sae.b_dec.double(), z.mean(0), atol=0.1 * float(z.std(0).mean()), rtol=0)
    centred = z - sae.b_dec.double()
    directions = torch.nn.functional.normalize(centred, dim=-1)
    rows = torch.nn.functional.normalize(sae.W_dec.double(), dim=-1)
    assert (rows @ directions.T).max(1).values.min() > 0.9999
    torch.testing.assert_close(torch.nn.functional.normalize(sae.W_enc.T.double(), dim=-1), rows)


def test_dark_matter_recovers_a_planted_linear_error():
    from saes.evaluate import dark_matter

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 16, generator=g)
    a = torch.randn(16, 16, generator=g)
    signal, noise = x @ a, torch.randn(4000, 16, generator=g)
    # error = signal + noise with equal variance per dimension on average: R^2 = var(signal) / total
    err = signal + noise * signal.std(0)
    expected = float(signal.var(0).sum() / err.var(0).sum())
    assert dark_matter(x, err)["dark_matter_r2"] == pytest.approx(expected, abs=0.03)
    assert abs(dark_matter(x, noise)["dark_matter_r2"]) < 0.02  # pure noise: nothing predictable


def test_direct_feature_attribution_sums_to_the_encoder_pre_activation(tiny, corpus, trained):
    from saes.attribution import direct_feature_attribution
    from saes.evaluate import load_sae

    sae = load_sae(trained)
    tokens = corpus[0, :20]
    name = f"blocks.{LAYER}.attn.hook_z"
    _, cache = tiny.run_with_cache(tokens[None], names_filter=[name])
    _, sae_cache = sae.run_with_cache(cache[name][0, 13].flatten()[None])
    pre = sae_cache["hook_sae_acts_pre"][0]
    for feature in pre.topk(3).indices.tolist() + [int(pre.argmin())]:
        res = direct_feature_attribution(tiny, sae, tokens, feature, layer=LAYER, position=13)
        assert res["by_head_source"].shape == (4, 14)
        assert res["pre_activation"] == pytest.approx(float(pre[feature]), abs=1e-4)
        # per head: W_enc block . z_h, from hook_z directly
        z = cache[name][0, 13].double()
        w = sae.W_enc[:, feature].double().reshape(4, 8)
        torch.testing.assert_close(res["by_head"], (z * w).sum(-1), atol=1e-6, rtol=1e-6)


def test_head_attribution_hand_case():
    from saes.attribution import head_attribution

    class Fake:
        W_dec = torch.tensor([[3.0, 4.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]])  # 2 heads x d_head 2

    share = head_attribution(Fake, 2)
    torch.testing.assert_close(share, torch.tensor([[1.0, 0.0], [0.5, 0.5]]))


def test_dashboard_top_contexts_are_the_largest_activations(tiny, corpus, trained):
    from saes.dashboards import activation_stats, dashboard
    from saes.evaluate import feature_acts, load_sae

    sae = load_sae(trained)
    tokens = corpus[:12]
    stats = activation_stats(tiny, sae, tokens, layer=LAYER, batch_size=5, top=4)
    _, cache = tiny.run_with_cache(tokens, names_filter=[f"blocks.{LAYER}.attn.hook_z"])
    acts = feature_acts(sae, cache[f"blocks.{LAYER}.attn.hook_z"]).flatten(0, 1)
    feature = int(acts.max(0).values.argmax())
    torch.testing.assert_close(stats["top_values"][feature], acts[:, feature].topk(4).values)
    board = dashboard(tiny, sae, stats, feature, layer=LAYER)
    assert len(board["top_contexts"]) == 4 and sum(board["head_attribution"].values()) == pytest.approx(1, abs=1e-3)
    assert len(board["logit_effects"]) == 16


def test_code_scores_hand_case():
    from saes.circuit_id import code_scores

    # 3 positives, 2 negatives, one layer with two heads. Head 0: positive codes {1, 2, 1}, negative {2, 3}:
    # the two positives with code 1 are positive-only -> 2/3. Head 1: all examples share code 0 -> 0.
    codes = torch.tensor([[1, 0], [2, 0], [1, 0], [2, 0], [3, 0]])[:, None, :]
    positive = torch.tensor([True, True, True, False, False])
    torch.testing.assert_close(code_scores(codes, positive), torch.tensor([[2 / 3, 0.0]]))


def test_head_codes_separate_heads_that_see_the_difference():
    from saes.circuit_id import code_scores, head_codes

    g = torch.Generator().manual_seed(0)
    n = 10
    z = torch.randn(2 * n, 1, 2, 8, generator=g) * 0.05
    z[:n, 0, 0] += torch.tensor([3.0] + [0.0] * 7)   # head 0 writes a different direction for positives
    z[n:, 0, 0] += torch.tensor([0.0, 3.0] + [0.0] * 6)
    z[:, 0, 1] += torch.tensor([0.0, 0.0, 3.0] + [0.0] * 5)  # head 1 writes the same thing either way
    positive = torch.arange(2 * n) < n
    scores = code_scores(head_codes(z, n_latents=4, steps=200), positive)
    assert scores[0, 0] == 1.0 and scores[0, 1] < 0.5


def test_compare_heads_and_roc_auc_hand_case():
    import pandas as pd

    from interp.head_table import HeadTable
    from saes.circuit_id import compare_heads, roc_auc

    df = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "label": ["L0H0", "L0H1", "L1H0", "L1H1"],
                       "score": [0.9, 0.1, 0.5, 0.5]})
    result = compare_heads(HeadTable(df), {(0, 0), (1, 1)})
    assert result["precision"] == 0.5 and result["recall"] == 0.5  # top 2: L0H0 and L1H0 (stable order)
    # members 0.9 and 0.5 vs non-members 0.1 and 0.5: pairs won 1, 1, 1, tie -> (3 + 0.5) / 4
    assert result["roc_auc"] == pytest.approx(3.5 / 4)
    assert roc_auc(torch.tensor([1.0, 0.0]), torch.tensor([True, False])) == 1.0
    from interp import Circuit  # the discovery engine's circuit works as the reference too

    circuit = Circuit(model="m", task="t", metric="logit_diff", method="eap", nodes=["A0.0", "A1.1", "M0"])
    assert compare_heads(HeadTable(df), circuit) == result


def test_sigterm_during_training_saves_a_full_checkpoint(tiny, corpus, tmp_path):
    import os
    import signal

    from sae_lens.training._interruption import InterruptedException

    from saes.train import latest_checkpoint

    before = signal.getsignal(signal.SIGTERM)

    def stop_at_3(step, running):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(InterruptedException):
        _train(tiny, corpus, tmp_path / "run", k=6, tokens=2048, n_checkpoints=0, on_step=stop_at_3)
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None and torch.load(ckpt / "trainer_state.pt", weights_only=True)["n_training_steps"] == 3
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_sae_lens_gets_the_device_seed_and_bos_we_mean(corpus, monkeypatch, tmp_path):
    """The LanguageModelSAERunnerConfig handed to sae_lens, field by field (values chosen unlike its defaults:
    device cpu, seed 42, prepend_bos True)."""
    import saes.train as T

    model = tiny_gqa_model()
    model.cfg.device, model.cfg.default_prepend_bos = "cuda:1", False  # only read into the config here
    seen = {}

    class Stop(Exception):
        pass

    class Capture:
        def __init__(self, cfg, **kwargs):
            seen["cfg"], seen["kwargs"] = cfg, kwargs
            raise Stop

    monkeypatch.setattr(T, "_runner_classes", lambda: (Capture, Stop))
    with pytest.raises(Stop):
        _train(model, corpus, tmp_path / "cfg", k=6, seed=7, lm_dtype="float32", autocast=None)
    cfg = seen["cfg"]
    assert (cfg.device, cfg.seed, cfg.prepend_bos) == ("cuda:1", 7, False)
    assert cfg.hook_name == f"blocks.{LAYER}.attn.hook_z" and cfg.sae.d_in == 4 * 8 and cfg.sae.d_sae == 16 * 32
    assert cfg.context_size == 32 and cfg.training_tokens == 4096 and cfg.train_batch_size_tokens == 256
    assert cfg.lr == 3e-3 and cfg.is_dataset_tokenized and not cfg.streaming and not cfg.logger.log_to_wandb
    assert cfg.autocast is False  # None resolves before the config is built (cuda:1 is not there: no bf16)
    assert cfg.sae.reshape_activations == "hook_z" and cfg.resume_from_checkpoint is None
    rows = seen["kwargs"]["override_dataset"]["input_ids"]
    from saes.corpus import split_ids

    train_ids, _ = split_ids(len(corpus), 0.02, seed=7)
    assert rows == corpus[train_ids].tolist()  # exactly the training split of seed 7


def test_the_saved_config_says_what_training_used(trained):
    runner = json.loads((trained / "runner_cfg.json").read_text())
    assert runner["seed"] == 0 and runner["device"] == "cpu" and runner["prepend_bos"] is True  # tiny: BOS default
    cfg = json.loads((trained / "cfg.json").read_text())
    assert cfg["metadata"]["prepend_bos"] is True and cfg["metadata"]["context_size"] == 32


def test_two_runs_of_one_command_give_identical_weights(tiny, corpus, tmp_path):
    from safetensors.torch import load_file

    runs = [_train(tiny, corpus, tmp_path / name, k=6, tokens=1024, n_checkpoints=0, seed=seed)
            for name, seed in (("a", 1), ("b", 1), ("c", 2))]
    a, b, c = (load_file(str(p / "sae_weights.safetensors")) for p in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["W_dec"], c["W_dec"])  # the seed matters


def test_training_json_records_the_held_out_split(tiny, corpus, trained):
    from saes.corpus import split_ids
    from saes.train import contexts_fingerprint

    data = json.loads((trained / "training.json").read_text())["data"]
    train_ids, held_ids = split_ids(len(corpus), 0.02, seed=0)
    assert data["held_out_ids"] == held_ids.tolist() and len(held_ids) == 6  # 2 % of 300
    assert not set(data["held_out_ids"]) & set(train_ids.tolist())
    assert data["seed"] == 0 and data["held_out_fraction"] == 0.02 and data["corpus"] == "tensor"
    assert data["n_contexts"] == 300 and data["corpus_fingerprint"] == contexts_fingerprint(corpus)


def test_resuming_with_another_seed_is_refused(tiny, corpus, tmp_path):
    from sae_lens.training._interruption import InterruptedException

    from interp.errors import InputError

    with pytest.raises(InterruptedException):
        _train(tiny, corpus, tmp_path / "run", k=6, stop_after_steps=2, seed=0)
    with pytest.raises(InputError, match="trained with corpus"):
        _train(tiny, corpus, tmp_path / "run", k=6, seed=1)


def test_sae_eval_scores_exactly_the_training_held_out_set(tiny, corpus, tmp_path, monkeypatch, capsys):
    """`interp sae eval` end to end (in-process, the tiny model standing in for a named one): it evaluates
    on the context ids training.json recorded, and refuses another --seed with one line, exit 2."""
    import interp.loading
    import interp.model_facts
    import saes.corpus
    from interp.cli import main
    from interp.model_facts import ModelFacts

    monkeypatch.setattr(saes.corpus, "token_contexts", lambda model, source, **kw: corpus)
    out = _train(tiny, "bible", tmp_path / "sae", k=6, tokens=1024, n_checkpoints=0, seed=3)
    held = json.loads((out / "training.json").read_text())["data"]["held_out_ids"]
    monkeypatch.setattr(interp.model_facts, "model_facts", lambda name, cache_dir=None: ModelFacts("tiny-gqa", 3, 4, 8, 128))
    monkeypatch.setattr(interp.loading, "load_model", lambda *a, **kw: tiny)
    capsys.readouterr()
    code = main(["sae", "eval", "--sae", str(out), "--out", str(tmp_path / "eval"), "--contexts", "4",
                 "--frequency-contexts", "0", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["context_ids"] == held[:4]
    assert doc["metrics"]["n_tokens"] == 4 * 32
    from dataclasses import asdict

    from saes.evaluate import SAEEvalConfig

    assert doc["config"] == asdict(SAEEvalConfig(contexts=4, frequency_contexts=0))
    assert [r["label"] for r in doc["heads"]["rows"]] == [f"L{LAYER}H{h}" for h in range(4)]
    written = json.loads((tmp_path / "eval" / "sae_eval.json").read_text())
    assert written["schema"] == "interp.sae_eval/1" and written["config"] == doc["config"]
    # the metrics are those of exactly these rows
    from saes.evaluate import evaluate_sae, load_sae

    expected = evaluate_sae(tiny, load_sae(out), corpus[torch.tensor(held[:4])], layer=LAYER)
    assert doc["metrics"]["ce_loss_with_sae"] == pytest.approx(expected["ce_loss_with_sae"], rel=1e-6)

    code = main(["sae", "eval", "--sae", str(out), "--out", str(tmp_path / "eval2"), "--seed", "0"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "was trained with seed 3" in lines[0]
    assert not (tmp_path / "eval2").exists()


def test_head_polysemanticity_hand_case():
    """3 heads x d_head 2, five latents. Decoder blocks (rows: latents; |block| per head):
    f0 = [3,4 | 0,0 | 0,0]   share (1, 0, 0)
    f1 = [0,5 | 0,0 | 0,0]   share (1, 0, 0)      head 0 owns f0, f1: cos(f0, f1) = 4/5
    f2 = [0,0 | 1,0 | 0,0]   share (0, 1, 0)
    f3 = [0,0 | 0,2 | 0,0]   share (0, 1, 0)      head 1 owns f2, f3: orthogonal, cos 0 -> polysemantic
    f4 = [1,0 | 0,0 | 1,0]   share (1/2, 0, 1/2)  owned (share >= 0.5) by heads 0 and 2"""
    from types import SimpleNamespace

    from saes.attribution import head_polysemanticity

    W_dec = torch.tensor([[3.0, 4, 0, 0, 0, 0], [0, 5, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 2, 0, 0],
                          [1, 0, 0, 0, 1, 0]])
    sae = SimpleNamespace(W_dec=W_dec)
    model = SimpleNamespace(cfg=SimpleNamespace(n_heads=3))
    df = head_polysemanticity(sae, model, 7).df.set_index("head")
    assert df["label"].tolist() == ["L7H0", "L7H1", "L7H2"]
    assert df["owned_features"].tolist() == [3, 2, 1]
    # head 0 owns f0, f1, f4: |cos| pairs (f0,f1) 4/5, (f0,f4) 3/5, (f1,f4) 0 -> mean 7/15
    assert df.loc[0, "mean_abs_cos"] == pytest.approx(7 / 15)
    assert df.loc[1, "mean_abs_cos"] == pytest.approx(0.0) and np.isnan(df.loc[2, "mean_abs_cos"])
    assert df["polysemantic"].tolist() == [True, True, False]
    # shares over the five latents: head 0 (1, 1, 0, 0, .5), head 1 (0, 0, 1, 1, 0), head 2 (0, 0, 0, 0, .5)
    assert df["mean_share"].tolist() == pytest.approx([2.5 / 5, 2 / 5, 0.5 / 5])
    assert df["effective_features"].tolist() == pytest.approx([2.5 ** 2 / 2.25, 2.0, 1.0])
    # only live latents count: with f1 and f2 dead, head 0 owns f0 and f4 (cos 3/5), head 1 only f3
    live = head_polysemanticity(sae, model, 7, alive=torch.tensor([1, 0, 0, 1, 1])).df.set_index("head")
    assert live["owned_features"].tolist() == [2, 1, 1]
    assert live.loc[0, "mean_abs_cos"] == pytest.approx(3 / 5) and live["polysemantic"].tolist() == [False, False, False]


SAE_TABLE_COLUMNS = ["owned_features", "effective_features", "mean_share", "mean_abs_cos", "polysemantic",
                     "top_features", "top_feature_share"]


def test_sae_eval_analysis_is_one_typed_result_with_a_head_table_of_its_layer(tiny, corpus, trained, tmp_path):
    """The table's decoder shares over live features, from sae_lens' encoder on TL's full forward and the
    decoder weights in float64; the JSON round-trips with allow_nan=False and carries the config whole."""
    from dataclasses import asdict

    from interp import HeadTable
    from saes.evaluate import SAEEvalConfig, SAEEvalResult, load_sae, sae_eval_analysis

    tokens = corpus[-6:]
    result = sae_eval_analysis(tiny, trained, tokens=tokens, contexts=6, batch_size=4, progress=False)
    assert isinstance(result, SAEEvalResult) and result.config == SAEEvalConfig(contexts=6, batch_size=4)
    assert result.layer == LAYER and result.sae == str(trained) and result.context_ids is None
    df = result.table.df
    assert result.table.metrics == SAE_TABLE_COLUMNS and df["layer"].tolist() == [LAYER] * tiny.cfg.n_heads
    assert df["head"].tolist() == list(range(tiny.cfg.n_heads))

    sae = load_sae(trained)
    name = f"blocks.{LAYER}.attn.hook_z"
    with torch.no_grad():
        _, cache = tiny.run_with_cache(tokens, names_filter=[name])
        alive = (sae.encode(cache[name].flatten(-2)) != 0).flatten(0, 1).any(0)
    norms = sae.W_dec.detach().double().reshape(sae.cfg.d_sae, tiny.cfg.n_heads, -1).norm(dim=-1)[alive]
    share = norms / norms.sum(-1, keepdim=True)
    assert result.n_live == int(alive.sum()) == sae.cfg.d_sae - result.metrics["dead_features"]
    assert df["mean_share"].to_numpy() == pytest.approx(share.mean(0).numpy(), abs=1e-6)
    assert df["mean_share"].sum() == pytest.approx(1.0, abs=1e-6)  # shares are float32
    assert df["top_features"].tolist() == torch.bincount(share.argmax(1), minlength=tiny.cfg.n_heads).tolist()
    assert df["top_feature_share"].to_numpy() == pytest.approx(df["top_features"].to_numpy() / int(alive.sum()))
    with torch.no_grad():
        clean = float(tiny(tokens, return_type="loss"))
    assert result.metrics["ce_loss_without_sae"] == pytest.approx(clean, rel=1e-5)

    result.to_json(tmp_path / "sae_eval.json")  # allow_nan=False
    body = json.loads((tmp_path / "sae_eval.json").read_text())
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False)) == body
    assert body["schema"] == "interp.sae_eval/1" and body["config"] == asdict(result.config)
    assert body["layer"] == LAYER and body["metrics"]["n_tokens"] == 6 * 32 and body["sae"] == str(trained)
    assert body["sae_config"]["d_sae"] == sae.cfg.d_sae and body["sae_config"]["metadata"]["hook_name"] == name
    again = HeadTable.from_dict(body["heads"]).df  # a column of nothing but NaN comes back as None (object)
    assert again["label"].tolist() == df["label"].tolist()
    for column in SAE_TABLE_COLUMNS:
        assert again[column].astype(float).tolist() == pytest.approx(df[column].astype(float).tolist(), nan_ok=True)


def test_sae_eval_analysis_needs_tokens_for_a_loaded_sae(tiny, trained):
    from interp.errors import InputError
    from saes.evaluate import load_sae, sae_eval_analysis

    with pytest.raises(InputError, match="needs tokens or texts"):
        sae_eval_analysis(tiny, load_sae(trained))
