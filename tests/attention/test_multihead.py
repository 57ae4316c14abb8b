"""MultiHeadAttention against torch.nn.MultiheadAttention, GQA, and KV-cache decoding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnkit.attention import masks
from attnkit.attention.cache import KVCache, SlidingWindowCache
from attnkit.attention.multihead import MultiHeadAttention
from attnkit.positions import RotaryEmbedding

E, H = 32, 4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _pair(**kw) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    ours = MultiHeadAttention(E, H)
    ref = nn.MultiheadAttention(E, H, batch_first=True, **kw)
    with torch.no_grad():
        ours.qkv.weight.copy_(ref.in_proj_weight)
        ours.qkv.bias.copy_(ref.in_proj_bias)
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        ours.out_proj.bias.copy_(ref.out_proj.bias)
    return ours.eval(), ref.eval()


@pytest.mark.parametrize("case", ["none", "padding", "causal", "causal+padding"])
def test_matches_torch_multihead(case):
    ours, ref = _pair()
    B, L = 3, 7
    x = torch.randn(B, L, E)
    key_pad = torch.zeros(B, L, dtype=torch.bool)  # torch convention: True = ignore
    key_pad[1, 5:] = True
    key_pad[2, 3:] = True
    causal_block = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)

    mask, ref_kw = None, {}
    if "padding" in case:
        mask = masks.padding(key_mask=~key_pad)
        ref_kw["key_padding_mask"] = key_pad
    if "causal" in case:
        mask = masks.causal() if mask is None else masks.causal() & mask
        ref_kw["attn_mask"] = causal_block
    want, want_w = ref(x, x, x, need_weights=True, **ref_kw)
    out, w = ours(x, mask=mask, return_weights=True)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.mean(dim=1), want_w, atol=1e-6, rtol=1e-5)
    assert w.shape == (B, H, L, L)
    # the fused (auto) path agrees with the weights path
    torch.testing.assert_close(ours(x, mask=mask), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("context_dim", [None, 24])
def test_cross_attention_matches_torch(context_dim):
    B, Lq, Lk = 2, 5, 9
    Dc = context_dim or E
    ours = MultiHeadAttention(E, H, is_cross=True, context_dim=context_dim).eval()
    ref = nn.MultiheadAttention(E, H, batch_first=True, kdim=Dc, vdim=Dc).eval()
    with torch.no_grad():
        if context_dim is None:
            ours.q_proj.weight.copy_(ref.in_proj_weight[:E])
            ours.kv_proj.weight.copy_(ref.in_proj_weight[E:])
        else:
            ours.q_proj.weight.copy_(ref.q_proj_weight)
            ours.kv_proj.weight.copy_(torch.cat([ref.k_proj_weight, ref.v_proj_weight]))
        ours.q_proj.bias.copy_(ref.in_proj_bias[:E])
        ours.kv_proj.bias.copy_(ref.in_proj_bias[E:])
        ours.out_proj.load_state_dict(ref.out_proj.state_dict())
    x, ctx = torch.randn(B, Lq, E), torch.randn(B, Lk, Dc)
    key_pad = torch.zeros(B, Lk, dtype=torch.bool)
    key_pad[0, 6:] = True
    want, want_w = ref(x, ctx, ctx, key_padding_mask=key_pad)
    out, w = ours(x, context=ctx, mask=masks.padding(key_mask=~key_pad), return_weights=True)
    assert out.shape == (B, Lq, E) and w.shape == (B, H, Lq, Lk)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.mean(1), want_w, atol=1e-6, rtol=1e-5)


def test_cross_attention_cache_reuses_context():
    mha = MultiHeadAttention(E, H, n_kv_heads=2, is_cross=True).eval()
    x, ctx = torch.randn(2, 4, E), torch.randn(2, 6, E)
    with torch.no_grad():
        want = mha(x, context=ctx)
        cache = mha.new_cache(2, max_len=6)
        first = mha(x[:, :1], context=ctx, cache=cache)
        rest = mha(x[:, 1:], context=None, cache=cache)  # context no longer needed
    assert cache.pos == 6
    torch.testing.assert_close(torch.cat([first, rest], 1), want, atol=1e-5, rtol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_weights():
    Hkv, Dh = 2, E // H
    rep = H // Hkv
    gqa = MultiHeadAttention(E, H, n_kv_heads=Hkv).eval()
    mha = MultiHeadAttention(E, H).eval()
    Wq, Wk, Wv = gqa.qkv.weight.split([H * Dh, Hkv * Dh, Hkv * Dh])
    bq, bk, bv = gqa.qkv.bias.split([H * Dh, Hkv * Dh, Hkv * Dh])

    def rep_heads(t: torch.Tensor) -> torch.Tensor:  # (Hkv·Dh, ...) -> (H·Dh, ...)
        rest = t.shape[1:]
        return t.reshape(Hkv, Dh, *rest).repeat_interleave(rep, 0).reshape(H * Dh, *rest)

    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([Wq, rep_heads(Wk), rep_heads(Wv)]))
        mha.qkv.bias.copy_(torch.cat([bq, rep_heads(bk), rep_heads(bv)]))
        mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
    x = torch.randn(2, 6, E)
    torch.testing.assert_close(gqa(x, mask=masks.causal()), mha(x, mask=masks.causal()),
                               atol=1e-5, rtol=1e-5)
    assert gqa.qkv.out_features == (H + 2 * Hkv) * Dh


def _decode(mha, x, cache, rope, steps):
    """Feed ``x`` through ``mha`` in chunks given by ``steps`` [(length, mask), ...]."""
    outs, t = [], 0
    for n, mask in steps:
        outs.append(mha(x[:, t:t + n], mask=mask, rope=rope, cache=cache))
        t += n
    assert t == x.shape[1] and cache.pos == t
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_kv_cache_decoding_equals_full_causal_forward(n_kv):
    L = 10
    mha = MultiHeadAttention(E, H, n_kv_heads=n_kv).eval()
    rope = RotaryEmbedding(E // H)
    x = torch.randn(2, L, E)
    with torch.no_grad():
        full = mha(x, mask=masks.causal(), rope=rope)
        cache = mha.new_cache(2, max_len=16)
        c = masks.causal()
        # prefill 3, a chunk of 3, then token by token
        got = _decode(mha, x, cache, rope, [(3, c), (3, c)] + [(1, c)] * 4)
        torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
        cache.reset()
        got = _decode(mha, x, cache, rope, [(1, None)] * L)  # one query: no mask needed
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)


def test_sliding_window_cache_decoding_equals_windowed_forward():
    L, W = 14, 4
    mha = MultiHeadAttention(E, H, n_kv_heads=2).eval()
    rope = RotaryEmbedding(E // H)
    x = torch.randn(2, L, E)
    sw = masks.sliding_window(W - 1, 0)  # W keys per query, itself included
    with torch.no_grad():
        full = mha(x, mask=sw, rope=rope)
        cache = mha.new_cache(2, max_len=0, window=W)
        assert isinstance(cache, SlidingWindowCache)
        # prefill longer than the window, a chunk, then single tokens with plain causal
        got = _decode(mha, x, cache, rope, [(6, sw), (3, sw)] + [(1, masks.causal())] * 5)
        torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
        assert cache.k.shape[2] == W  # memory stays O(window)
        cache.reset()
        got = _decode(mha, x, cache, rope, [(1, None)] * L)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)


def test_sliding_window_cache_returns_temporal_order():
    c = SlidingWindowCache(1, 1, window=3, head_dim=1)
    seen = []
    for p in range(7):
        t = torch.full((1, 1, 1, 1), float(p))
        k, _ = c.update(t, t)
        seen.append(k.flatten().tolist())
    assert seen[:3] == [[0.0], [0.0, 1.0], [0.0, 1.0, 2.0]]
    assert seen[6] == [4.0, 5.0, 6.0] and c.pos == 7
    chunk = torch.arange(7.0, 11.0).view(1, 1, 4, 1)
    k, _ = c.update(chunk, chunk)
    assert k.flatten().tolist() == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert c._ordered(3)[0].flatten().tolist() == [8.0, 9.0, 10.0]


def test_errors():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(30, 4)
    MultiHeadAttention(30, 4, head_dim=8)  # explicit head_dim lifts the constraint
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        MultiHeadAttention(32, 4, n_kv_heads=3)
    cache = KVCache(1, 2, max_len=4, head_dim=8)
    cache.update(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8))
    with pytest.raises(ValueError, match="overflow"):
        cache.update(torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8))
    with pytest.raises(ValueError, match="expects k_new"):
        cache.update(torch.zeros(1, 4, 1, 8), torch.zeros(1, 4, 1, 8))
    mha = MultiHeadAttention(E, H)
    with pytest.raises(ValueError, match="is_cross"):
        mha(torch.randn(1, 2, E), context=torch.randn(1, 3, E))
    with pytest.raises(ValueError, match="needs context"):
        MultiHeadAttention(E, H, is_cross=True)(torch.randn(1, 2, E))


def test_dropout_only_in_training():
    mha = MultiHeadAttention(E, H, attn_dropout=0.5, resid_dropout=0.1)
    x = torch.randn(2, 5, E)
    mha.train()
    assert not torch.allclose(mha(x), mha(x))
    mha.eval()
    torch.testing.assert_close(mha(x), mha(x))
