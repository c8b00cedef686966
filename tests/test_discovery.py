"""circuits.discovery on a tiny GQA model against independent references: TransformerLens' split
q/k/v inputs with autograd for EAP, TL's patching for node removal, plain corrupted/clean runs."""
import pytest
import torch
from transformer_lens import patching as tl_patching

from circuits.discovery import (
    acdc,
    attribute,
    build_graph,
    discover,
    edge_circuit_metric,
    run_with_edges,
    size_grid,
)
from interp.circuit import Circuit
from interp.errors import InputError
from interp.patching import PromptPairs, ablation_values, run_last_logits
from tests.tiny import random_prompts, tiny_gqa_model

L, H, K = 3, 4, 2
ANSWER, WRONG = 3, 5


@pytest.fixture(scope="module")
def model():
    return tiny_gqa_model(seed=0, n_layers=L, n_heads=H, n_kv=K)


@pytest.fixture(scope="module")
def model64():
    """The same tiny model in float64, so references can be compared tightly."""
    m = tiny_gqa_model(seed=0, n_layers=L, n_heads=H, n_kv=K)
    m.cfg.dtype = torch.float64
    return m.to(torch.float64)


@pytest.fixture(scope="module")
def pairs():
    return PromptPairs.from_lists(random_prompts([7] * 6, seed=1), random_prompts([7] * 6, seed=2),
                                  answer=[ANSWER] * 6, wrong=[WRONG] * 6)


@pytest.fixture(scope="module")
def corrupt(model, pairs):
    return ablation_values(model, pairs, "corrupt")


def test_graph_names_and_order(model):
    g = build_graph(model)
    assert g.src_names[:6] == ["Resid Start", "A0.0", "A0.1", "A0.2", "A0.3", "MLP 0"]
    assert g.dst_names[:9] == ["A0.0.Q", "A0.1.Q", "A0.2.Q", "A0.3.Q", "A0.KV0.K", "A0.KV1.K", "A0.KV0.V",
                               "A0.KV1.V", "MLP 0"]
    assert g.dst_names[-1] == "Resid End"
    s, d = g.src_names.index, g.dst_names.index
    assert g.allowed[s("A0.2"), d("MLP 0")] and not g.allowed[s("A0.2"), d("A0.1.Q")]
    assert not g.allowed[s("MLP 0"), d("MLP 0")] and g.allowed[s("MLP 0"), d("A1.KV1.V")]
    # (1 + L·(H+1)) sources; each reaches every later destination
    assert g.n_src == 1 + L * (H + 1) and g.n_dst == L * (H + 2 * K + 1) + 1


def test_all_edges_is_the_clean_run_and_no_edges_the_corrupted_run(model, pairs, corrupt):
    g = build_graph(model)
    clean = run_last_logits(model, pairs.clean, pairs.last)
    bad = run_last_logits(model, pairs.corrupt, pairs.last)
    assert run_with_edges(model, g, pairs, corrupt, g.allowed) == pytest.approx(clean, abs=2e-4)
    assert run_with_edges(model, g, pairs, corrupt, torch.zeros_like(g.allowed)) == pytest.approx(bad, abs=2e-4)


def test_removing_a_heads_outgoing_edges_is_patching_its_output(model, pairs, corrupt):
    g = build_graph(model)
    _, cache = model.run_with_cache(pairs.corrupt)
    ref = tl_patching.get_act_patch_attn_head_out_all_pos(
        model, pairs.clean, cache, lambda lg: (lg[:, -1, ANSWER] - lg[:, -1, WRONG]).mean())
    keep = g.allowed.clone()
    keep[g.head_src(1, 2)] = False
    got = edge_circuit_metric(model, g, pairs, corrupt, keep, "logit_diff")
    assert got == pytest.approx(float(ref[1, 2]), abs=1e-4)


