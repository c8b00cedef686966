"""Hook-based capture of per-head activations over prompts of different lengths.

Only what is asked for is kept: each hook copies the requested heads' slice of its activation,
unpadded, to CPU (or to safetensors shards on disk), and the forward pass stops after the last
requested layer. Prompts are right-padded in batches; in a causal model padding after a prompt
cannot reach its positions, so every captured value equals the prompt run alone.

Activation names (per layer; `pos` is the prompt's own length, `head` the selected query heads):
  q, k, v        [pos, head, d_head]   TransformerLens hook_q/k/v; KV heads mapped to their query heads
  rot_q, rot_k   [pos, head, d_head]   after rotary embedding: what the attention scores see
  z              [pos, head, d_head]   hook_z, the value-weighted sum each head writes through W_O
  result         [pos, head, d_model]  each head's write to the residual stream, z_h @ W_O[h]
  v_norm, z_norm, result_norm  [pos, head]  L2 norms of the above
  resid          [pos, d_model]        the residual stream entering the layer (hook_resid_pre)
  resid_norm     [pos]                 its L2 norm
  pattern        [head, pos, pos]      attention pattern; only for inputs up to `max_pattern_tokens`
  entropy        [pos, head]           entropy of each query's attention distribution (nats)
  max_prob       [pos, head]           largest attention probability of each query
  sink_mass      [pos, head]           attention each query puts on the first token
The last three are reduced inside the hook, so no pattern is kept.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from transformer_lens import HookedTransformer

from interp.devices import device_of_layer
from interp.errors import InputError
from interp.progress import progress_bar

QUERY_STATS = ("entropy", "max_prob", "sink_mass")
HEAD_ACTIVATIONS = ("q", "k", "v", "rot_q", "rot_k", "z", "result", "v_norm", "z_norm", "result_norm", "pattern") + QUERY_STATS
ACTIVATIONS = HEAD_ACTIVATIONS + ("resid", "resid_norm")
HEAD_SCALARS = ("v_norm", "z_norm", "result_norm") + QUERY_STATS  # one number per (token, head)
_HOOK_OF = {
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "rot_q": "attn.hook_rot_q",
    "rot_k": "attn.hook_rot_k", "z": "attn.hook_z", "result": "attn.hook_z", "v_norm": "attn.hook_v",
    "z_norm": "attn.hook_z", "result_norm": "attn.hook_z", "pattern": "attn.hook_pattern",
    "resid": "hook_resid_pre", "resid_norm": "hook_resid_pre", "entropy": "attn.hook_pattern", "max_prob": "attn.hook_pattern",
    "sink_mass": "attn.hook_pattern",
}


@dataclass
class Capture:
    """Captured activations, one tensor per (name, layer, prompt); in memory or in shards on disk."""

    model_name: str
    names: list[str]
    layers: list[int]
    heads: list[int]
    tokens: list[torch.Tensor]
    store: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    shard_of: dict[int, str] = field(default_factory=dict, repr=False)
    folder: Path | None = None

    def get(self, name: str, layer: int, prompt: int) -> torch.Tensor:
        """One prompt's activation, e.g. z → [pos, head, d_head] (shapes in the module docstring)."""
        key = _key(name, layer, prompt)
        if key in self.store:
            return self.store[key]
        if self.folder is None or prompt not in self.shard_of:
            raise KeyError(f"{name} at layer {layer} for prompt {prompt} was not captured")
        from safetensors import safe_open

        with safe_open(str(self.folder / self.shard_of[prompt]), "pt") as f:
            return f.get_tensor(key)

    def cat(self, name: str, layer: int) -> torch.Tensor:
        """All prompts' positions concatenated: [total_tokens, ...] (not for `pattern`)."""
        return torch.cat([self.get(name, layer, i) for i in range(len(self.tokens))])

    def head_means(self, name: str) -> torch.Tensor:
        """Mean over every captured token of a per-head scalar activation: [layer, head]."""
        return torch.stack([self.cat(name, layer).float().mean(0) for layer in self.layers])

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    @classmethod
    def load(cls, folder: str | Path) -> "Capture":
        """Open a capture streamed to disk (its `capture.json` and shards); tensors load on access."""
        folder = Path(folder)
        index_path = folder / "capture.json"
        if not index_path.is_file():
            raise InputError(f"{folder} holds no capture.json; name a folder written by capture(..., out_dir=...)")
        index = json.loads(index_path.read_text())
        from safetensors.torch import load_file

        tokens = load_file(str(folder / "tokens.safetensors"))
        return cls(
            model_name=index["model"], names=index["names"], layers=index["layers"], heads=index["heads"],
            tokens=[tokens[str(i)] for i in range(len(tokens))],
            shard_of={int(k): v for k, v in index["shard_of"].items()}, folder=folder,
        )


