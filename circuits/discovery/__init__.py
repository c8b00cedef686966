"""Task-agnostic circuit discovery (a subpackage: graph, edge_patching, eap, curves, acdc, discover, mask_ig): a computational graph of a TransformerLens model, edge
attribution patching (EAP, EAP-IG), exact edge patching, ACDC-style pruning and faithfulness curves.

Graph (names as auto-circuit writes them):
  sources (outputs)   "Resid Start" (the embedding), "A{l}.{h}" (head h's write z_h·W_O[h]), "MLP {l}"
  destinations        "A{l}.{h}.Q" (the residual copy head h's query reads), the K and V inputs,
  (inputs)            "MLP {l}" (the MLP's input), "Resid End" (the final norm's input)
Every destination's input is the sum of the outputs of all sources before it (plus constant biases),
so an edge u → v is one term of that sum. An edge is *removed* by replacing the term with the
source's ablation value: input_v = resid_v − Σ_{u removed} (out_u − ablated_u).
Order: Resid Start < layer l's Q/K/V < layer l's heads < MLP l's input < MLP l < layer l+1 … < Resid End;
with parallel attention + MLP (GPT-J, NeoX, Phi) MLP l's input sits with layer l's Q/K/V (both read
the block's input), so layer l's heads do not feed MLP l. After a post-norm (Gemma 2/3, OLMo 2/3) a
head's output is its share of the normed layer output, with that run's norm scale (graph.py).

GQA. A KV head computes one key and one value, shared by the n_heads / n_kv_heads query heads of
its group, from one input. The graph keeps that: K and V inputs exist once per KV head, named
"A{l}.KV{g}.K" / "A{l}.KV{g}.V" (g = KV head; it serves query heads g·r … g·r + r − 1 with
r = n_heads / n_kv_heads); patching an edge into it changes the keys or values all r heads read,
exactly as in the model. Without GQA (n_kv_heads = n_heads) the names are auto-circuit's
"A{l}.{h}.K" / "A{l}.{h}.V". Query inputs are per query head.

EAP (Syed et al. 2023): score(u → v) = Σ_prompts,positions (clean_u − ablated_u) · ∂metric/∂input_v
on the clean run, averaged over prompts (for logit_diff; for the kl metric, a cost, the sign is the
opposite), so a score is positive when the edge helps: the first-order loss when it is ablated: one clean forward + backward for every edge at once. The
input gradients come from hook_q/k/v and hook_mlp_in gradients: ∂m/∂input of head h's query =
LN1ᵀ(∂m/∂q_h · W_Q[h]ᵀ) (the norm's vector-Jacobian product at that layer's residual), so no split
copies are needed in the backward pass. EAP-IG (Hanna et al. 2024): the gradient is averaged over
m points (default 5) with input embeddings ablated + (k/m)(clean − ablated), k = 1 … m.
Ablation values (interp.patching): mean over the corrupted prompts of the same group by default.

Faithfulness (MIB, Mueller et al. 2025): f(C) = (m(C) − m(∅)) / (m(full) − m(∅)) with m the mean
logit difference, ∅ the empty circuit (every edge, or every head, ablated). `discover` selects a
circuit on one prompt set and measures every reported faithfulness on `eval_pairs` when given
(rows carry "split": "select" or "eval"). `mib_summary` gives MIB's CPR and CMD of a curve.
"""
from __future__ import annotations

from circuits.discovery.acdc import acdc  # noqa: F401
from circuits.discovery.curves import (  # noqa: F401
    MIB_FRACTIONS,
    edge_circuit_metric,
    edge_curve,
    edges_among_heads,
    faithfulness,
    head_circuit_metric,
    head_curve,
    heads_of_edges,
    mean_logit_diff,
    mib_area,
    mib_sizes,
    mib_summary,
    size_grid,
    smallest_reaching,
)
from circuits.discovery.discover import METHODS, discover  # noqa: F401
from circuits.discovery.eap import (  # noqa: F401
    Attribution,
    attribute,
)
from circuits.discovery.edge_patching import EdgeRunCache, run_with_edges  # noqa: F401
from circuits.discovery.graph import (  # noqa: F401
    Graph,
    build_graph,
    check_model,
    graph_hooks_enabled,
)
from circuits.discovery.mask_ig import head_mask_ig  # noqa: F401