def test_removing_a_kv_inputs_edges_feeds_it_the_corrupted_input(model, pairs, corrupt):
    g = build_graph(model)
    model.set_use_split_qkv_input(True)
    try:
        _, cache = model.run_with_cache(pairs.corrupt)
        name = "blocks.1.hook_k_input"
        ref = model.run_with_hooks(pairs.clean, fwd_hooks=[(name, lambda a, hook: torch.cat(
            [cache[name][:, :, :1], a[:, :, 1:]], 2))])[:, -1].detach()
    finally:
        model.set_use_split_qkv_input(False)
    keep = g.allowed.clone()
    keep[:, g.dst_names.index("A1.KV0.K")] = False
    assert run_with_edges(model, g, pairs, corrupt, keep) == pytest.approx(ref, abs=2e-4)


def test_a_run_from_a_cached_layer_equals_the_full_run(model, pairs, corrupt):
    g = build_graph(model)
    keep = g.allowed & (torch.rand(g.allowed.shape, generator=torch.Generator().manual_seed(0)) < 0.6)
    _, cache = run_with_edges(model, g, pairs, corrupt, keep, record=True)
    trial = keep.clone()
    trial[:, g.mlp_dst(2)] = False  # change only edges into layer 2 and later
    trial[g.head_src(1, 0), g.end_dst] = True
    full = run_with_edges(model, g, pairs, corrupt, trial)
    assert run_with_edges(model, g, pairs, corrupt, trial, start_layer=2, cache=cache) == pytest.approx(full, abs=1e-5)
    # from the end of the last block: only an edge into Resid End changes
    trial2 = keep.clone()
    trial2[g.head_src(1, 0), g.end_dst] = not bool(keep[g.head_src(1, 0), g.end_dst])
    assert run_with_edges(model, g, pairs, corrupt, trial2, start_layer=L, cache=cache) == \
        pytest.approx(run_with_edges(model, g, pairs, corrupt, trial2), abs=1e-5)


def _wanted(name: str) -> bool:
    return name.endswith(("hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in")) or \
        name in ("blocks.0.hook_resid_pre", f"blocks.{L - 1}.hook_resid_post")


def _reference_scores(model, pairs, corrupt_tokens, alphas):
    """EAP / EAP-IG by autograd through TransformerLens' split q/k/v input copies and hook_result:
    (clean − corrupt output of u) · ∂logit diff / ∂(v's input copy), positive when the edge helps."""
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    try:
        _, cc = model.run_with_cache(corrupt_tokens)
        _, clean = model.run_with_cache(pairs.clean)
        grads = None
        for a in alphas:
            acts = {}

            def keep(x, hook, a=a, acts=acts):
                if hook.name == "blocks.0.hook_resid_pre":
                    e = cc[hook.name]
                    x = (e + a * (x - e)).detach().requires_grad_(True)
                x.retain_grad()
                acts[hook.name] = x
                return x

            logits = model.run_with_hooks(pairs.clean, fwd_hooks=[(_wanted, keep)])
            (logits[:, -1, ANSWER] - logits[:, -1, WRONG]).sum().backward()
            G = []
            for l in range(L):
                G += [acts[f"blocks.{l}.hook_q_input"].grad[:, :, h] for h in range(H)]
                G += [acts[f"blocks.{l}.hook_k_input"].grad[:, :, k] for k in range(K)]
                G += [acts[f"blocks.{l}.hook_v_input"].grad[:, :, k] for k in range(K)]
                G += [acts[f"blocks.{l}.hook_mlp_in"].grad]
            G.append(acts[f"blocks.{L - 1}.hook_resid_post"].grad)
            G = torch.stack(G) / len(alphas)
            grads = G if grads is None else grads + G
        D = [clean["blocks.0.hook_resid_pre"] - cc["blocks.0.hook_resid_pre"]]
        for l in range(L):
            r = clean[f"blocks.{l}.attn.hook_result"] - cc[f"blocks.{l}.attn.hook_result"]
            D += [r[:, :, h] for h in range(H)] + [clean[f"blocks.{l}.hook_mlp_out"] - cc[f"blocks.{l}.hook_mlp_out"]]
        return torch.einsum("sbpd,tbpd->st", torch.stack(D), grads) / len(pairs)
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_attn_result(False)
        model.set_use_hook_mlp_in(False)
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("method,alphas", [("eap", [1.0]), ("eap-ig", [1 / 3, 2 / 3, 1.0])])
def test_edge_attribution_matches_autograd_through_split_inputs(model64, pairs, method, alphas):
    model = model64
    g = build_graph(model)
    ours = attribute(model, pairs, method=method, ablation="corrupt", steps=len(alphas), batch_size=4)
    ref = torch.where(g.allowed, _reference_scores(model, pairs, pairs.corrupt, alphas), 0.0)
    scale = float(ref.abs().max())
    assert scale > 1.0
    assert (ours.scores - ref).abs().max() < 1e-9 * scale
    assert not any(p.grad is not None for p in model.parameters())
    # a head's node score is the sum of its outgoing edges
    assert ours.head_scores()[1, 2] == pytest.approx(float(ref[g.head_src(1, 2)].sum()), rel=1e-9, abs=1e-9 * scale)