def _key(name: str, layer: int, prompt: int) -> str:
    return f"{name}.L{layer}.{prompt}"


def tokenize_prompts(model: HookedTransformer, prompts: Iterable[str | Sequence[int] | torch.Tensor]) -> list[torch.Tensor]:
    """Each prompt as a 1-D token tensor, text tokenised with the model's defaults (BOS as the model file says)."""
    out = []
    for p in prompts:
        t = model.to_tokens(p)[0] if isinstance(p, str) else torch.as_tensor(p, dtype=torch.long).flatten()
        if t.numel() == 0:
            raise InputError("an empty prompt was given; every prompt needs at least one token")
        out.append(t.cpu())
    if not out:
        raise InputError("no prompts were given; pass at least one text")
    return out


def capture(
    model: HookedTransformer,
    prompts: Iterable[str | Sequence[int] | torch.Tensor],
    *,
    names: Sequence[str] = ("z",),
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    batch_tokens: int = 4096,
    max_pattern_tokens: int = 1024,
    out_dir: str | Path | None = None,
    store_dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
) -> Capture:
    """Run `model` over `prompts` and keep only `names` at `layers` × `heads` (all by default).

    batch_tokens bounds the padded tokens per forward pass. With `out_dir`, each batch is written
    to a safetensors shard there and nothing stays in RAM; `Capture.load(out_dir)` reopens it.
    """
    layers = _check_layers(model, layers)
    heads = _check_heads(model, heads)
    names = _check_names(names)
    tokens = tokenize_prompts(model, prompts)
    if "pattern" in names and max(map(len, tokens)) > max_pattern_tokens:
        raise InputError(
            f"attention patterns were asked for a {max(map(len, tokens))}-token prompt, over max_pattern_tokens="
            f"{max_pattern_tokens}; patterns are N^2 in memory: use the kernel statistics (interp trace --stats) instead"
        )
    cap = Capture(model.cfg.model_name, list(names), layers, heads, tokens)
    sink = _ShardWriter(Path(out_dir), cap) if out_dir is not None else None
    for batch in _batches(tokens, batch_tokens, progress):
        store = _run_batch(model, tokens, batch, cap, store_dtype)
        if sink:
            sink.write(batch, store)
        else:
            cap.store.update(store)
    if sink:
        sink.finish()
    return cap


def _run_batch(model, tokens, batch: list[int], cap: Capture, store_dtype) -> dict[str, torch.Tensor]:
    lengths = [len(tokens[i]) for i in batch]
    pad = model.tokenizer.pad_token_id if model.tokenizer is not None and model.tokenizer.pad_token_id is not None else 0
    padded = torch.full((len(batch), max(lengths)), pad, dtype=torch.long)
    for row, i in enumerate(batch):
        padded[row, : lengths[row]] = tokens[i]
    store: dict[str, torch.Tensor] = {}
    hooks = []
    for layer in cap.layers:
        for hook_name, fn in _hooks_for_layer(model, layer, cap, batch, lengths, store, store_dtype).items():
            hooks.append((f"blocks.{layer}.{hook_name}", fn))
    with torch.no_grad():
        model.run_with_hooks(
            padded.to(model.cfg.device), fwd_hooks=hooks, stop_at_layer=max(cap.layers) + 1, return_type=None
        )
    return store


def _hooks_for_layer(model, layer, cap, batch, lengths, store, store_dtype) -> dict[str, Callable]:
    """One hook function per TransformerLens hook this layer needs, each writing its derived names."""
    derive: dict[str, list[tuple[str, Callable]]] = {}
    for name in cap.names:
        derive.setdefault(_HOOK_OF[name], []).append((name, _deriver(model, layer, name, cap.heads)))

    def make(pairs):
        def hook(act, hook):
            for name, fn in pairs:
                value = fn(act)
                for row, prompt in enumerate(batch):
                    n = lengths[row]
                    piece = value[row, :, :n, :n] if name == "pattern" else value[row, :n]
                    store[_key(name, layer, prompt)] = piece.to("cpu", store_dtype).clone()
            return act

        return hook

    return {hook_name: make(pairs) for hook_name, pairs in derive.items()}


