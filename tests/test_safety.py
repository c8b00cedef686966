"""Safety heads: Ships against KL from TransformerLens' run_with_hooks (prompt by prompt, the query
scaled explicitly), the mean/output variants, batched generation against TL's greedy loop, the
subspace angle on a hand-made case, and the shipped prompt sets."""
import math

import pytest
import torch

from circuits import safety as S
from interp.errors import InputError
from tests.tiny import tiny_gqa_model

PREFIX = [3, 14, 15, 92, 65]
PROMPTS = [PREFIX + [35, 89], PREFIX + [79, 32, 38, 46], PREFIX + [26], PREFIX + [43, 38, 32, 79, 50]]


@pytest.fixture(scope="module")
def tiny():
    return tiny_gqa_model(seed=5)


def _kl_reference(model, tokens, hooks):
    """KL(p_base ‖ p_hooked) at the last position of one unpadded prompt, float64."""
    t = torch.tensor(tokens)[None]
    with torch.no_grad():
        base = torch.log_softmax(model(t)[0, -1].double(), -1)
        other = torch.log_softmax(model.run_with_hooks(t, fwd_hooks=hooks)[0, -1].double(), -1)
    return float((base.exp() * (base - other)).sum())


def _scale_head(site, head, factor):
    def hook(x, hook):
        x = x.clone()
        x[:, :, head] *= factor
        return x
    return site, hook


def test_token_batch_splits_the_shared_prefix():
    batch = S.token_batch(PROMPTS, pad=0)
    assert batch.prefix.tolist() == PREFIX
    assert batch.lengths.tolist() == [2, 4, 1, 5] and batch.suffix.shape == (4, 5)
    assert S.token_batch([[1, 2], [1, 2]]).lengths.tolist() == [1, 1]  # every suffix keeps a token


def test_ships_matches_run_with_hooks_scaled_query(tiny):
    heads = [(0, 1), (1, 3), (2, 0)]
    result = S.ships(tiny, S.token_batch(PROMPTS), heads=heads)
    for layer, head in heads:
        hooks = [_scale_head(f"blocks.{layer}.attn.hook_q", head, 1e-5)]  # before rotary: same map, linear
        ref = [_kl_reference(tiny, p, hooks) for p in PROMPTS]
        assert result.per_prompt[:, layer, head] == pytest.approx(ref, rel=1e-3, abs=1e-7)
        assert max(ref) > 1e-4  # the ablation does something
    assert len(result.table) == 3 and set(result.table.df["label"]) == {"L0H1", "L1H3", "L2H0"}


def test_output_and_mean_ablation_match_run_with_hooks(tiny):
    batch = S.token_batch(PROMPTS)
    out = S.ships(tiny, batch, heads=[(1, 2)], ablation="output", scale=0.0)
    ref = [_kl_reference(tiny, p, [_scale_head("blocks.1.attn.hook_z", 2, 0.0)]) for p in PROMPTS]
    assert out.per_prompt[:, 1, 2] == pytest.approx(ref, rel=1e-3, abs=1e-7)

    # mean z of head (1, 2) over every token of every prompt, computed directly
    zs = []
    for p in PROMPTS:
        _, cache = tiny.run_with_cache(torch.tensor(p)[None], names_filter="blocks.1.attn.hook_z")
        zs.append(cache["blocks.1.attn.hook_z"][0, :, 2])
    mean = torch.cat(zs).mean(0)

    def put_mean(z, hook):
        z = z.clone()
        z[:, :, 2] = mean
        return z

    mean_run = S.ships(tiny, batch, heads=[(1, 2)], ablation="mean")
    ref = [_kl_reference(tiny, p, [("blocks.1.attn.hook_z", put_mean)]) for p in PROMPTS]
    assert mean_run.per_prompt[:, 1, 2] == pytest.approx(ref, rel=1e-3, abs=1e-7)


def test_batched_generation_matches_tl_greedy_loop(tiny):
    batch = S.token_batch(PROMPTS)
    heads = [(1, 0), (2, 3)]
    got = S.generate_tokens(tiny, batch, max_new_tokens=5, heads=heads)
    hooks = [_scale_head(f"blocks.{l}.attn.hook_q", h, 1e-5) for l, h in heads]
    for prompt, row in zip(PROMPTS, got):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(5):  # TL's own forward over the whole sequence, no cache, no padding
                seq.append(int(tiny.run_with_hooks(torch.tensor(seq)[None], fwd_hooks=hooks)[0, -1].argmax()))
        assert row == seq[len(prompt):]


