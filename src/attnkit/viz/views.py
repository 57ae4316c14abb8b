"""Views of one attention map too large to send or draw whole: a downsampled window of it (the
explorer's zoomable heatmap) and each query's strongest keys (its lines).

A map ``A`` is ``(Lq, Lk)``: query ``q`` puts weight ``A[q, k]`` on key ``k`` (one head, or
the mean of several). Both views are computed where the map lives (the server) and send
O(size²) or O(queries · top_k) numbers, whatever ``Lq · Lk`` is.

* :func:`block_bounds` cuts ``n`` positions into ``m = min(size, n)`` contiguous blocks whose
  lengths differ by at most one: block ``i`` is ``[b_i, b_{i+1})`` with
  ``b_i = start + ⌊i · n / m⌋``.
* :func:`window` reduces ``A[q0:q1, k0:k1]`` to ``R × C`` cells, one per (query block, key
  block): the **max** of the block (a sharp one-token pattern stays visible at any zoom) or
  its **mean** (the block's share of attention per pair). When every block is one pair the
  window is exact: the cells are the weights themselves.
* :func:`top_keys` gives, for each query of ``[q0, q1)``, its ``k`` largest weights and their
  keys, strongest first (keys with zero weight, e.g. masked ones, are left out).

Each has an obviously-correct loop reference in ``tests/viz/test_views.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["REDUCTIONS", "Window", "TopKeys", "block_bounds", "window", "top_keys",
           "check_range"]

REDUCTIONS = ("max", "mean")


def check_range(name: str, span: tuple[int, int] | None, n: int) -> tuple[int, int]:
    """``span`` (default ``(0, n)``) as a valid ``[start, stop)`` inside ``0..n``; ValueError
    naming the span and the valid range otherwise."""
    if span is None:
        return 0, n
    start, stop = span
    if not 0 <= start < stop <= n:
        raise ValueError(f"{name} range [{start}, {stop}) is not inside the {n} positions: "
                         f"need 0 <= start < stop <= {n}")
    return start, stop


def block_bounds(start: int, stop: int, size: int) -> list[int]:
    """Boundaries ``b_0 = start < b_1 < … < b_m = stop`` of ``m = min(size, stop - start)``
    near-equal blocks (module docstring)."""
    n = stop - start
    if n < 1 or size < 1:
        raise ValueError(f"need a non-empty range and size >= 1, got [{start}, {stop}), "
                         f"size {size}")
    m = min(size, n)
    return [start + (i * n) // m for i in range(m + 1)]


def _reduce(x: Tensor, dim: int, bounds: list[int], how: str) -> Tensor:
    """Reduce ``x`` over the blocks of ``bounds`` (relative to ``bounds[0]``) along ``dim``:
    gather each block into a row of ``longest`` slots (short blocks repeat their first
    position, masked out of the mean), then take the max / masked mean of each row."""
    m = len(bounds) - 1
    if m == x.shape[dim]:  # one position per block: nothing to reduce
        return x
    b = torch.tensor(bounds, device=x.device) - bounds[0]
    starts, lengths = b[:-1], b[1:] - b[:-1]  # (m,), (m,)
    slots = torch.arange(int(lengths.max()), device=x.device)
    valid = slots[None, :] < lengths[:, None]  # (m, longest)
    idx = torch.where(valid, starts[:, None] + slots[None, :], starts[:, None])
    g = x.movedim(dim, -1)[..., idx]  # (..., m, longest)
    if how == "max":
        out = g.amax(-1)
    else:
        out = g.masked_fill(~valid, 0).sum(-1) / lengths.to(g.dtype)
    return out.movedim(-1, dim)


@dataclass
class Window:
    """``cells[i][j]`` reduces queries ``rows[i]..rows[i+1]-1`` × keys ``cols[j]..cols[j+1]-1``."""

    cells: Tensor  # (R, C) float32
    rows: list[int]  # R + 1 query block boundaries
    cols: list[int]  # C + 1 key block boundaries
    reduce: str

    @property
    def exact(self) -> bool:
        """Every cell is one (query, key) pair."""
        return (len(self.rows) - 1 == self.rows[-1] - self.rows[0]
                and len(self.cols) - 1 == self.cols[-1] - self.cols[0])


def window(attn: Tensor, q: tuple[int, int] | None = None, k: tuple[int, int] | None = None,
           size: int = 256, reduce: str = "max") -> Window:
    """``attn[q0:q1, k0:k1]`` reduced to at most ``size × size`` cells (module docstring).

    ``attn``: ``(Lq, Lk)`` (any float dtype; reduced in float32), or ``(H, Lq, Lk)``, whose
    mean over heads is taken first (only over the window)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; valid: {list(REDUCTIONS)}")
    if attn.dim() not in (2, 3):
        raise ValueError(f"attention map must be (Lq, Lk) or (heads, Lq, Lk), got "
                         f"{tuple(attn.shape)}")
    lq, lk = attn.shape[-2:]
    q0, q1 = check_range("query", q, lq)
    k0, k1 = check_range("key", k, lk)
    rows, cols = block_bounds(q0, q1, size), block_bounds(k0, k1, size)
    region = attn[..., q0:q1, k0:k1]  # (R', C') or (H, R', C')
    if region.dim() == 3:
        region = region.float().mean(0)
    elif reduce == "mean":
        region = region.float()  # a max is exact in any dtype; a mean sums in float32
    cells = _reduce(_reduce(region, 1, cols, reduce), 0, rows, reduce)
    return Window(cells.float(), rows, cols, reduce)


@dataclass
class TopKeys:
    """``keys[i]`` / ``weights[i]``: the strongest keys of query ``start + i``, by weight."""

    start: int
    keys: list[list[int]]
    weights: list[list[float]]


def top_keys(attn: Tensor, q: tuple[int, int] | None = None, k: int = 8) -> TopKeys:
    """The ``k`` largest weights of each query in ``[q0, q1)`` and their keys (module
    docstring); ``attn`` as in :func:`window`."""
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    lq = attn.shape[-2]
    q0, q1 = check_range("query", q, lq)
    rows = attn[..., q0:q1, :].float()
    if rows.dim() == 3:
        rows = rows.mean(0)
    w, idx = rows.topk(min(k, rows.shape[-1]), dim=-1)  # sorted, strongest first
    keys, weights = [], []
    for wr, ir in zip(w.tolist(), idx.tolist(), strict=True):
        kept = [(i, x) for i, x in zip(ir, wr, strict=True) if x > 0]
        keys.append([i for i, _ in kept])
        weights.append([x for _, x in kept])
    return TopKeys(q0, keys, weights)
