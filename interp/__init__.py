"""interp-workbench: load a model, capture every head, and report what the heads do."""
from interp.errors import InputError
from interp.loading import cache_root, load_hf_model, load_model
from interp.model_registry import DEFAULT_MODEL, EMBEDDED, embedded_status

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "InputError",
    "available_models",
    "cache_root",
    "load_hf_model",
    "load_model",
]


def available_models() -> list[str]:
    """Names `load_model` accepts without a path: the embedded models."""
    return list(EMBEDDED)
