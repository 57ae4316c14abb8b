"""Norms, feed-forward networks and TransformerBlock orderings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnkit.attention import masks
from attnkit.layers import BlockConfig, FeedForward, LayerNorm, RMSNorm, TransformerBlock
from attnkit.positions import RotaryEmbedding

transformers = pytest.importorskip("transformers")
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402

D = 32


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_llama(dtype):
    ours, ref = RMSNorm(D, eps=1e-6), LlamaRMSNorm(D, eps=1e-6)
    w = torch.randn(D)
    with torch.no_grad():
        ours.weight.copy_(w)
        ref.weight.copy_(w)
    x = (torch.randn(3, 5, D) * 4).to(dtype)
    ours, ref = ours.to(dtype), ref.to(dtype)
    torch.testing.assert_close(ours(x), ref(x), atol=0, rtol=0)
    # the formula, in float64
    x64 = x.double()
    want = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(ours(x).double(), want, atol=tol, rtol=tol)


def test_layernorm_bias_flag():
    assert LayerNorm(D, bias=False).bias is None
    ln = LayerNorm(D, eps=1e-5)
    x = torch.randn(4, D)
    torch.testing.assert_close(ln(x), F.layer_norm(x, (D,), eps=1e-5))


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "swiglu"])
def test_feedforward_formulas(activation):
    ff = FeedForward(D, 48, activation, bias=activation != "swiglu").eval()
    x = torch.randn(2, 3, D)
    W1, W2 = ff.w1.weight, ff.w2.weight
    h = x @ W1.T + (ff.w1.bias if ff.w1.bias is not None else 0)
    if activation == "swiglu":
        assert ff.w1.bias is None and ff.w3 is not None
        h = h * torch.sigmoid(h) * (x @ ff.w3.weight.T)  # silu(W1 x) ⊙ W3 x
    elif activation == "relu":
        h = h.clamp(min=0)
    elif activation == "gelu":
        h = 0.5 * h * (1 + torch.erf(h / 2**0.5))
    else:
        h = 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h**3)))
    want = h @ W2.T + (ff.w2.bias if ff.w2.bias is not None else 0)
    torch.testing.assert_close(ff(x), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown activation"):
        FeedForward(D, 8, "tanh")


@pytest.mark.parametrize("position", ["pre", "post"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("cross", [False, True])
def test_pre_and_post_norm_orderings(position, norm, cross):
    x, ctx = torch.randn(2, 6, D), torch.randn(2, 4, D)
    mask = masks.causal()
    cfg = BlockConfig(d_model=D, n_heads=4, n_kv_heads=2, d_ff=64, norm=norm,
                      norm_position=position, cross_attention=cross, activation="swiglu")
    blk = TransformerBlock(cfg).eval()
    for p in blk.parameters():  # non-trivial norm gains / biases
        torch.nn.init.normal_(p, std=0.3)

    def attn(h):
        return blk.attn(h, mask=mask)

    def xattn(h):
        return blk.cross_attn(h, context=ctx)

    if position == "pre":  # x + f(N(x))
        h = x + attn(blk.norm1(x))
        if cross:
            h = h + xattn(blk.norm_cross(h))
        want = h + blk.ffn(blk.norm2(h))
    else:  # N(x + f(x))
        h = blk.norm1(x + attn(x))
        if cross:
            h = blk.norm_cross(h + xattn(h))
        want = blk.norm2(h + blk.ffn(h))
    got, w = blk(x, mask=mask, context=ctx if cross else None, return_weights=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert w.shape == (2, 4, 6, 6)
    if cross:
        assert blk.last_cross_weights.shape == (2, 4, 6, 4)


def test_block_gradients_flow_and_cache_decoding():
    cfg = BlockConfig(d_model=D, n_heads=4, n_kv_heads=2, norm="rmsnorm", activation="swiglu",
                      bias=False, cross_attention=True, dropout=0.1, attn_dropout=0.1)
    blk = TransformerBlock(cfg)
    rope = RotaryEmbedding(D // 4)
    x = torch.randn(2, 5, D, requires_grad=True)
    ctx = torch.randn(2, 3, D, requires_grad=True)
    out, w = blk(x, mask=masks.causal(), context=ctx, rope=rope)
    assert w is None and out.shape == x.shape
    out.square().mean().backward()
    for name, p in blk.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0 and ctx.grad.abs().sum() > 0
    # eval: decoding with self- and cross-attention caches equals the full forward
    blk.eval()
    with torch.no_grad():
        full, _ = blk(x, mask=masks.causal(), context=ctx, rope=rope)
        cache, xcache = blk.attn.new_cache(2, 8), blk.cross_attn.new_cache(2, 3)
        steps = [blk(x[:, t:t + 1], context=ctx if t == 0 else None, rope=rope, cache=cache,
                     cross_cache=xcache)[0] for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_block_config_validation():
    assert BlockConfig(d_model=16, n_heads=2).d_ff == 64
    with pytest.raises(ValueError, match="norm_position"):
        BlockConfig(d_model=16, n_heads=2, norm_position="sandwich")
    with pytest.raises(ValueError, match="unknown norm"):
        BlockConfig(d_model=16, n_heads=2, norm="batchnorm")
    blk = TransformerBlock(BlockConfig(d_model=16, n_heads=2))
    with pytest.raises(ValueError, match="cross_attention is False"):
        blk(torch.randn(1, 2, 16), context=torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="pass context"):
        TransformerBlock(BlockConfig(d_model=16, n_heads=2, cross_attention=True))(
            torch.randn(1, 2, 16))
