"""Tokenizers: one small interface over a character tokenizer and Hugging Face ``tokenizers``.

:class:`Tokenizer` is what the data pipeline needs: ``encode``/``decode``, ``vocab_size``,
the special-token ids (roles ``pad``/``unk``/``bos``/``eos``/``mask``/``cls``/``sep``, each
``None`` where the tokenizer has no such token), ``save(directory)`` and
``Tokenizer.load(directory_or_file)``. ``encode`` never adds special tokens: the batch sources
add ``[CLS]``/``[SEP]``/EOS themselves, so every source controls its own layout.

Kinds and their special tokens (ids in this order from 0):

==============  ===================================================  ==========================
kind            built by                                             specials
==============  ===================================================  ==========================
``char``        :meth:`CharTokenizer.train` (sorted corpus chars)    ``<pad> <unk> <bos> <eos>
                                                                     <mask>``
``bpe``         :func:`train_bpe` (byte-level BPE, GPT-2 style; no   ``<|pad|> <|endoftext|>
                unknowns, ``decode(encode(x)) == x``)                <|mask|>`` (bos = eos)
``wordpiece``   :func:`train_wordpiece` (BERT normaliser and         ``[PAD] [UNK] [CLS] [SEP]
                pre-tokeniser, ``##`` continuations)                 [MASK]``
==============  ===================================================  ==========================

On disk (``save``): ``tokenizer.json`` plus ``tokenizer_config.json``. For ``bpe``/
``wordpiece`` (and any Hugging Face tokenizer loaded from disk) ``tokenizer.json`` is the
``tokenizers`` library's own format and ``tokenizer_config.json`` uses the ``transformers`` key
names (``pad_token``, ``cls_token``, ... and ``tokenizer_class: PreTrainedTokenizerFast``), so
the directory also loads with ``transformers.AutoTokenizer``. The char tokenizer's
``tokenizer.json`` is this package's own small format::

    {"type": "char", "version": 1, "vocab": ["<pad>", ..., "a", "b", ...],
     "special_tokens": {"pad": "<pad>", "unk": "<unk>", ...}}

:func:`load_tokenizer` tells them apart (``"type": "char"`` vs. a ``"model"`` section) and takes
the special tokens from ``tokenizer_config.json`` when present, else recognises the usual
names (``[PAD]``, ``<pad>``, ``</s>``, ``<|endoftext|>``, ...). A char tokenizer exported for
``transformers`` (:mod:`attnkit.interop.tokenizer`: a BPE model without merges, marked
``"attnkit_type": "char"``) loads back as a :class:`CharTokenizer`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import tokenizers as hf
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

__all__ = ["Tokenizer", "CharTokenizer", "HFTokenizer", "SPECIAL_ROLES", "train_bpe",
           "train_wordpiece", "train_tokenizer", "load_tokenizer"]

SPECIAL_ROLES: tuple[str, ...] = ("pad", "unk", "bos", "eos", "mask", "cls", "sep")
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"

Offsets = list[tuple[int, int]]


class Tokenizer(ABC):
    """Text <-> token ids. Subclasses: :class:`CharTokenizer`, :class:`HFTokenizer`."""

    kind: str
    special_tokens: dict[str, str]  # role -> token string, only the roles this tokenizer has

    # ---- core ---------------------------------------------------------------------------
    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (ids are ``0 .. vocab_size - 1``)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without any special tokens added."""

    @abstractmethod
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; special tokens are written out unless skipped."""

    @abstractmethod
    def token_to_id(self, token: str) -> int | None: ...

    @abstractmethod
    def id_to_token(self, id_: int) -> str | None: ...

    @abstractmethod
    def to_json_str(self) -> str:
        """The ``tokenizer.json`` content."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
        """Ids and each token's ``(start, end)`` character span in ``text``."""
        raise NotImplementedError(f"{type(self).__name__} does not provide offsets")

    def unknown(self, text: str) -> list[str]:
        """The pieces of ``text`` that encode to the unknown token (distinct, in order of
        appearance); ``[]`` for a tokenizer without one (byte-level BPE knows every byte)."""
        unk = self.unk_id
        if unk is None:
            return []
        ids, offsets = self.encode_with_offsets(text)
        return list(dict.fromkeys(text[a:b] for i, (a, b) in zip(ids, offsets, strict=True)
                                  if i == unk))

    # ---- special tokens -----------------------------------------------------------------
    @functools.cached_property
    def special_ids(self) -> dict[str, int]:
        """Role -> id for every special token this tokenizer has."""
        out = {}
        for role, tok in self.special_tokens.items():
            i = self.token_to_id(tok)
            if i is not None:
                out[role] = i
        return out

    @functools.cached_property
    def all_special_ids(self) -> frozenset[int]:
        return frozenset(self.special_ids.values())

    @property
    def pad_id(self) -> int | None:
        """Padding id, or None."""
        return self.special_ids.get("pad")

    @property
    def unk_id(self) -> int | None:
        """Unknown-token id, or None."""
        return self.special_ids.get("unk")

    @property
    def bos_id(self) -> int | None:
        """Begin-of-sequence id, or None."""
        return self.special_ids.get("bos")

    @property
    def eos_id(self) -> int | None:
        """End-of-sequence id, or None."""
        return self.special_ids.get("eos")

    @property
    def mask_id(self) -> int | None:
        """Mask (MLM) id, or None."""
        return self.special_ids.get("mask")

    @property
    def cls_id(self) -> int | None:
        """Classification ([CLS]) id, or None."""
        return self.special_ids.get("cls")

    @property
    def sep_id(self) -> int | None:
        """Separator ([SEP]) id, or None."""
        return self.special_ids.get("sep")

    @property
    def start_id(self) -> int | None:
        """Id that opens a sequence: ``cls``, else ``bos``, else None."""
        return self.cls_id if self.cls_id is not None else self.bos_id

    @property
    def end_id(self) -> int | None:
        """Id that closes a sequence/document: ``eos``, else ``sep``, else None."""
        return self.eos_id if self.eos_id is not None else self.sep_id

    # ---- persistence --------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """``tokenizer_config.json`` content (``transformers`` key names)."""
        cfg: dict[str, Any] = {"attnkit_type": self.kind}
        cfg.update({f"{role}_token": tok for role, tok in sorted(self.special_tokens.items())})
        return cfg

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / TOKENIZER_FILE).write_text(self.to_json_str(), encoding="utf-8")
        (d / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=2) + "\n",
                                     encoding="utf-8")
        return d

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """:func:`load_tokenizer`."""
        return load_tokenizer(path)

    def fingerprint(self) -> str:
        """SHA-256 of the canonical tokenizer JSON and special tokens: equal fingerprints mean
        identical encodings (used to validate token files)."""
        canon = json.dumps(json.loads(self.to_json_str()), sort_keys=True, ensure_ascii=False)
        specials = json.dumps(self.special_tokens, sort_keys=True)
        return hashlib.sha256(f"{canon}\x00{specials}".encode()).hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


