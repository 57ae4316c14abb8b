"""Supervised batch sources over small in-memory datasets: sequence-to-sequence pairs and
(pair) classification, plus the CSV/TSV/JSON/JSONL record reader they load from.

Examples are tokenized once at construction; ordering, sharding, state and evaluation are
those of :class:`~attnkit.data.batches.ShardedBatches` (see that module's docstring). Batches
are right-padded to the longest example of the *global* batch.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnkit.data.batches import IGNORE_INDEX, ShardedBatches, pad_sequences
from attnkit.data.corpus import CorpusError, read_utf8
from attnkit.data.tokenizers import Tokenizer
from attnkit.models.seq2seq import shift_right

__all__ = ["read_records", "Seq2SeqBatches", "ClassificationBatches", "build_label_map"]


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.csv``/``.tsv`` (header row = column names), ``.jsonl`` (one object per
    line) or ``.json`` (a list of objects, or ``{"data": [...]}``) file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"no data file at {p}")
    text = read_utf8(p)
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ","))
    elif suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{p}:{lineno}: invalid JSON ({e.msg})") from None
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{p}: invalid JSON ({e.msg}, line {e.lineno})") from None
        rows = data["data"] if isinstance(data, dict) and "data" in data else data
    else:
        raise CorpusError(f"{p}: unsupported data file type {suffix!r} (use .csv, .tsv, "
                          ".jsonl or .json)")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CorpusError(f"{p}: expected a list of records (objects)")
    if not rows:
        raise CorpusError(f"{p}: no records")
    return rows


def _column(rows: list[dict[str, Any]], name: str, path: str | Path) -> list[Any]:
    for i, r in enumerate(rows):
        if name not in r:
            raise CorpusError(f"{path}: record {i} has no column {name!r} (columns: "
                              f"{sorted(r)})")
    return [r[name] for r in rows]


def _end(tokenizer: Tokenizer) -> list[int]:
    return [] if tokenizer.end_id is None else [tokenizer.end_id]


def _require_pad(tokenizer: Tokenizer) -> int:
    if tokenizer.pad_id is None:
        raise ValueError(f"{tokenizer!r} has no pad token")
    return tokenizer.pad_id


# ---- sequence to sequence ------------------------------------------------------------------


class Seq2SeqBatches(ShardedBatches):
    """``(source, target)`` text pairs for :class:`~attnkit.models.Seq2SeqLM`.

    ``input_ids``: source tokens + end id (eos, else sep), truncated to ``max_source_len``,
    padded with pad; ``attention_mask``: 1 on real tokens; ``labels``: target tokens + end id,
    truncated to ``max_target_len``, padding = -100; ``decoder_input_ids``:
    ``shift_right(labels, decoder_start_token_id, pad)`` (the model's own function; the start
    id defaults to the pad id, the T5 convention and :class:`Seq2SeqConfig`'s default)."""

    def __init__(self, pairs: Sequence[tuple[str, str]], tokenizer: Tokenizer, batch_size: int,
                 seed: int = 0, *, max_source_len: int = 256, max_target_len: int = 256,
                 decoder_start_token_id: int | None = None, shuffle: bool = True,
                 rank: int = 0, world: int = 1):
        self.pad_id = _require_pad(tokenizer)
        self.decoder_start_token_id = (self.pad_id if decoder_start_token_id is None
                                       else decoder_start_token_id)
        end = _end(tokenizer)
        if min(max_source_len, max_target_len) <= len(end):
            raise ValueError("max_source_len and max_target_len must leave room for tokens")
        sources = tokenizer.encode_batch([s for s, _ in pairs])
        targets = tokenizer.encode_batch([t for _, t in pairs])
        self.sources = [s[:max_source_len - len(end)] + end for s in sources]
        self.targets = [t[:max_target_len - len(end)] + end for t in targets]
        super().__init__(len(pairs), batch_size, seed, shuffle=shuffle, rank=rank, world=world)

    @classmethod
    def from_file(cls, path: str | Path, tokenizer: Tokenizer, batch_size: int, seed: int = 0,
                  *, source_column: str = "source", target_column: str = "target",
                  **kwargs: Any) -> Seq2SeqBatches:
        """Pairs from :func:`read_records` columns."""
        rows = read_records(path)
        pairs = list(zip(map(str, _column(rows, source_column, path)),
                         map(str, _column(rows, target_column, path)), strict=True))
        return cls(pairs, tokenizer, batch_size, seed, **kwargs)

    def _collate(self, rows: list[int], group: list[int], keys: list[int]) -> dict[str, Tensor]:
        ls = max(len(self.sources[i]) for i in group)
        lt = max(len(self.targets[i]) for i in group)
        input_ids = pad_sequences([self.sources[i] for i in rows], ls, self.pad_id)
        mask = pad_sequences([[1] * len(self.sources[i]) for i in rows], ls, 0)
        labels = pad_sequences([self.targets[i] for i in rows], lt, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": mask,
                "decoder_input_ids": shift_right(labels, self.decoder_start_token_id,
                                                 self.pad_id),
                "labels": labels}


# ---- classification --------------------------------------------------------------------------


def build_label_map(labels: Sequence[Any]) -> dict[str, int]:
    """Label (as ``str``) -> id, in sorted order: numerically when every label is an integer
    (so ``0..K-1`` map to themselves), else lexicographically."""
    keys = {str(x) for x in labels}
    try:
        ordered = sorted(keys, key=int)
    except ValueError:
        ordered = sorted(keys)
    return {k: i for i, k in enumerate(ordered)}


def _truncate_pair(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int],
                                                                            list[int] | None]:
    """Longest-first truncation of ``a`` (and ``b``) to ``budget`` tokens in total."""
    if b is None:
        return a[:budget], None
    la, lb = len(a), len(b)
    while la + lb > budget:
        if la >= lb:
            la -= 1
        else:
            lb -= 1
    return a[:la], b[:lb]


