"""hook_z SAEs on a tiny random GQA model: training with checkpoints and resume through sae_lens,
evaluation against TransformerLens' own hooked runs, attribution sums against the encoder's hook."""
import json

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
    assert m["ce_loss_score"] == pytest.approx(float((zero - with_sae) / (zero - clean)), rel=1e-4)
    x = cache[name].flatten(-2).flatten(0, 1).double()
    err = x - reconstruct(sae, cache[name]).flatten(-2).flatten(0, 1).double()
    assert m["explained_variance"] == pytest.approx(float(1 - err.pow(2).sum() / (x - x.mean(0)).pow(2).sum()), rel=1e-4)
    acts = feature_acts(sae, cache[name])
    assert m["l0"] == pytest.approx(6.0)  # top-k with k = 6
    assert m["dead_features"] == int(((acts > 0).flatten(0, 1).sum(0) == 0).sum())
    assert m["kl_div_with_sae"] >= 0 and m["kl_div_with_ablation"] > 0


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