def test_subspace_angle_hand_case():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(8, generator=g)
    u1 = torch.tensor([1.0, 0.0, 0.0, 0.0])
    theta = math.radians(30)
    u2 = torch.tensor([math.cos(theta), math.sin(theta), 0.0, 0.0])
    assert S.subspace_angle(torch.outer(u1, v), torch.outer(u2, v)) == pytest.approx(30.0, abs=1e-4)
    assert S.subspace_angle(torch.outer(u1, v), torch.outer(-u1, 2 * v)) == pytest.approx(0.0, abs=1e-3)


def test_kl_divergence_hand_case():
    p = torch.tensor([[0.5, 0.5]], dtype=torch.float64).log()
    q = torch.tensor([[0.25, 0.75]], dtype=torch.float64).log()
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(S.kl_divergence(p, q)[0]) == pytest.approx(expected, rel=1e-12)


def test_bad_ablation_is_input_error(tiny):
    with pytest.raises(InputError):
        S.ablation_hooks(tiny, [(0, 0)], "keys")
    with pytest.raises(InputError):
        S.ablation_hooks(tiny, [(0, 7)])


def test_shipped_prompt_sets():
    harmful, harmless = S.load_prompts("harmful"), S.load_prompts("harmless")
    assert len(harmful) >= 100 and len(harmless) == len(harmful)
    assert harmful["category"].nunique() >= 8
    assert harmful["prompt"].is_unique and harmless["prompt"].is_unique
    # similar form: paired prompts share their first word and have similar lengths
    first = lambda s: s.str.split().str[0]
    assert (first(harmful["prompt"]) == first(harmless["prompt"])).mean() > 0.9
    ratio = harmless["prompt"].str.len() / harmful["prompt"].str.len()
    assert 0.7 < ratio.median() < 1.3


@pytest.mark.slow
def test_smollm2_ships_matches_run_with_hooks(smollm2):
    prompts = S.load_prompts("harmful")["prompt"].tolist()[:2]
    heads = [(3, 4), (20, 1)]
    result = S.ships(smollm2, prompts, heads=heads)
    assert len(result.base.batch.prefix) > 10  # the system prompt is shared
    for i, p in enumerate(prompts):
        t = torch.tensor(smollm2.tokenizer(S.chat_prompt(smollm2, p), add_special_tokens=False)["input_ids"])[None]
        with torch.no_grad():
            base = torch.log_softmax(smollm2(t)[0, -1].double(), -1)
            for layer, head in heads:
                hooks = [_scale_head(f"blocks.{layer}.attn.hook_rot_q", head, 1e-5)]
                other = torch.log_softmax(smollm2.run_with_hooks(t, fwd_hooks=hooks)[0, -1].double(), -1)
                ref = float((base.exp() * (base - other)).sum())
                assert result.per_prompt[i, layer, head] == pytest.approx(ref, rel=2e-3, abs=1e-6)


def _final_reference(model, heads):
    """[prompt, d_model] last-token ln_final outputs from TL's uncached forward, prompt by prompt, the heads'
    queries scaled by 1e-5 (before rotary: the same linear map), float64."""
    hooks = [_scale_head(f"blocks.{l}.attn.hook_q", h, 1e-5) for l, h in heads]
    rows = []
    with torch.no_grad():
        for p in PROMPTS:
            with model.hooks(fwd_hooks=hooks):
                _, cache = model.run_with_cache(torch.tensor(p)[None], names_filter=f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
            rows.append(model.ln_final(cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][:, -1:])[0, 0])
    return torch.stack(rows).double().numpy()


def _angle_reference(a, b):
    """Degrees between the top left singular vectors of a and b (numpy's SVD)."""
    import numpy as np

    u1, u2 = np.linalg.svd(a)[0][:, 0], np.linalg.svd(b)[0][:, 0]
    return float(np.degrees(np.arccos(min(1.0, abs(float(u1 @ u2))))))


