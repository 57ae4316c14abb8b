"""attnkit tokenizers exported for ``transformers``: ``AutoTokenizer`` encodes and decodes as
attnkit does, adds what each model family's inputs carry, and a tokenizer without an exact
form is a clear error."""

import json
import random

import pytest

from attnkit.data import CharTokenizer, load_tokenizer, train_bpe, train_wordpiece
from attnkit.interop.tokenizer import (
    TokenizerExportError,
    hf_tokenizer,
    hf_tokenizer_config,
    save_hf_tokenizer,
)

transformers = pytest.importorskip("transformers")

CORPUS = ["def add(a, b):\n    return a + b\n", "The with statement wraps a block.",
          "Errors should never pass silently.\tUnless explicitly silenced."] * 6


@pytest.fixture(scope="module")
def kinds():
    return {"char": CharTokenizer.train(CORPUS),
            "bpe": train_bpe(CORPUS, vocab_size=300, min_frequency=1),
            "wordpiece": train_wordpiece(CORPUS, vocab_size=200)}


def _texts(tok, n=40, seed=0):
    """Random strings over the corpus characters plus some the char tokenizer lacks."""
    rng = random.Random(seed)
    alphabet = sorted(set("".join(CORPUS))) + list("QZ\u00e9\u2603\U0001f600")
    out = ["", " ", "\n\n", "The with statement", "  leading and trailing  "]
    out += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(n)]
    return out


def _auto(tok, family, tmp_path):
    save_hf_tokenizer(tok, tmp_path, family=family, model_max_length=64)
    return transformers.AutoTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("kind", ["char", "bpe", "wordpiece"])
@pytest.mark.parametrize("family", ["causal_lm", "bert", "seq2seq"])
def test_auto_tokenizer_encodes_as_attnkit(kinds, kind, family, tmp_path):
    tok = kinds[kind]
    auto = _auto(tok, family, tmp_path)
    start = [] if tok.start_id is None else [tok.start_id]
    end = [] if tok.end_id is None else [tok.end_id]
    pre, suf = {"causal_lm": ([], []), "bert": (start, end), "seq2seq": ([], end)}[family]
    for text in _texts(tok):
        ids = tok.encode(text)
        assert auto(text, add_special_tokens=False)["input_ids"] == ids, text
        assert auto(text)["input_ids"] == pre + ids + suf, text
        for skip in (False, True):
            assert auto.decode(ids, skip_special_tokens=skip) == tok.decode(ids, skip), text
    assert len(auto) == tok.vocab_size
    for role, token in tok.special_tokens.items():
        assert getattr(auto, f"{role}_token") == token
        assert getattr(auto, f"{role}_token_id") == tok.special_ids[role]
    assert auto.model_max_length == 64
    want = ["input_ids", "token_type_ids", "attention_mask"] if family == "bert" else \
        ["input_ids", "attention_mask"]
    assert list(auto("a b")) == want  # no token_type_ids for GPT-2 / T5


def test_bert_pairs_carry_type_ids(kinds, tmp_path):
    tok = kinds["wordpiece"]
    auto = _auto(tok, "bert", tmp_path)
    enc = auto("the with", "a block")
    a, b = tok.encode("the with"), tok.encode("a block")
    assert enc["input_ids"] == [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
    assert enc["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)


def test_char_special_strings_stay_characters_except_for_fill_mask(kinds, tmp_path):
    """attnkit's char tokenizer reads "<eos>" in a text as five characters; so does the
    causal export. The BERT export recognises the mask token (fill-mask needs it)."""
    tok = kinds["char"]
    text = "a <eos> b"
    assert _auto(tok, "causal_lm", tmp_path / "c")(text)["input_ids"] == tok.encode(text)
    bert = _auto(tok, "bert", tmp_path / "b")
    ids = bert("a <mask> b", add_special_tokens=False)["input_ids"]
    assert ids == tok.encode("a ") + [tok.mask_id] + tok.encode(" b")


def test_exported_char_tokenizer_loads_back_as_char(kinds, tmp_path):
    tok = kinds["char"]
    save_hf_tokenizer(tok, tmp_path, family="causal_lm")
    back = load_tokenizer(tmp_path)
    assert isinstance(back, CharTokenizer)
    assert back.vocab == tok.vocab and back.special_tokens == tok.special_tokens
    assert back.fingerprint() == tok.fingerprint()


def test_byte_level_bpe_keeps_its_offsets(kinds, tmp_path):
    tok = kinds["bpe"]
    auto = _auto(tok, "seq2seq", tmp_path)
    text = "The with statement"
    ids, offsets = tok.encode_with_offsets(text)
    enc = auto(text, return_offsets_mapping=True, add_special_tokens=False)
    assert enc["input_ids"] == ids and [tuple(o) for o in enc["offset_mapping"]] == offsets


def test_config_names_the_roles_and_decodes_exactly(kinds):
    cfg = hf_tokenizer_config(kinds["bpe"], "causal_lm", model_max_length=128)
    assert cfg["eos_token"] == "<|endoftext|>" and cfg["pad_token"] == "<|pad|>"
    assert cfg["clean_up_tokenization_spaces"] is False and cfg["padding_side"] == "left"
    assert json.loads(json.dumps(cfg)) == cfg


class _Lowercasing(CharTokenizer):
    """A tokenizer whose encode does something its saved form does not say."""

    def encode(self, text):
        return super().encode(text.lower())


class _Custom:
    kind = "custom"


def test_tokenizers_without_an_exact_form_are_refused(kinds, tmp_path):
    with pytest.raises(TokenizerExportError, match="no transformers form.*exportable"):
        hf_tokenizer(_Custom(), "causal_lm")
    odd = _Lowercasing(kinds["char"].vocab, kinds["char"].special_tokens)
    with pytest.raises(TokenizerExportError, match="cannot be expressed exactly.*encodes to"):
        save_hf_tokenizer(odd, tmp_path / "x", family="causal_lm")
    assert not (tmp_path / "x").exists()  # nothing written
    with pytest.raises(ValueError, match="no tokenizer layout for model family 'vit'"):
        hf_tokenizer(kinds["char"], "vit")
