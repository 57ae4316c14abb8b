"""``attend`` parity: every exact backend against ``math``, and ``math`` against PyTorch.

Backends come from ``attnkit.attention.backends.EXACT``; a backend that declines a request
(``supports()`` returns a reason) is skipped for that case, so new exact backends are covered
as soon as they start accepting work.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnkit.attention import attend, backends, masks, score_mods
from attnkit.attention.core import _request

OTHERS = [n for n in backends.EXACT if n != "math"]
HEADS = {"mha": (8, 8), "gqa": (8, 2), "mqa": (8, 1)}
SHAPES = {"square": (24, 24), "decode": (9, 24)}
B, D = 3, 16


def _skip_unless_supported(name, q, k, v, *, mask=None, score_mod=None, dropout_p=0.0,
                           return_weights=False):
    why = backends.get(name).supports(_request(q, k, v, mask, score_mod, dropout_p, return_weights))
    if why:
        pytest.skip(f"{name}: {why}")


def run(name, q, k, v, **kw):
    """``attend`` on backend ``name``; skip the test when the backend declines the request."""
    _skip_unless_supported(name, q, k, v, mask=kw.get("mask"), score_mod=kw.get("score_mod"),
                           dropout_p=kw.get("dropout_p", 0.0),
                           return_weights=kw.get("return_weights", False))
    try:
        return attend(q, k, v, backend=name, **kw)
    except ValueError as e:  # pragma: no cover - supports() and attend() disagree
        if "cannot serve" in str(e):
            pytest.skip(str(e))
        raise


def qkv(hq, hkv, lq, lk, *, b=B, d=D, dtype=torch.float32, grad=False):
    q = torch.randn(b, hq, lq, d, dtype=dtype)
    k = torch.randn(b, hkv, lk, d, dtype=dtype)
    v = torch.randn(b, hkv, lk, d, dtype=dtype)
    if grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


# ---- patterns ------------------------------------------------------------------------------


def _pattern(name: str, causal: bool, lq: int, lk: int):
    c = masks.causal()
    if name == "none":
        return c if causal else None
    if name == "window":
        return masks.sliding_window(5, 0) if causal else masks.sliding_window(3, 3)
    if name == "strided":
        return masks.strided(4)
    if name == "global+window":
        m = masks.sliding_window(2, 2) | masks.global_tokens([0, 11])
        return m & c if causal else m
    if name == "bigbird":
        m = masks.bigbird(4, num_blocks=-(-lk // 4), seed=1)
        return m & c if causal else m
    if name == "padding":  # batch row 1 has no keys at all: every one of its rows is masked
        m = masks.padding([lk, 0, 5])
        return m & c if causal else m
    if name == "left-padding":  # causal + left padding: the first query rows see nothing
        km = torch.ones(B, lk, dtype=torch.bool)
        km[0, :6] = False
        km[2, :lk - 2] = False
        m = masks.padding(key_mask=km)
        return m & c if causal else m
    if name == "document":
        ids = torch.tensor([[0] * 7 + [1] * (lk - 12) + [2] * 5,
                            [0] * lk,
                            [i // 3 for i in range(lk)]])
        m = masks.document(ids)
        return m & c if causal else m
    if name == "tensor":  # an explicit bool tensor, broadcast over heads
        t = torch.rand(B, 1, lq, lk, generator=torch.Generator().manual_seed(4)) > 0.4
        return t & c.dense(lq, lk) if causal else t
    raise KeyError(name)


PATTERNS = [
    ("none", False), ("none", True), ("window", False), ("window", True), ("strided", True),
    ("global+window", False), ("global+window", True), ("bigbird", False), ("bigbird", True),
    ("padding", False), ("padding", True), ("left-padding", True), ("document", False),
    ("document", True), ("tensor", False), ("tensor", True),
]
PAT_IDS = [f"{n}{'-causal' if c else ''}" for n, c in PATTERNS]


@pytest.fixture(params=list(SHAPES), ids=list(SHAPES))
def shape(request):
    return SHAPES[request.param]


@pytest.fixture(params=list(HEADS), ids=list(HEADS))
def heads(request):
    return HEADS[request.param]


def _forward_grid():
    """backend × pattern × heads × shape. CPU FlexAttention runs eagerly but still traces each
    new (pattern, shape) combination (~0.5 s apiece), so for flex the head-layout axis is
    sampled: GQA everywhere, MHA/MQA on a few patterns."""
    flex_all_heads = {("none", True), ("padding", True), ("tensor", False)}
    for be in OTHERS:
        for pat, pid in zip(PATTERNS, PAT_IDS, strict=True):
            for hname, hv in HEADS.items():
                for sname, sv in SHAPES.items():
                    if be == "flex" and hname != "gqa" and (
                            pat not in flex_all_heads or sname != "decode"):
                        continue
                    yield pytest.param(be, pat, hv, sv, id=f"{be}-{pid}-{hname}-{sname}")


@pytest.mark.parametrize("backend,pattern,heads_,shape_", list(_forward_grid()))
def test_forward_parity(backend, pattern, heads_, shape_):
    (hq, hkv), (lq, lk) = heads_, shape_
    mask = _pattern(*pattern, lq, lk)
    q, k, v = qkv(hq, hkv, lq, lk)
    want = attend(q, k, v, mask=mask, backend="math")
    got = run(backend, q, k, v, mask=mask)
    assert got.shape == (B, hq, lq, D) and got.dtype == q.dtype
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("pattern", PATTERNS, ids=PAT_IDS)
@pytest.mark.parametrize("backend", OTHERS)
def test_grad_parity(backend, pattern, heads, shape):
    (hq, hkv), (lq, lk) = heads, shape
    mask = _pattern(*pattern, lq, lk)
    q, k, v = qkv(hq, hkv, lq, lk, grad=True)
    _skip_unless_supported(backend, q, k, v, mask=mask)
    g = torch.randn(B, hq, lq, D)

    def grads(name):
        out = attend(q, k, v, mask=mask, backend=name)
        return out, torch.autograd.grad(out, (q, k, v), g)

    out_ref, g_ref = grads("math")
    out, g_got = grads(backend)
    torch.testing.assert_close(out, out_ref, atol=2e-5, rtol=1e-4)
    for name, a, b in zip("qkv", g_got, g_ref, strict=True):
        assert torch.isfinite(a).all(), f"d{name} not finite"
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("shape_", [(1,), (1, 24), (9, 24), (1, 1, 9, 24), (3, 8, 9, 24)],
                         ids=str)
@pytest.mark.parametrize("backend", OTHERS)
def test_tensor_mask_ranks(backend, shape_):
    """Bool tensor masks of any rank that broadcasts to (B, Hq, Lq, Lk)."""
    lq, lk = 9, 24
    mask = torch.rand(*shape_) > 0.3
    q, k, v = qkv(8, 2, lq, lk)
    want = attend(q, k, v, mask=mask, backend="math")
    torch.testing.assert_close(run(backend, q, k, v, mask=mask), want, atol=2e-5, rtol=1e-4)


# ---- math against PyTorch ------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hkv", [8, 2, 1])
def test_math_vs_torch_sdpa(hkv, causal):
    q, k, v = qkv(8, hkv, 24, 24)
    got = attend(q, k, v, mask=masks.causal() if causal else None, backend="math")
    rep = 8 // hkv
    want_rep = F.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=causal)
    want_gqa = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    torch.testing.assert_close(got, want_rep, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, want_gqa, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hkv", [8, 2])
def test_math_vs_torch_sdpa_attn_mask_and_scale(hkv):
    q, k, v = qkv(8, hkv, 9, 24)
    am = torch.rand(B, 1, 9, 24) > 0.5
    am[..., 0] = True  # no fully masked rows (torch and attnkit differ there by design)
    got = attend(q, k, v, mask=am, scale=0.3, backend="math")
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=am, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_math_causal_decode_is_causal_lower_right():
    """Lq < Lk causal matches PyTorch's bottom-right aligned causal bias."""
    from torch.nn.attention.bias import causal_lower_right

    q, k, v = qkv(4, 4, 5, 12)
    got = attend(q, k, v, mask=masks.causal(), backend="math")
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(5, 12))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lq,lk", [(7, 7), (5, 11)])
def test_math_vs_multihead_attention(lq, lk):
    """nn.MultiheadAttention == in-proj, split heads, attend, merge, out-proj (outputs and
    head-averaged weights), with key_padding_mask and attn_mask."""
    E, H = 32, 4
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    x, mem = torch.randn(B, lq, E), torch.randn(B, lk, E)
    kpm = torch.zeros(B, lk, dtype=torch.bool)  # True = ignore (PyTorch convention)
    kpm[1, -3:] = True
    kpm[2, 1::2] = True
    am = torch.rand(lq, lk) > 0.7  # True = not allowed
    am[:, 0] = False  # keep every row alive (MHA gives NaN for fully masked rows)
    want, want_w = mha(x, mem, mem, key_padding_mask=kpm, attn_mask=am, need_weights=True,
                       average_attn_weights=True)

    Wq, Wk, Wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)

    def split(t):  # (B, L, E) -> (B, H, L, E/H)
        return t.view(t.shape[0], t.shape[1], H, E // H).transpose(1, 2)

    q, k, v = split(x @ Wq.T + bq), split(mem @ Wk.T + bk), split(mem @ Wv.T + bv)
    mask = masks.padding(key_mask=~kpm) & masks.from_dense(~am[None, None])
    out, w = attend(q, k, v, mask=mask, backend="math", return_weights=True)
    merged = out.transpose(1, 2).reshape(B, lq, E)
    got = mha.out_proj(merged)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.mean(1), want_w, atol=1e-6, rtol=1e-5)
    # the same call with the tensor-mask spelling (True = may attend)
    tm = ~kpm[:, None, None, :] & ~am
    out2 = attend(q, k, v, mask=tm, backend="math")
    torch.testing.assert_close(out2, out, atol=1e-6, rtol=1e-6)


