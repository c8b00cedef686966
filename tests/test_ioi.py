"""IOI dataset, baseline, roles and a small EAP run on SmolLM2 (real model, marked slow), plus
role rules and command-line input checks that need no model."""
import math
import subprocess
import sys

import pytest
import torch

# Bounds for the IOI sign test (4 select prompts, seed 0). Measured: Spearman with exact patching 0.82 (EAP)
# and 0.86 (EAP-IG, 3 steps) over the 48 heads; all 8 heads with >= 20 % of the largest patching effect have
# the patching sign under both. EAP is first order, so ranks can swap among the small heads: 0.7 leaves room
# for that and for BLAS differences; the sign of a large effect must not flip.
SPEARMAN_IOI = 0.7
SIGN_IOI = 1.0

from circuits.ioi import (  # noqa: E402
    NAMES,
    TEMPLATES,
    RoleThresholds,
    _role,
    baseline,
    capitals_dataset,
    ioi_dataset,
    single_tokens,
    token_id,
)


def test_templates_and_role_rules():
    assert len(TEMPLATES) >= 15
    th = RoleThresholds()
    base = {"att_end_io": 0.0, "att_end_s2": 0.0, "dla_logit_diff": 0.0, "negative_copy_score": 0.0,
            "s_inhibition_effect": math.nan, "induction": 0.0, "att_s2_s1_next": 0.0, "duplicate_token": 0.0,
            "att_s2_s1": 0.0, "previous_token": 0.0}
    assert _role({**base, "dla_logit_diff": 1.0}, True, th) == "name_mover"
    assert _role({**base, "dla_logit_diff": -1.0}, True, th) == "negative_name_mover"
    assert _role({**base, "att_end_s2": 0.5, "s_inhibition_effect": -0.1}, False, th) == "s_inhibition"
    assert _role({**base, "att_end_s2": 0.5, "s_inhibition_effect": -0.001}, False, th) == "other"
    assert _role({**base, "att_end_s2": 0.6, "dla_logit_diff": 2.0, "negative_copy_score": 0.9}, False, th) == \
        "s_copy_suppression"
    assert _role({**base, "att_s2_s1": 0.7, "previous_token": 0.4}, False, th) == "duplicate_token"
    assert _role({**base, "induction": 0.5}, False, th) == "induction"


