"""One model across several GPUs: TransformerLens' pipeline split, placed so its forward agrees.

`HookedTransformer.forward` moves the residual stream to `get_device_for_block_index(i, cfg)` before
block i: a contiguous split of the layers over `cfg.n_devices` GPUs starting at `cfg.device`'s
index. TransformerLens 3's own `move_model_modules_to_device` places modules by free memory
instead (`get_best_available_device`), which need not agree with that rule; so the modules are
placed here by the same rule the forward uses: the embeddings with block 0, block i on its device,
the final norm and unembedding with the last block. Any other device map would have the forward
move the residual away from the block's weights, so only this split is offered.

Hook tensors then live on their layer's device: code that gathers across layers moves them with
`gather` (or to one `keep_on` device) before stacking.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities.multi_gpu import get_device_for_block_index

from interp.errors import InputError


def check_devices(n_devices: int, device: Optional[str | torch.device] = None) -> torch.device:
    """The first device of a split over `n_devices` GPUs (InputError, one line, if there are too few)."""
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise InputError(f"--n-devices {n_devices!r} must be a whole number ≥ 1")
    base = torch.device(device or "cuda")
    if base.type != "cuda":
        raise InputError(f"--n-devices {n_devices} splits a model over CUDA GPUs; --device {base} is not one")
    first = base.index or 0
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if first + n_devices > have:
        raise InputError(f"--n-devices {n_devices} from cuda:{first} needs GPUs cuda:{first}…cuda:{first + n_devices - 1}, "
                         f"but this machine has {have}; use fewer devices (`interp plan` says how many a run needs)")
    return torch.device("cuda", first)


def layer_devices(n_layers: int, n_devices: int, first: torch.device) -> list[torch.device]:
    """The device of each block: the rule HookedTransformer.forward moves the residual by."""
    cfg = _RuleConfig(n_layers=n_layers, n_devices=n_devices, device=str(first))
    return [torch.device(get_device_for_block_index(i, cfg)) for i in range(n_layers)]


class _RuleConfig:
    """The three fields get_device_for_block_index reads."""

    def __init__(self, n_layers: int, n_devices: int, device: str):
        self.n_layers, self.n_devices, self.device = n_layers, n_devices, device


def split_across_devices(model: HookedTransformer, n_devices: int = 1,
                         device: Optional[str | torch.device] = None) -> HookedTransformer:
    """Place `model`'s layers over `n_devices` GPUs from `device` (default cuda:0); n_devices=1 leaves
    it where it is. Modules move one at a time, so the whole model never has to fit one GPU."""
    if n_devices == 1:
        return model
    first = check_devices(n_devices, device)
    placement = layer_devices(model.cfg.n_layers, n_devices, first)
    model.cfg.n_devices = n_devices
    model.cfg.device = str(first)
    for name in ("embed", "hook_embed", "pos_embed", "hook_pos_embed", "hook_tokens"):
        if hasattr(model, name):
            getattr(model, name).to(placement[0])
    for block, where in zip(model.blocks, placement):
        block.to(where)
    for name in ("ln_final", "unembed"):
        if hasattr(model, name):
            getattr(model, name).to(placement[-1])
    return model


def device_of_layer(model: HookedTransformer, layer: int) -> torch.device:
    """Where block `layer`'s weights (and so its hook tensors) are."""
    return next(model.blocks[layer].parameters()).device


def gather(tensors: Iterable[torch.Tensor], device: str | torch.device) -> list[torch.Tensor]:
    """Move per-layer tensors (each on its layer's device) to one device, ready to stack."""
    return [t.to(device, non_blocking=True) for t in tensors]


def placement_summary(model: HookedTransformer) -> dict[str, list[int]]:
    """Device name -> the blocks on it (what a report or `interp models` can show)."""
    out: dict[str, list[int]] = {}
    for i in range(model.cfg.n_layers):
        out.setdefault(str(device_of_layer(model, i)), []).append(i)
    return out
