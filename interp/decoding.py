"""Key-value-cache decoding for any HookedTransformer: a pattern-free prefill (SDPA or the fused
kernels) into a `KVCache`, then one query row per greedy decoding step, with hooks that record each
head's top-1 key or zero chosen heads' queries. Retrieval heads and safety heads both decode with it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from interp.errors import InputError
from interp.kernel_attention import _check_supported, _project, layer_windows

MAX_NEW_TOKENS = 50  # Wu et al.'s needle answers: up to 50 greedy tokens


@dataclass
class Decoded:
    """Greedy decoding of one prompt: generated token ids, their text, and per step the top-1
    attended key of every head ([step, layer, head], int64; empty when not recorded)."""

    tokens: list[int]
    text: str
    top1: torch.Tensor


def chat_prompt(model: HookedTransformer, user: str) -> str:
    """`user` as one user turn in the model's chat template, ready for the assistant's answer."""
    template = getattr(model.tokenizer, "chat_template", None)
    if not template:
        raise InputError(f"{model.cfg.model_name} has no chat template; use prompt_format='plain'")
    return model.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)


class KVCache:
    """Rotated keys and values per layer, [batch, kv_head, pos, d_head], in buffers that grow by
    `reserve` positions so decoding appends without copying the past. `mask` [batch, pos] marks
    real (1) and padding (0) keys of a left-padded batch (None: no padding). A `frozen` cache (a
    shared prefix) is read, broadcast over the batch, and never written."""

    def __init__(self, n_layers: int, reserve: int = 0):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.lengths = [0] * n_layers
        self.reserve = reserve
        self.mask: torch.Tensor | None = None
        self.frozen = False

    def length(self, layer: int) -> int:
        return self.lengths[layer]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v [batch, kv_head, new, d_head]; return all keys and values so far."""
        n, new = self.lengths[layer], k.shape[2]
        if n == 0 and self.frozen:
            return k, v
        if n == 0:
            self.keys[layer], self.values[layer] = self._buffer(k, new), self._buffer(v, new)
        elif self.frozen or self.keys[layer].shape[0] != k.shape[0]:
            past_k, past_v = (t[:, :, :n].expand(k.shape[0], -1, -1, -1) for t in (self.keys[layer], self.values[layer]))
            keys, values = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
            if self.frozen:
                return keys, values
            self.keys[layer], self.values[layer] = self._buffer(keys, n + new), self._buffer(values, n + new)
        else:
            if n + new > self.keys[layer].shape[2]:
                self.keys[layer] = self._buffer(self.keys[layer][:, :, :n], n, n + new)
                self.values[layer] = self._buffer(self.values[layer][:, :, :n], n, n + new)
            self.keys[layer][:, :, n:n + new] = k
            self.values[layer][:, :, n:n + new] = v
        self.lengths[layer] = n + new
        return self.keys[layer][:, :, :n + new], self.values[layer][:, :, :n + new]

    def _buffer(self, t: torch.Tensor, filled: int, need: int | None = None) -> torch.Tensor:
        need = filled if need is None else need
        buf = t.new_empty(t.shape[0], t.shape[1], need + self.reserve, t.shape[3])
        buf[:, :, :filled] = t[:, :, :filled]
        return buf


def new_cache(model: HookedTransformer, reserve: int = 0) -> KVCache:
    return KVCache(model.cfg.n_layers, reserve)


@contextlib.contextmanager
def cached_attention(model: HookedTransformer, cache: KVCache, *, attention: str = "sdpa") -> Iterator[KVCache]:
    """Inside the block, every attention layer reads and extends `cache`: positions continue from
    the cached length, keys are rotated once and stored rotated. A forward pass of n new tokens
    attends to the cached keys and causally to its own, with no [query, key] pattern for n > 1
    (torch's fused attention, or `interp_kernels.attention_with_stats` with attention="kernels" and on
    sliding-window layers); a single new token (decoding) computes its one score row per head
    directly and passes it through hook_pattern ([batch, head, 1, key]). hook_q/k/v, hook_rot_q/k,
    hook_z (and hook_result) fire as in TransformerLens. Padding: set `cache.mask` [batch, pos]."""
    if attention not in ("sdpa", "kernels"):
        raise InputError(f"unknown attention {attention!r}; choose sdpa or kernels")
    _check_supported(model)
    if model.cfg.positional_embedding_type not in ("rotary", "standard"):
        raise InputError(f"cached attention supports rotary or learned absolute positions, not "
                         f"{model.cfg.positional_embedding_type}")
    saved = []
    for layer, (block, window) in enumerate(zip(model.blocks, layer_windows(model))):
        attn = block.attn
        saved.append((attn, attn.forward))
        attn.forward = _cached_forward(attn, layer, cache, window, attention)
    try:
        yield cache
    finally:
        for attn, forward in saved:
            attn.forward = forward


