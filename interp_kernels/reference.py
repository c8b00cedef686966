"""Chunked PyTorch backend: the same semantics as the Triton kernels, on any device.

Queries are processed in chunks of C rows; each chunk scores only the key range its rows can
see (``masking.key_bounds``), so the largest temporary is a ``[B, H, C, K]`` score tile with
K <= N. C is chosen per chunk so that tile stays under ``DEFAULT_TILE_ELEMENTS`` elements
(8 MiB in float32): memory is O(B·H·N·C),
never O(N²); under a causal mask the early chunks, which see few keys, take more rows.
Work is vectorised over batch and heads; grouped-query attention views q as
``[B, H_kv, group, N, d]`` so K and V are never repeated. Arithmetic is float32 (float64 for
float64 inputs) whatever the input dtype.

Per key block the forward makes five passes over the score tile and reads every statistic off
them: the row max and its key (a blocked max: ``amax`` over 128-key blocks, then the winning
block only, since a max with indices over the whole tile costs ten times an ``amax`` on CPU),
x = s - max in place, e = exp(x) (never normalised: p = e / Z), Z = Σ e, and Σ e·x (one
batched row dot). Then lse = max + log Z, max_prob = 1 / Z (x = 0 at the max),
entropy = log Z - Σ e·x / Z (both terms >= 0, so no cancellation however large the scores),
range masses Σ e over key slices / Z, out = (e·v) / Z. The two tiles (scores, e) live in
scratch buffers each worker allocates once per call, so no pass pays for a fresh allocation.
"""
from __future__ import annotations

import math

import torch

from .masking import key_bounds, queries_per_key, visible
from .stats import AttentionStats

# 8 MiB of float32: larger tiles amortise the ~30 torch calls each costs (measured side by side at 8K/16K
# tokens, 2 threads: 2^21 elements and 128 rows run 17-19 % faster than 2^20 and 32 rows; 2^22 is slower again)
DEFAULT_TILE_ELEMENTS = 1 << 21
ARGMAX_BLOCK = 128
# Query rows a chunk keeps at any N (keys then come in blocks, see _blocked_chunk): GEMMs with
# fewer rows run far below the CPU's rate (9 heads at 16K tokens would leave 7 rows a tile).
MIN_ROWS = 128


def _keys_seen(c0: int, c1: int, n: int, causal: bool, window: int | None) -> int:
    lo, hi = key_bounds(c0, c1, n, causal, window)
    return hi - lo


def chunk_rows(batch_heads: int, n: int, c0: int, causal: bool, window: int | None,
               chunk_size: int | None = None, tile_elements: int | None = None) -> int:
    """Query rows of the chunk starting at row ``c0``: ``chunk_size`` if given, else as many as
    keep ``batch_heads × rows × keys seen`` within ``tile_elements`` (default
    ``DEFAULT_TILE_ELEMENTS``), at least one row."""
    left = n - c0
    if chunk_size is not None:
        return max(1, min(left, int(chunk_size)))
    budget = max(1, (tile_elements or DEFAULT_TILE_ELEMENTS) // max(1, batch_heads))
    lo, hi = 1, left  # rows × keys seen grows with rows: bisect for the largest count that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if mid * _keys_seen(c0, c0 + mid, n, causal, window) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def chunks(batch_heads: int, n: int, causal: bool, window: int | None,
           chunk_size: int | None = None, min_rows: int = 1,
           tile_elements: int | None = None) -> list[tuple[int, int]]:
    """The ``(c0, c1)`` query chunks covering rows 0 .. n-1 (``chunk_rows`` each, at least
    ``min_rows`` unless ``chunk_size`` is given)."""
    plan, c0 = [], 0
    while c0 < n:
        rows = chunk_rows(batch_heads, n, c0, causal, window, chunk_size, tile_elements)
        c1 = c0 + (rows if chunk_size is not None else min(n - c0, max(rows, min_rows)))
        plan.append((c0, c1))
        c0 = c1
    return plan


