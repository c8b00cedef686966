"""`interp plan`: how much memory a run needs, and on how many devices, before it starts.

Everything is computed from the model's shape (its converted config when it is in the cache, else
its Hugging Face config, read without loading weights), counted the way TransformerLens lays the
model out after `load_model`'s processing (LayerNorm folded, grouped K/V weights stored once,
untied unembedding, rotary tables of max(2048, N) rows per layer). Bytes, not GB, throughout;
`s` below is the bytes of one element of the run's dtype.

Activations of one forward pass of `batch` × `length` tokens, with no gradients (what every
analysis does per batch), peak = residual stream (2 copies) + the largest of:
- eager attention: TransformerLens 3's scores → scaled → masked (torch.where) → softmax → NaN-cleaned
  pattern chain leaves four [B, H, N, N] tensors alive at its peak (measured on CPU: 4.3 float32 copies
  with the bools), plus the [B, H, N, N] bool NaN check and the [N, N] causal mask:
  B·H·N²·(4s + 1) + N², plus q, k, v (repeated to H heads) and z;
- fused statistics (`interp_kernels.attention_with_stats`, `interp trace --stats`): no pattern; the largest
  temporary is the CPU backend's score tiles (two per worker thread, 2²⁰ float32 elements each in the
  fused kernel, 2²¹ in the reference backend), the head-major
  copies of q, k, v, and the statistics kept per layer, about 6 × B·H·N float32;
- the MLP: hidden, gate and their product, 3 × B·N·d_mlp·s;
- the logits: B·N·d_vocab in float32 (the unembedding output in s bytes for other dtypes), plus the
  transposed copy of W_U that TransformerLens 3's Unembed makes on every call (`W_U.T.contiguous()`),
  d_model·d_vocab·s.
Capturing every layer's pattern (`interp trace` with patterns, run_with_cache on hook_pattern) keeps
n_layers × B·H·N²·s on top. A key-value cache for generation holds 2 × n_layers × B·N·H_kv·d_head·s.

Devices: weights split by layers over K devices, each device also holding one layer's activation
peak; K is the smallest count with weights / K + activations <= 90 % of one device's memory.
Checked against measured peaks on CPU for the embedded models (tests/test_plan.py).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from interp.errors import InputError

ROTARY_ROWS = 2048  # TransformerLens' initial rotary cache (grown to the longest sequence seen)
# float32 tile-sized buffers alive at the fused path's peak: the CPU backends' two scratch tiles per worker
# (scores, exp); running state, merges and per-row results are row-sized (calibrated on SmolLM2 at 1024 tokens, CPU, 1 thread)
TILE_BUFFERS = 2
ROW_BUFFERS = 3
USABLE = 0.9  # of a device's memory: what the allocator, CUDA context and fragmentation leave
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}
_UNGATED = {"gpt2", "gpt_neo", "gptj", "gpt_neox", "opt", "bloom", "phi"}


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder that memory depends on (TransformerLens names)."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    gated_mlp: bool = True
    rotary_dim: Optional[int] = None   # None: learned absolute positions (pos_embed of n_ctx rows)
    qk_norm: bool = False

    def n_parameters(self) -> int:
        """Parameters of the processed HookedTransformer (LayerNorm folded away, unembedding separate)."""
        attn = (2 * self.n_heads + 2 * self.n_kv_heads) * self.d_model * self.d_head
        attn += (self.n_heads + 2 * self.n_kv_heads) * self.d_head + self.d_model
        attn += 2 * self.d_head if self.qk_norm else 0
        mlp = (3 if self.gated_mlp else 2) * self.d_model * self.d_mlp + self.d_mlp + self.d_model
        embed = 2 * self.d_vocab * self.d_model + self.d_vocab
        pos = 0 if self.rotary_dim else self.n_ctx * self.d_model
        return embed + pos + self.n_layers * (attn + mlp)

    def rotary_elements(self, length: int) -> int:
        """Elements of the rotary sin and cos tables of every layer after a sequence of `length`."""
        if not self.rotary_dim:
            return 0
        return self.n_layers * 2 * max(min(self.n_ctx, ROTARY_ROWS), length) * self.rotary_dim


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate for one model, length, batch and dtype. Every size in bytes."""

    model: str
    length: int
    batch: int
    dtype: str
    weights: int
    forward_eager: int            # activation peak of one forward, eager attention
    forward_fused: int            # the same with the fused statistics kernels (no pattern)
    patterns_all_layers: int      # kept on top when every layer's pattern is captured
    kv_cache: int                 # a generation cache of `length` tokens
    device_memory: int
    devices_eager: Optional[int]  # None: the activations alone exceed one device
    devices_fused: Optional[int]
    devices_patterns: Optional[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dtype_bytes(dtype: str) -> int:
    key = str(dtype).removeprefix("torch.")
    if key not in _DTYPE_BYTES:
        raise InputError(f"--dtype {dtype} is not one of float32, bfloat16, float16")
    return _DTYPE_BYTES[key]


def activation_peak(shape: ModelShape, length: int, batch: int, s: int, fused: bool, logits: bool = True,
                    threads: int | None = None) -> int:
    """Peak activation bytes of one no-grad forward (see the module docstring); `logits=False`
    for a forward that stops before the unembedding (stop_at_layer). threads: CPU threads the fused
    reference runs its chunks on (default: torch's current count; one tile is alive per thread)."""
    b, n, h = batch, length, shape.n_heads
    resid = 2 * b * n * shape.d_model * s
    if fused:  # q, z with H heads; k, v with H_kv (never repeated); their head-major copies
        qkvz = 2 * b * n * (h + shape.n_kv_heads) * shape.d_head * s
        head_major = b * n * (h + 2 * shape.n_kv_heads) * shape.d_head * s
        stats = 6 * b * h * n * 4 * shape.n_layers
        attention = qkvz + head_major + attention_scratch(b * h, n, shape.d_head, threads) + stats
    else:  # TransformerLens repeats k and v to H heads for the scores
        qkvz = 4 * b * n * h * shape.d_head * s
        attention = qkvz + b * h * n * n * (4 * s + 1) + n * n
    mlp = 3 * b * n * shape.d_mlp * s
    unembed = b * n * shape.d_vocab * (4 if s == 4 else s) + shape.d_model * shape.d_vocab * s if logits else 0
    return resid + max(attention, mlp, unembed)


def attention_scratch(batch_heads: int, n: int, d_head: int, threads: int | None = None) -> int:
    """Bytes of float32 scratch alive at once in the CPU backend ``backend="auto"`` runs (the fused
    kernel, interp_kernels.cpu_fused, where it builds; else the reference, interp_kernels.reference), one chunk per
    worker thread: TILE_BUFFERS score tiles from its own causal chunk plan (each chunk's keys taken in
    blocks) and, in the fused kernel, ROW_BUFFERS [rows, d_head] arrays per chunk (the output
    accumulator, its normalised copy and the masked result)."""
    import torch

    from interp_kernels import cpu_fused, reference

    fused = cpu_fused.available()
    budget = cpu_fused.TILE_ELEMENTS if fused else reference.DEFAULT_TILE_ELEMENTS
    plan = reference.chunks(batch_heads, n, True, None, min_rows=cpu_fused.MIN_ROWS if fused else reference.MIN_ROWS,
                            tile_elements=budget)
    tiles = reference.chunk_tiles(batch_heads, n, plan, True, None, budget)
    rows = [batch_heads * (c1 - c0) * d_head * ROW_BUFFERS if fused else 0 for c0, c1 in plan]
    live = max(1, min(len(plan), threads if threads is not None else torch.get_num_threads()))
    return 4 * (sum(sorted(tiles)[-live:]) * TILE_BUFFERS + sum(sorted(rows)[-live:]))


def devices_needed(weights: int, activations: int, device_memory: int) -> Optional[int]:
    """Smallest K with weights / K + activations <= USABLE × device_memory (None if none is)."""
    room = USABLE * device_memory - activations
    if room <= 0:
        return None
    return max(1, math.ceil(weights / room))


def plan_for_shape(shape: ModelShape, *, length: int, batch: int = 1, dtype: str = "float32",
                   device_memory: int) -> MemoryPlan:
    s = dtype_bytes(dtype)
    weights = shape.n_parameters() * s + shape.rotary_elements(length) * s
    eager = activation_peak(shape, length, batch, s, fused=False)
    fused = activation_peak(shape, length, batch, s, fused=True)
    patterns = shape.n_layers * batch * shape.n_heads * length * length * s
    kv = 2 * shape.n_layers * batch * length * shape.n_kv_heads * shape.d_head * s
    return MemoryPlan(
        model=shape.name, length=length, batch=batch, dtype=str(dtype).removeprefix("torch."), weights=weights,
        forward_eager=eager, forward_fused=fused, patterns_all_layers=patterns, kv_cache=kv,
        device_memory=device_memory, devices_eager=devices_needed(weights, eager, device_memory),
        devices_fused=devices_needed(weights, fused, device_memory),
        devices_patterns=devices_needed(weights + patterns, eager, device_memory))


def plan_memory(model: str, *, length: int, batch: int = 1, dtype: str = "float32",
                device_memory: Optional[str | int] = None) -> MemoryPlan:
    """The plan for a model named as `interp.load_model` takes it (no weights are loaded)."""
    from interp.sweep.spec import parse_memory

    dtype_bytes(dtype)
    shape = model_shape(model)
    if length > shape.n_ctx:
        raise InputError(f"--length {length} is longer than {shape.name}'s context of {shape.n_ctx} tokens")
    memory = parse_memory(device_memory, "--device-memory") if device_memory is not None else default_device_memory()
    if memory <= 0:
        raise InputError(f"--device-memory {device_memory}: a device needs some memory; give its size, e.g. 80GB")
    return plan_for_shape(shape, length=length, batch=batch, dtype=dtype, device_memory=memory)


def default_device_memory() -> int:
    """The first CUDA GPU's memory, else this machine's RAM."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def model_shape(name_or_path: str) -> ModelShape:
    """The shape of a model: from its converted config in the cache, else its HF config."""
    from interp.loading import cache_root
    from interp.model_source import resolve

    source = resolve(str(name_or_path), cache_root())
    entries = sorted((cache_root() / "models").glob(f"{source.cache_key}-v*/done"))
    if entries:
        return shape_from_tl(json.loads((entries[-1].parent / "config.json").read_text()), source.label)
    return shape_from_hf(_hf_config(source), source.label)


def shape_from_tl(cfg: dict[str, Any], name: str) -> ModelShape:
    """From a HookedTransformerConfig's fields (a dict: the cache's config.json, or cfg.to_dict())."""
    rotary = cfg.get("positional_embedding_type") == "rotary"
    return ModelShape(name=name, n_layers=cfg["n_layers"], d_model=cfg["d_model"], n_heads=cfg["n_heads"],
                      n_kv_heads=cfg.get("n_key_value_heads") or cfg["n_heads"], d_head=cfg["d_head"],
                      d_mlp=cfg.get("d_mlp") or 4 * cfg["d_model"], d_vocab=cfg["d_vocab"], n_ctx=cfg["n_ctx"],
                      gated_mlp=bool(cfg.get("gated_mlp")), rotary_dim=cfg.get("rotary_dim") if rotary else None,
                      qk_norm=bool(cfg.get("use_qk_norm")))


def shape_from_hf(c: Any, name: str) -> ModelShape:
    """From a transformers config (names differ between families; the common ones are read)."""
    def first(*names, default=None):
        return next((getattr(c, n) for n in names if getattr(c, n, None) is not None), default)

    d_model = first("hidden_size", "n_embd", "d_model")
    n_heads = first("num_attention_heads", "n_head")
    if d_model is None or n_heads is None:
        raise InputError(f"cannot read the shape of {name} from its config (no hidden_size / num_attention_heads)")
    d_head = first("head_dim", default=d_model // n_heads)
    model_type = getattr(c, "model_type", "")
    absolute = model_type in {"gpt2", "gpt_neo", "opt"}
    rotary = None if absolute else int(d_head * first("partial_rotary_factor", "rotary_pct", default=1.0))
    return ModelShape(name=name, n_layers=first("num_hidden_layers", "n_layer"), d_model=d_model, n_heads=n_heads,
                      n_kv_heads=first("num_key_value_heads", default=n_heads), d_head=d_head,
                      d_mlp=first("intermediate_size", "n_inner", "ffn_dim", default=4 * d_model),
                      d_vocab=c.vocab_size, n_ctx=first("max_position_embeddings", "n_positions", default=2048),
                      gated_mlp=model_type not in _UNGATED, rotary_dim=rotary,
                      qk_norm=model_type.startswith("gemma3") or model_type.startswith("qwen3"))


def _hf_config(source: Any) -> Any:
    from transformers import AutoConfig

    if source.kind == "hub" and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise InputError(f"{source.location} is a hub id and HF_HUB_OFFLINE=1; name a local .gguf file or directory")
    where: dict[str, Any] = dict(local_files_only=source.kind != "hub", trust_remote_code=False)
    if source.kind == "gguf":
        path = Path(source.location)
        where.update(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    else:
        where.update(pretrained_model_name_or_path=source.location)
    try:
        config = AutoConfig.from_pretrained(**where)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"cannot read the config of {source.location} ({str(err).splitlines()[0]})") from None
    return getattr(config, "text_config", None) or config


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def format_plan(p: MemoryPlan) -> str:
    """The human answer of `interp plan`."""
    def fits(k: Optional[int]) -> str:
        return "does not fit one device at any split (shorter length or batch)" if k is None else \
            f"{k} device{'s' if k > 1 else ''}"

    lines = [f"{p.model}, batch {p.batch} × {p.length} tokens, {p.dtype}; one device = {_gb(p.device_memory)} "
             f"({int(USABLE * 100)} % usable)",
             f"  weights                          {_gb(p.weights):>12}",
             f"  forward, eager attention         {_gb(p.forward_eager):>12}  → {fits(p.devices_eager)}",
             f"  forward, fused statistics        {_gb(p.forward_fused):>12}  → {fits(p.devices_fused)}",
             f"  + every layer's pattern kept     {_gb(p.patterns_all_layers):>12}  → {fits(p.devices_patterns)}",
             f"  KV cache for generation          {_gb(p.kv_cache):>12}"]
    return "\n".join(lines)
