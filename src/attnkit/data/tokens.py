"""Token files: a corpus tokenized once into a flat, memory-mapped array of ids.

Layout: ``<path>`` holds the raw little-endian ids (``uint16`` when the vocabulary has fewer
than 65535 entries, else ``uint32``) of every document in order, each followed by the
tokenizer's end id (``eos``, else ``sep``; see ``separator``); ``<path>.json`` is a sidecar::

    {"format": "attnkit-tokens", "version": 1, "dtype": "uint16", "count": 123456,
     "tokenizer": "<sha256 fingerprint>", "vocab_size": 8192, "separator": 3,
     "source_key": "...", "documents": 339}

:meth:`TokenFile.build` tokenizes in batches of documents and appends to the file in chunks
(memory stays bounded by ``chunk_tokens``, never a list of all ids). It writes to a temporary
name and renames, so an interrupted build never leaves a file that looks complete.
When ``source_key`` (any string identifying the texts, e.g. a path + mtime) is given and an
existing sidecar matches it, the tokenizer fingerprint, the dtype and the file size, the
existing file is reused; otherwise it is rebuilt. :meth:`TokenFile.open` maps it read-only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnkit.data.tokenizers import Tokenizer
from attnkit.fileio import temp_sibling

__all__ = ["TokenFile", "TokenFileError", "token_dtype"]

FORMAT = "attnkit-tokens"
VERSION = 1
_AUTO = "auto"


class TokenFileError(ValueError):
    """A token file whose sidecar is missing, malformed, or does not match its data."""


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` if ``vocab_size < 65535`` else ``uint32``."""
    return np.dtype(np.uint16 if vocab_size < 65535 else np.uint32)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _batched(texts: Iterable[str], n: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class TokenFile:
    """An opened token file: ``tokens`` is a read-only ``np.memmap`` of ``count`` ids."""

    path: Path
    meta: dict[str, Any]
    tokens: np.ndarray

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, texts: Iterable[str], tokenizer: Tokenizer, path: str | Path, *,
              dtype: np.dtype | str | None = None, separator: int | None | str = _AUTO,
              source_key: str | None = None, force: bool = False,
              chunk_tokens: int = 1 << 20, docs_per_batch: int = 64) -> TokenFile:
        """Tokenize ``texts`` (an iterable of documents, consumed once) into ``path``.

        Args:
            dtype: default :func:`token_dtype` of the vocabulary size.
            separator: id appended after every document; ``"auto"`` = ``tokenizer.end_id``
                (eos, else sep); ``None`` = nothing.
            source_key: identifies the texts; with it, a matching existing file is reused
                (without it the file is always rebuilt, since the texts cannot be compared
                without reading them).
            force: rebuild even if the existing file matches.
            chunk_tokens: ids buffered in memory before each write.
        """
        path = Path(path)
        sep = tokenizer.end_id if separator == _AUTO else separator
        dt = token_dtype(tokenizer.vocab_size) if dtype is None else np.dtype(dtype)
        if np.iinfo(dt).max < tokenizer.vocab_size - 1:
            raise ValueError(f"dtype {dt} cannot hold ids up to {tokenizer.vocab_size - 1}")
        want = {"format": FORMAT, "version": VERSION, "dtype": dt.name,
                "tokenizer": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size,
                "separator": sep, "source_key": source_key}
        if source_key is not None and not force:
            existing = cls._try_open(path, want)
            if existing is not None:
                return existing

        tmp = temp_sibling(path)  # also removes what a killed build left
        count = docs = 0
        buf: list[np.ndarray] = []
        buffered = 0
        vmax = tokenizer.vocab_size
        try:
            with open(tmp, "wb") as f:
                for batch in _batched(texts, docs_per_batch):
                    for ids in tokenizer.encode_batch(batch):
                        if not ids:
                            continue  # an empty document adds nothing, not even a separator
                        if sep is not None:
                            ids = [*ids, sep]
                        arr = np.asarray(ids, dtype=np.int64)
                        if arr.size and (arr.min() < 0 or arr.max() >= vmax):
                            raise ValueError(f"tokenizer produced an id outside [0, {vmax})")
                        buf.append(arr.astype(dt))
                        buffered += arr.size
                        docs += 1
                    if buffered >= chunk_tokens:
                        f.write(np.concatenate(buf).astype(dt.newbyteorder("<")).tobytes())
                        count += buffered
                        buf, buffered = [], 0
                if buf:
                    f.write(np.concatenate(buf).astype(dt.newbyteorder("<")).tobytes())
                    count += buffered
            if count == 0:
                raise ValueError("no tokens: the texts are empty")
            meta = {**want, "count": count, "documents": docs}
            os.replace(tmp, path)
            side = _sidecar(path)
            side_tmp = temp_sibling(side)
            side_tmp.write_text(json.dumps(meta, indent=2) + "\n")
            os.replace(side_tmp, side)
        finally:
            tmp.unlink(missing_ok=True)
        return cls.open(path)

    @classmethod
    def _try_open(cls, path: Path, want: dict[str, Any]) -> TokenFile | None:
        try:
            tf = cls.open(path)
        except (FileNotFoundError, TokenFileError):
            return None
        if any(tf.meta.get(k) != v for k, v in want.items()):
            return None
        return tf

    # ---- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, tokenizer: Tokenizer | None = None) -> TokenFile:
        """Map ``path`` read-only after checking its sidecar (and, if given, that it was made
        by ``tokenizer``)."""
        path = Path(path)
        side = _sidecar(path)
        if not path.is_file():
            raise FileNotFoundError(f"no token file at {path}")
        if not side.is_file():
            raise TokenFileError(f"{path}: missing sidecar {side.name}")
        try:
            meta = json.loads(side.read_text())
            dt = np.dtype(meta["dtype"]).newbyteorder("<")
            count = int(meta["count"])
        except (ValueError, KeyError, TypeError) as e:
            raise TokenFileError(f"{side}: malformed sidecar ({e})") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise TokenFileError(f"{side}: not an {FORMAT} v{VERSION} sidecar")
        size = path.stat().st_size
        if size != count * dt.itemsize:
            raise TokenFileError(f"{path}: {size} bytes but the sidecar says {count} "
                                 f"{dt.name} ids ({count * dt.itemsize} bytes)")
        if tokenizer is not None and meta.get("tokenizer") != tokenizer.fingerprint():
            raise TokenFileError(f"{path} was built with a different tokenizer")
        tokens = np.memmap(path, dtype=dt, mode="r", shape=(count,))
        return cls(path, meta, tokens)

    # ---- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.meta["count"])

    @property
    def dtype(self) -> np.dtype:
        return self.tokens.dtype

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def window(self, start: int, length: int) -> Tensor:
        """``tokens[start : start + length]`` as an int64 tensor (a copy)."""
        return torch.from_numpy(np.asarray(self.tokens[start:start + length], dtype=np.int64))

    def to_tensor(self) -> Tensor:
        """All ids as one int64 tensor (loads the whole file)."""
        return self.window(0, len(self))
