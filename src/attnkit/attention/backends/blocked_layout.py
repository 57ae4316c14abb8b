"""Tile plans for the ``blocked`` backend: which tiles to compute, grouped how, with which
element masks.

A *tile* is a (query block ``i``, key block ``j``) pair of ``q_block × kv_block`` scores. The
pattern's :class:`~attnkit.attention.masks.BlockLayout` says which tiles are non-empty
(``any``) and which need no element mask (``full``). Batch- and head-dependent patterns are
*unioned* over batch and heads: a tile is computed when any (b, h) needs it and is "full" only
when it is full for every (b, h); the element masks of partial tiles keep their (b, h) dims,
so the union is exact. Key positions past ``kv_len`` (padding to whole blocks) are always
masked: the last key block is never "full" when ``kv_len % kv_block != 0``.

Rows and slots
    Each query block ("row") lists its non-empty key blocks. The backend concatenates a row's
    key blocks into one long key axis, so a row's scores are a single ``q_block × (M·kv_block)``
    matrix product (large GEMMs are ~3× faster on CPU than many 64×64 ones) and the sums over
    a row's keys happen inside the matmuls. Rows are grouped into :class:`Chunk` s whose rows
    share a slot count ``M``: rows are sorted by tile count and grouped greedily while the
    padding (empty slots, fully masked) stays within ``_PAD_WASTE`` and the chunk within the
    score budget. Inside a row the slots are ordered [partial tiles, padding, full tiles], so
    the slots that need an element mask are a prefix shared by the chunk.

Bands
    When a chunk's rows are equally spaced and each fits a window of M consecutive key blocks,
    the windows equally spaced too (sliding windows, block-local, causal rows padded to a
    common window), the slots keep key order and the chunk records the band: the backend
    reads Q rows and K/V windows as overlapping strided views, with no gather. The slots that
    need a mask (the window's ragged ends, a row's extra blocks) are runs of slot positions.
    Grouping stops a chunk rather than let it lose its band.

Split rows
    A row with more tiles than fit in the budget (a global token's row, a long causal row) is
    split into *pieces*: virtual rows computed independently and merged afterwards with their
    log-sum-exp weights. ``TilePlan.virtual_rows`` maps each virtual row (in chunk order) to
    its query block.

Plans are cached on the :class:`Mask` (like its block layout) and, for "no mask", in a small
module-level LRU cache.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from attnkit.attention.masks import Mask

__all__ = ["Chunk", "TilePlan", "tile_plan"]

_PAD_WASTE = 0.25  # a chunk may pad its rows with up to 25% extra (masked) slots
_MIN_TILES = 4  # a chunk holds at least this many tiles, whatever the budget says


@dataclass(frozen=True)
class Chunk:
    """Rows computed together, each against ``n_slots`` concatenated key blocks."""

    rows: Tensor  # (R,) long — query block of each row
    kv_blocks: Tensor  # (R·M,) long — key block of each slot, row-major
    n_slots: int  # M
    mask_runs: tuple[tuple[int, int, Tensor], ...]  # (slot a, slot b, masked_out) — see below
    q_pos: Tensor  # (R, bq) long — query positions in key coordinates (clamped into range)
    kv_pos: Tensor  # (R, M·bk) long — key position of every slot column (clamped into range)
    v_start: int  # the chunk's rows are virtual rows [v_start, v_start + R)
    band: tuple[int, int, int] | None  # (row step, first key block, key step) — see below

    # mask_runs: slots [a, b) of every row take the element mask ``masked_out``
    #   (Bm, Hg, R, rep|1, bq, (b - a)·bk) bool, True = not allowed; other slots are full.
    # band: when set, row r is query block rows[0] + r·row_step and its slots are the
    #   consecutive key blocks first + r·key_step + [0, M): the backend reads Q rows and K/V
    #   windows as strided views instead of gathering copies.
    @property
    def n_rows(self) -> int:
        return self.rows.numel()


@dataclass(frozen=True)
class TilePlan:
    """All the tiles of one (pattern, shape, block size), in chunks."""

    q_block: int
    kv_block: int
    q_len: int
    kv_len: int
    n_q: int
    n_kv: int
    n_tiles: int  # non-empty tiles
    n_slots: int  # computed tiles, padding included
    virtual_rows: Tensor  # (nV,) long — query block of each virtual row, in chunk order
    split: bool  # some query block is split over several virtual rows
    chunks: tuple[Chunk, ...]

    @property
    def density(self) -> float:
        """Fraction of all ``n_q × n_kv`` tiles that are computed (padding included)."""
        return self.n_slots / max(1, self.n_q * self.n_kv)


_FULL_PLANS: OrderedDict[tuple, TilePlan] = OrderedDict()  # plans for "no mask", LRU
_FULL_PLANS_MAX = 32


def tile_plan(
    mask: Mask | None,
    *,
    batch: int,
    q_heads: int,
    kv_heads: int,
    q_len: int,
    kv_len: int,
    q_block: int,
    kv_block: int,
    tile_budget: int,
    device: torch.device,
) -> TilePlan:
    """The (cached) tile plan for ``mask`` (None or a "full" Mask = every key allowed).

    ``tile_budget`` bounds the scores a chunk holds, counted over batch × query heads.
    """
    if mask is not None and mask.kind == "full":
        mask = None
    key = ("blocked_plan", batch, q_heads, kv_heads, q_len, kv_len, q_block, kv_block,
           tile_budget, str(device))
    cache = _FULL_PLANS if mask is None else mask._cache
    plan = cache.get(key)
    if plan is None:
        max_tiles = max(_MIN_TILES, tile_budget // max(1, batch * q_heads * q_block * kv_block))
        plan = _build(mask, batch, q_heads, kv_heads, q_len, kv_len, q_block, kv_block,
                      max_tiles, torch.device(device))
        cache[key] = plan
        if mask is None:
            while len(_FULL_PLANS) > _FULL_PLANS_MAX:
                _FULL_PLANS.popitem(last=False)
    elif mask is None:
        _FULL_PLANS.move_to_end(key)
    return plan


def _build(mask: Mask | None, batch: int, q_heads: int, kv_heads: int, q_len: int,
           kv_len: int, bq: int, bk: int, max_tiles: int, device: torch.device) -> TilePlan:
    n_q, n_kv = -(-q_len // bq), -(-kv_len // bk)
    if mask is None:
        any_ = torch.ones(n_q, n_kv, dtype=torch.bool, device=device)
        full_ = any_.clone()
        mb, mh = 1, 1
    else:
        lay = mask.block_layout(q_len, kv_len, q_block=bq, kv_block=bk, batch=batch,
                                heads=q_heads, device=device)
        mb, mh = lay.any.shape[:2]
        any_ = lay.any.any(dim=1).any(dim=0)  # (nQ, nK): union over (b, h)
        full_ = lay.full.all(dim=1).all(dim=0) & any_
    if kv_len % bk and n_kv:
        full_[:, -1] = False  # padded key columns must be masked
    pieces = _pieces(any_.cpu(), full_.cpu(), max_tiles)
    # By piece of row, then tile count (stable: row order kept), so that rows of equal count
    # -- and the second pieces of split rows among themselves -- sit together and form bands.
    pieces.sort(key=lambda p: (p[3], len(p[1])))
    chunks, v_rows, n_slots, v = [], [], 0, 0
    for group in _group(pieces, max_tiles, n_kv):
        chunk = _chunk(group, v, mask, mb, mh, q_heads, kv_heads, q_len, kv_len, bq, bk,
                       n_kv, device)
        chunks.append(chunk)
        v_rows.extend(p[0] for p in group)
        n_slots += chunk.kv_blocks.numel()
        v += len(group)
    return TilePlan(
        bq, bk, q_len, kv_len, n_q, n_kv, int(any_.sum()), n_slots,
        torch.tensor(v_rows, dtype=torch.long, device=device), len(set(v_rows)) < len(v_rows),
        tuple(chunks),
    )


Piece = tuple[int, list[int], list[bool], int]  # (query block, key blocks ascending,
#                                                  is partial, index of the piece in its row)


def _pieces(any_: Tensor, full_: Tensor, max_tiles: int) -> list[Piece]:
    """Each non-empty row's key blocks, split into runs of at most ``max_tiles`` tiles."""
    qi, kj = any_.nonzero(as_tuple=True)  # row-major: by query block, then key block
    partial = (~full_[qi, kj]).tolist()
    qi, kj = qi.tolist(), kj.tolist()
    out: list[Piece] = []
    t, n, piece = 0, len(qi), 0
    while t < n:
        i, start = qi[t], t
        while t < n and qi[t] == i and t - start < max_tiles:
            t += 1
        piece = piece + 1 if out and out[-1][0] == i else 0
        out.append((i, kj[start:t], partial[start:t], piece))
    return out