def _cached_forward(attn, layer: int, cache: KVCache, window: int | None, attention: str):
    import interp_kernels

    def forward(query_input, key_input, value_input, past_kv_cache_entry=None, additive_attention_mask=None,
                attention_mask=None, position_bias=None):
        q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)  # [batch, pos, head, d_head]
        offset, new = cache.length(layer), q.shape[1]
        mask = None if cache.mask is None else cache.mask[:, : offset + new].to(q.device)
        if attn.cfg.positional_embedding_type == "rotary":
            q = attn.hook_rot_q(attn.apply_rotary(q, offset, mask))
            k = attn.hook_rot_k(attn.apply_rotary(k, offset, mask))
        qh = q.transpose(1, 2)
        keys, values = cache.extend(layer, k.transpose(1, 2), v.transpose(1, 2))  # [batch, kv_head, n, d_head]
        scale = 1.0 / float(attn.attn_scale)
        if new == 1:
            out = _one_row(attn, qh, keys, values, scale, window, mask)
        elif offset == 0 and mask is None and (attention == "kernels" or window is not None):
            out, _ = interp_kernels.attention_with_stats(qh.contiguous(), keys.contiguous(), values.contiguous(), causal=True,
                                                  window=window, scale=scale)
        else:
            allowed = None if offset == 0 and mask is None else _allowed(offset, new, window, mask, q.device)
            if allowed is None and window is not None:
                allowed = _allowed(offset, new, window, None, q.device)
            out = F.scaled_dot_product_attention(qh, keys, values, attn_mask=allowed, is_causal=allowed is None,
                                                 scale=scale, enable_gqa=keys.shape[1] != qh.shape[1])
        z = attn.hook_z(out.transpose(1, 2))
        return _project(attn, z)

    return forward


def _allowed(offset: int, new: int, window: int | None, mask: torch.Tensor | None, device) -> torch.Tensor:
    """Boolean [batch or 1, 1, new, offset + new]: which keys each new query may attend to. A padded
    query keeps its own key so its row stays finite (its output is never used)."""
    i = torch.arange(offset, offset + new, device=device)[:, None]
    j = torch.arange(offset + new, device=device)[None, :]
    ok = j <= i
    if window is not None:
        ok &= (i - j) < window
    ok = ok[None, None]
    if mask is not None:
        ok = (ok & mask.bool()[:, None, None, :]) | (i == j)[None, None]
    return ok


