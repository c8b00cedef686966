"""Chunked PyTorch backend: the same semantics as the Triton kernels, on any device.

Queries are processed in chunks of C rows; each chunk scores only the key range its rows can
see (``masking.key_bounds``), so the largest temporary is a ``[B, H, C, K]`` score tile with
K <= N. C is chosen so that tile stays under ``DEFAULT_TILE_ELEMENTS`` elements: memory is
O(B·H·N·C), never O(N²). Work is vectorised over batch and heads; grouped-query attention
views q as ``[B, H_kv, group, N, d]`` so K and V are never repeated. Arithmetic is float32
(float64 for float64 inputs) whatever the input dtype.
"""
from __future__ import annotations

import math

import torch

from .masking import key_bounds, queries_per_key, visible
from .stats import AttentionStats

DEFAULT_TILE_ELEMENTS = 1 << 22


def chunk_rows(batch_heads: int, n: int, chunk_size: int | None = None) -> int:
    """Query rows per chunk: ``chunk_size`` if given, else as many as fit the tile budget."""
    if chunk_size is not None:
        return max(1, min(n, int(chunk_size)))
    return max(1, min(n, DEFAULT_TILE_ELEMENTS // max(1, batch_heads * n)))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _range_indicator(lo: int, hi: int, ranges: list[tuple[int, int]], dtype, device) -> torch.Tensor:
    """``[hi-lo, R]`` 0/1 matrix: key lo+i lies in range r."""
    pos = torch.arange(lo, hi, device=device)[:, None]
    bounds = torch.tensor(ranges, dtype=torch.int64, device=device).reshape(-1, 2)
    return ((pos >= bounds[:, 0]) & (pos < bounds[:, 1])).to(dtype)


def _scores(q_chunk: torch.Tensor, k_range: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled scores ``[B, H_kv, g, C, K]`` from q ``[B, H_kv, g, C, d]`` and k ``[B, H_kv, K, d]``."""
    b, hkv, g, c, d = q_chunk.shape
    flat = q_chunk.reshape(b, hkv, g * c, d)
    return torch.matmul(flat, k_range.transpose(-1, -2)).view(b, hkv, g, c, -1).mul_(scale)


def finalize(m, l, t, arg, acc, mass):
    """Normalise running softmax sums into (out, lse, entropy, max_prob, argmax, mass).

    m: row max of the scores (0 where the row saw no key), l = Σ exp(s - m),
    t = Σ exp(s - m)·(s - m), arg: key index of the max, acc = Σ exp(s - m)·v and
    mass[..., r] = Σ_{j in range r} exp(s - m), all with matching leading dims.
    Rows with l == 0 saw no key and get lse -inf, out 0, entropy 0, max_prob 0, argmax -1,
    masses 0.
    """
    ok = l > 0
    inv = torch.where(ok, 1.0 / l, torch.zeros_like(l))
    log_l = torch.log(l)
    lse = torch.where(ok, m + log_l, torch.full_like(l, -math.inf))
    entropy = torch.where(ok, log_l - t * inv, torch.zeros_like(l)).clamp_(min=0.0)
    argmax = torch.where(ok, arg, torch.full_like(arg, -1))
    return acc * inv[..., None], lse, entropy, inv, argmax, mass * inv[..., None]


def _hidden_band(c0: int, c1: int, lo: int, hi: int, causal: bool, window: int | None, device):
    """Where queries c0..c1-1 do not see keys lo..hi-1, as ``(a, z, hidden)``: only key columns
    a..z-1 (relative to lo) hold hidden pairs and ``hidden`` is their ``[c1-c0, z-a]`` bool mask
    on ``device``; None when every pair is visible. Built on the CPU so CUDA never syncs."""
    mask = visible(torch.arange(c0, c1), torch.arange(lo, hi), causal, window)
    if mask is None:
        return None
    cols = (~mask).any(0).nonzero()
    a, z = int(cols[0]), int(cols[-1]) + 1
    return a, z, (~mask[:, a:z]).to(device, non_blocking=True)


def _fill_hidden(s: torch.Tensor, band, value: float) -> None:
    """Set the hidden pairs of a score tile ``[..., C, K]`` to ``value`` in place."""
    if band is not None:
        a, z, hidden = band
        s[..., a:z].masked_fill_(hidden, value)


def _forward_chunk(q_chunk, k_range, v_range, indicator, band, scale):
    """Attention of one query chunk over its key range; returns ``finalize`` outputs, argmax local."""
    b, hkv, g, c, d = q_chunk.shape
    s = _scores(q_chunk, k_range, scale)
    _fill_hidden(s, band, -math.inf)
    m, arg = s.max(dim=-1)
    m.masked_fill_(m == -math.inf, 0.0)
    s.sub_(m[..., None])
    p = torch.exp(s)
    _fill_hidden(s, band, 0.0)
    l = p.sum(-1)
    t = s.mul_(p).sum(-1)
    flat = p.view(b, hkv, g * c, -1)
    acc = torch.matmul(flat, v_range).view(b, hkv, g, c, d)
    mass = torch.matmul(flat, indicator).view(b, hkv, g, c, -1)
    return finalize(m, l, t, arg, acc, mass)


def forward(q, k, v, *, causal: bool, window: int | None, scale: float,
            mass_ranges: list[tuple[int, int]], chunk_size: int | None = None):
    """Attention with per-query statistics.

    q ``[B, H, N, d]``, k and v ``[B, H_kv, N, d]``; ``mass_ranges`` are half-open key ranges,
    the sink range first, each already clipped to ``[0, N]``. Returns ``(out, AttentionStats)``
    with out like q.
    """
    b, h, n, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    cd = _compute_dtype(q.dtype)
    dev = q.device
    qg = q.unflatten(1, (hkv, g))
    out = torch.empty((b, h, n, d), dtype=q.dtype, device=dev)
    lse, entropy, max_prob = (torch.empty((b, h, n), device=dev) for _ in range(3))
    mass_all = torch.empty((b, h, n, len(mass_ranges)), device=dev)
    argmax = torch.empty((b, h, n), dtype=torch.int64, device=dev)
    views = [t.unflatten(1, (hkv, g)) for t in (out, lse, entropy, max_prob, argmax, mass_all)]
    rows = chunk_rows(b * h, n, chunk_size)
    for c0 in range(0, n, rows):
        c1 = min(n, c0 + rows)
        lo, hi = key_bounds(c0, c1, n, causal, window)
        band = _hidden_band(c0, c1, lo, hi, causal, window, dev)
        indicator = _range_indicator(lo, hi, mass_ranges, cd, dev)
        res = _forward_chunk(qg[:, :, :, c0:c1].to(cd), k[:, :, lo:hi].to(cd), v[:, :, lo:hi].to(cd),
                             indicator, band, scale)
        res = res[:4] + (torch.where(res[4] >= 0, res[4] + lo, res[4]),) + res[5:]
        for view, value in zip(views, res):
            view[:, :, :, c0:c1] = value
    stats = AttentionStats(lse=lse, entropy=entropy, max_prob=max_prob, argmax=argmax,
                           sink_mass=mass_all[..., 0].contiguous(), span_mass=mass_all[..., 1:].contiguous())
    return out, stats


def received(q, k, lse, *, causal: bool, window: int | None, scale: float, chunk_size: int | None = None):
    """Attention each key receives: ``(received, alpha)``, float32 ``[B, H, N]``.

    received[b, h, j] = Σ_i exp(s_ij - lse_i) over the queries i that see j; alpha divides it
    by the number of such queries (0 where no query sees j). ``lse`` is float32 ``[B, H, N]``
    from the forward pass; rows with lse = -inf contribute nothing.
    """
    b, h, n, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    cd = _compute_dtype(q.dtype)
    dev = q.device
    qg = q.unflatten(1, (hkv, g))
    lse_g = lse.to(cd).unflatten(1, (hkv, g))
    lse_g = torch.where(torch.isneginf(lse_g), math.inf, lse_g)
    total = torch.zeros((b, hkv, g, n), dtype=cd, device=dev)
    rows = chunk_rows(b * h, n, chunk_size)
    for c0 in range(0, n, rows):
        c1 = min(n, c0 + rows)
        lo, hi = key_bounds(c0, c1, n, causal, window)
        s = _scores(qg[:, :, :, c0:c1].to(cd), k[:, :, lo:hi].to(cd), scale)
        s.sub_(lse_g[:, :, :, c0:c1, None]).exp_()
        _fill_hidden(s, _hidden_band(c0, c1, lo, hi, causal, window, dev), 0.0)
        total[..., lo:hi] += s.sum(-2)
    total = total.flatten(1, 2).to(torch.float32)
    count = queries_per_key(n, causal, window, device=dev)
    alpha = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    return total, alpha
