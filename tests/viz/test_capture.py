"""attnkit.viz.capture: one forward pass, weights per kind, selection, budget, to_disk."""

import json

import numpy as np
import pytest
import torch

from attnkit.data.tokenizers import train_bpe, train_wordpiece
from attnkit.models import (
    BertConfig,
    BertForMaskedLM,
    CausalLM,
    CausalLMConfig,
    Seq2SeqConfig,
    Seq2SeqLM,
    ViTConfig,
    ViTForImageClassification,
)
from attnkit.viz.capture import AttentionCapture, capture, estimate_bytes, model_info
from attnkit.viz.tokens import display_token

TEXTS = ["the quick brown fox jumps over the lazy dog", "the cat sat on the mat",
         "hello world\nnew line"] * 4


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(TEXTS, vocab_size=300, min_frequency=1)


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece(TEXTS, vocab_size=120)


@pytest.fixture(scope="module")
def gpt(bpe):
    torch.manual_seed(0)
    return CausalLM(CausalLMConfig.preset("gpt2-tiny", vocab_size=bpe.vocab_size)).eval()


@pytest.fixture(scope="module")
def t5(wordpiece):
    torch.manual_seed(0)
    cfg = Seq2SeqConfig.preset("t5-tiny", vocab_size=wordpiece.vocab_size, n_decoder_layers=3,
                               dropout=0.0)
    return Seq2SeqLM(cfg).eval()


def _rows_sum_to_one(w):
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5)


def test_causal_lm_weights_and_unchanged_logits(gpt, bpe):
    text = "the quick brown fox\nhello"
    ids = torch.tensor([bpe.encode(text)])
    before = gpt(ids).logits
    cap = capture(gpt, bpe, text)
    w = cap.weights["self"]
    assert cap.kinds == ["self"]
    assert w.shape == (2, 4, ids.shape[1], ids.shape[1]) and w.dtype == torch.float32
    _rows_sum_to_one(w)
    assert torch.triu(w, diagonal=1).abs().max() == 0  # causal
    # the capture's logits are those of a plain forward, and the model is untouched afterwards
    torch.testing.assert_close(cap.logits, before[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gpt(ids).logits, before, atol=0, rtol=0)
    assert not any(m._forward_hooks for m in gpt.modules())  # hooks removed
    # weights equal the model's own return_weights output
    with torch.no_grad():
        ref = gpt(ids, return_weights=True).attentions
    torch.testing.assert_close(w, torch.stack([a[0] for a in ref]).float())
    # tokens: byte-level pieces made readable; next-token prediction present
    assert cap.raw_tokens == [bpe.id_to_token(i) for i in cap.token_ids]
    assert any(t.startswith("Ġ") for t in cap.raw_tokens)
    assert "\u21b5" in cap.tokens and not any("Ġ" in t for t in cap.tokens)
    assert cap.predictions[0]["position"] == ids.shape[1] - 1
    assert len(cap.predictions[0]["top"]) == 5


def test_display_token():
    assert display_token("Ġthe", byte_level=True) == "\u2581the"
    assert display_token("Ċ", byte_level=True) == "\u21b5"
    assert display_token("##ing") == "##ing"
    assert display_token("<0x0A>") == "\u21b5"
    assert display_token("") == "\u2205"


def test_bert_special_tokens_mask_prediction_and_mode_restored(wordpiece):
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig.preset("bert-tiny", vocab_size=wordpiece.vocab_size))
    assert model.training
    cap = capture(model, wordpiece, "the quick [MASK] fox")
    assert model.training  # mode restored (the capture itself ran in eval mode)
    assert cap.tokens[0] == "[CLS]" and cap.tokens[-1] == "[SEP]"
    assert cap.weights["self"].shape == (2, 2, len(cap.tokens), len(cap.tokens))
    _rows_sum_to_one(cap.weights["self"])
    (pred,) = cap.predictions
    assert cap.tokens[pred["position"]] == "[MASK]"
    model.eval()
    ref = model(torch.tensor([cap.token_ids])).logits[0]
    torch.testing.assert_close(cap.logits, ref, atol=1e-5, rtol=1e-5)


def test_seq2seq_has_cross_attention(t5, wordpiece, gpt):
    cap = capture(t5, wordpiece, "the quick brown fox", decoder_text="the lazy dog")
    assert cap.kinds == ["encoder", "decoder", "cross"]
    Ls, Lt = len(cap.tokens), len(cap.decoder_tokens)
    assert cap.decoder_token_ids[0] == t5.config.decoder_start_token_id
    assert cap.weights["encoder"].shape == (2, 4, Ls, Ls)
    assert cap.weights["decoder"].shape == (3, 4, Lt, Lt)
    assert cap.weights["cross"].shape == (3, 4, Lt, Ls)
    for w in cap.weights.values():
        _rows_sum_to_one(w)
    assert cap.axes("cross") == (cap.decoder_tokens, cap.tokens)
    ref = t5(torch.tensor([cap.token_ids]), decoder_input_ids=torch.tensor(
        [cap.decoder_token_ids])).logits[0]
    torch.testing.assert_close(cap.logits, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="decoder_text"):
        capture(gpt, None, [1, 2], decoder_text="x")


