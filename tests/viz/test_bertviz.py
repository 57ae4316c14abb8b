"""AttentionCapture.to_bertviz(): what bertviz's head_view / model_view take, rendered by
bertviz itself (html_action="return") and read back from the page's parameters."""

import json
import re

import pytest
import torch

from attnkit.data.tokenizers import train_wordpiece
from attnkit.models import BertConfig, BertForMaskedLM, Seq2SeqConfig, Seq2SeqLM
from attnkit.viz import AttentionCapture, capture, to_bertviz

bertviz = pytest.importorskip("bertviz")

TEXT = "The animal didn't cross the street because it was too tired."


def _params(html: str) -> dict:
    """The JSON bertviz embeds in its page (its ``const params = ...;`` line)."""
    m = re.search(r"const params = (\{.*?\}); // HACK", html, re.S)
    assert m, "no bertviz params in the page"
    return json.loads(m.group(1))


def _views(args: dict, **model_view_kw) -> tuple[dict, dict]:
    head = bertviz.head_view(**args, html_action="return").data
    model = bertviz.model_view(**args, html_action="return", **model_view_kw).data
    return _params(head), _params(model)


def test_self_attention_full_capture(tiny):
    model, tok = tiny
    cap = capture(model, tok, TEXT)
    args = cap.to_bertviz()
    assert set(args) == {"attention", "tokens", "include_layers"}
    n_layers, n_heads = model.config.n_layers, model.config.n_heads
    L = len(cap.tokens)
    assert len(args["attention"]) == n_layers and args["include_layers"] == [0, 1]
    for layer, t in enumerate(args["attention"]):
        assert t.shape == (1, n_heads, L, L)
        torch.testing.assert_close(t[0], cap.layer("self", layer))
    head, mv = _views(args)
    data = head["attention"][0]
    assert data["left_text"] == data["right_text"] == cap.tokens
    torch.testing.assert_close(torch.tensor(data["attn"]), cap.weights["self"])
    torch.testing.assert_close(torch.tensor(mv["attention"][0]["attn"]), cap.weights["self"])
    assert to_bertviz(cap).keys() == args.keys()


def test_partial_capture_keeps_model_indices(tiny):
    model, tok = tiny
    cap = capture(model, tok, TEXT, layers=[1], heads=[2, 0])
    args = cap.to_bertviz()
    assert args["include_layers"] == [1]
    assert len(args["attention"]) == model.config.n_layers
    full = args["attention"][1][0]  # (H, L, L): kept heads at their index, zeros elsewhere
    torch.testing.assert_close(full[[0, 2]], cap.weights["self"][0])
    assert not full[[1, 3]].any() and not args["attention"][0].any()
    head, mv = _views(args, include_heads=cap.heads["self"])
    assert head["include_layers"] == [1] and mv["include_heads"] == [0, 2]
    torch.testing.assert_close(torch.tensor(mv["attention"][0]["attn"]),
                               cap.weights["self"])  # (1 layer, 2 heads, L, L)


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece([TEXT, "the quick brown fox jumps over the lazy dog"] * 4,
                           vocab_size=120)


def test_bert_mask_capture(wordpiece):
    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig.preset("bert-tiny", vocab_size=wordpiece.vocab_size))
    cap = capture(bert, wordpiece, "the [MASK] sat on the mat")
    args = cap.to_bertviz()
    assert args["tokens"][0] == "[CLS]" and args["tokens"][-1] == "[SEP]"
    head, _ = _views(args)
    torch.testing.assert_close(torch.tensor(head["attention"][0]["attn"]), cap.weights["self"])


def test_encoder_decoder_capture_with_unequal_depths(wordpiece, tmp_path):
    """1 encoder layer, 3 decoder layers: every kind is padded to 3 layers (bertviz has one
    layer index for all kinds); encoder / decoder / cross keep their own maps and tokens."""
    torch.manual_seed(0)
    cfg = Seq2SeqConfig.preset("t5-tiny", vocab_size=wordpiece.vocab_size, n_layers=1,
                               n_decoder_layers=3, dropout=0.0)
    cap = capture(Seq2SeqLM(cfg).eval(), wordpiece, "the quick brown fox",
                  decoder_text="the lazy dog")
    args = cap.to_bertviz()
    assert set(args) == {"encoder_attention", "decoder_attention", "cross_attention",
                         "encoder_tokens", "decoder_tokens", "include_layers"}
    assert args["encoder_tokens"] == cap.tokens and args["decoder_tokens"] == cap.decoder_tokens
    assert args["include_layers"] == [0, 1, 2]
    assert [len(args[k]) for k in ("encoder_attention", "decoder_attention",
                                   "cross_attention")] == [3, 3, 3]
    assert not args["encoder_attention"][2].any()  # no such encoder layer: a zero map
    Ls, Lt = len(cap.tokens), len(cap.decoder_tokens)
    assert args["cross_attention"][2].shape == (1, 4, Lt, Ls)
    head, mv = _views(args)
    names = [d["name"] for d in head["attention"]]
    assert names == ["Encoder", "Decoder", "Cross"]
    cross = head["attention"][2]
    assert cross["left_text"] == cap.decoder_tokens and cross["right_text"] == cap.tokens
    torch.testing.assert_close(torch.tensor(cross["attn"]), cap.weights["cross"])
    torch.testing.assert_close(torch.tensor(mv["attention"][1]["attn"]), cap.weights["decoder"])

    # a capture saved and loaded back converts the same way
    back = AttentionCapture.load(cap.save(tmp_path / "cap"))
    again = back.to_bertviz()
    for k in ("encoder_attention", "decoder_attention", "cross_attention"):
        for a, b in zip(again[k], args[k], strict=True):
            torch.testing.assert_close(a, b)


def test_a_capture_without_maps_is_refused(tiny):
    model, tok = tiny
    cap = capture(model, tok, TEXT)
    cap.weights, cap.layers, cap.heads = {}, {}, {}
    with pytest.raises(ValueError, match="no attention maps"):
        cap.to_bertviz()