def key_block(batch_heads: int, rows: int, tile_elements: int | None = None) -> int:
    """Keys per block for a chunk of ``rows`` query rows: as many multiples of ARGMAX_BLOCK as keep
    ``batch_heads × rows × keys`` within ``tile_elements`` (default ``DEFAULT_TILE_ELEMENTS``), at least one."""
    budget = tile_elements or DEFAULT_TILE_ELEMENTS
    return max(ARGMAX_BLOCK, budget // (batch_heads * rows) // ARGMAX_BLOCK * ARGMAX_BLOCK)


def chunk_tiles(batch_heads: int, n: int, plan: list[tuple[int, int]], causal: bool, window: int | None,
                tile_elements: int | None = None, whole_rows: bool = False) -> list[int]:
    """Elements of each chunk's largest score tile: ``batch_heads × rows × min(keys seen, key_block)``
    (``whole_rows``: every key the chunk sees in one block)."""
    tiles = []
    for c0, c1 in plan:
        lo, hi = key_bounds(c0, c1, n, causal, window)
        keys = max(1, hi - lo)
        tiles.append(batch_heads * (c1 - c0) * (keys if whole_rows else min(keys, key_block(batch_heads, c1 - c0, tile_elements))))
    return tiles


def workers(device, n_chunks: int) -> int:
    """How many Python threads share the chunks: torch's intra-op thread count on CPU, 1 elsewhere."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(n_chunks, torch.get_num_threads()))


def run_chunks(plan: list[tuple[int, int]], fn, device) -> None:
    """Call ``fn(c0, c1, worker)`` for every chunk of ``plan``.

    On CPU with T > 1 torch threads, T Python threads take the chunks round-robin (worker w
    gets chunks w, w+T, ...) and run torch single-threaded, like SDPA's CPU kernel, which
    splits its work once over its threads. Thousands of small intra-op parallel regions would
    each wait for every OpenMP thread: on a loaded machine one descheduled thread stalls every
    op (measured: 5x slower at 2 threads on a shared 2-core VM). The static split keeps results
    bitwise reproducible for a given thread count. The thread count is restored afterwards.
    """
    count = workers(device, len(plan))
    if count == 1:
        for c0, c1 in plan:
            fn(c0, c1, 0)
        return
    import threading

    saved = torch.get_num_threads()
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            torch.set_num_threads(1)
            for c0, c1 in plan[worker::count]:
                fn(c0, c1, worker)
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(count)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        torch.set_num_threads(saved)
    if errors:
        raise errors[0]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scores(q_chunk: torch.Tensor, k_range: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled scores ``[B, H_kv, g, C, K]`` from q ``[B, H_kv, g, C, d]`` and k ``[B, H_kv, K, d]``
    (the scale is applied to the small q chunk, not to the tile)."""
    b, hkv, g, c, d = q_chunk.shape
    flat = (q_chunk * scale).reshape(b, hkv, g * c, d)
    return torch.matmul(flat, k_range.transpose(-1, -2)).view(b, hkv, g, c, -1)


def _hidden_band(c0: int, c1: int, lo: int, hi: int, causal: bool, window: int | None, device):
    """Where queries c0..c1-1 do not see keys lo..hi-1, as ``(a, z, hidden)``: only key columns
    a..z-1 (relative to lo) hold hidden pairs and ``hidden`` is their ``[c1-c0, z-a]`` bool mask
    on ``device``, then whether every pair is hidden; None when every pair is visible. Built on
    the CPU so CUDA never syncs."""
    if _all_visible(c0 - (hi - 1), (c1 - 1) - lo, causal, window):
        return None
    mask = visible(torch.arange(c0, c1), torch.arange(lo, hi), causal, window)
    if mask is None:
        return None
    cols = (~mask).any(0).nonzero()
    a, z = int(cols[0]), int(cols[-1]) + 1
    return a, z, (~mask[:, a:z]).to(device, non_blocking=True), not bool(mask.any())


def _all_visible(rel_min: int, rel_max: int, causal: bool, window: int | None) -> bool:
    """Whether every query sees every key of a block whose query − key offsets span rel_min..rel_max."""
    if causal and rel_min < 0:
        return False
    return window is None or max(rel_max, -rel_min) < window


def _fill_hidden(s: torch.Tensor, band, value: float) -> None:
    """Set the hidden pairs of a score tile ``[..., C, K]`` to ``value`` in place."""
    if band is not None:
        a, z, hidden = band[:3]
        s[..., a:z].masked_fill_(hidden, value)


def row_max(s: torch.Tensor, block: int = ARGMAX_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max, argmax)`` over the last dim of ``s``, the lowest index on ties, as ``s.max(-1)``
    gives them: the max of each ``block``-wide key block by ``amax``, then an indexed max over
    the block maxima and over the winning block alone."""
    k = s.shape[-1]
    nb = k // block
    if nb < 2:
        return s.max(-1)
    blocks = s[..., :nb * block].unflatten(-1, (nb, block))
    best, blk = blocks.amax(-1).max(-1)
    inner = blocks.gather(-2, blk[..., None, None].expand(*blk.shape, 1, block)).squeeze(-2)
    m, arg = inner.max(-1)
    arg = arg + blk * block
    if nb * block < k:  # ragged tail: a later key wins only if strictly larger
        tm, ta = s[..., nb * block:].max(-1)
        later = tm > m
        m = torch.where(later, tm, m)
        arg = torch.where(later, ta + nb * block, arg)
    return m, arg


def _forward_chunk(q_chunk, k_range, v_range, ranges, lo, band, scale, scratch=None):
    """Attention of one query chunk over keys ``lo .. lo+K-1``: ``(out, lse, entropy, max_prob,
    argmax, mass)`` with argmax an absolute key index and ``mass[..., r]`` the mass on range r.
    Rows that see no key get out 0, lse -inf, entropy 0, max_prob 0, argmax -1, masses 0.
    ``scratch``: two flat buffers of at least ``B·H·C·K`` elements for the score tile and e."""
    b, hkv, g, c, d = q_chunk.shape
    k = k_range.shape[-2]
    s, e = _tiles(q_chunk, k, scratch)
    torch.matmul((q_chunk * scale).reshape(b, hkv, g * c, d), k_range.transpose(-1, -2), out=s.view(b, hkv, g * c, k))
    _fill_hidden(s, band, -math.inf)
    m, arg = row_max(s)
    ok = m > -math.inf
    s.sub_(torch.where(ok, m, 0.0)[..., None])  # x = s - max <= 0: entropy without cancellation
    torch.exp(s, out=e)
    _fill_hidden(s, band, 0.0)  # e is 0 there; 0·(-inf) would be NaN in Σ e·x
    z = e.sum(-1)  # >= 1 where a key is seen (e = 1 at the max)
    e_x = torch.einsum("...k,...k->...", e, s)  # Σ e·x, without a product tile
    log_z, inv_z = torch.log(z), 1.0 / z
    lse = m + log_z
    entropy = (log_z - e_x * inv_z).clamp_(min=0.0)
    mass = torch.stack([e[..., min(max(a - lo, 0), k):min(max(zz - lo, 0), k)].sum(-1) for a, zz in ranges], -1)
    out = torch.matmul(e.view(b, hkv, g * c, k), v_range).view(b, hkv, g, c, d)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    return (torch.where(ok[..., None], out * inv_z[..., None], zero), torch.where(ok, lse, -math.inf),
            torch.where(ok, entropy, zero), torch.where(ok, inv_z, zero),
            torch.where(ok, arg + lo, -1), torch.where(ok[..., None], mass * inv_z[..., None], zero))


def _tiles(q_chunk: torch.Tensor, k: int, scratch) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ``[B, H_kv, g, C, k]`` tiles (scores, e) in ``scratch``'s buffers, or fresh ones."""
    shape = (*q_chunk.shape[:-1], k)
    if scratch is None:
        return tuple(torch.empty(shape, dtype=q_chunk.dtype, device=q_chunk.device) for _ in range(2))
    n = math.prod(shape)
    return tuple(buf[:n].view(shape) for buf in scratch)


def _merge(acc, part):
    """Combine the results of one chunk over two disjoint key sets (``_forward_chunk`` tuples):
    weights w = exp(lse_part - lse_total) sum to 1 per row; out and masses mix by w; entropy
    of the mixture = Σ w·H_part + H(w) (both terms >= 0); the max goes to the set with the
    larger score max, the earlier set on ties (it holds the lower key indices)."""
    out_a, lse_a, ent_a, pmax_a, arg_a, mass_a = acc
    out_b, lse_b, ent_b, pmax_b, arg_b, mass_b = part
    lse = torch.logaddexp(lse_a, lse_b)
    ref = torch.where(lse > -math.inf, lse, 0.0)
    w_a, w_b = torch.exp(lse_a - ref), torch.exp(lse_b - ref)
    ent = w_a * ent_a + w_b * ent_b - torch.special.xlogy(w_a, w_a) - torch.special.xlogy(w_b, w_b)
    top_a, top_b = w_a * pmax_a, w_b * pmax_b  # each set's largest probability, of the whole row
    later = top_b > top_a
    return (w_a[..., None] * out_a + w_b[..., None] * out_b, lse, ent.clamp_(min=0.0), torch.where(later, top_b, top_a),
            torch.where(later, arg_b, arg_a), w_a[..., None] * mass_a + w_b[..., None] * mass_b)


def _blocked_chunk(q_chunk, k, v, ranges, c0, c1, lo, hi, causal, window, scale, key_block, cd, scratch=None):
    """One query chunk over keys lo..hi-1, ``key_block`` keys at a time (``_forward_chunk``
    each, merged by ``_merge``): at long N the chunk keeps enough query rows for efficient
    GEMMs while every tile stays cache-sized. Key blocks no query of the chunk sees are skipped."""
    result = None
    for j0 in range(lo, hi, key_block):
        j1 = min(hi, j0 + key_block)
        band = _hidden_band(c0, c1, j0, j1, causal, window, q_chunk.device)
        if band is not None and band[3]:
            continue
        part = _forward_chunk(q_chunk, k[:, :, j0:j1].to(cd), v[:, :, j0:j1].to(cd), ranges, j0, band, scale, scratch)
        result = part if result is None else _merge(result, part)
    if result is None:  # no query of the chunk sees any key (window 0: not reachable through the API)
        b, hkv, g, c, d = q_chunk.shape
        rows = torch.zeros((b, hkv, g, c), dtype=cd, device=q_chunk.device)
        result = (torch.zeros_like(q_chunk), rows - math.inf, rows, rows, rows.long() - 1,
                  torch.zeros((b, hkv, g, c, len(ranges)), dtype=cd, device=q_chunk.device))
    return result


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

    plan = chunks(b * h, n, causal, window, chunk_size, min_rows=MIN_ROWS)
    tile = max(chunk_tiles(b * h, n, plan, causal, window, whole_rows=chunk_size is not None))
    scratch: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def one_chunk(c0: int, c1: int, worker: int) -> None:
        if worker not in scratch:  # two tiles per worker thread, reused by every key block it runs
            scratch[worker] = tuple(torch.empty(tile, dtype=cd, device=dev) for _ in range(2))
        lo, hi = key_bounds(c0, c1, n, causal, window)
        block = max(1, hi - lo) if chunk_size is not None else key_block(b * h, c1 - c0)
        res = _blocked_chunk(qg[:, :, :, c0:c1].to(cd), k, v, mass_ranges, c0, c1, lo, hi, causal, window, scale,
                             block, cd, scratch[worker])
        for view, value in zip(views, res):
            view[:, :, :, c0:c1] = value

    run_chunks(plan, one_chunk, dev)
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
    plan = chunks(b * h, n, causal, window, chunk_size)
    partial = [torch.zeros((b, hkv, g, n), dtype=cd, device=dev) for _ in range(workers(dev, len(plan)))]

    def one_chunk(c0: int, c1: int, worker: int) -> None:
        lo, hi = key_bounds(c0, c1, n, causal, window)
        s = _scores(qg[:, :, :, c0:c1].to(cd), k[:, :, lo:hi].to(cd), scale)
        s.sub_(lse_g[:, :, :, c0:c1, None]).exp_()
        _fill_hidden(s, _hidden_band(c0, c1, lo, hi, causal, window, dev), 0.0)
        partial[worker][..., lo:hi] += s.sum(-2)

    run_chunks(plan, one_chunk, dev)
    return received_and_alpha([p.flatten(1, 2) for p in partial], n, causal, window)


def received_and_alpha(partial: list[torch.Tensor], n: int, causal: bool, window: int | None):
    """``(received, alpha)``, float32 ``[B, H, N]``, from the workers' partial sums ``[B, H, N]`` (added in
    their order, so the result is bitwise the same every run) and the number of queries that see each key."""
    total = partial[0].clone()
    for more in partial[1:]:
        total += more
    total = total.to(torch.float32)
    count = queries_per_key(n, causal, window, device=total.device)
    alpha = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    return total, alpha