def test_sahara_greedy_search_matches_an_independent_computation(tiny):
    candidates = [(0, 1), (0, 2), (1, 0), (1, 3), (2, 2)]
    base = S.base_run(tiny, S.token_batch(PROMPTS))
    found = S.sahara(tiny, base, steps=2, candidates=candidates)
    clean = _final_reference(tiny, [])
    np_base = base.final.double().numpy()
    assert abs(np_base - clean).max() < 1e-4  # the base run's representations are TL's
    first = {c: _angle_reference(clean, _final_reference(tiny, [c])) for c in candidates}
    best1 = max(first, key=first.get)
    second = {c: _angle_reference(clean, _final_reference(tiny, [best1, c])) for c in candidates if c != best1}
    best2 = max(second, key=second.get)
    assert [(r.layer, r.head) for r in found.itertuples()] == [best1, best2]
    assert found["angle"].tolist() == pytest.approx([first[best1], second[best2]], rel=1e-3, abs=1e-4)
    assert found["set"].tolist() == [f"L{best1[0]}H{best1[1]}", f"L{best1[0]}H{best1[1]},L{best2[0]}H{best2[1]}"]
    assert first[best1] > 0.1  # the search has something to find on this model


def test_refusal_check_ablates_the_ranked_heads_and_counts_refusals(tiny, monkeypatch):
    """generate() replaced by a rule with known answers: harmful prompts 0-2 are refused unless L2H1 is
    ablated; harmless ones are all refused exactly when L0H0 is ablated. The rates follow by hand."""
    import pandas as pd

    from interp.head_table import HeadTable

    calls = []

    def fake_generate(model, prompts, *, heads=(), ablation, scale, max_new_tokens, **kw):
        calls.append((list(heads), ablation, scale, max_new_tokens))
        if prompts[0].startswith("harmful"):
            return ["Sure." if (2, 1) in heads or i == 3 else "I'm sorry, I can't." for i in range(len(prompts))]
        return ["I cannot do that." if (0, 0) in heads else "Sure, here it is." for _ in prompts]

    monkeypatch.setattr(S, "generate", fake_generate)
    ships = torch.zeros(3, 4)
    ships[2, 1], ships[1, 0], ships[0, 3] = 3.0, 2.0, 1.0
    table = HeadTable.from_arrays({"ships": ships}, model="tiny-gqa")
    harmful, harmless = [f"harmful {i}" for i in range(4)], [f"harmless {i}" for i in range(4)]
    checks, answers = S.refusal_check(tiny, table, ks=(1, 3), draws=2, seed=0, harmful=harmful, harmless=harmless,
                                      max_new_tokens=7, ablation="output", scale=0.5)
    assert answers["harmful"] == ["I'm sorry, I can't."] * 3 + ["Sure."] and answers["harmless"] == ["Sure, here it is."] * 4
    assert all(c[1:] == ("output", 0.5, 7) for c in calls) and len(calls) == 2 * 7  # 7 runs x 2 sets
    rows = checks.set_index(["k", "ablated", "draw", "set"])
    assert rows.loc[(0, "none", 0, "harmful"), "refusal_rate"] == 0.75
    assert rows.loc[(0, "none", 0, "harmless"), "refusal_rate"] == 0.0
    assert rows.loc[(1, "top ships", 0, "harmful"), "heads"] == "L2H1"
    assert rows.loc[(1, "top ships", 0, "harmful"), "refusal_rate"] == 0.0
    assert rows.loc[(3, "top ships", 0, "harmful"), "heads"] == "L2H1,L1H0,L0H3"
    for row in checks[checks["ablated"] == "random"].itertuples():
        heads = row.heads.split(",")
        top = ["L2H1", "L1H0", "L0H3"][: row.k]
        assert len(set(heads)) == row.k and not set(heads) & set(top)  # k other heads
        if row.set == "harmful":  # L2H1 is never drawn (it is in every top k)
            assert row.refusal_rate == 0.75
        else:
            assert row.refusal_rate == (1.0 if "L0H0" in heads else 0.0)
    assert len(checks) == 2 * (1 + 2 * (1 + 2))  # (none + per k: top + 2 draws) x 2 sets
    assert isinstance(checks, pd.DataFrame)


# ---------------------------------------------------------------------------------------------
# one result shape: SafetyConfig -> SafetyResult, recorded whole in its JSON

def _strict_json(text):
    """json.loads that refuses NaN and Infinity (what allow_nan=False writers never emit)."""
    import json

    def refuse(name):
        raise AssertionError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_safety_analysis_refuses_bad_options_before_any_work(tiny):
    with pytest.raises(InputError, match="not both"):
        S.safety_analysis(tiny, S.SafetyConfig(), n_prompts=3)
    with pytest.raises(InputError, match="--ablation 'keys' is not one of"):
        S.safety_analysis(tiny, ablation="keys")
    with pytest.raises(InputError, match="--layers 3 is out of range; tiny-gqa has layers 0-2"):
        S.safety_analysis(tiny, layers=[3])
    with pytest.raises(InputError, match="each k must lie in 1..2"):
        S.safety_analysis(tiny, layers=[1], ks=(3,))


