"""Hierarchical (local + coarse summary) attention: fast == reference, and defining properties."""

from __future__ import annotations

import pytest
import torch

from attnkit.attention import attend, hierarchical, masks
from attnkit.attention.hierarchical import (
    HierarchicalAttention,
    _hierarchical_explicit,
    hierarchical_attention,
    hierarchical_attention_reference,
    hierarchical_score_numel,
)


def _qkv(B=1, H=2, N=23, D=8, Dv=5, Hkv=None):
    Hkv = H if Hkv is None else Hkv
    return torch.randn(B, H, N, D), torch.randn(B, Hkv, N, D), torch.randn(B, Hkv, N, Dv)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("neighbours", [0, 1, 2])
@pytest.mark.parametrize("N,block", [(23, 4), (16, 4), (9, 3), (5, 8)])
def test_fast_matches_reference(causal, neighbours, N, block):
    q, k, v = _qkv(N=N)
    fast = hierarchical_attention(q, k, v, block=block, neighbours=neighbours, causal=causal)
    ref = hierarchical_attention_reference(q, k, v, block=block, neighbours=neighbours,
                                           causal=causal)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_fast_matches_reference_gqa_and_scale():
    q, k, v = _qkv(B=2, H=4, Hkv=2, N=14)
    kw = dict(block=3, neighbours=1, causal=True, scale=0.7)
    torch.testing.assert_close(hierarchical_attention(q, k, v, **kw),
                               hierarchical_attention_reference(q, k, v, **kw),
                               rtol=1e-5, atol=1e-5)


# ---- fused SDPA path (no weights) vs the reference and the explicit weights path ----------


