"""Extractive question answering (SQuAD format) for
:class:`~attnkit.models.BertForQuestionAnswering`.

Each example becomes one or more *features* (windows over the context)::

    [CLS] question[:max_query_len] [SEP] context[ws : ws + room] [SEP]      room = max_len - q - 3

Windows start at ``0, doc_stride, 2·doc_stride, ...`` (``doc_stride`` is the step between
window starts; consecutive windows overlap by at least ``room - doc_stride`` tokens), except
that the last window is shifted to end exactly at the end of the context, so it is full. An
answer longer than the overlap may fit in no window (then every window says "no answer").

The answer's character span is mapped to context tokens through the tokenizer's offsets (so a
tokenizer with ``encode_with_offsets`` is needed: WordPiece/BPE from ``tokenizers``, or the
char tokenizer); a window that does not contain the whole answer, and
an unanswerable question, get start = end = 0 (the ``[CLS]`` position), as Hugging Face does.
Training uses the first answer. ``labels`` is ``(B, 2)``: start and end token positions.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnkit.data.batches import ShardedBatches, pad_sequences
from attnkit.data.corpus import CorpusError, read_utf8
from attnkit.data.tokenizers import Tokenizer

__all__ = ["QAExample", "QAFeature", "load_squad", "answer_token_span", "SpanQABatches"]


@dataclass(frozen=True)
class QAExample:
    """A question about ``context``; ``answers`` are ``(text, char_start)`` (empty when the
    question is unanswerable)."""

    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class QAFeature:
    """One window of one example. ``offsets[i]`` is the context character span of token
    ``i`` (None for question and special tokens); ``start``/``end`` the answer's token
    positions (0 = no answer in this window)."""

    example_index: int
    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]
    start: int
    end: int


def _flat_example(r: dict[str, Any], i: int) -> QAExample:
    ans = r.get("answers", [])
    if isinstance(ans, dict):  # Hugging Face datasets: {"text": [...], "answer_start": [...]}
        ans = [{"text": t, "answer_start": s}
               for t, s in zip(ans.get("text", []), ans.get("answer_start", []), strict=True)]
    return QAExample(str(r.get("id", i)), r["question"], r["context"],
                     tuple((a["text"], int(a["answer_start"])) for a in ans))


def load_squad(path: str | Path) -> list[QAExample]:
    """SQuAD v1.1/v2.0 JSON (``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}``),
    or flat records (a JSON list or JSONL of ``{"id", "question", "context", "answers"}``,
    ``answers`` as a list of ``{"text", "answer_start"}`` or the Hugging Face datasets dict).
    Questions marked ``is_impossible`` get no answers."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"no SQuAD file at {p}")
    text = read_utf8(p)
    try:
        if p.suffix.lower() == ".jsonl":
            data: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{p}: invalid JSON ({e.msg}, line {e.lineno})") from None
    out: list[QAExample] = []
    try:
        if isinstance(data, dict) and isinstance(data.get("data"), list) and data["data"] \
                and "paragraphs" in data["data"][0]:
            for article in data["data"]:
                for para in article["paragraphs"]:
                    for qa in para["qas"]:
                        answers = () if qa.get("is_impossible") else tuple(
                            (a["text"], int(a["answer_start"])) for a in qa.get("answers", []))
                        out.append(QAExample(str(qa.get("id", len(out))), qa["question"],
                                             para["context"], answers))
        else:
            records = data["data"] if isinstance(data, dict) else data
            out = [_flat_example(r, i) for i, r in enumerate(records)]
    except (KeyError, TypeError, ValueError) as e:
        raise CorpusError(f"{p}: not SQuAD-format data ({type(e).__name__}: {e})") from None
    if not out:
        raise CorpusError(f"{p}: no questions")
    return out


def _answer_chars(ex: QAExample) -> tuple[int, int] | None:
    """``[start, end)`` of the first answer in the context (re-located if the stated
    ``answer_start`` is off, as in a few SQuAD entries)."""
    if not ex.answers:
        return None
    text, start = ex.answers[0]
    if not text:
        return None
    if ex.context[start:start + len(text)] != text:
        hits = [i for i in range(len(ex.context)) if ex.context.startswith(text, i)]
        if not hits:
            return None
        start = min(hits, key=lambda i: abs(i - start))
    return start, start + len(text)


