"""Property tests (hypothesis): backend agreement and invariants of softmax attention."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnkit.attention import attend, backends, masks
from attnkit.attention.core import _request

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def problems(draw, *, max_len=24, lq_eq_lk=False):
    """Random shapes with GQA divisors, Lq <= Lk, and a random pattern."""
    hkv = draw(st.sampled_from([1, 2, 3]))
    hq = hkv * draw(st.sampled_from([1, 2, 4]))
    b = draw(st.integers(1, 2))
    lk = draw(st.integers(1, max_len))
    lq = lk if lq_eq_lk else draw(st.integers(1, lk))
    d = draw(st.sampled_from([1, 4, 8, 16]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(b=b, hq=hq, hkv=hkv, lq=lq, lk=lk, d=d, seed=seed)


def make_qkv(p, dtype=torch.float32):
    g = torch.Generator().manual_seed(p["seed"])
    q = torch.randn(p["b"], p["hq"], p["lq"], p["d"], generator=g, dtype=dtype)
    k = torch.randn(p["b"], p["hkv"], p["lk"], p["d"], generator=g, dtype=dtype)
    v = torch.randn(p["b"], p["hkv"], p["lk"], p["d"], generator=g, dtype=dtype)
    return q, k, v


@st.composite
def patterns(draw, p):
    """A mask for problem ``p``: none, causal, window(left, right), a random bool tensor, or
    combinations."""
    kind = draw(st.sampled_from(["none", "causal", "window", "window&causal", "random",
                                 "random|window", "padding"]))
    lk = p["lk"]
    left, right = draw(st.integers(0, lk)), draw(st.integers(0, lk))
    if kind == "none":
        return None
    if kind == "causal":
        return masks.causal()
    if kind == "window":
        return masks.sliding_window(left, right)
    if kind == "window&causal":
        return masks.sliding_window(left, 0) & masks.causal()
    if kind == "padding":
        return masks.padding(draw(st.lists(st.integers(0, lk), min_size=p["b"], max_size=p["b"])))
    density = draw(st.sampled_from([0.1, 0.5, 0.9]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    shape = draw(st.sampled_from([(p["b"], 1, p["lq"], lk), (p["lq"], lk),
                                  (p["b"], p["hq"], p["lq"], lk)]))
    dense = torch.rand(shape, generator=g) < density
    if kind == "random":
        return dense
    while dense.dim() < 4:
        dense = dense[None]
    return masks.from_dense(dense.expand(-1, -1, p["lq"], lk)) | masks.sliding_window(left, right)


def _ok(name, q, k, v, mask=None):
    return not backends.get(name).supports(_request(q, k, v, mask, None, 0.0, False))


def _allowed(mask, p):
    shape = (p["b"], p["hq"], p["lq"], p["lk"])
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    if isinstance(mask, torch.Tensor):
        return mask.expand(shape)
    return mask.dense(p["lq"], p["lk"], batch=p["b"], heads=p["hq"]).expand(shape)


# ---- backends agree -----------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_exact_backends_agree_with_math(data):
    p = data.draw(problems())
    mask = data.draw(patterns(p))
    q, k, v = make_qkv(p)
    want = attend(q, k, v, mask=mask, backend="math")
    assert torch.isfinite(want).all()
    for name in backends.EXACT:
        if name != "math" and _ok(name, q, k, v, mask):
            got = attend(q, k, v, mask=mask, backend=name)
            torch.testing.assert_close(got, want, atol=3e-5, rtol=1e-4,
                                       msg=lambda m, n=name: f"{n}: {m}")


@SETTINGS
@given(data=st.data())
def test_exact_backends_agree_with_math_grads(data):
    p = data.draw(problems(max_len=16))
    mask = data.draw(patterns(p))
    q, k, v = (t.requires_grad_() for t in make_qkv(p))
    g = torch.randn(p["b"], p["hq"], p["lq"], p["d"],
                    generator=torch.Generator().manual_seed(p["seed"] + 1))
    want = torch.autograd.grad(attend(q, k, v, mask=mask, backend="math"), (q, k, v), g)
    for name in backends.EXACT:
        if name != "math" and _ok(name, q, k, v, mask):
            got = torch.autograd.grad(attend(q, k, v, mask=mask, backend=name), (q, k, v), g)
            for a, b in zip(got, want, strict=True):
                assert torch.isfinite(a).all()
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ---- invariants (checked on every exact backend that serves the call) ------------------------


def _backends_for(q, k, v, mask=None):
    """Exact backends for the invariant checks. CPU FlexAttention re-traces every new shape
    (~0.5 s a call), so on CPU it is only checked in the agreement tests above, which imply
    every invariant below."""
    skip = {"flex"} if q.device.type == "cpu" else set()
    return [n for n in backends.EXACT if n not in skip and _ok(n, q, k, v, mask)]


@SETTINGS
@given(data=st.data())
def test_outputs_are_convex_combinations_of_values(data):
    """Each live output row is a convex combination of the V rows it may attend to, so every
    feature lies within [min V, max V] over those keys; dead rows are exactly zero."""
    p = data.draw(problems())
    mask = data.draw(patterns(p))
    q, k, v = make_qkv(p)
    q = q * data.draw(st.sampled_from([1.0, 10.0]))  # peaky softmax too
    allowed = _allowed(mask, p)  # (b, hq, lq, lk)
    rep = p["hq"] // p["hkv"]
    vr = v.repeat_interleave(rep, 1)[:, :, None]  # (b, hq, 1, lk, d)
    a = allowed[..., None]
    vmax = vr.masked_fill(~a, float("-inf")).amax(-2)  # (b, hq, lq, d)
    vmin = vr.masked_fill(~a, float("inf")).amin(-2)
    live = allowed.any(-1)
    for name in _backends_for(q, k, v, mask):
        out = attend(q, k, v, mask=mask, backend=name)
        eps = 1e-5
        assert (out[live] <= vmax[live] + eps).all(), name
        assert (out[live] >= vmin[live] - eps).all(), name
        assert (out[~live] == 0).all(), name


@SETTINGS
@given(p=problems(), perm_seed=st.integers(0, 2**31 - 1))
def test_key_permutation_invariance(p, perm_seed):
    """Non-causal, unmasked attention is a function of the *set* of (key, value) pairs."""
    q, k, v = make_qkv(p)
    perm = torch.randperm(p["lk"], generator=torch.Generator().manual_seed(perm_seed))
    for name in _backends_for(q, k, v):
        a = attend(q, k, v, backend=name)
        b = attend(q, k[:, :, perm], v[:, :, perm], backend=name)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@SETTINGS
@given(p=problems(), perm_seed=st.integers(0, 2**31 - 1))
def test_query_permutation_equivariance(p, perm_seed):
    q, k, v = make_qkv(p)
    perm = torch.randperm(p["lq"], generator=torch.Generator().manual_seed(perm_seed))
    for name in _backends_for(q, k, v):
        a = attend(q, k, v, backend=name)
        b = attend(q[:, :, perm], k, v, backend=name)
        torch.testing.assert_close(a[:, :, perm], b, atol=2e-5, rtol=1e-4)


@SETTINGS
@given(data=st.data())
def test_causal_output_ignores_future(data):
    """With a causal mask, query row i (key position t = i + Lk - Lq) is unchanged when the keys
    and values after t are perturbed."""
    p = data.draw(problems())
    t = data.draw(st.integers(0, p["lk"] - 1))
    window = data.draw(st.sampled_from([None, 0, 3]))
    mask = masks.causal() if window is None else masks.sliding_window(window) & masks.causal()
    q, k, v = make_qkv(p)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, t + 1:] += 5 * torch.randn_like(k2[:, :, t + 1:])
    v2[:, :, t + 1:] = 1e3
    rows = torch.arange(p["lq"]) + (p["lk"] - p["lq"]) <= t  # query rows at positions <= t
    for name in _backends_for(q, k, v, mask):
        a = attend(q, k, v, mask=mask, backend=name)
        b = attend(q, k2, v2, mask=mask, backend=name)
        torch.testing.assert_close(a[:, :, rows], b[:, :, rows], atol=1e-5, rtol=1e-5)


@SETTINGS
@given(p=problems(), c=st.floats(-50, 50))
def test_shift_invariance_of_scores(p, c):
    """Adding a fixed vector u to every key adds q·u to every score of a query row; softmax is
    invariant to a per-row constant, so the output must not change."""
    q, k, v = make_qkv(p)
    u = torch.full((p["d"],), c / max(1, p["d"]))
    for name in _backends_for(q, k, v):
        a = attend(q, k, v, backend=name)
        b = attend(q, k + u, v, backend=name)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
