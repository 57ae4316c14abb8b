"""T5 relative position bias: bucket formula vs Hugging Face, bias layout, backends, gradients."""

from __future__ import annotations

import warnings

import pytest
import torch

from attnkit.attention import attend, masks
from attnkit.attention.relative_bias import RelativePositionBias, relative_position_bucket

t5 = pytest.importorskip("transformers.models.t5.modeling_t5")


def _hf_attention(rpb: RelativePositionBias):
    """A transformers T5Attention carrying the same table as ``rpb`` (the independent reference)."""
    from transformers import T5Config

    cfg = T5Config(d_model=16, d_kv=4, num_heads=rpb.num_heads,
                   relative_attention_num_buckets=rpb.num_buckets,
                   relative_attention_max_distance=rpb.max_distance,
                   is_decoder=not rpb.bidirectional)
    hf = t5.T5Attention(cfg, has_relative_attention_bias=True)
    with torch.no_grad():
        hf.relative_attention_bias.weight.copy_(rpb.embedding.weight)
    return hf


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20), (6, 7), (64, 1000)])
def test_bucket_matches_transformers(bidirectional, num_buckets, max_distance):
    rel = torch.arange(-3000, 3001)
    ours = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    ref = t5.T5Attention._relative_position_bucket(rel, bidirectional=bidirectional,
                                                   num_buckets=num_buckets,
                                                   max_distance=max_distance)
    assert torch.equal(ours, ref)
    assert ours.min() >= 0 and ours.max() < num_buckets


def test_bucket_basic_properties():
    rel = torch.arange(-200, 201)
    b = relative_position_bucket(rel, True, 32, 128)
    assert torch.equal(b[200 - torch.arange(8)], torch.arange(8))  # exact small past offsets
    assert torch.equal(b[201 + torch.arange(7)], 17 + torch.arange(7))  # exact small future
    assert (b[rel > 0] >= 16).all() and (b[rel <= 0] < 16).all()  # direction halves
    uni = relative_position_bucket(rel, False, 32, 128)
    assert (uni[rel >= 0] == 0).all()  # the future collapses to bucket 0


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("lq,lk", [(9, 9), (3, 11), (1, 300)])
def test_bias_matches_compute_bias(bidirectional, lq, lk):
    rpb = RelativePositionBias(num_heads=3, num_buckets=16, max_distance=40,
                               bidirectional=bidirectional)
    hf = _hf_attention(rpb)
    ours = rpb.bias(lq, lk)
    assert ours.shape == (1, 3, lq, lk)
    # Bottom-right alignment == HF decoding with `past_seen_tokens = Lk - Lq`.
    ref = hf.compute_bias(lq, lk, past_seen_tokens=lk - lq)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    assert torch.equal(rpb(lq, lk), ours)


def test_score_mod_metadata():
    mod = RelativePositionBias(4).score_mod()
    assert mod.additive and mod.head_dependent and not mod.batch_dependent
    assert mod.requires_grad