def test_acdc_thresholds_bound_what_it_keeps(model, pairs, corrupt):
    attribution = attribute(model, pairs, method="eap", ablation=corrupt)
    keep_all = acdc(model, attribution, pairs, corrupt, n_candidates=12, tau=-1.0)
    assert keep_all["n_kept"] == 12 and keep_all["n_start"] == 12
    drop_all = acdc(model, attribution, pairs, corrupt, n_candidates=12, tau=1e9)
    assert drop_all["n_kept"] == 0
    # the value it reports for the empty circuit is the corrupted run's KL to the clean run
    clean = run_last_logits(model, pairs.clean, pairs.last).log_softmax(-1)
    bad = run_last_logits(model, pairs.corrupt, pairs.last).log_softmax(-1)
    kl = float((clean.exp() * (clean - bad)).sum(-1).mean())
    assert drop_all["value"] == pytest.approx(kl, rel=1e-3)


def test_discover_returns_a_head_circuit_and_an_edge_circuit_measured_on_held_out_prompts(model, pairs, tmp_path):
    held = PromptPairs.from_lists(random_prompts([7] * 6, seed=11), random_prompts([7] * 6, seed=12),
                                  answer=[ANSWER] * 6, wrong=[WRONG] * 6)
    circuit, details = discover(model, pairs, eval_pairs=held, task="toy", method="eap", ablation="mean",
                                curve_points=4, target=0.5)
    # the head circuit has no edges; the edge circuit's nodes are exactly its edges' endpoints
    assert circuit.kind == "heads" and circuit.edges == []
    edge_circuit = details["edge_circuit"]
    ends = {n.rsplit(".", 1)[0] if n.endswith((".Q", ".K", ".V")) else n for e in edge_circuit.edges for n in (e.src, e.dst)}
    assert edge_circuit.kind == "edges" and set(edge_circuit.nodes) == ends and edge_circuit.edges
    # normalised faithfulness: 0 for the empty circuit, 1 for the full one, on both splits
    for split in ("select", "eval"):
        rows = {r["n_heads"]: r for r in circuit.faithfulness if r["split"] == split}
        assert rows[0]["value"] == pytest.approx(0.0, abs=1e-9) and rows[L * H]["value"] == pytest.approx(1.0, abs=1e-4)
    # the held-out value is measured on the held-out prompts: recompute it independently
    k = len(circuit.nodes)
    kept_heads = {tuple(int(x) for x in n[1:].split(".")) for n in circuit.nodes}
    abl = ablation_values(model, held, "mean")

    def ld(hooks):
        logits = model.run_with_hooks(held.clean, fwd_hooks=hooks)[:, -1].detach()
        return float((logits[:, ANSWER] - logits[:, WRONG]).mean())

    def ablate_except(keep):
        return [(f"blocks.{l}.attn.hook_z", lambda z, hook, l=l: torch.stack(
            [z[:, :, h] if (l, h) in keep else abl.z[l][:, :, h] for h in range(H)], 2)) for l in range(L)]

    full, empty, got = ld([]), ld(ablate_except(set())), ld(ablate_except(kept_heads))
    assert details["held_out_rows"]["heads"]["n_heads"] == k
    assert details["held_out_rows"]["heads"]["value"] == pytest.approx((got - empty) / (full - empty), rel=1e-4)
    assert circuit.summary["held_out"]["split"] == "eval"
    circuit.to_json(tmp_path / "c.json")
    again = Circuit.from_json(tmp_path / "c.json")
    assert again == circuit
    edge_circuit.to_json(tmp_path / "e.json")
    assert Circuit.from_json(tmp_path / "e.json") == edge_circuit


