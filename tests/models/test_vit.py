"""ViTForImageClassification: shapes, config round trip, training step, errors."""

import pytest
import torch

from attnkit.models.vit import ViTConfig, ViTForImageClassification

SMALL = dict(image_size=16, patch_size=4, channels=3, d_model=32, n_layers=2, n_heads=4, d_ff=64,
             num_labels=5)


def test_shapes_weights_and_hidden_states():
    cfg = ViTConfig.preset("vit-tiny", **SMALL)
    assert cfg.num_patches == 16
    m = ViTForImageClassification(cfg).eval()
    x = torch.randn(3, 3, 16, 16)
    out = m(x, return_weights=True, output_hidden_states=True)
    assert out.logits.shape == (3, 5)
    assert out.hidden.shape == (3, 17, 32)
    assert [a.shape for a in out.attentions] == [(3, 4, 17, 17)] * 2
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(3, 4, 17))
    assert len(out.hidden_states) == 3 and torch.equal(out.hidden_states[-1], out.hidden)
    torch.testing.assert_close(m(x).logits, out.logits, atol=1e-5, rtol=1e-5)


def test_patch_order_is_row_major():
    """Patch j of the sequence is the (j // (S/P), j % (S/P)) patch of the image."""
    m = ViTForImageClassification(ViTConfig(**SMALL)).eval()
    x = torch.zeros(1, 3, 16, 16)
    x[0, :, 4:8, 8:12] = 1.0  # patch row 1, column 2 -> index 1·4 + 2 = 6
    z = m.embed(x) - m.embed(torch.zeros_like(x))
    changed = z[0].abs().sum(-1) > 1e-6
    assert changed.nonzero().flatten().tolist() == [1 + 6]


def test_config_round_trip_and_presets():
    cfg = ViTConfig(**SMALL)
    assert ViTConfig.from_json(cfg.to_json()) == cfg
    base = ViTConfig.preset("vit-base-16")
    assert (base.d_model, base.n_layers, base.n_heads, base.d_ff, base.num_patches) == (
        768, 12, 12, 3072, 196)
    assert base.norm_eps == 1e-12
    n = sum(p.numel() for p in ViTForImageClassification(ViTConfig.preset("vit-tiny")).parameters())
    assert n == 5_717_416  # ViT-Ti/16, 1000 classes


def test_training_step_and_no_head():
    m = ViTForImageClassification(ViTConfig(**SMALL, dropout=0.1)).train()
    out = m(torch.randn(2, 3, 16, 16), labels=torch.tensor([1, 4]))
    out.loss.backward()
    assert m.cls_token.grad.abs().sum() > 0 and m.pos_embed.grad.abs().sum() > 0
    feats = ViTForImageClassification(ViTConfig(**{**SMALL, "num_labels": 0}))
    assert feats(torch.randn(2, 3, 16, 16)).logits.shape == (2, 32)
    nobias = ViTForImageClassification(ViTConfig(**SMALL, qkv_bias=False))
    assert nobias.encoder.layers[0].attn.qkv.bias is None
    assert nobias(torch.randn(1, 3, 16, 16)).logits.shape == (1, 5)


def test_errors():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTConfig(**{**SMALL, "image_size": 18})
    with pytest.raises(ValueError, match="divisible"):
        ViTConfig(**{**SMALL, "n_heads": 5})
    with pytest.raises(ValueError, match="unknown ViTConfig keys"):
        ViTConfig.from_dict({"hidden_size": 3})
    m = ViTForImageClassification(ViTConfig(**SMALL))
    with pytest.raises(ValueError, match="pixel_values must be"):
        m(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="pixel_values must be"):
        m(torch.randn(3, 16, 16))