# ---- characters -----------------------------------------------------------------------------


class CharTokenizer(Tokenizer):
    """One id per character: specials first, then the corpus characters sorted by code point.
    A character not in the vocabulary encodes to ``<unk>``."""

    kind = "char"
    DEFAULT_SPECIALS: ClassVar[dict[str, str]] = {
        "pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>", "mask": "<mask>"}

    def __init__(self, vocab: Sequence[str], special_tokens: dict[str, str] | None = None):
        specials = dict(self.DEFAULT_SPECIALS if special_tokens is None else special_tokens)
        if "unk" not in specials:
            raise ValueError("a CharTokenizer needs an 'unk' special token")
        self.special_tokens = specials
        self.vocab = list(vocab)
        self._index = {t: i for i, t in enumerate(self.vocab)}
        if len(self._index) != len(self.vocab):
            raise ValueError("CharTokenizer vocabulary has duplicate entries")
        missing = [t for t in specials.values() if t not in self._index]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the vocabulary")
        self._special_set = set(specials.values())
        bad = [t for t in self.vocab if len(t) != 1 and t not in self._special_set]
        if bad:
            raise ValueError(f"non-special CharTokenizer entries must be one character: {bad[:5]}")
        self._unk = self._index[specials["unk"]]

    @classmethod
    def train(cls, texts: Iterable[str], special_tokens: dict[str, str] | None = None
              ) -> CharTokenizer:
        """Vocabulary = specials + every distinct character of ``texts``, sorted."""
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        specials = dict(cls.DEFAULT_SPECIALS if special_tokens is None else special_tokens)
        ordered = list(dict.fromkeys(specials.values()))
        return cls(ordered + sorted(chars - set(ordered)), specials)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        get, unk = self._index.get, self._unk
        return [get(c, unk) for c in text]

    def encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
        return self.encode(text), [(i, i + 1) for i in range(len(text))]

    def unknown(self, text: str) -> list[str]:
        index = self._index
        return [c for c in dict.fromkeys(text) if c not in index]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        n = len(self.vocab)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"token id {i} out of range [0, {n})")
            tok = self.vocab[i]
            if not (skip_special_tokens and tok in self._special_set):
                out.append(tok)
        return "".join(out)

    def token_to_id(self, token: str) -> int | None:
        return self._index.get(token)

    def id_to_token(self, id_: int) -> str | None:
        return self.vocab[id_] if 0 <= id_ < len(self.vocab) else None

    def to_json_str(self) -> str:
        return json.dumps({"type": "char", "version": 1, "vocab": self.vocab,
                           "special_tokens": self.special_tokens}, ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CharTokenizer:
        if data.get("type") != "char" or not isinstance(data.get("vocab"), list):
            raise ValueError("not a char tokenizer JSON (needs 'type': 'char' and 'vocab')")
        return cls(data["vocab"], data.get("special_tokens"))


# ---- Hugging Face tokenizers ----------------------------------------------------------------

_KNOWN_SPECIALS: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>", "<|pad|>"),
    "unk": ("[UNK]", "<unk>", "<|unk|>"),
    "bos": ("<s>", "<bos>", "<|bos|>", "<|begin_of_text|>", "<|endoftext|>"),
    "eos": ("</s>", "<eos>", "<|eos|>", "<|end_of_text|>", "<|endoftext|>"),
    "mask": ("[MASK]", "<mask>", "<|mask|>"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
}


def _guess_specials(tok: hf.Tokenizer) -> dict[str, str]:
    vocab = tok.get_vocab(with_added_tokens=True)
    out = {}
    for role, names in _KNOWN_SPECIALS.items():
        for name in names:
            if name in vocab:
                out[role] = name
                break
    return out


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers.Tokenizer``; ``kind`` is ``bpe``/``wordpiece``/``unigram``/
    ``wordlevel`` from its model."""

    def __init__(self, tokenizer: hf.Tokenizer, special_tokens: dict[str, str] | None = None):
        # A tokenizer.json may ship with fixed padding/truncation (e.g. to 128): batching is
        # the batch sources' job, so encode() returns exactly the text's tokens.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tok = tokenizer
        self.kind = json.loads(tokenizer.to_str())["model"]["type"].lower()
        specials = _guess_specials(tokenizer) if special_tokens is None else special_tokens
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.special_tokens = {r: t for r, t in specials.items() if t in vocab}

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
        e = self.tok.encode(text, add_special_tokens=False)
        return e.ids, [tuple(o) for o in e.offsets]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, id_: int) -> str | None:
        return self.tok.id_to_token(id_)

    def to_json_str(self) -> str:
        return self.tok.to_str(pretty=True)

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "tokenizer_class": "PreTrainedTokenizerFast"}


def _texts(texts: Iterable[str] | str) -> Iterable[str]:
    return [texts] if isinstance(texts, str) else texts


def train_bpe(texts: Iterable[str] | str, vocab_size: int = 8192, *, min_frequency: int = 2
              ) -> HFTokenizer:
    """Byte-level BPE (GPT-2 style) trained on ``texts``: every string round-trips exactly
    through ``decode(encode(x))`` and nothing is unknown."""
    specials = {"pad": "<|pad|>", "bos": "<|endoftext|>", "eos": "<|endoftext|>",
                "mask": "<|mask|>"}
    ordered = list(dict.fromkeys(specials.values()))
    tok = hf.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=ordered, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_texts(texts), trainer)
    return HFTokenizer(tok, specials)


def train_wordpiece(texts: Iterable[str] | str, vocab_size: int = 8192, lowercase: bool = True,
                    *, min_frequency: int = 0) -> HFTokenizer:
    """BERT-style WordPiece trained on ``texts`` (BERT normaliser — optional lowercasing —
    and pre-tokeniser, ``##`` continuation prefix, unknown words -> ``[UNK]``). The saved file
    carries BERT's ``[CLS] A [SEP] B [SEP]`` post-processor for other consumers; this
    package's ``encode`` does not apply it."""
    specials = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]",
                "mask": "[MASK]"}
    tok = hf.Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True,
                                                handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(specials.values()),
                                        continuing_subword_prefix="##", show_progress=False)
    tok.train_from_iterator(_texts(texts), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return HFTokenizer(tok, specials)


def train_tokenizer(kind: str, texts: Iterable[str] | str, vocab_size: int = 8192,
                    lowercase: bool = True) -> Tokenizer:
    """``kind`` in ``char`` (``vocab_size`` ignored), ``bpe``, ``wordpiece``."""
    if kind == "char":
        return CharTokenizer.train(_texts(texts))
    if kind == "bpe":
        return train_bpe(texts, vocab_size)
    if kind == "wordpiece":
        return train_wordpiece(texts, vocab_size, lowercase)
    raise ValueError(f"unknown tokenizer kind {kind!r}; valid: ['bpe', 'char', 'wordpiece']")


def _config_specials(cfg: dict[str, Any]) -> dict[str, str] | None:
    out = {}
    for role in SPECIAL_ROLES:
        v = cfg.get(f"{role}_token")
        if isinstance(v, dict):  # transformers may store AddedToken dicts
            v = v.get("content")
        if isinstance(v, str):
            out[role] = v
    return out or None


def _exported_char(data: dict[str, Any], cfg: dict[str, Any], specials: dict[str, str] | None
                   ) -> CharTokenizer | None:
    """The :class:`CharTokenizer` of a ``tokenizer.json`` it was exported as (a BPE model
    without merges whose tokens are single characters or specials), else None."""
    model = data["model"]
    vocab = model.get("vocab")
    if (cfg.get("attnkit_type") != "char" or model.get("type") != "BPE" or model.get("merges")
            or not isinstance(vocab, dict) or specials is None):
        return None
    ordered = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in ordered] != list(range(len(ordered))):
        return None
    try:
        return CharTokenizer(ordered, specials)
    except ValueError:
        return None


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from a directory (its ``tokenizer.json``) or a ``.json`` file: this
    package's char format or any Hugging Face ``tokenizers`` JSON. Special tokens come from a
    ``tokenizer_config.json`` beside it when present, else from the usual token names."""
    p = Path(path).expanduser()
    file = p / TOKENIZER_FILE if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer at {p} (expected a {TOKENIZER_FILE} file or a "
                                "directory holding one)")
    text = file.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e.msg})") from None
    cfg_file = file.with_name(CONFIG_FILE)
    cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    specials = _config_specials(cfg)
    if isinstance(data, dict) and data.get("type") == "char":
        tok = CharTokenizer.from_json(data)
        if specials is not None:
            tok = CharTokenizer(tok.vocab, specials)
        return tok
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        char = _exported_char(data, cfg, specials)
        return char if char is not None else HFTokenizer(hf.Tokenizer.from_str(text), specials)
    raise ValueError(f"{file}: unrecognised tokenizer JSON (neither {{'type': 'char'}} nor a "
                     "Hugging Face tokenizers file with a 'model' section)")