def test_eap_on_kl_is_refused_and_eap_ig_records_kl(model, pairs):
    with pytest.raises(InputError, match="kl"):
        attribute(model, pairs, method="eap", metric="kl")
    with pytest.raises(InputError, match="kl"):
        discover(model, pairs, method="eap", metric="kl")
    circuit, details = discover(model, pairs, method="eap-ig", metric="kl", steps=2, curve_points=3, edge_curves=False)
    assert circuit.metric == "kl" and details["attribution"].metric == "kl"
    assert details["edge_circuit"].metric == "kl"


def test_a_bypassed_hook_raises_naming_it(model, pairs):
    with model.hooks(fwd_hooks=[("blocks.1.hook_mlp_in", lambda act, hook: act.detach())]):
        with pytest.raises(RuntimeError, match=r"blocks\.1\.hook_mlp_in"):
            attribute(model, pairs, method="eap", ablation="corrupt")


def test_circuit_kinds_are_checked_and_v1_files_still_load(tmp_path):
    import json

    from interp.circuit import Edge

    with pytest.raises(InputError, match="endpoints"):
        Circuit(model="m", task="t", metric="logit_diff", method="eap", kind="edges", nodes=["A0.0", "A5.5"],
                edges=[Edge("A0.0", "A1.1.Q", 1.0)])
    with pytest.raises(InputError, match="no edges"):
        Circuit(model="m", task="t", metric="logit_diff", method="eap", kind="heads", nodes=["A0.0"],
                edges=[Edge("A0.0", "A1.1.Q", 1.0)])
    old = {"schema": "interp.circuit/1", "model": "m", "task": "t", "metric": "logit_diff", "method": "eap",
           "nodes": ["A0.0", "A7.7"], "edges": [{"src": "A0.0", "dst": "A1.KV0.K", "score": 0.5}], "faithfulness": []}
    (tmp_path / "old.json").write_text(json.dumps(old))
    back = Circuit.from_json(tmp_path / "old.json")  # /1 nodes mixed a head ranking with edges: the edges win
    assert back.kind == "edges" and back.nodes == ["A0.0", "A1.KV0"]


