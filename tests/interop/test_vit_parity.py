"""ViT: attnkit ViTForImageClassification vs transformers (random tiny configs)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
from transformers import ViTConfig as HFViTConfig  # noqa: E402
from transformers import ViTForImageClassification as HFViT  # noqa: E402

from attnkit.interop.hf import load_hf, save_hf  # noqa: E402
from attnkit.interop.vit import load_vit, save_vit  # noqa: E402
from attnkit.models.vit import ViTForImageClassification  # noqa: E402

ATOL = 1e-4
BASE = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64, num_labels=5)
CASES = {
    "default": {},
    "no-qkv-bias-rgba-2-labels": dict(qkv_bias=False, num_channels=4, num_labels=2,
                                      patch_size=8, num_attention_heads=2),
}


def _hf_model(case: str) -> HFViT:
    cfg = HFViTConfig(**{**BASE, **CASES[case]})
    cfg._attn_implementation = "eager"
    return HFViT(cfg).eval()


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_parity_and_round_trip(case, tmp_path):
    hf = _hf_model(case)
    hf.save_pretrained(tmp_path / "hf")
    model = load_vit(tmp_path / "hf")
    assert model.config.num_labels == hf.config.num_labels
    x = torch.randn(3, hf.config.num_channels, 16, 16)
    ref = hf(pixel_values=x, output_attentions=True, output_hidden_states=True)
    ours = model(x, return_weights=True, output_hidden_states=True)
    torch.testing.assert_close(ours.logits, ref.logits, atol=ATOL, rtol=0)
    assert len(ours.attentions) == len(ref.attentions) == 2
    for a, b in zip(ref.attentions, ours.attentions, strict=True):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=0)
    # HF's hidden states end with the last block's output; ours with the final LayerNorm's.
    for a, b in zip(ref.hidden_states[:-1], ours.hidden_states[:-1], strict=True):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.hidden, hf.vit(pixel_values=x).last_hidden_state,
                               atol=ATOL, rtol=0)

    save_vit(model, tmp_path / "ours")
    again = load_vit(tmp_path / "ours")
    assert again.config == model.config
    sd0, sd1 = model.state_dict(), again.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    theirs = load_file(tmp_path / "hf/model.safetensors")
    mine = load_file(tmp_path / "ours/model.safetensors")
    assert theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in theirs)
    back = HFViT.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    assert back.config.num_labels == hf.config.num_labels
    torch.testing.assert_close(back(pixel_values=x).logits, ours.logits, atol=ATOL, rtol=0)


@torch.no_grad()
def test_hf_dispatch_and_pooler_ignored(tmp_path):
    hf = _hf_model("default")
    hf.save_pretrained(tmp_path / "a")
    sd = load_file(tmp_path / "a/model.safetensors")
    sd["vit.pooler.dense.weight"] = torch.zeros(32, 32)
    sd["vit.pooler.dense.bias"] = torch.zeros(32)
    save_file(sd, tmp_path / "a/model.safetensors")
    model = load_hf(tmp_path / "a")
    assert isinstance(model, ViTForImageClassification)
    save_hf(model, tmp_path / "b")
    cfg = json.loads((tmp_path / "b/config.json").read_text())
    assert cfg["model_type"] == "vit" and len(cfg["id2label"]) == 5


def test_errors(tmp_path):
    hf = _hf_model("default")
    hf.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["classifier.bias"]
    sd["vit.embeddings.position_embeddings"] = torch.zeros(1, 10, 32)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as e:
        load_vit(tmp_path)
    assert "missing keys (1): classifier.bias" in str(e.value)
    assert "vit.embeddings.position_embeddings: expected (1, 17, 32), got (1, 10, 32)" in str(
        e.value)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_act": "relu"}))
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        load_vit(tmp_path)