def _chat_model(tokenizer):
    """A tiny random Llama-like model (2 layers x 4 heads, rotary, GQA) speaking SmolLM2's tokenizer, chat
    template included: the whole analysis runs on every head in seconds."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        d_model=32, d_head=8, n_layers=2, n_heads=4, n_key_value_heads=2, d_mlp=64, n_ctx=256, d_vocab=len(tokenizer),
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
        final_rms=True, seed=13, model_name="tiny-chat", device="cpu", default_prepend_bos=False)
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.mul_(8.0)
    model.tokenizer = tokenizer
    return model


@pytest.mark.slow
def test_safety_analysis_is_one_typed_result_that_records_its_config(smollm2, tmp_path):
    """Every head scored on 3 harmful prompts in the chat template; each head's Ships is the mean KL that
    TransformerLens' run_with_hooks gives with its query scaled; Sahara starts from the largest single-head
    angle; all of it in one JSON."""
    import numpy as np

    from interp.head_table import HeadTable

    model = _chat_model(smollm2.tokenizer)
    config = S.SafetyConfig(n_prompts=3, sahara_steps=2, sahara_candidates=3, ks=(1,), draws=1, max_new_tokens=4)
    result = S.safety_analysis(model, config, progress=False)
    assert isinstance(result, S.SafetyResult) and result.config is config and result.KIND == "safety"
    table = result.table
    assert table.df["label"].tolist() == [f"L{l}H{h}" for l in range(2) for h in range(4)]
    assert table.metrics == ["ships", "ships_median", "sahara_angle"] and set(table.metrics) <= set(table.meta["columns"])
    prompts = S.load_prompts("harmful")["prompt"].tolist()[:3]
    tokens = [smollm2.tokenizer(S.chat_prompt(model, p), add_special_tokens=False)["input_ids"] for p in prompts]
    for row in table.df.itertuples():
        hooks = [_scale_head(f"blocks.{row.layer}.attn.hook_q", row.head, 1e-5)]  # before rotary: same linear map
        refs = [_kl_reference(model, t, hooks) for t in tokens]
        assert row.ships == pytest.approx(np.mean(refs), rel=1e-3, abs=1e-7)
        assert row.ships_median == pytest.approx(np.median(refs), rel=1e-3, abs=1e-7)
    assert table.df["ships"].max() > 1e-4  # the ablations do something
    assert result.sahara["label"].iloc[0] == table.top("sahara_angle", 1).df["label"].iloc[0] and len(result.sahara) == 2
    assert result.categories == S.load_prompts("harmful")["category"].tolist()[:3]
    result.to_json(tmp_path / "safety.json")
    body = _strict_json((tmp_path / "safety.json").read_text())
    assert body["schema"] == "interp.safety/1" and body["config"] == {
        "n_prompts": 3, "layers": None, "ablation": "query", "scale": 1e-5, "sahara_steps": 2, "sahara_candidates": 3,
        "ks": [1], "draws": 1, "n_check": None, "max_new_tokens": 4, "seed": 0}
    assert HeadTable.from_dict(body["heads"]).df.equals(table.df)
    assert len(body["refusal"]) == 2 * 3 and len(body["base_answers"]["harmful"]) == 3  # (none, top, random) x 2 sets
    assert body["params"]["n_check"] == 3 and set(body["seconds"]) == {"ships", "sahara", "refusal_check"}
    assert "SafetyResult" in result._repr_html_()


@pytest.mark.slow
def test_safety_command_json_carries_the_config(smollm2, tmp_path):
    from tests.test_cli import run

    out = tmp_path / "s"
    proc = run("safety", "--out", str(out), "--prompts", "2", "--layers", "3", "--sahara-steps", "1",
               "--sahara-candidates", "2", "--ks", "1", "--draws", "1", "--max-new-tokens", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    printed, written = _strict_json(proc.stdout), _strict_json((out / "safety.json").read_text())
    expected = {"n_prompts": 2, "layers": [3], "ablation": "query", "scale": 1e-5, "sahara_steps": 1,
                "sahara_candidates": 2, "ks": [1], "draws": 1, "n_check": None, "max_new_tokens": 4, "seed": 0}
    for doc in (printed, written):
        assert doc["schema"] == "interp.safety/1" and doc["config"] == expected
        assert [r["label"] for r in doc["heads"]["rows"]] == [f"L3H{h}" for h in range(9)]
        assert len(doc["sahara"]) == 1 and len(doc["refusal"]) == 2 * 3