def _group(pieces: list[Piece], max_tiles: int, n_kv: int) -> list[list[Piece]]:
    """Greedy grouping of count-sorted pieces into chunks of equal slot count: a chunk grows
    while it fits the budget and its padding stays within ``_PAD_WASTE``, and stops rather
    than lose a band (see :func:`_band`)."""
    groups: list[list[Piece]] = []
    cur: list[Piece] = []
    total = 0
    banded = False
    for p in pieces:
        c = len(p[1])
        rows = len(cur) + 1
        cut = bool(cur) and (rows * c > max_tiles or rows * c > (1 + _PAD_WASTE) * (total + c))
        if cur and not cut and banded:
            banded = _band(cur + [p], c, n_kv) is not None
            cut = not banded
        if cut or not cur:
            if cur:
                groups.append(cur)
            cur, total = [], 0
            banded = _band([p], c, n_kv) is not None
        cur.append(p)
        total += c
    if cur:
        groups.append(cur)
    return groups


def _band(group: list[Piece], M: int, n_kv: int) -> tuple[int, int, int] | None:
    """(row step, first key block, key step) when the group's rows fit a band: equally spaced
    rows whose tiles lie inside windows of M consecutive key blocks, the windows equally
    spaced (a row's extra window blocks are computed fully masked); else None."""
    R = len(group)
    rows = [i for i, *_ in group]
    lo = [t[0] for _, t, *_ in group]
    hi = [t[-1] for _, t, *_ in group]
    dr = rows[1] - rows[0] if R > 1 else 1
    if dr <= 0 or any(rows[r] - rows[0] != r * dr for r in range(R)):
        return None
    steps = {0} if R == 1 else {lo[1] - lo[0], hi[1] - hi[0], 0}
    for ds in sorted(d for d in steps if d >= 0):
        s0 = min(min(lo[r] - r * ds for r in range(R)), n_kv - M - (R - 1) * ds)
        if s0 >= max(0, max(hi[r] - M + 1 - r * ds for r in range(R))):
            return (dr, s0, ds)
    return None


