"""Numerics: fully masked rows, half precision, fp32 softmax, and ``-inf`` semantics."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.attention import attend, backends, masks, score_mods
from attnkit.attention.core import _request
from attnkit.attention.relative_bias import RelativePositionBias
from attnkit.attention.score_mods import ScoreMod


def supported(name, q, k, v, *, mask=None, score_mod=None, dropout_p=0.0, return_weights=False):
    return not backends.get(name).supports(
        _request(q, k, v, mask, score_mod, dropout_p, return_weights))


def need(name, q, k, v, **kw):
    why = backends.get(name).supports(_request(q, k, v, kw.get("mask"), kw.get("score_mod"),
                                               0.0, False))
    if why:
        pytest.skip(f"{name}: {why}")


def qkv(b=2, hq=4, hkv=2, lq=8, lk=8, d=8, dtype=torch.float32, grad=False):
    ts = (torch.randn(b, hq, lq, d), torch.randn(b, hkv, lk, d), torch.randn(b, hkv, lk, d))
    return tuple(t.to(dtype).requires_grad_(grad) for t in ts)


# ---- fully masked rows ----------------------------------------------------------------------


def _dead_cases(lq, lk):
    """(name, mask, score_mod) triples that leave some query rows with no allowed key."""
    rows = torch.ones(lq, lk, dtype=torch.bool)
    rows[1] = False
    rows[-1] = False
    km = torch.ones(2, lk, dtype=torch.bool)
    km[0, :5] = False  # left padding: with causal, the first rows of batch 0 see nothing
    bias = torch.zeros(1, 1, lq, lk)
    bias[0, 0, 2] = float("-inf")
    return [
        ("padding-zero-length", masks.padding([lk, 0]), None),
        ("tensor-dead-rows", rows, None),
        ("left-padding-causal", masks.padding(key_mask=km) & masks.causal(), None),
        ("nothing", ~masks.full(), None),
        ("pattern+alibi", masks.padding([0, 3]) & masks.causal(), score_mods.alibi(4)),
        ("bias-minus-inf-row", None, score_mods.bias_from_tensor(bias)),
        ("softcap-dead", masks.padding([lk, 0]), score_mods.softcap(5.0)),
        ("padding+t5-bias", masks.padding([lk, 0]),
         RelativePositionBias(4, num_buckets=8, max_distance=16).score_mod()),
        ("causal+bias-minus-inf-row", masks.causal(), score_mods.bias_from_tensor(bias)),
    ]


def _dead_rows(mask, score_mod, b, h, lq, lk):
    allowed = torch.ones(b, h, lq, lk, dtype=torch.bool)
    if isinstance(mask, torch.Tensor):
        allowed = allowed & mask
    elif mask is not None:
        allowed = allowed & mask.dense(lq, lk, batch=b, heads=h)
    if score_mod is not None and score_mod.additive:
        allowed = allowed & torch.isfinite(score_mod.bias(lq, lk, batch=b, heads=h))
    return ~allowed.any(-1)  # (b, h, lq)


@pytest.mark.parametrize("lq,lk", [(8, 8), (5, 8)])
@pytest.mark.parametrize("case", range(9), ids=lambda i: _dead_cases(8, 8)[i][0])
@pytest.mark.parametrize("backend", backends.EXACT)
def test_fully_masked_rows_are_zero(backend, case, lq, lk):
    _, mask, mod = _dead_cases(lq, lk)[case]
    q, k, v = qkv(lq=lq, lk=lk)
    need(backend, q, k, v, mask=mask, score_mod=mod)
    out = attend(q, k, v, mask=mask, score_mod=mod, backend=backend)
    dead = _dead_rows(mask, mod, 2, 4, lq, lk)
    assert dead.any(), "test case must contain a fully masked row"
    assert torch.isfinite(out).all()
    assert (out[dead] == 0).all()
    ref = attend(q, k, v, mask=mask, score_mod=mod, backend="math")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("lq,lk", [(8, 8), (5, 8)])
@pytest.mark.parametrize("case", range(9), ids=lambda i: _dead_cases(8, 8)[i][0])
@pytest.mark.parametrize("backend", backends.EXACT)
def test_fully_masked_rows_have_finite_grads(backend, case, lq, lk):
    _, mask, mod = _dead_cases(lq, lk)[case]
    q, k, v = qkv(lq=lq, lk=lk, grad=True)
    need(backend, q, k, v, mask=mask, score_mod=mod)
    g = torch.randn(2, 4, lq, 8)
    out = attend(q, k, v, mask=mask, score_mod=mod, backend=backend)
    grads = torch.autograd.grad(out, (q, k, v), g)
    for t in grads:
        assert torch.isfinite(t).all()
    dead = _dead_rows(mask, mod, 2, 4, lq, lk)
    assert (grads[0][dead] == 0).all(), "a dead query row has no influence: dq must be 0"
    ref = torch.autograd.grad(attend(q, k, v, mask=mask, score_mod=mod, backend="math"),
                              (q, k, v), g)
    for a, b in zip(grads, ref, strict=True):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


def test_all_rows_dead_everywhere():
    q, k, v = qkv(grad=True)
    out, w = attend(q, k, v, mask=torch.zeros(8, 8, dtype=torch.bool), backend="math",
                    return_weights=True)
    assert (out == 0).all() and (w == 0).all()
    out.sum().backward()
    assert (q.grad == 0).all() and (k.grad == 0).all() and (v.grad == 0).all()


# ---- half precision ------------------------------------------------------------------------


HALF = [torch.bfloat16, torch.float16]
TOL = {torch.bfloat16: dict(atol=3e-2, rtol=3e-2), torch.float16: dict(atol=4e-3, rtol=4e-3)}


@pytest.mark.parametrize("mask_name", ["none", "causal", "window+global", "padding"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("backend", backends.EXACT)
def test_half_precision_matches_fp32_math(backend, dtype, mask_name):
    lq, lk = 6, 12
    mask = {"none": None, "causal": masks.causal(),
            "window+global": masks.sliding_window(2, 2) | masks.global_tokens([0]),
            "padding": masks.padding([12, 4])}[mask_name]
    q32, k32, v32 = qkv(lq=lq, lk=lk)
    q, k, v = q32.to(dtype), k32.to(dtype), v32.to(dtype)
    need(backend, q, k, v, mask=mask)
    out = attend(q, k, v, mask=mask, backend=backend)
    assert out.dtype == dtype
    # reference: fp32 math on the *rounded* inputs, so only the kernel's own error is measured
    ref = attend(q.float(), k.float(), v.float(), mask=mask, backend="math")
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("backend", backends.EXACT)
def test_half_precision_grads(backend, dtype):
    q32, k32, v32 = qkv(lq=6, lk=12)
    q, k, v = (t.to(dtype).requires_grad_() for t in (q32, k32, v32))
    mask = masks.causal() & masks.padding([12, 7])
    need(backend, q, k, v, mask=mask)
    g = torch.randn(2, 4, 6, 8)
    grads = torch.autograd.grad(attend(q, k, v, mask=mask, backend=backend), (q, k, v),
                                g.to(dtype))
    r = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(attend(*r, mask=mask, backend="math"), r, g.to(dtype).float())
    for a, b in zip(grads, ref, strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, atol=6e-2, rtol=5e-2)


def test_math_scores_and_softmax_in_fp32_for_half_inputs():
    seen = []

    def spy(score, b, h, q, kv):
        seen.append(score.dtype)
        return score

    mod = ScoreMod(spy, "spy")
    for dtype in HALF:
        q, k, v = qkv(dtype=dtype)
        out, w = attend(q, k, v, score_mod=mod, backend="math", return_weights=True)
        assert out.dtype == dtype and w.dtype == dtype
    assert seen == [torch.float32, torch.float32]
    # fp64 stays fp64 (gradcheck depends on it)
    q, k, v = qkv(dtype=torch.float64)
    attend(q, k, v, score_mod=mod, backend="math")
    assert seen[-1] == torch.float64


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_math_large_magnitude_scores_do_not_overflow(dtype):
    """q·k beyond the fp16 range (65504) and exp() of huge logits: the math backend computes
    scores and softmax in fp32 with max subtraction, so the result is finite and exact."""
    d = 16
    q = (torch.randn(1, 2, 5, d) * 40).to(dtype)
    k = (torch.randn(1, 2, 5, d) * 40).to(dtype)
    q[..., 0, :] = 80
    k[..., 1, :] = 80  # q0 · k1 = 80 * 80 * 16 = 102400
    v = torch.randn(1, 2, 5, d).to(dtype)
    raw = q.float() @ k.float().transpose(-1, -2)
    assert raw.abs().max() > 65504, "the scores must exceed the fp16 range"
    out = attend(q, k, v, backend="math")
    assert torch.isfinite(out).all()
    ref = torch.softmax(raw / math.sqrt(d), -1) @ v.float()
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])
    # fp32 inputs with logits ~1e4 are fine as well (max subtraction)
    out32 = attend(q.float() * 10, k.float(), v.float(), backend="math")
    assert torch.isfinite(out32).all()


@pytest.mark.parametrize("backend", backends.EXACT)
def test_large_logits_all_backends(backend):
    q, k, v = qkv(lq=6, lk=6)
    q = q * 300  # logits in the thousands: a naive exp() overflows in fp32
    need(backend, q, k, v, mask=masks.causal())
    out = attend(q, k, v, mask=masks.causal(), backend=backend)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, attend(q, k, v, mask=masks.causal(), backend="math"),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", backends.EXACT)
def test_float64(backend):
    q, k, v = qkv(dtype=torch.float64)
    mask = masks.sliding_window(2, 1)
    need(backend, q, k, v, mask=mask)
    out = attend(q, k, v, mask=mask, backend=backend)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, attend(q, k, v, mask=mask, backend="math"),
                               atol=1e-12, rtol=1e-10)


# ---- -inf semantics ------------------------------------------------------------------------


def _inf_bias(lq, lk, allowed):
    return torch.zeros(1, 1, lq, lk).masked_fill(~allowed, float("-inf"))


@pytest.mark.parametrize("backend", backends.EXACT)
def test_minus_inf_bias_equals_bool_mask(backend):
    """An additive -inf is exactly a disallowed pair."""
    lq, lk = 6, 10
    g = torch.Generator().manual_seed(3)
    allowed = torch.rand(lq, lk, generator=g) > 0.5
    allowed[:, -1] = True
    q, k, v = qkv(lq=lq, lk=lk)
    mod = score_mods.bias_from_tensor(_inf_bias(lq, lk, allowed))
    need(backend, q, k, v, score_mod=mod)
    via_bias = attend(q, k, v, score_mod=mod, backend=backend)
    via_mask = attend(q, k, v, mask=allowed, backend="math")
    torch.testing.assert_close(via_bias, via_mask, atol=2e-5, rtol=1e-4)


def test_large_negative_bias_is_not_a_mask():
    """A finite bias, however negative, still lets the row attend (uniformly here), whereas -inf
    everywhere means no keys: zeros."""
    q, k, v = qkv(b=1, hq=2, hkv=2, lq=3, lk=5)
    very_neg = score_mods.bias_from_tensor(torch.full((1, 1, 3, 5), -1e30))
    out = attend(q * 0, k, v, score_mod=very_neg, backend="math")
    torch.testing.assert_close(out, v.mean(2, keepdim=True).expand_as(out))
    minus_inf = score_mods.bias_from_tensor(torch.full((1, 1, 3, 5), float("-inf")))
    for be in backends.EXACT:
        if supported(be, q, k, v, score_mod=minus_inf):
            assert (attend(q, k, v, score_mod=minus_inf, backend=be) == 0).all(), be


@pytest.mark.parametrize("backend", backends.EXACT)
def test_masked_keys_do_not_leak(backend):
    """Whatever sits in a masked key/value (huge values) has no effect on the output."""
    q, k, v = qkv(lq=6, lk=10)
    mask = masks.padding([10, 6])
    need(backend, q, k, v, mask=mask)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 6:] = 1e4
    v2[1, :, 6:] = 1e6
    a = attend(q, k, v, mask=mask, backend=backend)
    b = attend(q, k2, v2, mask=mask, backend=backend)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_weights_are_exact_zeros_where_masked():
    q, k, v = qkv(lq=7, lk=7)
    _, w = attend(q, k, v, mask=masks.causal(), backend="math", return_weights=True)
    assert (w.triu(1) == 0).all()
    assert torch.isfinite(w).all()


# ---- CPU reduced-precision training: SDPA in fp32 over short keys ----------------------------


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_cpu_half_training_attention_runs_sdpa_in_fp32_over_short_keys(monkeypatch, dtype):
    """PyTorch's CPU flash backward in bf16/fp16 is slow for short keys (sdpa_backend):
    such calls run the kernel in fp32 and return the input dtype; inference calls and long
    keys keep the native kernel. Either way the result matches fp32 math."""
    from attnkit.attention.backends import sdpa_backend as S

    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(q.dtype)
        return real(q, k, v, **kw)

    monkeypatch.setattr(S.F, "scaled_dot_product_attention", spy)
    limit = S.CPU_HALF_GRAD_UPCAST_MAX_KV
    for lk, grad, want in [(16, True, torch.float32), (limit, True, torch.float32),
                           (16, False, dtype), (limit + 8, True, dtype)]:
        seen.clear()
        q, k, v = qkv(lq=lk, lk=lk, dtype=dtype, grad=grad)
        with torch.set_grad_enabled(grad):
            out = S.sdpa(q, k, v, is_causal=True)
        assert seen == [want] and out.dtype == dtype
        ref = attend(q.detach().float(), k.detach().float(), v.detach().float(),
                     mask=masks.causal(), backend="math")
        torch.testing.assert_close(out.detach().float(), ref, **TOL[dtype])
        if grad:
            out.float().sum().backward()
            assert q.grad.dtype == dtype and torch.isfinite(q.grad.float()).all()
    # a float bias is upcast with the inputs, also under autocast
    seen.clear()
    q, k, v = qkv(hkv=4, lq=8, lk=8, dtype=dtype, grad=True)
    bias = torch.randn(8, 8).to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        out = S.sdpa(q, k, v, attn_mask=bias)
    assert seen == [torch.float32] and out.dtype == dtype
    ref = torch.softmax(q.float() @ k.float().transpose(-1, -2) / math.sqrt(8) + bias.float(),
                        -1) @ v.float()
    torch.testing.assert_close(out.detach().float(), ref.detach(), **TOL[dtype])
