"""Sinusoidal / learned positions and RoPE (against transformers' LLaMA implementation)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnkit.positions import LearnedPositions, RotaryEmbedding, SinusoidalPositions

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig  # noqa: E402
from transformers.models.llama.modeling_llama import (  # noqa: E402
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)


def test_sinusoidal_matches_formula():
    d = 16
    pe = SinusoidalPositions(d, max_len=8)
    table = pe(50)  # grows past max_len on demand
    assert table.shape == (50, d)
    for pos in (0, 1, 7, 49):
        for i in (0, 3, 7):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    idx = torch.tensor([[3, 4], [9, 49]])  # (B, L) positions -> (B, L, d)
    torch.testing.assert_close(pe(idx), table[idx])
    assert "pe" not in pe.state_dict()


def test_learned_positions_limit():
    lp = LearnedPositions(max_len=8, d_model=4)
    assert lp(8).shape == (8, 4)
    torch.testing.assert_close(lp(torch.tensor([2, 5])), lp.emb.weight[[2, 5]])
    with pytest.raises(ValueError, match="max_len=8"):
        lp(torch.tensor([3, 8]))


def _hf_rope(head_dim: int, **rope_parameters):
    cfg = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4,
                      rope_parameters={"rope_theta": 10000.0, "rope_type": "default",
                                       **rope_parameters})
    return LlamaRotaryEmbedding(cfg)


@pytest.mark.parametrize("scaling", [None, ("linear", 2.0), ("linear", 3.0)])
def test_rope_matches_transformers_llama(scaling):
    torch.manual_seed(0)
    D, B, L = 16, 2, 12
    hf = _hf_rope(D) if scaling is None else _hf_rope(D, rope_type="linear", factor=scaling[1])
    ours = RotaryEmbedding(D, scaling=scaling, max_len=4)  # tables must grow
    q, k = torch.randn(B, 4, L, D), torch.randn(B, 2, L, D)
    pos = torch.stack([torch.arange(L), torch.arange(100, 100 + L)])  # (B, L), per sequence
    cos, sin = hf(q, pos)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    got_q, got_k = ours(q, k, pos)
    torch.testing.assert_close(got_q, want_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k, want_k, atol=1e-5, rtol=1e-5)
    # (L,) positions broadcast over the batch
    got_q1, _ = ours.apply(q, k, pos[1])
    want_q1, _ = apply_rotary_pos_emb(q, k, *hf(q, pos[1:].expand(B, L)))
    torch.testing.assert_close(got_q1, want_q1, atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    D = 32
    rope = RotaryEmbedding(D)
    q, k = torch.randn(1, 1, 1, D), torch.randn(1, 1, 1, D)

    def score(m: int, n: int) -> float:
        rq, _ = rope(q, q, torch.tensor([m]))
        _, rk = rope(k, k, torch.tensor([n]))
        return (rq * rk).sum().item()

    for m, n in [(5, 2), (0, 7), (9, 9)]:
        for shift in (1, 13, 200):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
    # position 0 is the identity
    torch.testing.assert_close(rope(q, k, torch.tensor([0]))[0], q)


def test_rope_ntk_scaling():
    D, f = 16, 4.0
    plain, ntk = RotaryEmbedding(D), RotaryEmbedding(D, scaling=("ntk", f))
    assert ntk.base == pytest.approx(10000 * f ** (D / (D - 2)))
    # highest frequency unchanged, lowest one divided by the factor (interpolated)
    assert ntk.inv_freq[0].item() == pytest.approx(plain.inv_freq[0].item())
    assert ntk.inv_freq[-1].item() == pytest.approx(plain.inv_freq[-1].item() / f, rel=1e-5)
    with pytest.raises(ValueError, match="unknown rope scaling"):
        RotaryEmbedding(D, scaling=("yarn", 2.0))


def test_rope_keeps_module_apply_and_dtype():
    model = nn.Sequential(nn.Linear(4, 4), RotaryEmbedding(8))
    visited = []
    model.apply(lambda m: visited.append(type(m).__name__))
    assert "RotaryEmbedding" in visited and "Linear" in visited
    rope = RotaryEmbedding(8)
    q = torch.randn(1, 2, 3, 8, dtype=torch.bfloat16)
    assert rope(q, q, torch.arange(3))[0].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="head_dim=8"):
        rope(torch.randn(1, 1, 2, 6), torch.randn(1, 1, 2, 6), torch.arange(2))


@pytest.mark.parametrize("make", [lambda: SinusoidalPositions(8, max_len=4),
                                  lambda: LearnedPositions(max_len=40, d_model=8)])
def test_range_and_length_positions_equal_tensor_positions(make):
    """A ``range`` (what CausalLM passes) and an int length select the same rows as a tensor."""
    pe = make()
    torch.testing.assert_close(pe(range(5, 21)), pe(torch.arange(5, 21)))
    torch.testing.assert_close(pe(16), pe(torch.arange(16)))
    assert pe(range(3, 3)).shape == (0, 8)


def test_range_positions_grow_tables_and_are_checked():
    pe = SinusoidalPositions(8, max_len=4)
    assert pe(range(30, 40)).shape == (10, 8)  # the table grows from the range's bound
    rope = RotaryEmbedding(8, max_len=4)
    cos_r, sin_r = rope.cos_sin(range(10, 20), torch.float32)
    cos_t, sin_t = rope.cos_sin(torch.arange(10, 20), torch.float32)
    torch.testing.assert_close(cos_r, cos_t)
    torch.testing.assert_close(sin_r, sin_t)
    with pytest.raises(ValueError, match="count up by 1"):
        pe(range(0, 10, 2))
    with pytest.raises(ValueError, match="count up by 1"):
        pe(range(-2, 3))
    with pytest.raises(ValueError, match=">= 0"):
        pe(torch.tensor([1, -1]))
    with pytest.raises(ValueError, match="max_len=40"):
        LearnedPositions(max_len=40, d_model=8)(range(35, 41))
    with pytest.raises(TypeError, match="range"):
        pe(torch.tensor([0.5]))
