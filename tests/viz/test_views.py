"""Server-side views of large attention maps against loop references: the downsampled window
(max / mean of each block) and each query's strongest keys."""

from __future__ import annotations

import pytest
import torch

from attnkit.viz.views import block_bounds, top_keys, window


def causal_softmax(lq: int, lk: int, heads: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (lq, lk) if heads is None else (heads, lq, lk)
    scores = torch.randn(shape, generator=g) * 3
    keep = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
    return scores.masked_fill(~keep, float("-inf")).softmax(-1)


def reference_window(a: torch.Tensor, q, k, size: int, reduce: str) -> torch.Tensor:
    """One block at a time, in float64, with block edges from the formula."""
    a = a.double()
    if a.dim() == 3:
        a = a.mean(0)

    def edges(start, stop):
        n = stop - start
        m = min(size, n)
        return [start + (i * n) // m for i in range(m + 1)]

    rows, cols = edges(*q), edges(*k)
    out = torch.empty(len(rows) - 1, len(cols) - 1, dtype=torch.float64)
    for i in range(len(rows) - 1):
        for j in range(len(cols) - 1):
            block = a[rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
            out[i, j] = block.max() if reduce == "max" else block.mean()
    return out


@pytest.mark.parametrize("n, size", [(1, 1), (7, 3), (10, 10), (10, 4), (4096, 256), (4097, 256),
                                     (1000, 7), (5, 100)])
def test_block_bounds(n, size):
    b = block_bounds(3, 3 + n, size)
    assert b[0] == 3 and b[-1] == 3 + n and len(b) == min(size, n) + 1
    lengths = [y - x for x, y in zip(b, b[1:], strict=False)]
    assert min(lengths) >= 1 and max(lengths) - min(lengths) <= 1


def test_block_bounds_errors():
    with pytest.raises(ValueError, match="non-empty range"):
        block_bounds(5, 5, 4)
    with pytest.raises(ValueError, match="size >= 1"):
        block_bounds(0, 5, 0)


@pytest.mark.parametrize("reduce", ["max", "mean"])
@pytest.mark.parametrize("q, k, size", [((0, 37), (0, 53), 5), ((3, 30), (10, 53), 16),
                                        ((0, 37), (0, 53), 1), ((20, 21), (0, 53), 8),
                                        ((0, 37), (0, 53), 36), ((5, 9), (40, 44), 256)])
def test_window_matches_the_block_loop(reduce, q, k, size):
    a = causal_softmax(37, 53)
    w = window(a, q, k, size=size, reduce=reduce)
    want = reference_window(a, q, k, size, reduce)
    assert w.cells.dtype == torch.float32 and tuple(w.cells.shape) == tuple(want.shape)
    torch.testing.assert_close(w.cells.double(), want, rtol=1e-6, atol=1e-7)
    assert w.rows[0] == q[0] and w.rows[-1] == q[1] and w.cols[0] == k[0] and w.cols[-1] == k[1]
    assert w.reduce == reduce


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_window_of_heads_is_the_window_of_their_mean(reduce):
    a = causal_softmax(40, 40, heads=3)
    w = window(a, (4, 40), (0, 33), size=6, reduce=reduce)
    torch.testing.assert_close(w.cells.double(), reference_window(a, (4, 40), (0, 33), 6, reduce),
                               rtol=1e-6, atol=1e-7)


def test_window_of_float16_maps():
    a = causal_softmax(64, 64)
    for reduce in ("max", "mean"):
        w = window(a.half(), size=8, reduce=reduce)
        torch.testing.assert_close(w.cells.double(), reference_window(a, (0, 64), (0, 64), 8,
                                                                      reduce),
                                   rtol=2e-3, atol=1e-4)


def test_a_small_enough_window_is_exact():
    a = causal_softmax(50, 50)
    w = window(a, (10, 30), (0, 25), size=64)
    assert w.exact and w.rows == list(range(10, 31)) and w.cols == list(range(26))
    assert torch.equal(w.cells, a[10:30, 0:25])
    assert not window(a, (10, 30), (0, 25), size=10).exact


def test_mean_cells_keep_the_attention_mass():
    """Each row of A sums to 1, so a query block's mean cells, weighted by key block width,
    sum to 1 as well."""
    a = causal_softmax(100, 100)
    w = window(a, size=9, reduce="mean")
    widths = torch.tensor([y - x for x, y in zip(w.cols, w.cols[1:], strict=False)],
                          dtype=torch.float32)
    torch.testing.assert_close(w.cells @ widths, torch.ones(9), rtol=1e-5, atol=1e-5)


def test_window_errors():
    a = causal_softmax(10, 12)
    with pytest.raises(ValueError, match=r"query range \[0, 11\) is not inside the 10"):
        window(a, (0, 11))
    with pytest.raises(ValueError, match=r"key range \[5, 5\)"):
        window(a, None, (5, 5))
    with pytest.raises(ValueError, match="unknown reduce 'sum'"):
        window(a, reduce="sum")
    with pytest.raises(ValueError, match=r"\(Lq, Lk\) or \(heads, Lq, Lk\)"):
        window(a[0])


def reference_top(a: torch.Tensor, q: int, k: int) -> tuple[list[int], list[float]]:
    row = a[q].tolist() if a.dim() == 2 else a[:, q].double().mean(0).tolist()
    order = sorted(range(len(row)), key=lambda j: -row[j])[:k]
    order = [j for j in order if row[j] > 0]
    return order, [row[j] for j in order]


@pytest.mark.parametrize("heads", [None, 4])
def test_top_keys_match_sorting(heads):
    a = causal_softmax(30, 30, heads=heads)
    top = top_keys(a, (0, 30), k=5)
    assert top.start == 0 and len(top.keys) == 30
    for q in range(30):
        keys, weights = reference_top(a, q, 5)
        assert top.keys[q] == keys
        assert top.weights[q] == pytest.approx(weights, rel=1e-6)
    # masked keys (weight 0) are never listed: query 0 of a causal map sees key 0 only
    assert top.keys[0] == [0] and top.weights[0] == pytest.approx([1.0])
    assert all(k <= q for q, keys in enumerate(top.keys) for k in keys)


def test_top_keys_of_a_query_range_and_errors():
    a = causal_softmax(20, 20)
    top = top_keys(a, (12, 15), k=50)
    assert top.start == 12 and [len(k) for k in top.keys] == [13, 14, 15]
    with pytest.raises(ValueError, match=r"query range \[15, 25\)"):
        top_keys(a, (15, 25))
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        top_keys(a, (0, 1), k=0)