# ---- gradcheck -----------------------------------------------------------------------------


GRADCHECK = {
    "plain": dict(),
    "causal-decode": dict(mask=masks.causal(), lq=3),
    "gqa-window": dict(mask=masks.sliding_window(1, 1), hkv=1),
    "alibi": dict(score_mod=score_mods.alibi(2), mask=masks.causal()),
    "softcap": dict(score_mod=score_mods.softcap(2.0)),
    "dead-row": dict(mask=masks.padding([0, 3]), b=2),
    "dead-row-causal": dict(mask=masks.padding(key_mask=torch.tensor([[False, True, True, True]]))
                            & masks.causal()),
}


@pytest.mark.parametrize("case", list(GRADCHECK))
def test_math_gradcheck_fp64(case):
    kw = dict(GRADCHECK[case])
    b, hkv, lq = kw.pop("b", 1), kw.pop("hkv", 2), kw.pop("lq", 4)
    q, k, v = qkv(2, hkv, lq, 4, b=b, d=3, dtype=torch.float64, grad=True)
    fn = lambda q, k, v: attend(q, k, v, backend="math", **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_math_gradcheck_bias_tensor_fp64():
    q, k, v = qkv(2, 2, 3, 5, b=1, d=3, dtype=torch.float64, grad=True)
    bias = torch.randn(1, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda q, k, v, bias: attend(  # noqa: E731
        q, k, v, score_mod=score_mods.bias_from_tensor(bias), backend="math")
    assert torch.autograd.gradcheck(fn, (q, k, v, bias))


# ---- score modifiers ----------------------------------------------------------------------


def test_alibi_slopes_reference_values():
    # 8 heads: 2^-1 ... 2^-8 (Press et al. 2022)
    torch.testing.assert_close(score_mods.alibi_slopes(8),
                               torch.tensor([2.0 ** -i for i in range(1, 9)]))
    # 16 heads: 2^-0.5, 2^-1, ..., 2^-8
    torch.testing.assert_close(score_mods.alibi_slopes(16),
                               torch.tensor([2.0 ** (-0.5 * i) for i in range(1, 17)]))
    # 6 heads (not a power of two): the 4-head slopes, then every other 8-head slope
    torch.testing.assert_close(
        score_mods.alibi_slopes(6),
        torch.tensor([0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]))
    torch.testing.assert_close(score_mods.alibi_slopes(1), torch.tensor([2.0 ** -8]))
    with pytest.raises(ValueError, match="num_heads"):
        score_mods.alibi_slopes(0)


def _alibi_bias(slopes, lq, lk, symmetric=False):
    """Hand-built ALiBi bias: query row i (position p = i + lk - lq) and key j get
    m_h * (j - p), i.e. m * [-(p), ..., -2, -1, 0] over the keys up to the query."""
    H = len(slopes)
    bias = torch.zeros(1, H, lq, lk)
    for h in range(H):
        for i in range(lq):
            p = i + lk - lq
            for j in range(lk):
                bias[0, h, i, j] = -slopes[h] * abs(p - j) if symmetric else slopes[h] * (j - p)
    return bias


def _softmax_ref(q, k, v, bias=None, allowed=None, mod=None):
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mod is not None:
        s = mod(s)
    if bias is not None:
        s = s + bias
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    return s.softmax(-1) @ v


@pytest.mark.parametrize("H,slopes", [
    (8, [2.0 ** -i for i in range(1, 9)]),
    (6, [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]),
])
@pytest.mark.parametrize("lq,lk", [(10, 10), (4, 10)])
def test_alibi_against_hand_built_bias(H, slopes, lq, lk):
    mod = score_mods.alibi(H)
    want_bias = _alibi_bias(slopes, lq, lk)
    torch.testing.assert_close(mod.bias(lq, lk, batch=2, heads=H), want_bias)
    q, k, v = qkv(H, H, lq, lk, b=2)
    causal = masks.causal()
    want = _softmax_ref(q, k, v, bias=want_bias, allowed=causal.dense(lq, lk))
    got = attend(q, k, v, mask=causal, score_mod=mod, backend="math")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # symmetric variant
    sym = score_mods.alibi(H, symmetric=True)
    want = _softmax_ref(q, k, v, bias=_alibi_bias(slopes, lq, lk, symmetric=True))
    torch.testing.assert_close(attend(q, k, v, score_mod=sym, backend="math"), want,
                               atol=1e-5, rtol=1e-5)


def test_alibi_custom_slopes_and_bad_shape():
    mod = score_mods.alibi(2, slopes=torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(mod.bias(3, 3, batch=1, heads=2), _alibi_bias([1.0, 0.5], 3, 3))
    with pytest.raises(ValueError, match="slopes"):
        score_mods.alibi(3, slopes=torch.tensor([1.0, 0.5]))


def test_softcap_and_bias_from_tensor_against_reference():
    q, k, v = qkv(4, 4, 6, 9, b=2)
    q = q * 6  # large logits so that the cap bites
    cap = 3.0
    want = _softmax_ref(q, k, v, mod=lambda s: cap * torch.tanh(s / cap))
    torch.testing.assert_close(attend(q, k, v, score_mod=score_mods.softcap(cap), backend="math"),
                               want, atol=1e-5, rtol=1e-5)
    bias = torch.randn(2, 4, 6, 9)
    want = _softmax_ref(q, k, v, bias=bias)
    torch.testing.assert_close(
        attend(q, k, v, score_mod=score_mods.bias_from_tensor(bias), backend="math"), want,
        atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cap"):
        score_mods.softcap(0.0)
    with pytest.raises(ValueError, match="bias"):
        score_mods.bias_from_tensor(torch.ones(1, 1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="not additive"):
        score_mods.softcap(1.0).bias(2, 2, batch=1, heads=1)


SCORE_MODS = {
    "alibi": lambda H, b, lq, lk: score_mods.alibi(H),
    "alibi-sym": lambda H, b, lq, lk: score_mods.alibi(H, symmetric=True),
    "softcap": lambda H, b, lq, lk: score_mods.softcap(2.0),
    "bias-full": lambda H, b, lq, lk: score_mods.bias_from_tensor(torch.randn(b, H, lq, lk)),
    "bias-bcast": lambda H, b, lq, lk: score_mods.bias_from_tensor(torch.randn(1, 1, lq, lk)),
}


def _score_mod_grid():
    for be in OTHERS:
        for mod_name in SCORE_MODS:
            for mask_name in ("none", "causal", "window"):
                for sname, sv in SHAPES.items():
                    # flex: see _forward_grid; one shape per (mod, mask) is enough there
                    if be == "flex" and (sname == "square") == (mask_name == "causal"):
                        continue
                    yield pytest.param(be, mod_name, mask_name, sv,
                                       id=f"{be}-{mod_name}-{mask_name}-{sname}")


@pytest.mark.parametrize("backend,mod_name,mask_name,shape_", list(_score_mod_grid()))
def test_score_mod_parity(backend, mod_name, mask_name, shape_):
    lq, lk = shape_
    mask = {"none": None, "causal": masks.causal(),
            "window": masks.sliding_window(3, 1) | masks.global_tokens([2])}[mask_name]
    mod = SCORE_MODS[mod_name](8, B, lq, lk)
    q, k, v = qkv(8, 2, lq, lk)
    q = q * 3
    want = attend(q, k, v, mask=mask, score_mod=mod, backend="math")
    torch.testing.assert_close(run(backend, q, k, v, mask=mask, score_mod=mod), want,
                               atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("mod_name", ["alibi", "softcap", "bias-full"])
@pytest.mark.parametrize("backend", OTHERS)
def test_score_mod_grad_parity(backend, mod_name):
    lq, lk = 9, 24
    mod = SCORE_MODS[mod_name](8, B, lq, lk)
    q, k, v = qkv(8, 2, lq, lk, grad=True)
    mask = masks.causal()
    _skip_unless_supported(backend, q, k, v, mask=mask, score_mod=mod)
    g = torch.randn(B, 8, lq, D)
    ref = torch.autograd.grad(attend(q, k, v, mask=mask, score_mod=mod, backend="math"),
                              (q, k, v), g)
    got = torch.autograd.grad(attend(q, k, v, mask=mask, score_mod=mod, backend=backend),
                              (q, k, v), g)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


# ---- weights, dropout --------------------------------------------------------------------


@pytest.mark.parametrize("pattern", [("none", False), ("window", True), ("padding", True),
                                     ("left-padding", True), ("document", True)],
                         ids=lambda p: p[0])
def test_return_weights(pattern, heads):
    hq, hkv = heads
    lq, lk = 9, 24
    mask = _pattern(*pattern, lq, lk)
    q, k, v = qkv(hq, hkv, lq, lk)
    out, w = attend(q, k, v, mask=mask, backend="math", return_weights=True)
    assert w.shape == (B, hq, lq, lk) and w.dtype == q.dtype
    allowed = torch.ones(B, hq, lq, lk, dtype=torch.bool)
    if mask is not None:
        allowed = allowed & mask.dense(lq, lk, batch=B, heads=hq)
    dead = ~allowed.any(-1)
    sums = w.sum(-1)
    torch.testing.assert_close(sums[~dead], torch.ones_like(sums[~dead]))
    assert (w[dead.unsqueeze(-1).expand_as(w)] == 0).all()
    assert (w[~allowed] == 0).all() and (w >= 0).all()
    # out == weights @ v (with kv heads repeated)
    vr = v.repeat_interleave(hq // hkv, 1)
    torch.testing.assert_close(out, w @ vr, atol=1e-5, rtol=1e-5)
    # and the weights are the masked softmax computed by hand
    s = (q @ k.repeat_interleave(hq // hkv, 1).transpose(-1, -2)) / math.sqrt(D)
    ref = s.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    torch.testing.assert_close(w, ref, atol=1e-6, rtol=1e-5)
    # auto dispatch also serves weights
    out2, w2 = attend(q, k, v, mask=mask, return_weights=True)
    torch.testing.assert_close(w2, w)


def test_dropout_math():
    q, k, v = qkv(4, 2, 8, 8)
    base = attend(q, k, v, backend="math")
    torch.manual_seed(42)
    a = attend(q, k, v, backend="math", dropout_p=0.5)
    torch.manual_seed(42)
    a2 = attend(q, k, v, backend="math", dropout_p=0.5)
    torch.manual_seed(43)
    c = attend(q, k, v, backend="math", dropout_p=0.5)
    assert not torch.allclose(a, base)
    assert torch.equal(a, a2), "same seed must reproduce the dropout mask"
    assert not torch.equal(a, c)
    # dropout is unbiased: averaged over many draws it approaches the dropout-free output
    torch.manual_seed(0)
    mean = torch.stack([attend(q, k, v, backend="math", dropout_p=0.3) for _ in range(200)]).mean(0)
    assert (mean - base).abs().mean() < 0.05
    # returned weights are the pre-dropout probabilities
    torch.manual_seed(1)
    _, w = attend(q, k, v, backend="math", dropout_p=0.5, return_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, 4, 8))


def test_scale_argument():
    q, k, v = qkv(4, 4, 6, 6)
    for be in ["math", *OTHERS]:
        _skip = backends.get(be).supports(_request(q, k, v, None, None, 0.0, False))
        if _skip:
            continue
        got = attend(q, k, v, scale=0.05, backend=be)
        want = _softmax_ref(q * (0.05 * math.sqrt(D)), k, v)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_cross_attention_different_value_dim():
    q, k = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 7, 16)
    v = torch.randn(2, 2, 7, 24)
    want = attend(q, k, v, backend="math")
    assert want.shape == (2, 4, 5, 24)
    for be in OTHERS:
        if backends.get(be).supports(_request(q, k, v, None, None, 0.0, False)):
            continue
        torch.testing.assert_close(attend(q, k, v, backend=be), want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["auto", *backends.EXACT])
def test_learned_bias_gets_gradients(backend):
    """A bias tensor that requires grad must receive its gradient, or the backend must decline
    (never a silent zero / missing gradient)."""
    lq, lk = 9, 24
    q, k, v = qkv(8, 2, lq, lk)
    mask = masks.sliding_window(2) | masks.global_tokens([0])
    bias = torch.randn(B, 8, lq, lk, requires_grad=True)
    mod = score_mods.bias_from_tensor(bias)
    assert mod.requires_grad and not score_mods.bias_from_tensor(bias.detach()).requires_grad
    g = torch.randn(B, 8, lq, D)
    (want,) = torch.autograd.grad(attend(q, k, v, mask=mask, score_mod=mod, backend="math"),
                                  bias, g)
    if backend != "auto":
        _skip_unless_supported(backend, q, k, v, mask=mask, score_mod=mod)
    (got,) = torch.autograd.grad(attend(q, k, v, mask=mask, score_mod=mod, backend=backend),
                                 bias, g)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pattern", [("none", False), ("none", True), ("window", True),
                                     ("global+window", False), ("document", True)],
                         ids=lambda p: f"{p[0]}{'-causal' if p[1] else ''}")
@pytest.mark.parametrize("backend", OTHERS)
def test_more_queries_than_keys(backend, pattern):
    """Lq > Lk: the first Lq - Lk query rows sit before the first key (negative key positions);
    under causal they see nothing. Every backend must agree with math, dead rows included."""
    lq, lk = 30, 24
    mask = _pattern(*pattern, lq, lk)
    q, k, v = qkv(8, 2, lq, lk)
    want = attend(q, k, v, mask=mask, backend="math")
    if pattern == ("none", True):
        assert (want[:, :, : lq - lk] == 0).all()
    torch.testing.assert_close(run(backend, q, k, v, mask=mask), want, atol=2e-5, rtol=1e-4)