def test_layer_head_selection(t5, wordpiece, gpt):
    full = capture(gpt, None, [5, 6, 7, 8, 9])
    sel = capture(gpt, [5, 6, 7, 8, 9], layers=[-1], heads=[3, 1])
    assert sel.layers == {"self": [1]} and sel.heads == {"self": [1, 3]}
    assert sel.weights["self"].shape == (1, 2, 5, 5)
    torch.testing.assert_close(sel.weights["self"], full.weights["self"][1:, [1, 3]])
    torch.testing.assert_close(sel.head("self", 1, 3), full.head("self", 1, 3))
    with pytest.raises(KeyError, match="not captured"):
        sel.head("self", 0, 1)
    with pytest.raises(ValueError, match="out of range"):
        capture(gpt, None, [1, 2], heads=[4])
    # per-kind selection and a kind subset
    cap = capture(t5, wordpiece, "the cat", decoder_text="a dog", kinds=["cross"],
                  layers={"cross": [0, 2]})
    assert cap.kinds == ["cross"] and cap.layers["cross"] == [0, 2]


def test_memory_budget_error_and_estimate(gpt):
    ids = list(range(1, 101))
    assert estimate_bytes(gpt, 100) == 2 * 4 * 100 * 100 * 4
    assert estimate_bytes(gpt, 100, layers=[0], heads=[0, 1]) == 2 * 100 * 100 * 4
    with pytest.raises(ValueError, match=r"layers=.*heads=.*max_tokens=.*to_disk="):
        capture(gpt, None, ids, memory_budget=100_000)
    cap = capture(gpt, None, ids, memory_budget=100_000, layers=[0], heads=[0])
    assert cap.weights["self"].shape == (1, 1, 100, 100)


def test_truncation_flag(gpt, bpe):
    cap = capture(gpt, bpe, " ".join(TEXTS), max_tokens=16)
    assert cap.truncated and len(cap.tokens) == 16
    assert cap.n_tokens_original == len(bpe.encode(" ".join(TEXTS))) > 16
    assert cap.warnings and "truncated" in cap.warnings[0]
    # the model's own position table bounds the length too (gpt2-tiny: 128)
    assert len(capture(gpt, None, list(range(1, 200))).tokens) == 128


def test_to_disk_streams_layers_to_memmaps(gpt, tmp_path):
    ids = list(range(1, 41))
    ref = capture(gpt, None, ids)
    # in memory this is over budget; on disk only one layer (4·40·40·4 = 25.6 kB) must fit
    with pytest.raises(ValueError):
        capture(gpt, None, ids, memory_budget=40_000)
    cap = capture(gpt, None, ids, memory_budget=40_000, to_disk=tmp_path / "cap")
    assert (tmp_path / "cap" / "self.npy").is_file()
    assert cap.path == str(tmp_path / "cap")
    torch.testing.assert_close(cap.weights["self"], ref.weights["self"])
    on_disk = np.load(tmp_path / "cap" / "self.npy", mmap_mode="r")
    assert on_disk.shape == (2, 4, 40, 40)
    back = AttentionCapture.load(tmp_path / "cap")
    torch.testing.assert_close(back.weights["self"], ref.weights["self"])
    assert back.tokens == ref.tokens and back.layers == ref.layers


def test_json_and_save_load_roundtrip(t5, wordpiece, tmp_path):
    cap = capture(t5, wordpiece, "the quick brown fox", decoder_text="the dog")
    data = json.loads(cap.to_json())
    assert set(data["kinds"]) == {"encoder", "decoder", "cross"}
    w = data["kinds"]["cross"]["weights"]
    assert len(w) == 3 and len(w[0]) == 4 and len(w[0][0]) == len(cap.decoder_tokens)
    flat = np.array(w).ravel()
    assert np.all(np.abs(flat * 1e4 - np.round(flat * 1e4)) < 1e-6)  # 4 decimals
    assert data["model"]["family"] == "seq2seq" and data["decoder_tokens"] == cap.decoder_tokens
    again = AttentionCapture.from_dict(data)
    torch.testing.assert_close(again.weights["cross"], cap.weights["cross"], atol=5e-5, rtol=0)

    js = cap.save(tmp_path / "c.safetensors")
    assert js == tmp_path / "c.json" and (tmp_path / "c.safetensors").is_file()
    back = AttentionCapture.load(tmp_path / "c.safetensors")
    for k in cap.kinds:
        torch.testing.assert_close(back.weights[k], cap.weights[k], atol=0, rtol=0)
    torch.testing.assert_close(back.logits, cap.logits)
    assert back.decoder_tokens == cap.decoder_tokens and back.model == cap.model
    assert AttentionCapture.load(cap.save(tmp_path / "dir")).tokens == cap.tokens


def test_vit_and_model_info():
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=16, d_model=32,
                                              n_layers=2, n_heads=2, d_ff=64, num_labels=3))
    cap = capture(vit, torch.randn(3, 32, 32))
    assert cap.tokens == ["[CLS]", "p0,0", "p0,1", "p1,0", "p1,1"]
    assert cap.weights["self"].shape == (2, 2, 5, 5)
    assert len(cap.predictions[0]["top"]) == 3
    info = model_info(vit)
    assert info["kinds"] == ["self"] and info["n_layers"] == 2 and info["n_heads"] == 2
    json.dumps(info)


def test_bad_inputs(gpt, bpe):
    with pytest.raises(ValueError, match="tokenizer"):
        capture(gpt, None, "text without tokenizer")
    with pytest.raises(TypeError):
        capture(gpt, [1, 2], [3, 4])
    with pytest.raises(TypeError, match="attnkit models"):
        capture(torch.nn.Linear(2, 2), None, [1, 2])


def test_concurrent_captures_do_not_mix(gpt):
    import threading

    inputs = {i: list(range(1, 8 + i)) for i in range(4)}
    got = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, capture(gpt, inputs[i])))
               for i in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, ids in inputs.items():
        assert torch.equal(got[i].weights["self"], capture(gpt, ids).weights["self"])