def test_ioi_command_rejects_an_unknown_method(tmp_path):
    run = subprocess.run([sys.executable, "-m", "interp", "ioi", "--out", str(tmp_path / "out"), "--method", "magic"],
                         check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "magic" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dataset_uses_single_tokens_and_is_seedable(smollm2):
    data = ioi_dataset(smollm2, 30, seed=3)
    assert data.meta["n_templates"] == 15 and set(data.meta["orders"]) == {"BABA", "ABBA"}
    kept = set(single_tokens(smollm2, NAMES))
    for text, pos, clean, bad, order in zip(data.prompts, data.positions, data.pairs.clean, data.pairs.corrupt,
                                            data.meta["orders"]):
        toks = smollm2.to_str_tokens(text)
        io, s1, s2 = toks[pos["IO"]], toks[pos["S1"]], toks[pos["S2"]]
        assert s1 == s2 != io and io.strip() in kept and len(smollm2.tokenizer.encode(io, add_special_tokens=False)) == 1
        assert pos["end"] == len(toks) - 1
        assert (pos["S1"] < pos["IO"]) == (order == "BABA")  # BABA names the subject first
        n = pos["end"] + 1
        # ABC: the three name slots differ from IO and S, everything else is identical
        diff = (clean[:n] != bad[:n]).nonzero().flatten().tolist()
        assert set(diff) <= {pos["IO"], pos["S1"], pos["S2"]} and len(diff) >= 2
        names_bad = {int(bad[p]) for p in (pos["IO"], pos["S1"], pos["S2"])}
        assert len(names_bad) == 3 and not names_bad & {int(clean[pos["IO"]]), int(clean[pos["S1"]])}
    assert ioi_dataset(smollm2, 30, seed=3).prompts == data.prompts
    assert ioi_dataset(smollm2, 30, seed=4).prompts != data.prompts
    assert "Paula" in data.meta["rejected"]["names"]  # two tokens for SmolLM2: checked, not assumed


@pytest.mark.slow
def test_orders_are_balanced_at_every_n_and_every_template_gets_both(smollm2):
    for split in (None, "select", "eval"):
        orders = ioi_dataset(smollm2, 32, seed=0, split=split).meta["orders"]
        for n in range(1, 33):
            assert abs(orders[:n].count("BABA") - orders[:n].count("ABBA")) <= 1, (split, n)
    data = ioi_dataset(smollm2, 32, seed=0, split="select")
    by_template = {}
    for t, o in zip(data.meta["templates"], data.meta["orders"]):
        by_template.setdefault(t, set()).add(o)
    assert all(v == {"BABA", "ABBA"} for v in by_template.values()) and len(by_template) == 8


@pytest.mark.slow
def test_select_and_eval_splits_share_no_template_name_place_or_object(smollm2):
    sel, ev = ioi_dataset(smollm2, 40, seed=0, split="select"), ioi_dataset(smollm2, 40, seed=0, split="eval")
    assert not set(sel.meta["templates"]) & set(ev.meta["templates"])
    for key in ("names", "places", "objects"):
        assert not set(sel.meta[key]) & set(ev.meta[key]), key
    # read back from the prompts themselves: every name token in a split's prompts (clean, ABC and the
    # mean-ablation reference) comes from that split's names
    def names_used(d):
        ids = {int(d.pairs.clean[i, p[k]]) for i, p in enumerate(d.positions) for k in ("IO", "S1", "S2")}
        ids |= {int(d.pairs.corrupt[i, p[k]]) for i, p in enumerate(d.positions) for k in ("IO", "S1", "S2")}
        return {smollm2.tokenizer.decode([t]).strip() for t in ids}
    assert names_used(sel) <= set(sel.meta["names"]) and names_used(ev) <= set(ev.meta["names"])
    assert not names_used(sel) & names_used(ev)
    ref = sel.reference  # 16 ABC prompts per template used, for the mean
    assert sorted(ref.group.unique().tolist()) == sorted(set(sel.meta["templates"]))
    assert all(int((ref.group == g).sum()) == 16 for g in ref.group.unique())
    ref_words = {smollm2.tokenizer.decode([int(t)]).strip() for t in ref.clean.flatten()}
    assert not ref_words & set(ev.meta["names"])


@pytest.mark.slow
def test_baseline_solves_ioi_and_the_reference_prompt(smollm2):
    logits = smollm2(smollm2.to_tokens("When Mary and John went to the store, John gave a drink to"))[0, -1]
    assert int(logits.argmax()) == token_id(smollm2, "Mary")
    data = ioi_dataset(smollm2, 12, seed=0)
    base = baseline(smollm2, data)
    # independent: each prompt run alone, unpadded, through the model's own forward
    ld, bad_ld = [], []
    for text, bad, a, w in zip(data.prompts, data.corrupt_prompts, data.pairs.answer, data.pairs.wrong):
        lg = smollm2(smollm2.to_tokens(text))[0, -1].detach()
        lb = smollm2(smollm2.to_tokens(bad))[0, -1].detach()
        ld.append(float(lg[a] - lg[w]))
        bad_ld.append(float(lb[a] - lb[w]))
    ld = torch.tensor(ld)
    assert base["logit_diff"] == pytest.approx(float(ld.mean()), abs=1e-3)
    assert base["accuracy"] == pytest.approx(float((ld > 0).float().mean()))
    assert base["corrupt_logit_diff"] == pytest.approx(sum(bad_ld) / len(bad_ld), abs=1e-3)
    assert base["accuracy"] >= 0.8 and base["logit_diff"] > 2.0
    assert abs(base["corrupt_logit_diff"]) < 1.5
    caps = baseline(smollm2, capitals_dataset(smollm2, 6, seed=0))
    assert caps["accuracy"] >= 0.8


@pytest.mark.slow
def test_head_methods_agree_in_sign_with_exact_patching_on_ioi(smollm2):
    """EAP and EAP-IG against exact activation patching on real IOI prompts, with the same mean-ablation
    values: on the 24 heads EAP ranks most important plus 24 others (patching every head costs minutes),
    rank correlation and sign agreement on heads whose patching effect is ≥ 20 % of the largest."""
    from scipy.stats import spearmanr

    from circuits.attribution import head_attribution
    from interp.patching import patch_heads

    data = ioi_dataset(smollm2, 4, seed=0, split="select")
    abl = data.ablation(smollm2)
    eap = head_attribution(smollm2, data.pairs, method="eap", ablation=abl).df
    ig = head_attribution(smollm2, data.pairs, method="eap-ig", ablation=abl, steps=3).df
    order = eap["score"].abs().sort_values(ascending=False).index.tolist()
    chosen = order[:24] + order[24::10][:24]
    heads = [(int(eap.loc[i, "layer"]), int(eap.loc[i, "head"])) for i in chosen]
    exact = patch_heads(smollm2, data.pairs, ablation=abl, heads=heads)["effect"].numpy()
    big = abs(exact) >= 0.2 * abs(exact).max()
    assert big.sum() >= 3
    for name, table in (("eap", eap), ("eap-ig", ig)):
        got = table.loc[chosen, "score"].to_numpy()
        assert spearmanr(got, exact).statistic >= SPEARMAN_IOI, name
        assert ((got[big] > 0) == (exact[big] > 0)).mean() >= SIGN_IOI, name


def test_s_inhibition_effect_matches_a_direct_ablation_on_a_tiny_model():
    from circuits.ioi import TaskData, s_inhibition_effects
    from interp.patching import PromptPairs, ablation_values
    from tests.tiny import random_prompts, tiny_gqa_model

    model = tiny_gqa_model(seed=1, n_layers=3)
    clean, bad = random_prompts([8] * 4, seed=7), random_prompts([8] * 4, seed=8)
    pairs = PromptPairs.from_lists(clean, bad, answer=[1] * 4, wrong=[2] * 4)
    positions = [{"IO": 2, "S1": 1, "S2": 5, "end": 7}] * 4
    data = TaskData("toy", [""] * 4, [""] * 4, pairs, positions)
    movers = [(2, 1), (2, 3)]
    got = s_inhibition_effects(model, data, [(0, 2), (1, 0)], movers, n=4)
    z_abl = ablation_values(model, pairs, "mean").z

    def nm_score(fwd_hooks):
        _, cache = model.run_with_cache(pairs.clean, names_filter="blocks.2.attn.hook_pattern")
        if fwd_hooks:
            with model.hooks(fwd_hooks=fwd_hooks):
                _, cache = model.run_with_cache(pairs.clean, names_filter="blocks.2.attn.hook_pattern")
        p = cache["blocks.2.attn.hook_pattern"][:, [1, 3], 7]  # [B, mover, key]
        return float((p[:, :, 2] - p[:, :, 5]).mean())

    base = nm_score(None)
    for layer, head in [(0, 2), (1, 0)]:
        def ablate(z, hook, head=head, layer=layer):
            z = z.clone()
            z[:, :, head] = z_abl[layer][:, :, head]
            return z
        ref = nm_score([(f"blocks.{layer}.attn.hook_z", ablate)]) - base
        assert got[(layer, head)] == pytest.approx(ref, abs=1e-5)
    assert abs(got[(0, 2)]) + abs(got[(1, 0)]) > 1e-4  # the check can fail: the effects are not zero


def test_role_evidence_is_the_attention_and_direct_effect_the_model_computes():
    """ioi_head_evidence against hand computations on a tiny model: attention from TransformerLens'
    cached patterns at hand-placed IO / S1 / S2 / end positions, and the direct effect as the head's
    hook_result at the last position through the final norm (TL's apply_ln_to_stack) onto
    W_U[IO] − W_U[S]."""
    from circuits.ioi import TaskData, ioi_head_evidence
    from interp.patching import PromptPairs
    from tests.tiny import random_prompts, tiny_gqa_model

    model = tiny_gqa_model(seed=2, n_layers=2)
    with torch.no_grad():
        model.ln_final.w.fill_(1.0)  # folded-norm setting, as the workbench loads real models
    clean = random_prompts([9] * 4, seed=3)
    for c in clean:  # S at 1 and 5, IO at 3
        c[5] = c[1]
    pairs = PromptPairs.from_lists(clean, random_prompts([9] * 4, seed=4), answer=[int(c[3]) for c in clean],
                                   wrong=[int(c[1]) for c in clean])
    positions = [{"IO": 3, "S1": 1, "S2": 5, "end": 8}] * 4
    ev = ioi_head_evidence(model, TaskData("toy", [""] * 4, [""] * 4, pairs, positions), n=4)
    model.set_use_attn_result(True)
    try:
        _, cache = model.run_with_cache(pairs.clean)
    finally:
        model.set_use_attn_result(False)
    for l in range(2):
        p = cache[f"blocks.{l}.attn.hook_pattern"]  # [B, H, q, k]
        assert ev["att_end_io"][l] == pytest.approx(p[:, :, 8, 3].mean(0), abs=1e-6)
        assert ev["att_end_s2"][l] == pytest.approx(p[:, :, 8, 5].mean(0), abs=1e-6)
        assert ev["att_s2_s1"][l] == pytest.approx(p[:, :, 5, 1].mean(0), abs=1e-6)
        assert ev["att_s2_s1_next"][l] == pytest.approx(p[:, :, 5, 2].mean(0), abs=1e-6)
    heads = cache.stack_head_results(layer=-1, pos_slice=-1)  # [L·H, B, d]
    scaled = cache.apply_ln_to_stack(heads, layer=-1, pos_slice=-1)
    direction = (model.W_U[:, pairs.answer] - model.W_U[:, pairs.wrong]).T  # [B, d]
    ref = (scaled * direction[None]).sum(-1).mean(-1).view(2, -1).detach()
    assert float(ref.abs().max()) > 1e-3
    assert ev["dla_logit_diff"] == pytest.approx(ref, abs=1e-5)


# a small analysis: 4 + 4 prompts, no checks, head curves only (about 30 s on two CPU cores)
SMALL = {"n_prompts": 4, "n_eval": 4, "checks": False, "curve_points": 4, "edge_curves": False, "role_prompts": 4}
TABLE_COLUMNS = ["score", "mask_ig", "in_circuit", "role"]


@pytest.fixture(scope="module")
def small_ioi(smollm2):
    from circuits.ioi import ioi_analysis

    return ioi_analysis(smollm2, progress=False, **SMALL)


@pytest.mark.slow
def test_ioi_analysis_is_one_typed_result_whose_json_carries_its_config(small_ioi, tmp_path):
    import json
    from dataclasses import asdict

    from circuits.ioi import IOIConfig, IOIResult
    from interp import HeadTable

    assert isinstance(small_ioi, IOIResult) and small_ioi.config == IOIConfig(**SMALL)
    small_ioi.to_json(tmp_path / "ioi.json")  # allow_nan=False: NaN would raise
    body = json.loads((tmp_path / "ioi.json").read_text())
    assert json.loads(json.dumps(small_ioi.to_dict(), allow_nan=False)) == body
    assert body["schema"] == "interp.ioi/2" and body["config"] == asdict(IOIConfig(**SMALL))
    for key in ("params", "baseline", "eval_baseline", "targets", "circuit", "roles", "name_movers", "head_scores",
                "examples"):
        assert key in body, key
    again = HeadTable.from_dict(body["heads"])
    assert len(again) == 270 and again.metrics == TABLE_COLUMNS
    assert again["score"].to_numpy() == pytest.approx(small_ioi.table["score"].to_numpy(), abs=1e-12)


@pytest.mark.slow
def test_ioi_table_has_one_row_per_head_with_the_circuit_the_roles_and_the_sign(small_ioi, smollm2):
    """in_circuit marks exactly the circuit's heads, the largest by mask_ig; role is the roles table's; and
    positive score = helps: the top-scored head lowers the logit difference under exact activation
    patching (TransformerLens forwards with its output mean-ablated)."""
    from circuits.ioi import ioi_dataset
    from interp.patching import patch_heads

    df = small_ioi.table.df
    assert len(df) == smollm2.cfg.n_layers * smollm2.cfg.n_heads and small_ioi.table.metrics == TABLE_COLUMNS
    circuit = {(int(r.layer), int(r.head)) for r in df[df["in_circuit"]].itertuples()}
    assert circuit == set(small_ioi.circuit.heads) and len(circuit) == small_ioi.targets["circuit_heads"]
    top_mask_ig = df.nlargest(len(circuit), "mask_ig")
    assert {(int(r.layer), int(r.head)) for r in top_mask_ig.itertuples()} == circuit
    roles = {(int(r.layer), int(r.head)): r.role for r in small_ioi.roles.itertuples()}
    assert {(int(r.layer), int(r.head)): r.role for r in df[df["in_circuit"]].itertuples()} == roles
    assert df.loc[~df["in_circuit"], "role"].isna().all()
    top = df.loc[df["score"].idxmax()]
    data = ioi_dataset(smollm2, SMALL["n_prompts"], seed=0, split="select")
    exact = patch_heads(smollm2, data.pairs, ablation=data.ablation(smollm2), heads=[(int(top["layer"]), int(top["head"]))])
    assert float(exact["effect"][0]) > 0


@pytest.mark.slow
def test_ioi_command_json_carries_the_config_and_the_head_table(smollm2, tmp_path, monkeypatch, capsys):
    """`interp ioi` end to end in-process (the loaded SmolLM2 stands in for a second load): ioi.json and
    --json carry the config whole, the per-head table joins the head atlas, the roles label heads."""
    import json
    from dataclasses import asdict

    import interp.loading
    from circuits.ioi import IOIConfig
    from circuits.taxonomy import ioi_labels
    from interp.cli import main
    from interp.head_atlas import head_tables_in

    monkeypatch.setattr(interp.loading, "load_model", lambda *a, **kw: smollm2)
    capsys.readouterr()
    out = tmp_path / "ioi"
    code = main(["ioi", "--n-prompts", "4", "--no-checks", "--curve-points", "4", "--no-edge-curves", "--out", str(out),
                 "--json"])
    doc = json.loads(capsys.readouterr().out)
    config = IOIConfig(n_prompts=4, checks=False, curve_points=4, edge_curves=False)
    assert code == 0 and doc["schema"] == "interp.ioi/2" and doc["config"] == asdict(config)
    written = json.loads((out / "ioi.json").read_text())
    assert written["schema"] == "interp.ioi/2" and written["config"] == asdict(config)
    tables = head_tables_in(written)
    assert list(tables) == ["heads"] and len(tables["heads"]) == 270
    labels = ioi_labels(written)
    assert sorted(x.head for x in labels) == sorted(r["label"] for r in written["roles"]) and labels
    assert (out / "ioi_heads.csv").is_file() and (out / "ioi.html").is_file() and (out / "circuit.json").is_file()
