"""Active-dormant heads: statistics against TransformerLens' cache, the calls, the causal check."""
import pandas as pd
import pytest
import torch

from circuits.active_dormant import (active_dormant, causal_check, classify, domain_head_stats, domain_prompts,
                                     switching_heads)
from interp import InputError
from interp.texts import DOMAINS, domain_texts


def test_six_offline_domains_of_real_text():
    assert len(DOMAINS) >= 5
    for domain in DOMAINS:
        if domain != "repeated":
            texts = domain_texts(domain, 3, seed=1)
            assert len(texts) == 3 and all(len(t) > 100 for t in texts) and len(set(texts)) == 3
    assert "def " in " ".join(domain_texts("code", 20)) and "\\" in " ".join(domain_texts("math", 5))
    with pytest.raises(InputError, match="unknown text domain 'poetry'"):
        domain_texts("poetry", 2)


@pytest.fixture(scope="module")
def prompts(smollm2):
    return domain_prompts(smollm2, ["legal", "repeated", "code"], n=3, max_tokens=64)


def test_domain_stats_match_the_eager_pattern(smollm2, prompts):
    stats = domain_head_stats(smollm2, prompts, progress=False).set_index(["domain", "label"])
    tokens = prompts["code"]
    for layer in (3, 18):
        mass, norm = [], []
        for t in tokens:
            _, cache = smollm2.run_with_cache(t[None], names_filter=lambda n: n.endswith(("pattern", "hook_z")))
            mass.append(cache["pattern", layer][0, :, 1:, 0].T)  # [pos-1, head]
            write = torch.einsum("phd,hdm->phm", cache["z", layer][0], smollm2.blocks[layer].attn.W_O)
            norm.append(write.norm(dim=-1)[1:])
        mass, norm = torch.cat(mass).mean(0), torch.cat(norm).mean(0)
        for head in range(9):
            row = stats.loc[("code", f"L{layer}H{head}")]
            assert row["sink_mass"] == pytest.approx(mass[head].item(), abs=1e-5)
            assert row["output_norm"] == pytest.approx(norm[head].item(), rel=1e-4)


def test_classification_and_switching_follow_the_thresholds():
    stats = pd.DataFrame([
        {"domain": "a", "layer": 0, "head": 0, "label": "L0H0", "sink_mass": 0.95, "output_norm": 0.1, "norm_ratio": 0.1},
        {"domain": "b", "layer": 0, "head": 0, "label": "L0H0", "sink_mass": 0.20, "output_norm": 1.0, "norm_ratio": 1.0},
        {"domain": "a", "layer": 0, "head": 1, "label": "L0H1", "sink_mass": 0.95, "output_norm": 0.9, "norm_ratio": 0.9},
        {"domain": "b", "layer": 0, "head": 1, "label": "L0H1", "sink_mass": 0.10, "output_norm": 1.0, "norm_ratio": 1.0},
    ])
    calls = classify(stats, sink_threshold=0.8, norm_ratio=0.5)
    assert calls["dormant"].tolist() == [True, False, False, False]  # L0H1 collapses but still writes: active
    switching = switching_heads(calls)
    assert switching["label"].tolist() == ["L0H0"]
    assert switching.iloc[0]["dormant_domain"] == "a" and switching.iloc[0]["active_domain"] == "b"


def test_causal_check_measures_zero_ablation(smollm2, prompts):
    switching = pd.DataFrame([{"label": "L18H7", "layer": 18, "head": 7, "dormant_on": "legal", "active_on": "repeated",
                               "dormant_domain": "legal", "active_domain": "repeated"}])
    result = causal_check(smollm2, switching, prompts, progress=False).iloc[0]

    def zeroed(z, hook):
        z = z.clone()
        z[:, :, 7] = 0
        return z

    deltas = {}
    for domain in ("legal", "repeated"):
        base = sum(smollm2(t[None], return_type="loss").item() for t in prompts[domain]) / 3
        with smollm2.hooks(fwd_hooks=[("blocks.18.attn.hook_z", zeroed)]):
            ablated = sum(smollm2(t[None], return_type="loss").item() for t in prompts[domain]) / 3
        deltas[domain] = ablated - base
    assert result["delta_dormant"] == pytest.approx(deltas["legal"], abs=1e-5)
    assert result["delta_active"] == pytest.approx(deltas["repeated"], abs=1e-5)


def test_smollm2_induction_heads_switch_and_matter_only_where_active(smollm2):
    """Measured: L18H7, L17H3 and L18H6 (induction heads) are dormant on legal text and active on
    repeated tokens; zeroing them costs far more where they are active."""
    result = active_dormant(smollm2, domains=["legal", "repeated"], n=3, max_tokens=96, progress=False)
    switching = set(result.switching["label"])
    assert {"L18H7", "L17H3"} <= switching
    causal = result.causal.set_index("label")
    for label in ("L18H7", "L17H3"):
        assert abs(causal.loc[label, "delta_dormant"]) < 0.02 < causal.loc[label, "delta_active"]

    table = result.table.df.set_index("label")  # the head table carries the same calls and deltas
    for label in ("L18H7", "L17H3"):
        assert table.loc[label, "switching"] == 1.0
        assert table.loc[label, "delta_active"] == causal.loc[label, "delta_active"]
    assert set(table.index[table["switching"] == 1.0]) == switching
