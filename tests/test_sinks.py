"""Sinks and extreme tokens against TransformerLens' eager pattern and cache, computed here."""
import pytest
import torch

from circuits.sinks import (act_calibration, calibrate_pattern, calibration_effect, extreme_tokens, hidden_sinks,
                            massive_activations, sink_scores)
from interp import InputError


@pytest.fixture(scope="module")
def samples(smollm2, real_texts):
    """(texts, eager cache per text cut to 64 tokens) for the reference computations."""
    caches = []
    for text in real_texts[:3]:
        tokens = smollm2.to_tokens(text)[0, :64]
        _, cache = smollm2.run_with_cache(tokens[None], names_filter=lambda n: n.endswith(("pattern", "hook_v", "resid_pre")))
        caches.append((tokens, cache))
    return real_texts[:3], caches


def _alpha(cache, layer, k):
    """Gu et al.'s α_k = (1/(T−k)) Σ_{i≥k} A[i, k], per head, from the full pattern."""
    pattern = cache["pattern", layer][0].double()  # [head, q, k]
    return pattern[:, k:, k].mean(-1)


@pytest.mark.parametrize("k", [0, 2])
def test_sink_scores_match_gu_et_al_definition(smollm2, samples, k):
    texts, caches = samples
    table = sink_scores(smollm2, texts, k=k, eps=0.3, max_tokens=64, progress=False)
    alpha = torch.stack([torch.stack([_alpha(c, l, k) for l in range(30)]) for _, c in caches])  # [sample, layer, head]
    torch.testing.assert_close(torch.tensor(table.grid("alpha").values), alpha.mean(0), rtol=1e-4, atol=1e-6)
    expected_rate = (alpha > 0.3).double().mean(0)
    torch.testing.assert_close(torch.tensor(table.grid("sink_rate").values), expected_rate)
    assert table.meta["sink_ratio"] == pytest.approx(100 * expected_rate.mean().item())


def test_first_token_is_a_sink_in_most_smollm2_heads(smollm2, samples):
    table = sink_scores(smollm2, samples[0], progress=False)
    assert table.meta["sink_ratio"] > 50  # measured 73 % on 8 texts; Gu et al. report 70-90 % for 7B models


def test_hidden_sinks_are_later_keys_over_threshold(smollm2, samples):
    texts, caches = samples
    found = hidden_sinks(smollm2, texts[:1], threshold=0.1, max_tokens=64, progress=False)
    tokens, cache = caches[0]
    n = len(tokens)
    expected = set()
    for layer in range(30):
        pattern = cache["pattern", layer][0].double()
        alpha = pattern.sum(-2) / torch.arange(n, 0, -1, dtype=torch.float64)  # ACT: received / (N − j)
        for head, pos in ((alpha > 0.1) & (torch.arange(n) >= 1)).nonzero().tolist():
            expected.add((layer, head, pos))
    assert set(zip(found["layer"], found["head"], found["position"])) == expected
    assert (found["position"] > 0).all() and len(found) > 0


def test_extreme_tokens_per_layer(smollm2, samples):
    texts, caches = samples
    table = extreme_tokens(smollm2, texts, max_tokens=64, progress=False)
    for layer in (2, 15):
        v = [c["v", layer][0].norm(dim=-1).repeat_interleave(3, dim=1).mean(-1) for _, c in caches]  # [pos]
        r = [c["resid_pre", layer][0].norm(dim=-1) for _, c in caches]
        row = table.set_index("layer").loc[layer]
        assert row["v_norm_sink"] == pytest.approx(torch.stack([x[0] for x in v]).mean().item(), rel=1e-4)
        assert row["v_norm_other"] == pytest.approx(torch.cat([x[1:] for x in v]).median().item(), rel=1e-4)
        assert row["resid_norm_sink"] == pytest.approx(torch.stack([x[0] for x in r]).mean().item(), rel=1e-4)
    assert table["resid_peak"].max() > 10 and table["value_drain"].min() < 0.5  # SmolLM2 shows both phenomena


def test_massive_activations_match_the_residual_stream(smollm2, samples):
    """Every entry of TransformerLens' resid_pre over Sun et al.'s thresholds is reported, and nothing else."""
    texts, caches = samples
    found = massive_activations(smollm2, texts[:2], max_tokens=64, progress=False)
    expected = {}
    for prompt in range(2):
        cache = caches[prompt][1]
        for layer in range(smollm2.cfg.n_layers):
            x = cache["resid_pre", layer][0]  # [pos, d_model]
            hits = (x.abs() > 100) & (x.abs() > 1000 * x.abs().median())
            for pos, dim in hits.nonzero().tolist():
                expected[(layer, prompt, pos, dim)] = x[pos, dim].item()
    reported = {(r.layer, r.prompt, r.position, r.dim): r.value for r in found.itertuples()}
    assert len(expected) > 0  # SmolLM2 has massive activations (Sun et al. find them in every LLM they study)
    assert reported.keys() == expected.keys()
    for key, value in expected.items():
        assert reported[key] == pytest.approx(value, rel=1e-5)