def answer_token_span(offsets: Sequence[tuple[int, int]], start: int, end: int
                      ) -> tuple[int, int] | None:
    """Tokens covering characters ``[start, end)``: the first token ending after ``start``
    and the last token starting before ``end`` (None if no token overlaps)."""
    ends = [e for _, e in offsets]
    first = bisect.bisect_right(ends, start)
    starts = [s for s, _ in offsets]
    last = bisect.bisect_left(starts, end) - 1
    if first >= len(offsets) or last < 0 or last < first:
        return None
    return first, last


class SpanQABatches(ShardedBatches):
    """SQuAD-style features (see module doc) as batches of ``input_ids``, ``attention_mask``,
    ``token_type_ids`` and ``labels (B, 2)``; ``self.features``/``self.examples`` keep the
    mapping back to text (:meth:`answer_text`)."""

    def __init__(self, examples: Sequence[QAExample] | str | Path, tokenizer: Tokenizer,
                 batch_size: int, seed: int = 0, *, max_len: int = 384, doc_stride: int = 128,
                 max_query_len: int = 64, shuffle: bool = True, rank: int = 0, world: int = 1):
        if isinstance(examples, (str, Path)):
            examples = load_squad(examples)
        if tokenizer.pad_id is None:
            raise ValueError(f"{tokenizer!r} has no pad token")
        if doc_stride < 1:
            raise ValueError(f"doc_stride must be >= 1, got {doc_stride}")
        self.examples = list(examples)
        self.pad_id = tokenizer.pad_id
        self.features: list[QAFeature] = []
        for i, ex in enumerate(self.examples):
            self.features.extend(self._featurize(i, ex, tokenizer, max_len, doc_stride,
                                                 max_query_len))
        super().__init__(len(self.features), batch_size, seed, shuffle=shuffle, rank=rank,
                         world=world)

    @staticmethod
    def _featurize(index: int, ex: QAExample, tok: Tokenizer, max_len: int, doc_stride: int,
                   max_query_len: int) -> list[QAFeature]:
        start = [] if tok.start_id is None else [tok.start_id]
        end = [] if tok.end_id is None else [tok.end_id]
        q = tok.encode(ex.question)[:max_query_len]
        head = start + q + end
        room = max_len - len(head) - len(end)
        if room < 1:
            raise ValueError(f"max_len {max_len} leaves no room for context after a "
                             f"{len(q)}-token question")
        ctx_ids, ctx_offsets = tok.encode_with_offsets(ex.context)
        chars = _answer_chars(ex)
        span = None if chars is None else answer_token_span(ctx_offsets, *chars)
        feats = []
        ws = 0
        while True:
            we = min(ws + room, len(ctx_ids))
            if span is not None and ws <= span[0] and span[1] < we:
                s, e = len(head) + span[0] - ws, len(head) + span[1] - ws
            else:
                s = e = 0
            ids = head + ctx_ids[ws:we] + end
            types = [0] * len(head) + [1] * (len(ids) - len(head))
            offs: list[tuple[int, int] | None] = ([None] * len(head) + list(ctx_offsets[ws:we])
                                                  + [None] * len(end))
            feats.append(QAFeature(index, ids, types, offs, s, e))
            if we >= len(ctx_ids):
                return feats
            ws = min(ws + doc_stride, len(ctx_ids) - room)  # the last window ends at the end

    def answer_text(self, feature: int | QAFeature, start: int, end: int) -> str:
        """The context text between token positions ``start`` and ``end`` (inclusive) of a
        feature; ``""`` when the span is not inside the context."""
        f = self.features[feature] if isinstance(feature, int) else feature
        if not (0 <= start <= end < len(f.offsets)):
            return ""
        a, b = f.offsets[start], f.offsets[end]
        if a is None or b is None:
            return ""
        return self.examples[f.example_index].context[a[0]:b[1]]

    def _collate(self, rows: list[int], group: list[int], keys: list[int]) -> dict[str, Tensor]:
        L = max(len(self.features[i].input_ids) for i in group)
        fs = [self.features[i] for i in rows]
        return {"input_ids": pad_sequences([f.input_ids for f in fs], L, self.pad_id),
                "attention_mask": pad_sequences([[1] * len(f.input_ids) for f in fs], L, 0),
                "token_type_ids": pad_sequences([f.token_type_ids for f in fs], L, 0),
                "labels": torch.tensor([[f.start, f.end] for f in fs], dtype=torch.long)}
