"""Mask patterns against independent brute-force definitions.

Every reference below is a plain Python loop over (query row i, key j) written from the papers'
definitions, *not* from the tensor predicates in ``attnkit.attention.masks``. Query rows are
mapped to key coordinates as ``p = i + (Lk - Lq)`` (bottom-right alignment).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from attnkit.attention import masks
from attnkit.attention.masks import Mask

# (Lq, Lk): square, decode-style, one row, and Lq > Lk (the first Lq - Lk query rows sit at
# negative key positions, before the first key)
SHAPES = [(13, 13), (5, 13), (1, 13), (16, 16), (18, 13)]


def brute(pred, Lq: int, Lk: int, batch: int = 1) -> torch.Tensor:
    """(batch, Lq, Lk) bool from ``pred(b, p, j)`` with p the query row in key coordinates."""
    out = torch.zeros(batch, Lq, Lk, dtype=torch.bool)
    for b in range(batch):
        for i in range(Lq):
            p = i + (Lk - Lq)
            for j in range(Lk):
                out[b, i, j] = bool(pred(b, p, j))
    return out


def dense3(m: Mask, Lq: int, Lk: int, batch: int = 1) -> torch.Tensor:
    """``m.dense`` as (batch, Lq, Lk) (the pattern does not depend on the head)."""
    d = m.dense(Lq, Lk, batch=batch, heads=3)
    assert d.dtype == torch.bool
    assert d.shape[-2:] == (Lq, Lk)
    assert d.shape[1] in (1, 3)
    return d[:, 0].expand(batch, Lq, Lk)


# ---- reference definitions (papers) ---------------------------------------------------------


def ref_strided(l: int):
    """Child et al. 2019, sec. 4.3: A(1)_i = {t..i}, t = max(0, i-l); A(2)_i = {j: (i-j) mod l = 0};
    autoregressive, so only j <= i."""

    def pred(b, i, j):
        if j > i:
            return False
        a1 = max(0, i - l) <= j <= i
        a2 = (i - j) % l == 0
        return a1 or a2

    return pred


def ref_fixed(l: int, c: int):
    """Child et al. 2019: A(1)_i = {j: floor(j/l) = floor(i/l)}, A(2)_i = {j: j mod l in
    {l-c, ..., l-1}} (the last c cells of every block); autoregressive."""

    def pred(b, i, j):
        if j > i:
            return False
        return (j // l == i // l) or (j % l in range(l - c, l))

    return pred


def ref_window(left: int, right: int):
    """Longformer sliding window: keys i-left .. i+right."""
    return lambda b, i, j: j in range(i - left, i + right + 1)


def ref_dilated(left: int, right: int, d: int):
    """Longformer dilated window: keys i + k*d for k in [-left, right]."""
    return lambda b, i, j: j in {i + k * d for k in range(-left, right + 1)}


def ref_global(G: set[int]):
    """Longformer global attention: global tokens see all and are seen by all."""
    return lambda b, i, j: i in G or j in G


# ---- constructors vs brute force ----------------------------------------------------------


CASES = {
    "full": (lambda: masks.full(), lambda b, i, j: True),
    "causal": (lambda: masks.causal(), lambda b, i, j: j <= i),
    "window(3,0)": (lambda: masks.sliding_window(3), ref_window(3, 0)),
    "window(2,2)": (lambda: masks.sliding_window(2, 2), ref_window(2, 2)),
    "window(0,0)": (lambda: masks.sliding_window(0, 0), ref_window(0, 0)),
    "window(1,4)": (lambda: masks.sliding_window(1, 4), ref_window(1, 4)),
    "dilated(2,2,d2)": (lambda: masks.dilated_window(2, 2, 2), ref_dilated(2, 2, 2)),
    "dilated(3,0,d3)": (lambda: masks.dilated_window(3, 0, 3), ref_dilated(3, 0, 3)),
    "dilated(1,1,d1)": (lambda: masks.dilated_window(1, 1, 1), ref_dilated(1, 1, 1)),
    "strided(1)": (lambda: masks.strided(1), ref_strided(1)),
    "strided(3)": (lambda: masks.strided(3), ref_strided(3)),
    "strided(4)": (lambda: masks.strided(4), ref_strided(4)),
    "fixed(4,1)": (lambda: masks.fixed(4), ref_fixed(4, 1)),
    "fixed(4,2)": (lambda: masks.fixed(4, 2), ref_fixed(4, 2)),
    "fixed(5,5)": (lambda: masks.fixed(5, 5), ref_fixed(5, 5)),
    "global([0,7])": (lambda: masks.global_tokens([0, 7]), ref_global({0, 7})),
    "global(t[3])": (lambda: masks.global_tokens(torch.tensor([3])), ref_global({3})),
    "global(len)": (lambda: masks.global_tokens([2], length=20), ref_global({2})),
    "global(far)": (lambda: masks.global_tokens([11, 40]), ref_global({11, 40})),
    "block_local(4)": (lambda: masks.block_local(4), lambda b, i, j: i // 4 == j // 4),
    "block_local(1)": (lambda: masks.block_local(1), lambda b, i, j: i == j),
    "window|global": (
        lambda: masks.sliding_window(2, 2) | masks.global_tokens([0, 5]),
        lambda b, i, j: ref_window(2, 2)(b, i, j) or ref_global({0, 5})(b, i, j),
    ),
}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(CASES))
def test_pattern_matches_brute_force(name, shape):
    make, ref = CASES[name]
    Lq, Lk = shape
    m = make()
    assert isinstance(m, Mask)
    torch.testing.assert_close(dense3(m, Lq, Lk), brute(ref, Lq, Lk), rtol=0, atol=0)


def test_kinds_are_recognisable():
    assert masks.full().kind == "full"
    assert masks.causal().kind == "causal"
    assert masks.sliding_window(2).kind == "custom"
    # combining drops the native kind: the result is a generic pattern
    assert (masks.causal() & masks.full()).kind == "custom"


def test_sliding_window_zero_right_is_causal_window():
    """sliding_window(w, 0) == causal & window of w+1 keys (Mistral-style)."""
    m = masks.sliding_window(3, 0)
    d = dense3(m, 10, 10)[0]
    assert torch.equal(d.sum(-1), torch.tensor([1, 2, 3, 4, 4, 4, 4, 4, 4, 4]))
    assert not torch.triu(d, diagonal=1).any()


def test_strided_matches_two_head_factorisation_union():
    """The strided pattern's union covers the full causal matrix in two hops (paper's claim):
    every j <= i is reachable as i -> k -> j with both hops allowed."""
    L, s = 16, 4
    d = dense3(masks.strided(s), L, L)[0].int()
    two_hop = (d @ d) > 0
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    assert torch.equal(two_hop, causal)


def test_fixed_two_hop_covers_causal():
    L, s = 16, 4
    d = dense3(masks.fixed(s), L, L)[0].int()
    assert torch.equal((d @ d) > 0, torch.ones(L, L, dtype=torch.bool).tril())


# ---- padding / document / from_dense (batch-dependent) ------------------------------------


@pytest.mark.parametrize("shape", [(7, 7), (3, 7)])
def test_padding_lengths(shape):
    Lq, Lk = shape
    lengths = [7, 0, 3]
    m = masks.padding(lengths)
    assert m.batch_dependent and m.batch_size == 3
    want = brute(lambda b, i, j: j < lengths[b], Lq, Lk, batch=3)
    got = m.dense(Lq, Lk, batch=3, heads=2)
    assert got.shape == (3, 1, Lq, Lk)
    assert torch.equal(got[:, 0], want)
    # tensor lengths behave the same
    assert torch.equal(masks.padding(torch.tensor(lengths)).dense(Lq, Lk, batch=3)[:, 0], want)


@pytest.mark.parametrize("shape", [(6, 6), (2, 6)])
def test_padding_key_mask(shape):
    Lq, Lk = shape
    km = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    m = masks.padding(key_mask=km)
    assert m.batch_size == 2
    want = brute(lambda b, i, j: bool(km[b, j]), Lq, Lk, batch=2)
    assert torch.equal(m.dense(Lq, Lk, batch=2)[:, 0], want)


@pytest.mark.parametrize("shape", [(9, 9), (4, 9), (12, 9)])
def test_document(shape):
    Lq, Lk = shape
    ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [5, 5, 5, 5, 5, 5, 5, 5, 5]])
    m = masks.document(ids)
    assert m.batch_size == 2
    # a query before the first key (i < 0 when Lq > Lk) belongs to no document
    same = lambda b, i, j: i >= 0 and bool(ids[b, i] == ids[b, j])  # noqa: E731
    want = brute(same, Lq, Lk, batch=2)
    assert torch.equal(m.dense(Lq, Lk, batch=2)[:, 0], want)
    # packed causal: causal within each document
    mc = m & masks.causal()
    want_c = brute(lambda b, i, j: same(b, i, j) and j <= i, Lq, Lk, batch=2)
    assert torch.equal(mc.dense(Lq, Lk, batch=2)[:, 0], want_c)


@pytest.mark.parametrize("shape", [(5, 5), (3, 8)])
def test_from_dense_roundtrip(shape):
    Lq, Lk = shape
    g = torch.Generator().manual_seed(1)
    raw = torch.rand(2, 3, Lq, Lk, generator=g) > 0.5
    m = masks.from_dense(raw)
    assert m.batch_dependent and m.head_dependent and m.batch_size == 2
    assert torch.equal(m.dense(Lq, Lk, batch=2, heads=3), raw)
    # broadcast dims (1, 1, Lq, Lk) stay size 1
    one = masks.from_dense(raw[:1, :1])
    assert not one.batch_dependent and one.batch_size is None
    assert torch.equal(one.dense(Lq, Lk, batch=2, heads=3), raw[:1, :1])


# ---- BigBird ------------------------------------------------------------------------------


def _tiles(d: torch.Tensor, s: int) -> torch.Tensor:
    """Brute-force block reduction of an (L, L) matrix with L divisible by s: which tiles are set,
    asserting every tile is uniformly on or off (BigBird is a block pattern)."""
    n = d.shape[0] // s
    t = torch.zeros(n, n, dtype=torch.bool)
    for a in range(n):
        for c in range(n):
            tile = d[a * s:(a + 1) * s, c * s:(c + 1) * s]
            assert bool(tile.all()) or not bool(tile.any()), f"tile ({a},{c}) is partial"
            t[a, c] = bool(tile.any())
    return t


@pytest.mark.parametrize("w,g,r", [(1, 1, 2), (0, 2, 1), (1, 0, 0), (2, 1, 3)])
def test_bigbird_structure(w, g, r):
    s, nb = 4, 8
    L = s * nb
    m = masks.bigbird(s, window_blocks=w, global_blocks=g, random_blocks=r, num_blocks=nb, seed=3)
    t = _tiles(dense3(m, L, L)[0], s)
    base = torch.zeros(nb, nb, dtype=torch.bool)  # window + global blocks, from the paper
    for a in range(nb):
        for c in range(nb):
            base[a, c] = abs(a - c) <= w or a < g or c < g
    assert torch.equal(t & base, base), "window/global blocks must always be present"
    extra = t & ~base
    # each query block gets at most r extra (random) key blocks; global rows have none extra
    assert (extra.sum(-1) <= r).all()
    if r == 0:
        assert torch.equal(t, base)


def test_bigbird_random_blocks_present_and_seeded():
    s, nb = 2, 16
    L = s * nb
    kw = dict(window_blocks=0, global_blocks=0, random_blocks=3, num_blocks=nb)
    a = dense3(masks.bigbird(s, seed=7, **kw), L, L)[0]
    a2 = dense3(masks.bigbird(s, seed=7, **kw), L, L)[0]
    b = dense3(masks.bigbird(s, seed=8, **kw), L, L)[0]
    assert torch.equal(a, a2), "same seed must give the same mask"
    assert not torch.equal(a, b), "different seeds must give different masks"
    t = _tiles(a, s)
    diag = torch.eye(nb, dtype=torch.bool)
    # exactly r random blocks drawn per row (distinct); the diagonal window may overlap one
    n_extra = (t & ~diag).sum(-1)
    assert ((n_extra == 3) | (n_extra == 2)).all()
    # the draw does not depend on the global torch RNG
    torch.manual_seed(123)
    assert torch.equal(dense3(masks.bigbird(s, seed=7, **kw), L, L)[0], a)


def test_bigbird_decode_alignment():
    """Lq < Lk rows are the last rows of the full square pattern."""
    m = masks.bigbird(4, num_blocks=5, seed=1)
    full_sq = dense3(m, 20, 20)[0]
    assert torch.equal(dense3(m, 6, 20)[0], full_sq[-6:])


# ---- combinators -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(10, 10), (4, 10)])
def test_combinators(shape):
    Lq, Lk = shape
    w = masks.sliding_window(2, 1)
    c = masks.causal()
    g = masks.global_tokens([1])
    rw, rc, rg = ref_window(2, 1), (lambda b, i, j: j <= i), ref_global({1})
    checks = [
        (w & c, lambda b, i, j: rw(b, i, j) and rc(b, i, j)),
        (w | g, lambda b, i, j: rw(b, i, j) or rg(b, i, j)),
        (~c, lambda b, i, j: not rc(b, i, j)),
        (~(w | g) & c, lambda b, i, j: not (rw(b, i, j) or rg(b, i, j)) and rc(b, i, j)),
        (~~w, rw),
        ((w & c) | (g & ~c),
         lambda b, i, j: (rw(b, i, j) and rc(b, i, j)) or (rg(b, i, j) and not rc(b, i, j))),
    ]
    for m, ref in checks:
        assert torch.equal(dense3(m, Lq, Lk), brute(ref, Lq, Lk)), m.name


def test_combinators_keep_batch_metadata():
    p = masks.padding([3, 1])
    m = masks.causal() & p
    assert m.batch_dependent and m.batch_size == 2
    assert (~p).batch_size == 2
    assert (p | masks.full()).batch_dependent
    want = brute(lambda b, i, j: j <= i and j < [3, 1][b], 4, 4, batch=2)
    assert torch.equal(m.dense(4, 4, batch=2)[:, 0], want)
    with pytest.raises(ValueError, match="batch"):
        masks.padding([1, 2]) & masks.padding([1, 2, 3])
    with pytest.raises(TypeError, match="Mask"):
        masks.causal() & torch.ones(3, 3, dtype=torch.bool)


def test_head_dependent_combination_keeps_heads():
    raw = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    raw[0, 1] = True
    m = masks.from_dense(raw) | masks.causal()
    assert m.head_dependent
    d = m.dense(4, 4, heads=2)
    assert d.shape == (1, 2, 4, 4)
    assert torch.equal(d[0, 0], torch.ones(4, 4, dtype=torch.bool).tril())
    assert d[0, 1].all()


# ---- alignment and slicing ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [masks.causal, lambda: masks.sliding_window(3, 1), lambda: masks.strided(3),
     lambda: masks.fixed(4, 2), lambda: masks.global_tokens([2, 9]),
     lambda: masks.dilated_window(2, 1, 2), lambda: masks.block_local(3)],
)
def test_short_queries_are_last_rows_of_square(make):
    """Lq < Lk: the queries are the last Lq positions (bottom-right alignment)."""
    m = make()
    sq = m.dense(12, 12)
    for lq in (1, 5, 12):
        assert torch.equal(m.dense(lq, 12), sq[..., 12 - lq:, :])


def test_causal_bottom_right_explicit():
    d = masks.causal().dense(2, 5)[0, 0]
    want = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(d, want)
    # a single decode step sees the whole cache
    assert masks.causal().dense(1, 7).all()


@pytest.mark.parametrize("start,stop", [(0, 3), (2, 7), (5, 9), (8, 9), (0, 9)])
@pytest.mark.parametrize("Lk", [9, 14])
def test_dense_slicing(start, stop, Lk):
    Lq = 9
    m = masks.sliding_window(2, 3) | masks.global_tokens([4]) | masks.padding([Lk, 5])
    whole = m.dense(Lq, Lk, batch=2)
    part = m.dense(Lq, Lk, batch=2, q_start=start, q_stop=stop)
    assert part.shape == (2, 1, stop - start, Lk)
    assert torch.equal(part, whole[:, :, start:stop])


# ---- block layouts -----------------------------------------------------------------------


def brute_layout(d: torch.Tensor, qb: int, kb: int):
    """Tile reduction of a (B, H, Lq, Lk) bool matrix: ``any`` = some in-range pair allowed,
    ``full`` = every in-range pair allowed (and at least one)."""
    B, H, Lq, Lk = d.shape
    nq, nk = -(-Lq // qb), -(-Lk // kb)
    a = torch.zeros(B, H, nq, nk, dtype=torch.bool)
    f = torch.zeros_like(a)
    for b, h, i, j in itertools.product(range(B), range(H), range(nq), range(nk)):
        tile = d[b, h, i * qb:min(Lq, (i + 1) * qb), j * kb:min(Lk, (j + 1) * kb)]
        a[b, h, i, j] = bool(tile.any())
        f[b, h, i, j] = bool(tile.all()) and tile.numel() > 0
    return a, f


LAYOUT_MASKS = {
    "causal": lambda: masks.causal(),
    "window": lambda: masks.sliding_window(5, 2),
    "strided": lambda: masks.strided(4),
    "win|global": lambda: masks.sliding_window(3, 3) | masks.global_tokens([0, 17]),
    "bigbird": lambda: masks.bigbird(4, num_blocks=7, seed=2),
    "padding": lambda: masks.padding([25, 0, 9]),
    "document": lambda: masks.document(torch.tensor([[0] * 10 + [1] * 15] * 3)),
}


def _layout_mask(name: str, Lq: int, Lk: int) -> Mask:
    if name == "from_dense":  # only valid for the shape it was built for
        g = torch.Generator().manual_seed(5)
        return masks.from_dense(torch.rand(1, 2, Lq, Lk, generator=g) > 0.8)
    return LAYOUT_MASKS[name]()


@pytest.mark.parametrize("blocks", [(8, 8), (4, 8), (7, 5), (32, 32)], ids=str)
@pytest.mark.parametrize("shape", [(25, 25), (10, 25)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", [*LAYOUT_MASKS, "from_dense"])
def test_block_layout_brute_force(name, shape, blocks):
    Lq, Lk = shape
    qb, kb = blocks
    m = _layout_mask(name, Lq, Lk)
    lay = m.block_layout(Lq, Lk, q_block=qb, kv_block=kb, batch=3, heads=2)
    d = m.dense(Lq, Lk, batch=3, heads=2)
    a, f = brute_layout(d, qb, kb)
    assert lay.any.shape == a.shape and lay.full.shape == f.shape
    assert torch.equal(lay.any, a)
    assert torch.equal(lay.full, f)
    assert (lay.q_block, lay.kv_block, lay.q_len, lay.kv_len) == (qb, kb, Lq, Lk)
    assert lay.density == pytest.approx(a.float().mean().item())
    assert not (lay.full & ~lay.any).any()


def test_block_layout_cached_and_banded():
    m = masks.sliding_window(16)
    a = m.block_layout(300, 300, q_block=32, kv_block=32)
    assert m.block_layout(300, 300, q_block=32, kv_block=32) is a
    b = m.block_layout(300, 300, q_block=64, kv_block=32)
    assert b is not a
    # a large shape exercises the query-band loop (several bands) and must match brute force
    L = 2100
    lay = masks.sliding_window(100).block_layout(L, L, q_block=128, kv_block=128)
    nq = -(-L // 128)
    want = torch.zeros(nq, nq, dtype=torch.bool)
    for i in range(nq):
        for j in range(nq):
            q0, q1 = i * 128, min(L, (i + 1) * 128) - 1
            k0, k1 = j * 128, min(L, (j + 1) * 128) - 1
            # some (q, k) with q-100 <= k <= q  in the tile  <=>  intervals overlap
            want[i, j] = k0 <= q1 and k1 >= q0 - 100
    assert torch.equal(lay.any[0, 0], want)


def test_block_layout_density_sparse_window():
    lay = masks.sliding_window(64).block_layout(2048, 2048)
    assert lay.density < 0.15
    assert masks.full().block_layout(300, 300).density == 1.0


# ---- FlexAttention BlockMask -------------------------------------------------------------


@pytest.mark.parametrize("shape", [(24, 24), (10, 24)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", [*LAYOUT_MASKS, "from_dense"])
def test_block_mask_matches_dense(name, shape):
    from torch.nn.attention.flex_attention import create_mask

    Lq, Lk = shape
    m = _layout_mask(name, Lq, Lk)
    B, H = 3, 2
    bm = m.block_mask(Lq, Lk, batch=B, heads=H, block_size=8)
    nb, nh = (B if m.batch_dependent else 1), (H if m.head_dependent else 1)
    elem = create_mask(bm.mask_mod, nb, nh, Lq, Lk, device="cpu")
    assert torch.equal(elem, m.dense(Lq, Lk, batch=B, heads=H))
    # the block-level view agrees with block_layout().any
    lay = m.block_layout(Lq, Lk, q_block=8, kv_block=8, batch=B, heads=H)
    assert torch.equal(bm.to_dense().bool(), lay.any.expand_as(bm.to_dense()))
    assert m.block_mask(Lq, Lk, batch=B, heads=H, block_size=8) is bm


def test_block_mask_drives_flex_like_dense():
    """flex_attention with the BlockMask equals a dense masked softmax."""
    from torch.nn.attention.flex_attention import flex_attention

    m = masks.sliding_window(3, 1) | masks.global_tokens([0])
    Lq, Lk, D = 10, 24, 8
    q, k, v = torch.randn(1, 2, Lq, D), torch.randn(1, 2, Lk, D), torch.randn(1, 2, Lk, D)
    out = flex_attention(q, k, v, block_mask=m.block_mask(Lq, Lk, block_size=8))
    s = (q @ k.transpose(-1, -2)) / D**0.5
    s = s.masked_fill(~m.dense(Lq, Lk), float("-inf"))
    torch.testing.assert_close(out, s.softmax(-1) @ v, atol=1e-5, rtol=1e-5)


# ---- bad arguments -----------------------------------------------------------------------


BAD = [
    (lambda: masks.sliding_window(-1), "left"),
    (lambda: masks.sliding_window(2, -1), "right"),
    (lambda: masks.sliding_window(1.5), "left"),
    (lambda: masks.sliding_window(True), "left"),
    (lambda: masks.dilated_window(2, 2, 0), "dilation"),
    (lambda: masks.dilated_window(-2), "left"),
    (lambda: masks.strided(0), "stride"),
    (lambda: masks.strided(-3), "stride"),
    (lambda: masks.fixed(0), "stride"),
    (lambda: masks.fixed(4, 0), "summary"),
    (lambda: masks.fixed(2, 3), "summary"),
    (lambda: masks.global_tokens([]), "global_tokens"),
    (lambda: masks.global_tokens([-1, 2]), "global token"),
    (lambda: masks.block_local(0), "block_size"),
    (lambda: masks.bigbird(0, num_blocks=4), "block_size"),
    (lambda: masks.bigbird(4, num_blocks=0), "num_blocks"),
    (lambda: masks.bigbird(4, num_blocks=4, window_blocks=-1), "window_blocks"),
    (lambda: masks.bigbird(4, num_blocks=4, global_blocks=-1), "global_blocks"),
    (lambda: masks.bigbird(4, num_blocks=4, random_blocks=-1), "random_blocks"),
    (lambda: masks.padding(), "padding"),
    (lambda: masks.padding([1], key_mask=torch.ones(1, 1, dtype=torch.bool)), "padding"),
    (lambda: masks.padding([[1, 2]]), "lengths"),
    (lambda: masks.padding([3, -1]), "lengths"),
    (lambda: masks.padding(key_mask=torch.ones(2, 3)), "key_mask"),
    (lambda: masks.padding(key_mask=torch.ones(3, dtype=torch.bool)), "key_mask"),
    (lambda: masks.document(torch.zeros(2, 3)), "document"),
    (lambda: masks.document(torch.zeros(3, dtype=torch.long)), "document"),
    (lambda: masks.from_dense(torch.ones(1, 1, 3, 3)), "from_dense"),
    (lambda: masks.from_dense(torch.ones(3, 3, dtype=torch.bool)), "from_dense"),
]


@pytest.mark.parametrize("call,word", BAD, ids=[f"{i}-{w}" for i, (_, w) in enumerate(BAD)])
def test_bad_arguments_raise_value_error(call, word):
    with pytest.raises(ValueError, match=word):
        call()


def test_materialised_forms_are_bounded_per_mask():
    """One pattern used at many shapes (a decoding loop over a shared causal mask) keeps at
    most a few of each materialised form, least recently used dropped first."""
    from attnkit.attention import attend
    from attnkit.attention.masks import _CACHE_LIMITS

    m = masks.causal()
    q = torch.randn(1, 2, 1, 8)
    for L in range(1, 60):
        k = v = torch.randn(1, 2, L, 8)
        attend(q, k, v, mask=m, backend="blocked")
        m.dense(1, L)
        m.block_layout(1, L)
    kinds = [key[0] for key in m._cache]
    assert kinds.count("dense") <= _CACHE_LIMITS["dense"]
    for kind in set(kinds) - {"dense"}:
        assert kinds.count(kind) <= _CACHE_LIMITS["other"], kind
    assert len(m._cache) <= _CACHE_LIMITS["dense"] + 2 * _CACHE_LIMITS["other"]
    first = m.dense(4, 4)
    for L in range(5, 5 + _CACHE_LIMITS["dense"] - 1):
        m.dense(L, L)
        assert m.dense(4, 4) is first  # recently used: kept
