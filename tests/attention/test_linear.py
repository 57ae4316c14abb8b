"""Kernelized linear attention: chunked causal vs the quadratic form, FAVOR+ vs softmax,
gradients, GQA, the ``linear`` backend, and masked keys."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from attnkit.attention import attend, backends, explain, masks, score_mods
from attnkit.attention.backends.common import repeat_kv
from attnkit.attention.linear import (
    EluFeatureMap,
    FavorFeatureMap,
    FeatureMap,
    LinearAttention,
    linear_attention,
    linear_attention_reference,
    orthogonal_gaussian,
)

F64 = torch.float64


def _qkv(B=2, Hq=4, Hkv=2, Lq=13, Lk=13, D=8, Dv=5, *, seed=0, dtype=F64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, generator=g, dtype=dtype) * scale
    k = torch.randn(B, Hkv, Lk, D, generator=g, dtype=dtype) * scale
    v = torch.randn(B, Hkv, Lk, Dv, generator=g, dtype=dtype)
    return q, k, v


def _favor(d, m, seed=0):
    return FavorFeatureMap(d, m, seed=seed).double()


class _Raw(FeatureMap):
    """FAVOR+ without the stabilising constants (to check that they cancel)."""

    def __init__(self, fm: FavorFeatureMap):
        super().__init__()
        self.fm = fm

    def forward(self, x, *, is_query, key_mask=None):
        return self.fm.features(x)


# ---- (a) chunked == quadratic form -----------------------------------------------------------


def test_reference_matches_explicit_causal_mask():
    # The reference's bottom-right alignment agrees with masks.causal() (key coordinates).
    fm = EluFeatureMap()
    for Lq, Lk in [(13, 13), (5, 13), (13, 5)]:
        q, k, v = _qkv(Lq=Lq, Lk=Lk, Hkv=4)
        A = (fm(q, is_query=True) @ fm(k, is_query=False).transpose(-1, -2))
        A = A * masks.causal().dense(Lq, Lk)
        want = (A @ v) / A.sum(-1, keepdim=True).clamp_min(1e-6)
        got = linear_attention_reference(q, k, v, feature_map=fm, causal=True)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("Lq,Lk", [(13, 13), (5, 13), (1, 13), (13, 5), (16, 16)])
@pytest.mark.parametrize("fm_name", ["elu", "favor"])
def test_chunked_causal_equals_reference(Lq, Lk, fm_name):
    q, k, v = _qkv(Lq=Lq, Lk=Lk)
    fm = EluFeatureMap() if fm_name == "elu" else _favor(8, 24)
    want = linear_attention_reference(q, k, v, feature_map=fm, causal=True)
    for C in (1, 3, 4, 5, 8, 64, None):  # several not dividing L, one larger than L
        got = linear_attention(q, k, v, feature_map=fm, causal=True, chunk_size=C)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"chunk_size={C}")


@pytest.mark.parametrize("Lq,Lk", [(13, 13), (5, 13), (13, 5)])
@pytest.mark.parametrize("fm_name", ["elu", "favor"])
def test_noncausal_equals_reference(Lq, Lk, fm_name):
    q, k, v = _qkv(Lq=Lq, Lk=Lk)
    fm = EluFeatureMap() if fm_name == "elu" else _favor(8, 24)
    want = linear_attention_reference(q, k, v, feature_map=fm, causal=False)
    got = linear_attention(q, k, v, feature_map=fm, causal=False)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_key_mask_equals_dropping_keys():
    q, k, v = _qkv(B=1, Lq=9, Lk=9)
    keep = torch.tensor([[True] * 6 + [False] * 3])
    for causal in (False, True):
        for fm in (EluFeatureMap(), _favor(8, 24)):
            got = linear_attention(q, k, v, feature_map=fm, causal=causal, chunk_size=4,
                                   key_mask=keep)
            ref = linear_attention_reference(q, k, v, feature_map=fm, causal=causal,
                                             key_mask=keep)
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
            if not causal:  # padded keys at the end: same as not having them at all
                want = linear_attention(q, k[:, :, :6], v[:, :, :6], feature_map=fm)
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# ---- (b) FAVOR+ ------------------------------------------------------------------------------


def test_orthogonal_blocks_and_chi_norms():
    w = orthogonal_gaussian(20, 8, generator=torch.Generator().manual_seed(0))
    u = w / w.norm(dim=1, keepdim=True)
    for blk in (u[:8], u[8:16]):  # full blocks: orthonormal directions
        torch.testing.assert_close(blk @ blk.T, torch.eye(8, dtype=F64), atol=1e-12, rtol=0)
    big = orthogonal_gaussian(4000, 8, generator=torch.Generator().manual_seed(1))
    # chi(8) norms: E‖ω‖² = 8.
    assert abs(big.pow(2).sum(1).mean().item() - 8.0) < 0.3


def test_favor_kernel_estimate_is_unbiased():
    # One draw with m features averages m/d independent orthogonal blocks; m large => E.
    d = 8
    q, k, _ = _qkv(B=1, Hq=1, Hkv=1, Lq=6, Lk=6, D=d, seed=3, scale=0.4)
    exact = torch.exp(q[0, 0] @ k[0, 0].T / math.sqrt(d))
    fm = _favor(d, 32768, seed=0)
    est = fm.features(q[0, 0]) @ fm.features(k[0, 0]).T
    # relative std of one feature ≈ sqrt(exp(‖x+y‖²) − 1) ≈ 1.2 here: ≈ 0.007 for m = 32768
    assert ((est - exact) / exact).abs().max() < 0.05
    assert ((est - exact) / exact).mean().abs() < 0.01


def test_favor_stabiliser_cancels():
    q, k, v = _qkv(Lq=11, Lk=11, scale=1.5)
    fm = _favor(8, 64)
    for causal in (False, True):
        got = linear_attention(q, k, v, feature_map=fm, causal=causal, chunk_size=4)
        want = linear_attention_reference(q, k, v, feature_map=_Raw(fm), causal=causal)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_favor_large_inputs_stay_accurate_in_fp32():
    q, k, v = _qkv(Lq=16, Lk=16, dtype=torch.float32, scale=12.0)
    fm = FavorFeatureMap(8, 64)
    assert (fm.features(q) == 0).all(dim=-1).any()  # raw fp32 features underflow entirely...
    for causal in (False, True):  # ... the stabilised ones match an fp64 computation
        got = linear_attention(q, k, v, feature_map=fm, causal=causal)
        fm64 = copy.deepcopy(fm).double()
        want = linear_attention(q.double(), k.double(), v.double(), feature_map=fm64,
                                causal=causal)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("causal", [False, True])
def test_favor_approaches_softmax_as_features_grow(causal):
    B, H, L, D = 1, 2, 64, 16
    q, k, v = _qkv(B=B, Hq=H, Hkv=H, Lq=L, Lk=L, D=D, Dv=D, seed=0, scale=0.5)
    mask = masks.causal() if causal else None
    exact = attend(q, k, v, mask=mask, backend="math")
    err = {}
    for m in (16, 256, 1024):
        errs = [(linear_attention(q, k, v, feature_map=_favor(D, m, seed=s), causal=causal)
                 - exact).abs().mean().item() for s in range(4)]
        err[m] = sum(errs) / len(errs)
    assert err[256] < 0.6 * err[16], err
    assert err[1024] < 0.75 * err[256], err
    assert err[1024] < 0.02, err


def test_favor_redraw():
    fm = FavorFeatureMap(8, 16, seed=5)
    assert torch.equal(fm.projection, FavorFeatureMap(8, 16, seed=5).projection)
    layer = LinearAttention(fm, redraw_interval=2).train()
    q, k, v = _qkv(dtype=torch.float32)
    seen = []
    for _ in range(5):
        layer(q, k, v)
        seen.append(fm.projection.clone())
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    assert torch.equal(seen[2], seen[3]) and not torch.equal(seen[3], seen[4])
    layer.eval()(q, k, v)
    assert torch.equal(fm.projection, seen[4])
    with pytest.raises(ValueError, match="redraw"):
        LinearAttention(EluFeatureMap(), redraw_interval=3)


# ---- (c) gradients ---------------------------------------------------------------------------


@pytest.mark.parametrize("causal,Lq,Lk", [(False, 5, 7), (True, 7, 7), (True, 4, 7), (True, 7, 4)])
@pytest.mark.parametrize("fm_name", ["elu", "favor"])
def test_gradcheck(causal, Lq, Lk, fm_name):
    q, k, v = _qkv(B=1, Hq=2, Hkv=1, Lq=Lq, Lk=Lk, D=4, Dv=3, seed=1)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    fm = EluFeatureMap() if fm_name == "elu" else _favor(4, 8)
    assert torch.autograd.gradcheck(
        lambda q, k, v: linear_attention(q, k, v, feature_map=fm, causal=causal, chunk_size=3),
        (q, k, v))


# ---- (d) GQA ---------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_gqa_matches_repeated_kv(causal):
    q, k, v = _qkv(Hq=6, Hkv=2, Lq=10, Lk=12)
    for fm in (EluFeatureMap(), _favor(8, 16)):
        got = linear_attention(q, k, v, feature_map=fm, causal=causal, chunk_size=4)
        want = linear_attention(q, repeat_kv(k, 3), repeat_kv(v, 3), feature_map=fm,
                                causal=causal, chunk_size=4)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ---- (e) the backend -------------------------------------------------------------------------


def test_attend_linear_backend():
    q, k, v = _qkv(Lq=9, Lk=9)
    assert "linear" not in backends.EXACT
    for mask, causal in ((None, False), (masks.full(), False), (masks.causal(), True)):
        assert explain(q, k, v, mask=mask).backend != "linear"
        got = attend(q, k, v, mask=mask, backend="linear")
        want = linear_attention_reference(q, k, v, causal=causal)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    qh, kh, vh = (t.to(torch.bfloat16) for t in (q, k, v))
    out = attend(qh, kh, vh, mask=masks.causal(), backend="linear")
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, rtol=0, atol=0.05)


@pytest.mark.parametrize("kw,match", [
    (dict(mask=masks.sliding_window(4)), r"backend 'linear' cannot serve.*sliding_window"),
    (dict(mask=masks.causal() & masks.sliding_window(2)), r"only no mask, full or causal"),
    (dict(mask=torch.ones(9, 9, dtype=torch.bool)), r"bool tensor masks"),
    (dict(score_mod=score_mods.softcap(20.0)), r"score_mod"),
    (dict(dropout_p=0.1), r"dropout"),
    (dict(return_weights=True), r"weights"),
])
def test_attend_linear_refusals(kw, match):
    q, k, v = _qkv(Lq=9, Lk=9)
    with pytest.raises(ValueError, match=match):
        attend(q, k, v, backend="linear", **kw)


# ---- (f) masked keys -------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fm_name", ["elu", "favor"])
def test_fully_masked_keys_give_zeros_not_nan(causal, fm_name):
    q, k, v = _qkv(B=2, Lq=6, Lk=6, dtype=torch.float32)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    keep = torch.tensor([[False] * 6, [True, True, False, True, False, False]])
    fm = EluFeatureMap() if fm_name == "elu" else FavorFeatureMap(8, 16)
    out = linear_attention(q, k, v, feature_map=fm, causal=causal, chunk_size=4, key_mask=keep)
    assert torch.isfinite(out).all()
    assert out[0].abs().max() == 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_padded_keys_with_extreme_values_are_ignored():
    q, k, v = _qkv(B=1, Lq=8, Lk=8, dtype=torch.float32)
    keep = torch.tensor([[True] * 5 + [False] * 3])
    k = k.clone()
    k[:, :, 5:] = 1e4  # garbage in the padding must not overflow or move the stabiliser
    k, v = k.requires_grad_(), v.requires_grad_()
    for fm in (EluFeatureMap(), FavorFeatureMap(8, 32)):
        out = linear_attention(q, k, v, feature_map=fm, key_mask=keep)
        want = linear_attention(q, k[:, :, :5], v[:, :, :5], feature_map=fm)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
        (g,) = torch.autograd.grad(out.sum(), k)
        assert torch.isfinite(g).all() and g[:, :, 5:].abs().max() == 0


def test_queries_before_first_key_give_zeros():
    # Causal with Lq > Lk: the first Lq - Lk queries see no key (bottom-right alignment).
    q, k, v = _qkv(Lq=9, Lk=4)
    out = linear_attention(q, k, v, causal=True, chunk_size=2)
    assert torch.isfinite(out).all()
    assert out[:, :, :5].abs().max() == 0 and out[:, :, 5:].abs().min() > 0
    torch.testing.assert_close(
        out, attend(q, k, v, mask=masks.causal(), backend="linear"), rtol=1e-12, atol=1e-12)