def _runs(slots: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct slot indices -> maximal runs [a, b)."""
    runs: list[tuple[int, int]] = []
    for s in slots:
        if runs and runs[-1][1] == s:
            runs[-1] = (runs[-1][0], s + 1)
        else:
            runs.append((s, s + 1))
    return runs


def _chunk(group: list[Piece], v_start: int, mask: Mask | None, mb: int, mh: int,
           q_heads: int, kv_heads: int, q_len: int, kv_len: int, bq: int, bk: int,
           n_kv: int, device: torch.device) -> Chunk:
    M = max(len(t) for _, t, *_ in group)
    band = _band(group, M, n_kv)
    if band is not None:  # keys in order; mask the slots partial (or extra) in some row
        _, s0, ds = band
        slots = [list(range(s0 + r * ds, s0 + r * ds + M)) for r in range(len(group))]
        need = set()
        for (_, tiles, part, _), row in zip(group, slots, strict=True):
            is_partial = dict(zip(tiles, part, strict=True))
            need.update(t for t, j in enumerate(row) if is_partial.get(j, True))
        need = sorted(need)
    else:  # per row: partial tiles, padding (-1, fully masked), full tiles
        slots = [[j for j, p in zip(t, part, strict=True) if p] + [-1] * (M - len(t))
                 + [j for j, p in zip(t, part, strict=True) if not p] for _, t, part, _ in group]
        need = list(range(max(M - part.count(False) for _, _, part, _ in group)))
    R = len(group)
    rows = torch.tensor([i for i, *_ in group], dtype=torch.long, device=device)
    kvb = torch.tensor(slots, dtype=torch.long, device=device)  # (R, M), -1 = padding
    ar_q = torch.arange(bq, device=device)
    ar_k = torch.arange(bk, device=device)
    q_pos = (rows[:, None] * bq + ar_q).clamp(max=q_len - 1) + (kv_len - q_len)  # (R, bq)
    kv_raw = (kvb.clamp(min=0)[:, :, None] * bk + ar_k).view(R, M * bk)  # (R, M·bk)
    kv_pos = kv_raw.clamp(max=kv_len - 1)
    valid = (kv_raw < kv_len) & (kvb >= 0).repeat_interleave(bk, dim=1)
    runs = []
    for a, b in _runs(need):
        cols = slice(a * bk, b * bk)
        allowed = _allowed(mask, mb, mh, q_pos, kv_pos[:, cols], valid[:, cols], q_heads,
                           kv_heads)
        runs.append((a, b, ~allowed))
    return Chunk(rows, kvb.clamp(min=0).view(-1), M, tuple(runs), q_pos, kv_pos, v_start,
                 band)


def _allowed(mask: Mask | None, mb: int, mh: int, q_pos: Tensor, kv_pos: Tensor,
             kv_valid: Tensor, q_heads: int, kv_heads: int) -> Tensor:
    """Element masks of a chunk's masked slots: ``(Bm, Hg, R, rep|1, bq, W)``, True = allowed.

    Head-dependent masks are grouped like the scores: query head ``g·rep + r`` sits at
    ``[:, g, :, r]`` (``rep = q_heads / kv_heads``); others keep size-1 head dims.
    """
    R, bq = q_pos.shape
    W = kv_pos.shape[1]
    dev = q_pos.device
    valid = kv_valid.view(1, 1, R, 1, W)
    if mask is None:
        ok = valid.expand(1, 1, R, bq, W)
    else:
        b = torch.arange(mb, device=dev).view(-1, 1, 1, 1, 1)
        h = torch.arange(mh, device=dev).view(1, -1, 1, 1, 1)
        ok = mask.fn(b, h, q_pos.view(1, 1, R, bq, 1), kv_pos.view(1, 1, R, 1, W)) & valid
        ok = ok.expand(mb, mh, R, bq, W)
    if mh > 1:  # (Bm, Hq, R, bq, W) -> (Bm, Hkv, R, rep, bq, W)
        rep = q_heads // kv_heads
        return ok.reshape(mb, kv_heads, rep, R, bq, W).transpose(2, 3).contiguous()
    return ok.reshape(ok.shape[0], 1, R, 1, bq, W).contiguous()
