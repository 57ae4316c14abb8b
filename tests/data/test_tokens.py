"""Memory-mapped token files: build, open, reuse, rebuild, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnkit.data.tokenizers import CharTokenizer
from attnkit.data.tokens import TokenFile, TokenFileError, token_dtype

DOCS = ["hello world", "", "abc", "the quick brown fox jumps over the lazy dog"]


@pytest.fixture
def tok() -> CharTokenizer:
    return CharTokenizer.train(DOCS)


def expected(tok, docs=DOCS):
    return [i for d in docs if d for i in [*tok.encode(d), tok.eos_id]]


def test_build_and_open(tok, tmp_path):
    path = tmp_path / "t.bin"
    tf = TokenFile.build(iter(DOCS), tok, path)  # a one-shot iterator is fine
    assert isinstance(tf.tokens, np.memmap) and tf.dtype == np.uint16
    assert tf.tokens.tolist() == expected(tok) and len(tf) == len(expected(tok))
    meta = json.loads((tmp_path / "t.bin.json").read_text())
    assert meta["count"] == len(tf) and meta["dtype"] == "uint16"
    assert meta["tokenizer"] == tok.fingerprint() and meta["separator"] == tok.eos_id
    assert meta["documents"] == 3  # the empty document is skipped
    assert path.stat().st_size == 2 * len(tf)
    again = TokenFile.open(path, tokenizer=tok)
    assert again.tokens.tolist() == tf.tokens.tolist()
    assert tf.window(6, 5).tolist() == expected(tok)[6:11] and tf.to_tensor().numel() == len(tf)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary leftovers


def test_chunked_writes_and_no_separator(tok, tmp_path):
    big = TokenFile.build(DOCS * 50, tok, tmp_path / "a.bin")
    small = TokenFile.build(DOCS * 50, tok, tmp_path / "b.bin", chunk_tokens=7,
                            docs_per_batch=3)
    assert np.array_equal(big.tokens, small.tokens)
    bare = TokenFile.build(DOCS, tok, tmp_path / "c.bin", separator=None)
    assert bare.tokens.tolist() == [i for d in DOCS for i in tok.encode(d)]


def test_dtype_choice(tmp_path):
    assert token_dtype(65534) == np.uint16 and token_dtype(65535) == np.uint32
    chars = "".join(chr(c) for c in range(0x10000, 0x10000 + 65600))  # no surrogates
    wide = CharTokenizer.train([chars])
    assert wide.vocab_size > 65535
    tf = TokenFile.build([chars[-10:]], wide, tmp_path / "w.bin")
    assert tf.dtype == np.uint32 and tf.tokens.tolist()[:-1] == wide.encode(chars[-10:])
    with pytest.raises(ValueError, match="cannot hold"):
        TokenFile.build([chars], wide, tmp_path / "x.bin", dtype="uint16")


def _exploding():
    raise AssertionError("texts must not be read when the file is reused")
    yield ""  # pragma: no cover


def test_reuse_and_rebuild(tok, tmp_path):
    path = tmp_path / "t.bin"
    first = TokenFile.build(DOCS, tok, path, source_key="v1")
    reused = TokenFile.build(_exploding(), tok, path, source_key="v1")
    assert np.array_equal(reused.tokens, first.tokens)
    # different source key / tokenizer / forced: rebuilt from the new texts
    assert TokenFile.build(["abc"], tok, path, source_key="v2").tokens.tolist() == \
        expected(tok, ["abc"])
    other = CharTokenizer.train(DOCS + ["XYZ"])
    assert other.fingerprint() != tok.fingerprint()
    assert TokenFile.build(["xyz"], other, path, source_key="v2").tokens.tolist() == \
        expected(other, ["xyz"])
    assert TokenFile.build(["hello"], other, path, source_key="v2", force=True).tokens \
        .tolist() == expected(other, ["hello"])
    # a truncated data file does not match its sidecar: rebuilt
    with open(path, "r+b") as f:
        f.truncate(2)
    assert len(TokenFile.build(["hello"], other, path, source_key="v2")) == 6
    # without a source key the texts cannot be compared: always rebuilt
    assert TokenFile.build(["ab"], other, path).tokens.tolist() == expected(other, ["ab"])


def test_open_errors(tok, tmp_path):
    path = tmp_path / "t.bin"
    with pytest.raises(FileNotFoundError):
        TokenFile.open(path)
    TokenFile.build(DOCS, tok, path)
    with pytest.raises(TokenFileError, match="different tokenizer"):
        TokenFile.open(path, tokenizer=CharTokenizer.train(["xyz"]))
    side = tmp_path / "t.bin.json"
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "count": meta["count"] + 1}))
    with pytest.raises(TokenFileError, match="sidecar says"):
        TokenFile.open(path)
    side.write_text("{")
    with pytest.raises(TokenFileError, match="malformed"):
        TokenFile.open(path)
    side.unlink()
    with pytest.raises(TokenFileError, match="missing sidecar"):
        TokenFile.open(path)


def test_empty_texts(tok, tmp_path):
    with pytest.raises(ValueError, match="no tokens"):
        TokenFile.build(["", ""], tok, tmp_path / "e.bin")
    assert not list(tmp_path.iterdir())
