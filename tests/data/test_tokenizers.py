"""Char / byte-level BPE / WordPiece tokenizers: training, round trips, save/load."""

from __future__ import annotations

import json
from pydoc_data.topics import topics

import pytest

from attnkit.data.tokenizers import (
    CharTokenizer,
    HFTokenizer,
    Tokenizer,
    load_tokenizer,
    train_bpe,
    train_tokenizer,
    train_wordpiece,
)

TEXTS = [topics[k] for k in sorted(topics)[:40]]
ODD = ["Héllo, wörld!  \n\n\tdef f(x):\n\t    return x ** 2  # ☃ 日本語 🎉",
       "", " leading and trailing spaces ", "a\r\nb\u00a0c", "<|endoftext|> in text"]


@pytest.fixture(scope="module")
def bpe() -> HFTokenizer:
    return train_bpe(TEXTS, vocab_size=800)


@pytest.fixture(scope="module")
def wordpiece() -> HFTokenizer:
    return train_wordpiece(TEXTS, vocab_size=800, lowercase=True)


def test_char_tokenizer_round_trip_and_unknowns(tmp_path):
    tok = CharTokenizer.train(["hello world", "abc"])
    assert tok.special_ids == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "mask": 4}
    assert tok.vocab[5:] == sorted(set("hello worldabc"))
    assert tok.vocab_size == 5 + len(set("hello worldabc"))
    assert tok.cls_id is None and tok.start_id == tok.bos_id == 2 and tok.end_id == 3
    text = "hello abc world"
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("hex!")
    assert ids[-1] == ids[-2] == tok.unk_id  # 'x' and '!' are unknown
    assert tok.decode(ids) == "he<unk><unk>"
    assert tok.decode([tok.bos_id, *tok.encode("ab"), tok.eos_id], skip_special_tokens=True) \
        == "ab"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])
    assert tok.encode_with_offsets("ab") == (tok.encode("ab"), [(0, 1), (1, 2)])

    tok.save(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    assert data["type"] == "char" and data["vocab"] == tok.vocab
    loaded = Tokenizer.load(tmp_path)
    assert isinstance(loaded, CharTokenizer) and loaded.vocab == tok.vocab
    assert loaded.special_ids == tok.special_ids
    assert loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode(text) == tok.encode(text)


def test_char_tokenizer_validation():
    with pytest.raises(ValueError, match="unk"):
        CharTokenizer(["a"], {"pad": "a"})
    with pytest.raises(ValueError, match="not in the vocabulary"):
        CharTokenizer(["a"], {"unk": "<unk>"})
    with pytest.raises(ValueError, match="one character"):
        CharTokenizer(["<unk>", "ab"], {"unk": "<unk>"})


def test_bpe_round_trip_exact(bpe):
    assert bpe.kind == "bpe" and bpe.vocab_size <= 800
    assert bpe.special_ids == {"pad": 0, "bos": 1, "eos": 1, "mask": 2}
    assert bpe.unk_id is None
    for text in TEXTS[:5] + ODD:
        assert bpe.decode(bpe.encode(text)) == text
    assert len(bpe.encode(TEXTS[0])) < len(TEXTS[0]) / 2  # it actually merges
    assert bpe.encode_batch(ODD) == [bpe.encode(t) for t in ODD]
    ids, offsets = bpe.encode_with_offsets("return value")
    assert len(ids) == len(offsets) and offsets[0][0] == 0 and offsets[-1][1] == 12


def test_bpe_save_load(bpe, tmp_path):
    bpe.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["attnkit_type"] == "bpe" and cfg["eos_token"] == "<|endoftext|>"
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    for path in (tmp_path, tmp_path / "tokenizer.json", str(tmp_path)):
        loaded = load_tokenizer(path)
        assert isinstance(loaded, HFTokenizer) and loaded.kind == "bpe"
        assert loaded.special_ids == bpe.special_ids
        assert loaded.fingerprint() == bpe.fingerprint()
        assert all(loaded.encode(t) == bpe.encode(t) for t in ODD)


def test_wordpiece(wordpiece, tmp_path):
    wp = wordpiece
    assert wp.kind == "wordpiece" and wp.vocab_size <= 800
    assert wp.special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert wp.start_id == wp.cls_id == 2 and wp.end_id == wp.sep_id == 3
    assert wp.bos_id is None and wp.eos_id is None
    ids = wp.encode("The Return statement")
    assert wp.decode(ids) == "the return statement"  # lowercased; specials not added
    assert wp.cls_id not in ids and wp.sep_id not in ids
    assert wp.encode("☃") == [wp.unk_id]  # unseen character -> [UNK]
    assert any(wp.id_to_token(i).startswith("##") for i in wp.encode("untokenizable"))
    text = "Hello, World"
    ids, offsets = wp.encode_with_offsets(text)
    assert len(ids) == len(offsets)
    # offsets index the ORIGINAL (cased) text; each piece is its own span
    pieces = [wp.id_to_token(i).removeprefix("##") for i in ids]
    assert [text[a:b].lower() for a, b in offsets] == pieces
    assert "".join(text[a:b] for a, b in offsets) == "Hello,World"

    wp.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.kind == "wordpiece" and loaded.special_ids == wp.special_ids
    assert loaded.encode("The Return statement") == wp.encode("The Return statement")

    cased = train_wordpiece(TEXTS[:10], vocab_size=500, lowercase=False)
    assert cased.decode(cased.encode("The")) == "The"


def test_load_without_config_guesses_specials(wordpiece, bpe, tmp_path):
    for tok in (wordpiece, bpe):
        d = tmp_path / tok.kind
        tok.save(d)
        (d / "tokenizer_config.json").unlink()
        assert load_tokenizer(d).special_ids == tok.special_ids


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="unrecognised"):
        load_tokenizer(tmp_path)


def test_train_tokenizer_dispatch():
    assert isinstance(train_tokenizer("char", "abc"), CharTokenizer)
    assert train_tokenizer("bpe", TEXTS[:3], 300).kind == "bpe"
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        train_tokenizer("sentencepiece", "abc")


def test_loaded_tokenizer_json_with_fixed_padding_does_not_pad(tmp_path):
    """A tokenizer.json saved with padding/truncation enabled (as some packaged models ship)
    must still encode to exactly the text's tokens."""
    from attnkit.data.tokenizers import load_tokenizer, train_wordpiece

    tok = train_wordpiece(["the cat sat on the mat"] * 20, vocab_size=60)
    tok.save(tmp_path)
    import tokenizers as hf

    raw = hf.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    raw.enable_padding(length=32)
    raw.enable_truncation(max_length=32)
    raw.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    assert loaded.encode("the cat") == tok.encode("the cat")
    assert len(loaded.encode("the cat")) < 32
