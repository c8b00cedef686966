"""interp-workbench: load a model, capture every head, and report what the heads do.

    import interp
    model = interp.load_model("smollm2-135m")          # HookedTransformer, offline, cached
    cap = interp.capture(model, texts, names=["z", "entropy"], layers=[0, 5])
    table = interp.head_summary(model, texts)           # HeadTable: one row per (layer, head)
    table.heatmap("entropy")
"""
from interp.capture import ACTIVATIONS, Capture, capture
from interp.circuit import Circuit, Edge
from interp.errors import InputError
from interp.head_atlas import HeadAtlas, HeadProfile, head_profile
from interp.head_ids import HeadId
from interp.head_stats import head_summary
from interp.head_table import HeadTable, head_label
from interp.loading import cache_root, load_hf_model, load_model
from interp.model_card import model_card
from interp.model_registry import DEFAULT_MODEL, EMBEDDED, embedded_status
from interp.patching import Ablation, PromptPairs, ablation_values, patch_heads

__all__ = [
    "ACTIVATIONS", "Ablation", "Capture", "Circuit", "DEFAULT_MODEL", "EMBEDDED", "Edge", "HeadAtlas", "HeadId", "HeadProfile", "HeadTable", "InputError", "PromptPairs",
    "ablation_values", "available_models", "cache_root", "capture", "embedded_status", "head_label", "head_profile", "head_summary",
    "load_hf_model", "load_model", "model_card", "patch_heads",
]


def available_models() -> list[str]:
    """Names `load_model` accepts without a path: the embedded models."""
    return list(EMBEDDED)