class ClassificationBatches(ShardedBatches):
    """Text (or text-pair) classification for
    :class:`~attnkit.models.BertForSequenceClassification`.

    Layout ``[CLS] a [SEP] (b [SEP])`` (the tokenizer's start/end ids), truncated
    longest-first to ``max_len``; ``token_type_ids`` 0 over ``[CLS] a [SEP]`` and 1 over
    ``b [SEP]``. Returns ``input_ids``, ``attention_mask``, ``token_type_ids`` and
    ``labels (B,)``. Labels are mapped with ``label_map`` (built by :func:`build_label_map`
    when not given; pass the training set's map to a validation source); ``self.label_map``
    and ``self.labels`` (id -> label) expose it."""

    def __init__(self, texts: Sequence[str], labels: Sequence[Any], tokenizer: Tokenizer,
                 batch_size: int, seed: int = 0, *, text_pairs: Sequence[str] | None = None,
                 max_len: int = 128, label_map: Mapping[str, int] | None = None,
                 shuffle: bool = True, rank: int = 0, world: int = 1):
        if len(texts) != len(labels) or (text_pairs is not None
                                         and len(text_pairs) != len(texts)):
            raise ValueError("texts, labels (and text_pairs) must have the same length")
        self.pad_id = _require_pad(tokenizer)
        self.label_map = dict(build_label_map(labels) if label_map is None else label_map)
        unknown = sorted({str(x) for x in labels} - set(self.label_map))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} are not in label_map "
                             f"{sorted(self.label_map)}")
        self.labels = [k for k, _ in sorted(self.label_map.items(), key=lambda kv: kv[1])]
        self.targets = [self.label_map[str(x)] for x in labels]
        start = [] if tokenizer.start_id is None else [tokenizer.start_id]
        end = _end(tokenizer)
        a_ids = tokenizer.encode_batch(list(texts))
        b_ids = tokenizer.encode_batch(list(text_pairs)) if text_pairs is not None else None
        overhead = len(start) + len(end) * (1 if b_ids is None else 2)
        if max_len <= overhead:
            raise ValueError(f"max_len {max_len} leaves no room for tokens")
        self.ids: list[list[int]] = []
        self.types: list[list[int]] = []
        for i, a in enumerate(a_ids):
            a, b = _truncate_pair(a, None if b_ids is None else b_ids[i], max_len - overhead)
            first = start + a + end
            second = [] if b is None else b + end
            self.ids.append(first + second)
            self.types.append([0] * len(first) + [1] * len(second))
        super().__init__(len(texts), batch_size, seed, shuffle=shuffle, rank=rank, world=world)

    @property
    def num_labels(self) -> int:
        return len(self.label_map)

    @classmethod
    def from_file(cls, path: str | Path, tokenizer: Tokenizer, batch_size: int, seed: int = 0,
                  *, text_column: str = "text", text_pair_column: str | None = None,
                  label_column: str = "label", **kwargs: Any) -> ClassificationBatches:
        """Examples from :func:`read_records` columns (CSV/TSV/JSON/JSONL)."""
        rows = read_records(path)
        texts = [str(t) for t in _column(rows, text_column, path)]
        pairs = (None if text_pair_column is None
                 else [str(t) for t in _column(rows, text_pair_column, path)])
        labels = _column(rows, label_column, path)
        return cls(texts, labels, tokenizer, batch_size, seed, text_pairs=pairs, **kwargs)

    def _collate(self, rows: list[int], group: list[int], keys: list[int]) -> dict[str, Tensor]:
        L = max(len(self.ids[i]) for i in group)
        return {"input_ids": pad_sequences([self.ids[i] for i in rows], L, self.pad_id),
                "attention_mask": pad_sequences([[1] * len(self.ids[i]) for i in rows], L, 0),
                "token_type_ids": pad_sequences([self.types[i] for i in rows], L, 0),
                "labels": torch.tensor([self.targets[i] for i in rows], dtype=torch.long)}