def test_mib_grid_and_areas_follow_the_mib_repository():
    from circuits.discovery import MIB_FRACTIONS, mib_area, mib_sizes

    assert MIB_FRACTIONS == (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    assert mib_sizes(1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert mib_sizes(270) == [0, 0, 1, 2, 5, 13, 27, 54, 135, 270]
    # a curve equal to 1 everywhere: CPR is the width of the grid (0.999), CMD is 0
    assert mib_area([1.0] * 10, from_one=False) == pytest.approx(0.999)
    assert mib_area([1.0] * 10, from_one=True) == 0.0
    # hand-computed trapezoids for f = 0 up to 10 %, 0.5 at 20 %, 0.8 at 50 %, 1 at 100 %
    f = [0, 0, 0, 0, 0, 0, 0, 0.5, 0.8, 1.0]
    cpr = 0.1 * 0.25 + 0.3 * 0.65 + 0.5 * 0.9
    assert mib_area(f, from_one=False) == pytest.approx(cpr)
    assert mib_area(f, from_one=True) == pytest.approx(0.099 * 1.0 + 0.1 * 0.75 + 0.3 * 0.35 + 0.5 * 0.1)


def test_size_grid():
    assert size_grid(100, 5, start=1) == [1, 3, 10, 32, 100]
    assert size_grid(1, 5) == [1]


def test_head_mask_ig_is_complete(pairs):
    """IG's completeness: the head shares sum to logit diff(full) − logit diff(every head ablated).
    (On the unscaled-query model, whose attention is smooth enough for a 64-point Riemann sum.)"""
    from circuits.discovery import head_mask_ig

    model64 = tiny_gqa_model(seed=0, n_layers=L, n_heads=H, n_kv=K)
    model64.cfg.dtype = torch.float64
    model64 = model64.to(torch.float64)
    with torch.no_grad():
        for block in model64.blocks:
            block.attn.W_Q.mul_(1 / 8)
    abl = ablation_values(model64, pairs, "mean")
    scores = head_mask_ig(model64, pairs, abl, steps=64)

    def ld(hooks):
        logits = model64.run_with_hooks(pairs.clean, fwd_hooks=hooks)[:, -1].detach()
        return float((logits[:, ANSWER] - logits[:, WRONG]).mean())

    hooks = [(f"blocks.{l}.attn.hook_z", lambda z, hook, l=l: abl.z[l].to(z.dtype)) for l in range(L)]
    gap = ld([]) - ld(hooks)
    assert abs(gap) > 0.1
    assert float(scores.sum()) == pytest.approx(gap, rel=0.03)


# ---------------------------------------------------------------------------------------------
# one sign for head attribution


@pytest.fixture(scope="module")
def smooth64():
    """The tiny model in float64 with ordinary query scale (attention far from saturated)."""
    m = tiny_gqa_model(seed=0, n_layers=L, n_heads=H, n_kv=K)
    m.cfg.dtype = torch.float64
    m = m.to(torch.float64)
    with torch.no_grad():
        for block in m.blocks:
            block.attn.W_Q.mul_(1 / 8)
    return m


def _small_step(model, pairs, eps):
    """Ablation values a small step eps from the clean outputs towards the corrupted ones: the
    setting where first-order attribution must equal exact patching up to O(eps²)."""
    from interp.patching import Ablation

    clean, bad = ablation_values(model, pairs, "zero"), ablation_values(model, pairs, "corrupt")
    _, cache = model.run_with_cache(pairs.clean)
    z = torch.stack([cache[f"blocks.{l}.attn.hook_z"] for l in range(L)])
    mlp = torch.stack([cache[f"blocks.{l}.hook_mlp_out"] for l in range(L)])
    embed = cache["blocks.0.hook_resid_pre"]
    return Ablation("step", embed + eps * (bad.embed - embed), z + eps * (bad.z - z), mlp + eps * (bad.mlp_out - mlp)), clean


def test_eap_head_scores_are_the_derivative_of_exact_patching(smooth64, pairs):
    """EAP is first order: on ablation values eps away from the clean run, its head score / eps is the
    finite-difference derivative of exact patching's effect / eps (an independent computation through
    real patched forward passes); the relative gap shrinks like eps."""
    from circuits.attribution import head_attribution

    gaps = []
    for eps in (1e-2, 1e-3):
        abl, _ = _small_step(smooth64, pairs, eps)
        eap = torch.tensor(head_attribution(smooth64, pairs, method="eap", ablation=abl).grid("score").to_numpy())
        exact = torch.tensor(head_attribution(smooth64, pairs, method="patching", ablation=abl).grid("score").to_numpy())
        scale = float(exact.abs().max())
        assert scale > 1e-3 * eps
        gaps.append(float((eap - exact).abs().max()) / scale)
    # measured: relative gap ≈ 3·eps (0.036 at 1e-2, 0.0028 at 1e-3): the second-order remainder
    assert gaps[1] < 5e-3  # eps = 1e-3: first order within 0.5 % of the largest effect
    assert gaps[1] < gaps[0] / 5  # and the gap is second order: it shrinks ~10x with eps


def test_every_head_method_agrees_in_sign_with_exact_patching_near_the_linear_regime(smooth64, pairs):
    """EAP, EAP-IG and exact patching on one scale: with ablation values 5 % of the way to the
    corrupted run (nearly linear), each ranks heads like exact patching (Spearman ≥ 0.9; measured
    0.97 / 0.95) and has its sign on every head whose patching effect is ≥ 10 % of the largest.
    mask-IG is left out on purpose: it splits the effect of ablating every head at once (its
    integrand (z_h − ablated z_h) includes the change upstream ablations cause in z_h, a first-order
    term), a different estimand from one head's ablation; its completeness is tested above."""
    from scipy.stats import spearmanr

    from circuits.attribution import head_attribution

    abl, _ = _small_step(smooth64, pairs, 0.05)
    exact = head_attribution(smooth64, pairs, method="patching", ablation=abl).df["score"].to_numpy()
    big = abs(exact) >= 0.1 * abs(exact).max()
    assert big.sum() >= 4
    for method in ("eap", "eap-ig"):
        table = head_attribution(smooth64, pairs, method=method, ablation=abl, steps=8)
        got = table.df["score"].to_numpy()
        assert spearmanr(got, exact).statistic >= 0.9, method
        assert ((got[big] > 0) == (exact[big] > 0)).all(), method
        assert sorted(table.df["rank"]) == list(range(1, L * H + 1))
        assert int(table.df.loc[table.df["score"].idxmax(), "rank"]) == 1


def test_patching_effect_is_positive_when_the_head_helps(model, pairs, corrupt):
    """patch_heads' effect = clean − patched logit difference, by a direct TransformerLens patch."""
    from interp.patching import patch_heads

    out = patch_heads(model, pairs, ablation=corrupt, heads=[(1, 2)])
    _, cache = model.run_with_cache(pairs.corrupt)

    def patch(z, hook):
        z = z.clone()
        z[:, :, 2] = cache["blocks.1.attn.hook_z"][:, :, 2]
        return z

    def ld(logits):
        return float((logits[:, -1, ANSWER] - logits[:, -1, WRONG]).mean())

    clean = ld(model(pairs.clean).detach())
    patched = ld(model.run_with_hooks(pairs.clean, fwd_hooks=[("blocks.1.attn.hook_z", patch)]).detach())
    assert float(out["effect"][0]) == pytest.approx(clean - patched, abs=1e-4)


@pytest.mark.parametrize("n_layers", [2, 3])
def test_direct_logit_attribution_matches_transformer_lens_head_results(n_layers):
    """DLA of the change (clean − corrupted head output at the last position) through the clean run's
    final-norm scale onto W_U[answer] − W_U[wrong], against TransformerLens' hook_result caches."""
    from circuits.attribution import direct_logit_attribution

    m = tiny_gqa_model(seed=2, n_layers=n_layers)
    m.cfg.dtype = torch.float64
    m = m.to(torch.float64)
    pairs = PromptPairs.from_lists(random_prompts([9] * 4, seed=3), random_prompts([9] * 4, seed=4),
                                   answer=[ANSWER] * 4, wrong=[WRONG] * 4)
    got = direct_logit_attribution(m, pairs, ablation_values(m, pairs, "corrupt"))
    m.set_use_attn_result(True)
    _, clean = m.run_with_cache(pairs.clean)
    _, bad = m.run_with_cache(pairs.corrupt)
    diff = clean.stack_head_results(layer=-1, pos_slice=-1) - bad.stack_head_results(layer=-1, pos_slice=-1)
    scaled = diff / clean["ln_final.hook_scale"][:, -1] * m.ln_final.w.detach()
    ref = (scaled @ (m.W_U[:, ANSWER] - m.W_U[:, WRONG])).mean(-1).view(n_layers, -1).detach()
    assert float(ref.abs().max()) > 1e-2
    assert got.double() == pytest.approx(ref, abs=1e-6)