def _deriver(model: HookedTransformer, layer: int, name: str, heads: list[int]) -> Callable:
    """Map a hook's activation [batch, pos, n_heads_or_kv, ...] to the named quantity for `heads`."""
    cfg = model.cfg
    idx = torch.tensor(heads, device=device_of_layer(model, layer))  # a split model's layers live apart
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    kv_idx = idx // (cfg.n_heads // n_kv)
    if name == "pattern":
        return lambda a: a.index_select(1, idx)
    if name in QUERY_STATS:
        return lambda a: _query_stat(name, a.index_select(1, idx)).transpose(1, 2)
    if name == "resid":
        return lambda a: a
    if name == "resid_norm":
        return lambda a: a.norm(dim=-1)
    if name in ("k", "v", "rot_k", "v_norm"):
        select = lambda a: a.index_select(2, kv_idx) if a.shape[2] == n_kv else a.index_select(2, idx)
    else:
        select = lambda a: a.index_select(2, idx)
    if name in ("result", "result_norm"):
        w_o = model.blocks[layer].attn.W_O.index_select(0, idx)  # [head, d_head, d_model]
        write = lambda a: torch.einsum("bphd,hdm->bphm", select(a), w_o)
        return write if name == "result" else lambda a: write(a).norm(dim=-1)
    if name in ("v_norm", "z_norm"):
        return lambda a: select(a).norm(dim=-1)
    return select


def _query_stat(name: str, pattern: torch.Tensor) -> torch.Tensor:
    """Per-query statistic of a pattern [batch, head, query, key] → [batch, head, query]."""
    if name == "entropy":
        return -torch.special.xlogy(pattern, pattern).sum(-1)
    if name == "max_prob":
        return pattern.amax(-1)
    return pattern[..., 0]


def _batches(tokens: list[torch.Tensor], batch_tokens: int, progress: bool | None) -> Iterable[list[int]]:
    """Prompt indices grouped by similar length so padded batches stay under `batch_tokens`."""
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * len(tokens[i]) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)
    return progress_bar(batches, "capture", progress, unit="batch")


def _check_layers(model, layers) -> list[int]:
    return _check_indices(layers, model.cfg.n_layers, "layer", "")


def _check_heads(model, heads) -> list[int]:
    return _check_indices(heads, model.cfg.n_heads, "head", " per layer")


def _check_indices(values, n: int, what: str, suffix: str) -> list[int]:
    """Sorted unique indices in 0..n-1 (all when None); InputError naming the first bad one."""
    values = list(range(n)) if values is None else sorted({int(x) for x in values})
    bad = [x for x in values if not 0 <= x < n]
    if bad or not values:
        raise InputError(f"{what} {bad[0] if bad else '(none)'} does not exist: the model has {what}s 0..{n - 1}{suffix}")
    return values


def _check_names(names) -> list[str]:
    names = list(dict.fromkeys(names))
    unknown = [x for x in names if x not in ACTIVATIONS]
    if unknown or not names:
        raise InputError(f"unknown activation {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(ACTIVATIONS)}")
    return names


class _ShardWriter:
    """Streams each batch to `shard-NNNNN.safetensors`; writes the index last, so a folder with a
    `capture.json` is always complete."""

    def __init__(self, folder: Path, cap: Capture):
        self.folder, self.cap, self.count = folder, cap, 0
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "capture.json").unlink(missing_ok=True)

    def write(self, batch: list[int], store: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        name = f"shard-{self.count:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in store.items()}, str(self.folder / name))
        self.cap.shard_of.update({i: name for i in batch})
        self.count += 1

    def finish(self) -> None:
        from safetensors.torch import save_file

        cap = self.cap
        save_file({str(i): t for i, t in enumerate(cap.tokens)}, str(self.folder / "tokens.safetensors"))
        index = dict(
            schema="interp.capture/1", model=cap.model_name, names=cap.names, layers=cap.layers, heads=cap.heads,
            lengths=cap.lengths, shard_of={str(k): v for k, v in cap.shard_of.items()},
        )
        (self.folder / "capture.json").write_text(json.dumps(index, indent=1))
        cap.folder = self.folder