def _one_row(attn, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float, window, mask) -> torch.Tensor:
    """One query per head against all cached keys: q [batch, head, 1, d], keys/values [batch, kv, n, d]."""
    b, h, _, d = q.shape
    kv, n = keys.shape[1], keys.shape[2]
    qg = q.reshape(b, kv, h // kv, d)
    scores = torch.matmul(qg, keys.transpose(-1, -2)).reshape(b, h, 1, n) * scale
    if window is not None and n > window:
        scores[..., : n - window] = float("-inf")
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    pattern = attn.hook_pattern(torch.softmax(scores.float(), dim=-1).to(q.dtype))  # [batch, head, 1, key]
    out = torch.matmul(pattern.reshape(b, kv, h // kv, n), values)
    return out.reshape(b, h, 1, d)


def run_cached(model: HookedTransformer, tokens: torch.Tensor, cache: KVCache, *, attention: str = "sdpa",
               start_at_layer: int = 0, resid: torch.Tensor | None = None, last_only: bool = True) -> torch.Tensor:
    """Forward `tokens` [batch, new] (or the residual stream `resid` entering `start_at_layer`)
    after the cached positions. Returns logits [batch, vocab] at the last position (all positions
    [batch, new, vocab] with last_only=False). Positions and padding follow `cache`."""
    cfg = model.cfg
    with cached_attention(model, cache, attention=attention):
        if resid is None:
            resid = model.hook_embed(model.embed(tokens.to(cfg.device)))
            if cfg.positional_embedding_type == "standard":
                offset = cache.length(0)
                resid = resid + model.hook_pos_embed(model.pos_embed(tokens.to(cfg.device), offset))
        for block in model.blocks[start_at_layer:]:
            resid = block(resid.to(next(block.parameters()).device))  # a split model's blocks live apart
    resid = resid[:, -1:] if last_only else resid
    logits = model.unembed(model.ln_final(resid))
    return logits[:, 0] if last_only else logits


def stop_token_ids(model: HookedTransformer) -> set[int]:
    """Token ids that end an answer: end of turn / text, and any token containing a newline."""
    tok = model.tokenizer
    if tok is None:
        return set()
    ids = {i for i in (tok.eos_token_id, getattr(tok, "pad_token_id", None)) if i is not None}
    for name in ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<eos>"):
        i = tok.convert_tokens_to_ids(name)
        if isinstance(i, int) and i != tok.unk_token_id:
            ids.add(i)
    return ids


def _newline_tokens(model: HookedTransformer) -> torch.Tensor:
    """[vocab] bool: tokens whose text contains a newline (the authors stop at the newline token)."""
    cached = getattr(model, "_interp_newline_tokens", None)
    if cached is None and model.tokenizer is None:
        cached = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
    if cached is None:
        vocab = model.tokenizer.convert_ids_to_tokens(list(range(min(model.cfg.d_vocab, len(model.tokenizer)))))
        flags = [("\n" in model.tokenizer.convert_tokens_to_string([t])) if t is not None else False for t in vocab]
        cached = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
        cached[: len(flags)] = torch.tensor(flags)
        model._interp_newline_tokens = cached
    return cached


def decode_with_top1(
    model: HookedTransformer,
    tokens: torch.Tensor,
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    masked_heads: Sequence[tuple[int, int]] = (),
    record: bool = True,
    attention: str = "sdpa",
) -> Decoded:
    """Greedy decoding of one prompt `tokens` [n], recording each head's top-1 key per step.

    The first n−1 tokens are prefilled (pattern-free); then each step feeds one token (first the
    prompt's last) and takes the argmax of that query's attention row per head, the step's
    generated token being the argmax of its logits. Stops after a newline or end-of-turn token
    (that step still counts, as in the authors' code) or after max_new_tokens.
    masked_heads: (layer, head) pairs whose attention is made uniform (query zeroed)."""
    cfg = model.cfg
    tokens = tokens.reshape(1, -1).to(cfg.device)
    if tokens.shape[1] < 2:
        raise InputError("decoding needs a prompt of at least 2 tokens")
    if tokens.shape[1] + max_new_tokens > cfg.n_ctx:
        raise InputError(f"prompt of {tokens.shape[1]} tokens + {max_new_tokens} new ones exceeds the context of {cfg.n_ctx}")
    stops, newline = stop_token_ids(model), _newline_tokens(model)
    cache = new_cache(model, reserve=max_new_tokens + 1)
    rows: dict[int, torch.Tensor] = {}
    record_hooks = [(f"blocks.{l}.attn.hook_pattern", _top1_hook(rows, l)) for l in range(cfg.n_layers)] if record else []
    out, top1, current = [], [], tokens[:, -1:]
    with torch.no_grad(), model.hooks(fwd_hooks=query_zeroing_hooks(cfg, masked_heads)):
        with decode_threads(cfg.device, tokens.shape[1]):
            run_cached(model, tokens[:, :-1], cache, attention=attention)
        with model.hooks(fwd_hooks=record_hooks), decode_threads(cfg.device):
            for _ in range(max_new_tokens):
                nxt = int(run_cached(model, current, cache).argmax(-1))
                out.append(nxt)
                if record:
                    top1.append(torch.stack([rows[l][0].to(cfg.device) for l in range(cfg.n_layers)]))  # split: gather
                if nxt in stops or bool(newline[nxt]):
                    break
                current = torch.tensor([[nxt]], device=cfg.device)
    text = model.tokenizer.decode(out, skip_special_tokens=True).strip() if model.tokenizer is not None else ""
    empty = torch.zeros(0, cfg.n_layers, cfg.n_heads, dtype=torch.long)
    return Decoded(out, text, torch.stack(top1).cpu() if top1 else empty)


SINGLE_THREAD_TOKENS = 1024  # CPU forwards over at most this many tokens run on one thread


@contextlib.contextmanager
def decode_threads(device, tokens: int = 1) -> Iterator[None]:
    """On CPU, run small forwards (decoding steps; at most SINGLE_THREAD_TOKENS tokens) on one
    thread: their operations are too small to gain from more, and on a busy machine extra threads
    mostly wait (measured on 2 shared cores: a decoding step 0.3 s vs 1.2-2.4 s, a 4-prompt Ships
    restart 0.7 s vs 5.4 s)."""
    if torch.device(device).type != "cpu" or tokens > SINGLE_THREAD_TOKENS:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _top1_hook(rows: dict, layer: int):
    def hook(pattern, hook):  # [batch, head, 1, key]: the single query row of this step
        rows[layer] = pattern[:, :, -1].argmax(-1)
    return hook


def query_zeroing_hooks(cfg, heads: Sequence[tuple[int, int]]) -> list:
    """Hooks zeroing the (rotated, post-QK-norm) query of each (layer, head): uniform attention."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise InputError(f"head L{layer}H{head} does not exist in a model of {cfg.n_layers} layers × {cfg.n_heads} heads")
        by_layer.setdefault(int(layer), []).append(int(head))
    name = "hook_rot_q" if cfg.positional_embedding_type == "rotary" else "hook_q"

    def zero(heads_here):
        def hook(q, hook):  # [batch, pos, head, d_head]
            q = q.clone()
            q[:, :, heads_here] = 0.0
            return q
        return hook

    return [(f"blocks.{l}.attn.{name}", zero(hs)) for l, hs in by_layer.items()]
