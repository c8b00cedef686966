"""IOI dataset, baseline, roles and a small EAP run on SmolLM2 (real model, marked slow), plus
role rules and command-line input checks that need no model."""
import math
import subprocess
import sys

import pytest
import torch

from circuits.ioi import (
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
    for text, pos, clean, bad in zip(data.prompts, data.positions, data.pairs.clean, data.pairs.corrupt):
        toks = smollm2.to_str_tokens(text)
        io, s1, s2 = toks[pos["IO"]], toks[pos["S1"]], toks[pos["S2"]]
        assert s1 == s2 != io and io.strip() in kept and len(smollm2.tokenizer.encode(io, add_special_tokens=False)) == 1
        assert pos["end"] == len(toks) - 1
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
def test_baseline_solves_ioi_and_the_reference_prompt(smollm2):
    logits = smollm2(smollm2.to_tokens("When Mary and John went to the store, John gave a drink to"))[0, -1]
    assert int(logits.argmax()) == token_id(smollm2, "Mary")
    data = ioi_dataset(smollm2, 12, seed=0)
    base = baseline(smollm2, data)
    # independent: logits of each prompt run alone
    alone = [smollm2(smollm2.to_tokens(p))[0, -1].detach() for p in data.prompts[:3]]
    ld = [float(lg[a] - lg[w]) for lg, a, w in zip(alone, data.pairs.answer, data.pairs.wrong)]
    assert sum(ld) / 3 == pytest.approx(float(torch.tensor(ld).mean()))
    assert base["accuracy"] >= 0.8 and base["logit_diff"] > 2.0
    assert abs(base["corrupt_logit_diff"]) < 1.5
    caps = baseline(smollm2, capitals_dataset(smollm2, 6, seed=0))
    assert caps["accuracy"] >= 0.8


@pytest.mark.slow
def test_eap_top_head_agrees_with_exact_patching(smollm2):
    from circuits.discovery import attribute
    from interp.patching import ablation_values, patch_heads

    data = ioi_dataset(smollm2, 6, seed=0)
    abl = ablation_values(smollm2, data.pairs, "mean")
    scores = attribute(smollm2, data.pairs, method="eap", ablation=abl, batch_size=6).head_scores()
    top = divmod(int(scores.flatten().abs().argmax()), smollm2.cfg.n_heads)
    exact = float(patch_heads(smollm2, data.pairs, ablation=abl, heads=[top])["effect"][0])
    eap = float(scores[top])
    assert abs(eap) > 0.5  # a head that matters for IOI
    assert exact * eap > 0 and 0.3 < exact / eap < 3.0


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
