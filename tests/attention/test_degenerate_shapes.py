"""Empty inputs and windows wider than the sequence: one defined outcome in every backend."""

from __future__ import annotations

import pytest
import torch

from attnkit.attention import (
    AdditiveAttention,
    CosineAttention,
    MultiHeadAttention,
    attend,
    explain,
    masks,
)

BACKENDS = ["auto", "math", "sdpa", "flex", "blocked", "linear"]
MASKS = {"none": None, "causal": masks.causal(), "window": masks.sliding_window(2, 1)}


def qkv(b, lq, lk, *, hq=4, hkv=2, d=8, dv=6, grad=False):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, hq, lq, d, generator=g)
    k = torch.randn(b, hkv, lk, d, generator=g)
    v = torch.randn(b, hkv, lk, dv, generator=g)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def _skip_unsupported(backend, mask_name):
    if backend == "linear" and mask_name == "window":
        pytest.skip("linear serves no mask / causal only")


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_queries_gives_an_empty_output(backend, mask_name):
    _skip_unsupported(backend, mask_name)
    q, k, v = qkv(2, 0, 5)
    out = attend(q, k, v, mask=MASKS[mask_name], backend=backend)
    assert out.shape == (2, 4, 0, 6)


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_keys_gives_zeros_like_a_fully_masked_row(backend, mask_name):
    _skip_unsupported(backend, mask_name)
    q, k, v = qkv(2, 3, 0)
    q[0, 0, 0, 0] = float("nan")  # a row that reads nothing is zeros whatever q holds
    out = attend(q, k, v, mask=MASKS[mask_name], backend=backend)
    assert out.shape == (2, 4, 3, 6) and torch.equal(out, torch.zeros(2, 4, 3, 6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    q, k, v = qkv(0, 3, 5)
    assert attend(q, k, v, mask=masks.causal(), backend=backend).shape == (0, 4, 3, 6)


def test_empty_inputs_keep_the_autograd_graph_and_weights():
    q, k, v = qkv(1, 3, 0, grad=True)
    out, w = attend(q, k, v, return_weights=True)
    assert w.shape == (1, 4, 3, 0)
    out.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q)) and k.grad.shape == k.shape
    q, k, v = qkv(1, 0, 4, grad=True)
    attend(q, k, v, mask=masks.causal()).sum().backward()
    assert torch.equal(k.grad, torch.zeros_like(k))


def test_explain_says_how_empty_inputs_are_served():
    q, k, v = qkv(1, 3, 0)
    assert explain(q, k, v).backend == "math" and "empty" in explain(q, k, v).why


def test_modules_follow_the_same_empty_rules():
    """MultiHeadAttention with no tokens, additive / cosine attention with no keys."""
    mha = MultiHeadAttention(8, 2)
    assert mha(torch.randn(2, 0, 8)).shape == (2, 0, 8)
    q, k, v = qkv(1, 3, 0, hq=2, hkv=2, dv=8)
    assert torch.equal(AdditiveAttention(8, 4)(q, k, v), torch.zeros(1, 2, 3, 8))
    assert torch.equal(CosineAttention(2)(q, k, v), torch.zeros(1, 2, 3, 8))


# ---- windows wider than the sequence --------------------------------------------------------


@pytest.mark.parametrize("lq,lk", [(40, 40), (1, 40), (7, 40)])
def test_window_wider_than_the_sequence_is_causal(lq, lk):
    wide = masks.sliding_window(10**12)
    q, k, v = qkv(1, lq, lk)
    d = explain(q, k, v, mask=wide)
    assert d.backend == "sdpa" and "pattern" not in d.why  # the dense fast path, no density probe
    for backend in ("auto", "math", "blocked", "linear"):
        assert torch.allclose(attend(q, k, v, mask=wide, backend=backend),
                              attend(q, k, v, mask=masks.causal(), backend=backend), atol=1e-6)
    assert not wide._cache  # nothing was materialised for the wide window


def test_window_wider_both_ways_is_no_mask():
    wide = masks.sliding_window(10**12, 10**12)
    q, k, v = qkv(2, 9, 9)
    assert torch.allclose(attend(q, k, v, mask=wide), attend(q, k, v), atol=1e-6)
    assert wide.for_shape(9, 9).kind == "full" and not wide._cache


def test_window_beyond_int64_still_works():
    wide = masks.sliding_window(10**30, 0)
    q, k, v = qkv(1, 5, 5)
    assert torch.allclose(attend(q, k, v, mask=wide, backend="math"),
                          attend(q, k, v, mask=masks.causal(), backend="math"), atol=1e-6)
    assert wide.dense(5, 5).equal(masks.causal().dense(5, 5))


def test_window_narrower_than_the_sequence_is_unchanged():
    w = masks.sliding_window(3, 0)
    assert w.for_shape(4, 4).kind == "causal"  # reaches every earlier key of 4
    assert w.for_shape(5, 5) is w
    w2 = masks.sliding_window(3, 1)
    assert w2.for_shape(4, 4) is w2 and w2.for_shape(2, 4).kind == "full"