def _act_reference(pattern, beta, threshold):
    """ACT's calibration written row by row from the paper's description."""
    n = pattern.shape[0]
    alpha = [pattern[:, j].sum().item() / (n - j) for j in range(n)]
    sinks = [j for j in range(1, n) if alpha[j] > threshold]
    out = pattern.clone()
    for i in range(n):
        removed = sum(pattern[i, j].item() for j in sinks) * (1 - beta)
        rest = [j for j in range(n) if j not in sinks]
        total = sum(pattern[i, j].item() for j in rest)
        if total == 0:
            continue
        for j in sinks:
            out[i, j] = pattern[i, j] * beta
        for j in rest:
            out[i, j] = pattern[i, j] + removed * pattern[i, j] / total
    return out


def test_calibrate_pattern_matches_act_and_keeps_rows_normalised():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(12, 12, generator=g, dtype=torch.float64) * 2
    scores[:, 3] += 4  # a strong hidden sink at key 3
    pattern = scores.masked_fill(torch.triu(torch.ones(12, 12, dtype=torch.bool), 1), float("-inf")).softmax(-1)
    out = calibrate_pattern(pattern, beta=0.4, threshold=0.1)
    torch.testing.assert_close(out, _act_reference(pattern, 0.4, 0.1))
    torch.testing.assert_close(out.sum(-1), torch.ones(12, dtype=torch.float64))
    assert out[5, 3] == pytest.approx(0.4 * pattern[5, 3].item())


def _reference_hook(head):
    """A hook_pattern hook that replaces one head's pattern by `_act_reference`'s (float64, row by row)."""
    def hook(pattern, hook):
        out = pattern.clone()
        out[0, head] = _act_reference(pattern[0, head].double(), 0.4, 0.1).to(pattern.dtype)
        return out

    return hook


def test_act_calibration_changes_only_the_chosen_heads(smollm2, samples):
    tokens, cache = samples[1][0]
    names = lambda n: n.endswith("hook_z")
    _, base = smollm2.run_with_cache(tokens[None], names_filter=names)
    with act_calibration(smollm2, [(4, 3)]):
        _, calibrated = smollm2.run_with_cache(tokens[None], names_filter=names)
    assert torch.equal(base["z", 3], calibrated["z", 3])
    torch.testing.assert_close(base["z", 4][:, :, :3], calibrated["z", 4][:, :, :3])
    kv_head = 3 // (smollm2.cfg.n_heads // smollm2.cfg.n_key_value_heads)
    expected = _act_reference(cache["pattern", 4][0, 3].double(), 0.4, 0.1) @ cache["v", 4][0, :, kv_head].double()
    assert not torch.allclose(base["z", 4][0, :, 3].double(), expected, atol=1e-3)  # the head has a hidden sink
    torch.testing.assert_close(calibrated["z", 4][0, :, 3].double(), expected, rtol=1e-4, atol=1e-5)

    texts = samples[0][:2]
    effect = calibration_effect(smollm2, [(4, 3)], texts, max_tokens=64)
    assert list(effect.columns) == ["prompt", "n_tokens", "loss_base", "loss_calibrated", "delta"]
    for row, (toks, _) in zip(effect.itertuples(), samples[1][:2]):
        with torch.no_grad():
            loss = smollm2(toks[None], return_type="loss").item()
            with smollm2.hooks(fwd_hooks=[("blocks.4.attn.hook_pattern", _reference_hook(3))]):
                loss_ref = smollm2(toks[None], return_type="loss").item()
        assert row.n_tokens == len(toks)
        assert row.loss_base == pytest.approx(loss, rel=1e-6)
        assert row.loss_calibrated == pytest.approx(loss_ref, rel=1e-5)
        assert row.delta == pytest.approx(loss_ref - loss, abs=1e-5) and row.delta != 0
    with pytest.raises(InputError, match="L40H0 does not exist"):
        with act_calibration(smollm2, [(40, 0)]):
            pass


def test_sinks_analysis_is_one_typed_result_that_records_its_config(smollm2, samples, tmp_path):
    import json
    from dataclasses import asdict

    from circuits.sinks import SinksConfig, SinksResult, sinks_analysis
    from interp import HeadTable

    texts, _ = samples
    result = sinks_analysis(smollm2, texts[:2], eps=0.5, max_tokens=32, hidden_texts=1, progress=False)
    assert isinstance(result, SinksResult) and result.config == SinksConfig(eps=0.5, max_tokens=32, hidden_texts=1)
    result.to_json(tmp_path / "sinks.json")
    body = json.loads((tmp_path / "sinks.json").read_text())
    assert body["schema"] == "interp.sinks/1" and body["config"] == asdict(result.config)
    again = HeadTable.from_dict(body["heads"])
    assert again.df.equals(result.table.df) and again.meta["eps"] == 0.5 and again.meta["T"] == 32
    assert body["sink_ratio"] == pytest.approx(100 * result.table.df["sink_rate"].mean())
