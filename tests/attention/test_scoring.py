"""Cosine (Swin V2) and additive (Bahdanau) scoring vs explicit references / the math backend."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.attention import attend, masks
from attnkit.attention.score_mods import bias_from_tensor
from attnkit.attention.scoring import AdditiveAttention, CosineAttention

# ---- cosine ------------------------------------------------------------------------------


def _cosine_reference(q, k, v, tau, allowed=None):
    """softmax(τ · cos(q_i, k_j)) v, written out with explicit norms."""
    qn = q / q.norm(dim=-1, keepdim=True)
    kn = k / k.norm(dim=-1, keepdim=True)
    s = tau.view(1, -1, 1, 1) * (qn @ kn.transpose(-1, -2))
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    return s.softmax(-1) @ v


@pytest.mark.parametrize("num_heads", [None, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_cosine_matches_reference_on_math_and_sdpa(num_heads, causal):
    att = CosineAttention(num_heads=num_heads, init_temperature=7.0)
    if num_heads:
        with torch.no_grad():
            att.logit_scale.copy_(torch.log(torch.tensor([2.0, 7.0, 30.0])))
    q, k, v = torch.randn(3, 2, 3, 9, 8).unbind(0)
    m = masks.causal() if causal else None
    ref = _cosine_reference(q, k, v, att.temperature, m.dense(9, 9) if m else None)
    for be in ("math", "sdpa", "auto"):
        torch.testing.assert_close(att(q, k, v, mask=m, backend=be), ref, rtol=1e-5, atol=1e-5)


def test_cosine_is_scale_invariant_and_bounded():
    att = CosineAttention(init_temperature=5.0)
    q, k, v = torch.randn(3, 1, 2, 6, 4).unbind(0)
    out, w = att(q, k, v, return_weights=True)
    out2 = att(q * 1e3, k * 1e-3, v)
    torch.testing.assert_close(out, out2, rtol=1e-5, atol=1e-5)
    # |score| <= τ ⇒ any two probabilities in a row differ by at most e^{2τ}.
    ratio = w.amax(-1) / w.amin(-1)
    assert (ratio <= math.exp(2 * 5.0) * (1 + 1e-4)).all()


def test_cosine_temperature_clamped_and_learnable():
    att = CosineAttention(num_heads=2, init_temperature=10.0, max_temperature=100.0)
    torch.testing.assert_close(att.temperature, torch.full((2,), 10.0))
    with torch.no_grad():
        att.logit_scale.fill_(10.0)
    torch.testing.assert_close(att.temperature, torch.full((2,), 100.0))
    with torch.no_grad():
        att.logit_scale.fill_(math.log(3.0))
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    att(q, k, v, backend="math").pow(2).sum().backward()
    assert att.logit_scale.grad is not None and att.logit_scale.grad.abs().sum() > 0


def test_cosine_gqa_and_cross_attention():
    att = CosineAttention()
    q = torch.randn(1, 4, 3, 8)
    k, v = torch.randn(2, 1, 2, 7, 8).unbind(0)
    ref = _cosine_reference(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                            att.temperature)
    torch.testing.assert_close(att(q, k, v, backend="math"), ref, rtol=1e-5, atol=1e-5)


def test_cosine_bad_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        CosineAttention(num_heads=0)
    with pytest.raises(ValueError, match="init_temperature"):
        CosineAttention(init_temperature=200.0, max_temperature=100.0)
    att = CosineAttention(num_heads=2)
    with pytest.raises(ValueError, match="num_heads=2"):
        att(*torch.randn(3, 1, 3, 4, 8).unbind(0))


# ---- additive ----------------------------------------------------------------------------


def _additive_scores_loop(m: AdditiveAttention, q, k):
    """vᵀ tanh(W_q q_i + W_k k_j), one (i, j) pair at a time."""
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    s = torch.empty(B, H, Lq, Lk)
    for b in range(B):
        for h in range(H):
            for i in range(Lq):
                for j in range(Lk):
                    hk = min(h, k.shape[1] - 1)
                    s[b, h, i, j] = m.v @ torch.tanh(m.w_q(q[b, h, i]) + m.w_k(k[b, hk, j]))
    return s


def _math_with_scores(scores, v, mask):
    """The math backend fed the additive scores as a bias (q = k = 0): its own masking rules."""
    B, H, Lq, Lk = scores.shape
    z = torch.zeros(B, H, Lq, 1)
    return attend(z, torch.zeros(B, H, Lk, 1), v.expand(B, H, Lk, -1), mask=mask,
                  score_mod=bias_from_tensor(scores), backend="math", return_weights=True)


@pytest.mark.parametrize("bias", [False, True])
def test_additive_scores_match_pairwise_loop(bias):
    m = AdditiveAttention(6, attn_dim=5, key_dim=4, bias=bias)
    q = torch.randn(2, 2, 3, 6)
    k = torch.randn(2, 1, 4, 4)  # one shared kv head
    with torch.no_grad():
        torch.testing.assert_close(m.scores(q, k), _additive_scores_loop(m, q, k),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "padding", "bool", "dead_row"])
def test_additive_masking_matches_math_backend(mask_kind):
    B, H, Lq, Lk = 2, 2, 5, 7
    m = AdditiveAttention(8, attn_dim=6)
    q, k = torch.randn(B, H, Lq, 8), torch.randn(B, H, Lk, 8)
    v = torch.randn(B, H, Lk, 3)
    mask = {
        "none": None,
        "causal": masks.causal(),
        "padding": masks.padding([7, 3]),
        "bool": torch.rand(B, 1, Lq, Lk) > 0.4,
        "dead_row": torch.ones(Lq, Lk, dtype=torch.bool).index_fill(0, torch.tensor([1, 3]), False),
    }[mask_kind]
    with torch.no_grad():
        out, w = m(q, k, v, mask=mask, return_weights=True)
        ref_out, ref_w = _math_with_scores(m.scores(q, k), v, mask)
    assert not out.isnan().any()
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)
    if mask_kind == "dead_row":
        assert (out[:, :, [1, 3]] == 0).all() and (w[:, :, [1, 3]] == 0).all()


def test_additive_3d_inputs_and_3d_mask():
    m = AdditiveAttention(4, attn_dim=8, key_dim=6)
    q, k, v = torch.randn(2, 5, 4), torch.randn(2, 7, 6), torch.randn(2, 7, 3)
    mask = torch.rand(2, 5, 7) > 0.3
    out, w = m(q, k, v, mask=mask, return_weights=True)
    assert out.shape == (2, 5, 3) and w.shape == (2, 5, 7)
    out4, w4 = m(q[:, None], k[:, None], v[:, None], mask=mask[:, None], return_weights=True)
    torch.testing.assert_close(out, out4[:, 0])
    torch.testing.assert_close(w, w4[:, 0])


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_additive_chunking_is_exact_incl_gradients(chunk):
    m = AdditiveAttention(8, attn_dim=16)
    q = torch.randn(1, 2, 10, 8, requires_grad=True)
    k, v = torch.randn(2, 1, 2, 12, 8).unbind(0)
    out_full = m(q, k, v, mask=masks.causal())
    g_full = torch.autograd.grad(out_full.sum(), [q, m.v])
    out_chunk = m(q, k, v, mask=masks.causal(), chunk_size=chunk)
    g_chunk = torch.autograd.grad(out_chunk.sum(), [q, m.v])
    torch.testing.assert_close(out_chunk, out_full, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_chunk, g_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_additive_bad_arguments():
    with pytest.raises(ValueError, match="attn_dim"):
        AdditiveAttention(4, attn_dim=0)
    with pytest.raises(ValueError, match="chunk_size"):
        AdditiveAttention(4, attn_dim=4, chunk_size=0)
    m = AdditiveAttention(4, attn_dim=4)
    with pytest.raises(ValueError, match="must all be 4-D"):
        m(torch.randn(1, 2, 3, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="q last dim 4"):
        m(torch.randn(1, 3, 5), torch.randn(1, 3, 4), torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        m(torch.randn(1, 3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 2),
          mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool tensor"):
        m(torch.randn(1, 3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 2),
          mask=torch.ones(3, 5))