@pytest.mark.parametrize("mask", [None, "causal"])
@pytest.mark.parametrize("lq,lk", [(12, 12), (5, 12)])
def test_backends_agree_and_match_explicit_bias(mask, lq, lk):
    rpb = RelativePositionBias(num_heads=4, num_buckets=8, max_distance=16)
    q = torch.randn(2, 4, lq, 8)
    k, v = torch.randn(2, 2, 2, lk, 8).unbind(0)  # GQA: 2 kv heads
    m = masks.causal() if mask else None
    ref = attend(q, k, v, mask=m, score_mod=rpb.score_mod(), backend="math")
    # Independent route: explicit HF bias added to plain math scores.
    scores = q @ k.repeat_interleave(2, 1).transpose(-1, -2) / 8 ** 0.5
    scores = scores + _hf_attention(rpb).compute_bias(lq, lk, past_seen_tokens=lk - lq)
    if m is not None:
        scores = scores.masked_fill(~m.dense(lq, lk), float("-inf"))
    explicit = scores.softmax(-1) @ v.repeat_interleave(2, 1)
    torch.testing.assert_close(ref, explicit, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for be in ("sdpa", "flex", "blocked"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = attend(q, k, v, mask=m, score_mod=rpb.score_mod(), backend=be)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_gradients_reach_embedding_math_and_sdpa():
    rpb = RelativePositionBias(num_heads=2, num_buckets=8, max_distance=16)
    q, k, v = torch.randn(3, 1, 2, 10, 8).unbind(0)
    grads = {}
    for be in ("math", "sdpa"):
        rpb.zero_grad()
        out = attend(q, k, v, mask=masks.causal(), score_mod=rpb.score_mod(), backend=be)
        out.pow(2).sum().backward()
        g = rpb.embedding.weight.grad
        assert g is not None and g.abs().sum() > 0
        grads[be] = g.clone()
    torch.testing.assert_close(grads["math"], grads["sdpa"], rtol=1e-4, atol=1e-5)
    # Unidirectional causal: future buckets (r > 0) never get gradient.
    rel = torch.arange(10)[None, :] - torch.arange(10)[:, None]
    used = relative_position_bucket(rel[rel <= 0], True, 8, 16).unique()
    unused = torch.ones(8, dtype=torch.bool)
    unused[used] = False
    assert (grads["math"][unused] == 0).all()


def test_auto_skips_cpu_flex_when_table_needs_grad():
    from attnkit.attention import explain

    rpb = RelativePositionBias(num_heads=2)
    q, k, v = torch.randn(3, 1, 2, 6, 8).unbind(0)
    d = explain(q, k, v, mask=masks.sliding_window(2), score_mod=rpb.score_mod())
    assert d.backend != "flex"


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_heads=0), "num_heads"),
    (dict(num_heads=2, num_buckets=3), "num_buckets"),
    (dict(num_heads=2, num_buckets=32, max_distance=8), "max_distance"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RelativePositionBias(**kwargs)


def test_bucket_rejects_float_positions():
    with pytest.raises(ValueError, match="integer"):
        relative_position_bucket(torch.zeros(3), True, 32, 128)


def test_score_mod_bias_reuse_rules():
    """bias() hands back its last result for the same request only for per-forward mods."""
    from attnkit.attention.score_mods import alibi, bias_from_tensor

    rpb = RelativePositionBias(4, num_buckets=8, max_distance=16)
    mod = rpb.score_mod()  # per forward: reused even while gradients flow into the table
    a = mod.bias(5, 7, batch=1, heads=4)
    assert mod.bias(5, 7, batch=1, heads=4) is a
    assert mod.bias(5, 8, batch=1, heads=4) is not a  # another shape
    assert rpb.score_mod().bias(5, 7, batch=1, heads=4) is not a  # another forward
    (a.sum() + mod.bias(5, 7, batch=1, heads=4).sum()).backward()
    torch.testing.assert_close(rpb.embedding.weight.grad, 2 * torch.autograd.grad(
        rpb.score_mod().bias(5, 7, batch=1, heads=4).sum(), rpb.embedding.weight)[0])
    with torch.no_grad():
        rpb.embedding.weight.add_(1.0)  # an in-place update is a new request
    b = mod.bias(5, 7, batch=1, heads=4)
    torch.testing.assert_close(b, rpb.bias(5, 7))

    al = alibi(4)  # long-lived: keeps nothing (the bias would outlive the forward pass)
    assert al.bias(3, 3, batch=1, heads=4) is not al.bias(3, 3, batch=1, heads=4)
    once = al.for_one_forward()
    assert once.per_forward and not al.per_forward
    assert once.bias(3, 3, batch=1, heads=4) is once.bias(3, 3, batch=1, heads=4)
    keep = torch.tensor([[True, True, False]])
    masked = once.bias(3, 3, batch=1, heads=4, mask=keep)
    assert masked is once.bias(3, 3, batch=1, heads=4, mask=keep)
    assert torch.isneginf(masked[..., 2]).all() and torch.isfinite(masked[..., :2]).all()
    assert once.bias(3, 3, batch=1, heads=4, mask=keep.clone()) is not masked  # another mask
    keep[0, 1] = False  # an in-place change to the mask is a new request
    assert torch.isneginf(once.bias(3, 3, batch=1, heads=4, mask=keep)[..., 1]).all()
    with torch.inference_mode():
        t = torch.randn(1, 4, 3, 3)
        inf = bias_from_tensor(t).for_one_forward()  # no version counter: never reused
        assert inf.bias(3, 3, batch=1, heads=4) is not inf.bias(3, 3, batch=1, heads=4)