def _grads(fn, q, k, v, **kw):
    """Output and (dq, dk, dv) of ``(fn(q, k, v) * g).sum()`` for a fixed random ``g``."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, **kw)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * g.to(out.dtype)).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("neighbours", [0, 1, 2])
@pytest.mark.parametrize("N,block", [(23, 4), (16, 4), (9, 3), (5, 8), (1, 4), (40, 7)])
def test_fast_grads_match_reference_fp64(causal, neighbours, N, block):
    # The reference rounds its log(n_J) bias to fp32 (torch.tensor(list of floats)), hence
    # ~1e-8 rather than ~1e-15; with block=1 (log 1 = 0 exactly) the match is to rounding.
    q, k, v = (x.double() for x in _qkv(B=2, H=2, N=N))
    kw = dict(block=block, neighbours=neighbours, causal=causal)
    fast = _grads(hierarchical_attention, q, k, v, **kw)
    ref = _grads(hierarchical_attention_reference, q, k, v, **kw)
    for a, b in zip(fast, ref, strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("neighbours", [0, 2])
def test_fast_grads_match_reference_fp64_tight(causal, neighbours):
    q, k, v = (x.double() for x in _qkv(B=2, H=2, N=11))
    kw = dict(block=1, neighbours=neighbours, causal=causal, scale=0.6)
    fast = _grads(hierarchical_attention, q, k, v, **kw)
    ref = _grads(hierarchical_attention_reference, q, k, v, **kw)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("neighbours", [0, 1, 2])
@pytest.mark.parametrize("N,block", [(23, 4), (32, 8), (7, 3)])
def test_fast_matches_explicit_fp32_with_grads(causal, neighbours, N, block):
    q, k, v = _qkv(B=2, H=3, N=N, D=16, Dv=12)
    kw = dict(block=block, neighbours=neighbours, causal=causal)
    fast = _grads(hierarchical_attention, q, k, v, **kw)
    explicit = _grads(lambda *qkv, **opt: _hierarchical_explicit(*qkv, scale=None, **opt)[0],
                      q, k, v, **kw)
    ref = _grads(hierarchical_attention_reference, q.double(), k.double(), v.double(), **kw)
    for a, b, r in zip(fast, explicit, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("neighbours", [0, 1, 2])
@pytest.mark.parametrize("N,block", [(23, 2), (40, 3), (17, 4)])
def test_fast_causal_groups_match_reference(monkeypatch, neighbours, N, block):
    # Tiny groups so that the causal query-block grouping (trimmed summary columns) is used.
    monkeypatch.setattr(hierarchical, "_GROUP_BLOCKS", 2)
    monkeypatch.setattr(hierarchical, "_MAX_GROUPS", 5)
    q, k, v = (x.double() for x in _qkv(B=2, H=2, N=N))
    kw = dict(block=block, neighbours=neighbours, causal=True)
    fast = _grads(hierarchical_attention, q, k, v, **kw)
    ref = _grads(hierarchical_attention_reference, q, k, v, **kw)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fast_low_precision_matches_explicit(dtype):
    # Both paths compute in fp32 and round once at the end.
    q, k, v = (x.to(dtype) for x in _qkv(B=2, H=2, N=37, D=16, Dv=16))
    kw = dict(block=5, neighbours=1, causal=True)
    fast = hierarchical_attention(q, k, v, **kw)
    explicit = _hierarchical_explicit(q, k, v, scale=None, **kw)[0]
    assert fast.dtype == dtype
    torch.testing.assert_close(fast, explicit, rtol=1e-2, atol=1e-2)


def test_return_weights_still_consistent():
    q, k, v = _qkv(B=2, H=2, N=19)
    kw = dict(block=4, neighbours=1, causal=True)
    out, w = hierarchical_attention(q, k, v, return_weights=True, **kw)
    torch.testing.assert_close(out, hierarchical_attention(q, k, v, **kw), rtol=1e-5, atol=1e-5)
    assert w.local.shape == (2, 2, 19, 8) and w.summary.shape == (2, 2, 19, 5)


def test_empty_sequence():
    q = torch.randn(1, 2, 0, 8, requires_grad=True)
    out = hierarchical_attention(q, q, q, block=4, causal=True)
    out.sum().backward()
    assert out.shape == (1, 2, 0, 8) and q.grad.shape == q.shape


@pytest.mark.parametrize("causal", [False, True])
def test_single_block_is_exact_attention(causal):
    q, k, v = _qkv(N=11)
    m = masks.causal() if causal else None
    exact = attend(q, k, v, mask=m, backend="math")
    for block in (11, 16):
        out = hierarchical_attention(q, k, v, block=block, causal=causal)
        torch.testing.assert_close(out, exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("neighbours", [0, 1])
@pytest.mark.parametrize("N,block", [(24, 4), (22, 5)])
def test_constant_keys_within_blocks_is_exact(causal, neighbours, N, block):
    """Mean pooling is lossless for keys constant per block; the log(n_J) bias restores each
    block's mass, so the result equals exact attention — for arbitrary values."""
    nb = -(-N // block)
    q = torch.randn(1, 2, N, 8)
    k = torch.randn(1, 2, nb, 8).repeat_interleave(block, dim=2)[:, :, :N]  # last block partial
    v = torch.randn(1, 2, N, 6)  # values need not be constant
    exact = attend(q, k, v, mask=masks.causal() if causal else None, backend="math")
    out = hierarchical_attention(q, k, v, block=block, neighbours=neighbours, causal=causal)
    torch.testing.assert_close(out, exact, rtol=1e-5, atol=1e-5)
    # fp64: the fast path is exact to rounding (independent of the reference's fp32 bias).
    q64, k64, v64 = q.double(), k.double(), v.double()
    exact64 = attend(q64, k64, v64, mask=masks.causal() if causal else None, backend="math")
    out64 = hierarchical_attention(q64, k64, v64, block=block, neighbours=neighbours,
                                   causal=causal)
    torch.testing.assert_close(out64, exact64, rtol=0, atol=1e-12)
    # Non-trivial: the coarse tokens do carry mass (queries past the exact window).
    w = hierarchical_attention(q, k, v, block=block, neighbours=neighbours, causal=causal,
                               return_weights=True)[1]
    first = (neighbours + 1) * block  # causal queries before this have no past summary
    assert (w.summary[:, :, first:].sum(-1) > 1e-3).all()


def test_summaries_not_double_counted():
    """Weights over [local ∪ summaries] sum to 1 and no block appears both ways."""
    q, k, v = _qkv(N=20)
    for causal in (False, True):
        out, w = hierarchical_attention(q, k, v, block=4, neighbours=1, causal=causal,
                                        return_weights=True)
        total = w.local.sum(-1) + w.summary.sum(-1)
        torch.testing.assert_close(total, torch.ones_like(total))
        for i in range(20):
            local_blocks = {int(j) // 4 for j in w.local_index[i // 4] if j >= 0}
            summary_blocks = set(torch.nonzero(w.summary[0, 0, i] > 0).flatten().tolist())
            assert not (local_blocks & summary_blocks)
            if causal:
                assert all(J < i // 4 for J in summary_blocks)


def test_score_tensor_is_subquadratic():
    # Exact accounting against the weights actually produced.
    q, k, v = _qkv(N=30)
    _, w = hierarchical_attention(q, k, v, block=4, neighbours=1, return_weights=True)
    nb = 8
    assert w.local.shape[-1] + w.summary.shape[-1] == 3 * 4 + nb
    assert hierarchical_score_numel(30, 4, 1) == 32 * (3 * 4 + nb)
    # O(N (block + N/block)): with block = √N the ratio to N² falls like 1/√N.
    ratios = []
    for N in (256, 1024, 4096, 16384):
        b = int(N ** 0.5)
        n = hierarchical_score_numel(N, b)
        assert n == N * (b + N // b)
        ratios.append(n / N**2)
    assert all(r2 < r1 / 1.9 for r1, r2 in zip(ratios, ratios[1:], strict=False))
    # Doubling N at fixed block (N/block ≪ block) roughly doubles the cost: linear regime.
    assert hierarchical_score_numel(2048, 256) / hierarchical_score_numel(1024, 256) < 2.1


@pytest.mark.parametrize("neighbours", [0, 1])
def test_causal_never_uses_future(neighbours):
    q, k, v = _qkv(N=21)
    out = hierarchical_attention(q, k, v, block=4, neighbours=neighbours, causal=True)
    for t in (0, 3, 4, 10, 19):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[:, :, t + 1:] = torch.randn_like(x[:, :, t + 1:]) * 10
        out2 = hierarchical_attention(q2, k2, v2, block=4, neighbours=neighbours, causal=True)
        torch.testing.assert_close(out2[:, :, : t + 1], out[:, :, : t + 1], rtol=0, atol=1e-6)


def test_gradients_and_module():
    q, k, v = (x.requires_grad_() for x in _qkv(N=13))
    att = HierarchicalAttention(block=4, neighbours=1, causal=True)
    att(q, k, v).sum().backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q, k, v))
    assert "block=4" in repr(att)


def test_bad_arguments():
    q, k, v = _qkv(N=8)
    with pytest.raises(ValueError, match="block"):
        hierarchical_attention(q, k, v, block=0)
    with pytest.raises(ValueError, match="neighbours"):
        HierarchicalAttention(block=2, neighbours=-1)
    with pytest.raises(ValueError, match="self-attention"):
        hierarchical_attention(q, k[:, :, :5], v[:, :, :5], block=2)
    with pytest.raises(ValueError, match="4-D"):
        hierarchical_attention(q[0], k, v, block=2)
