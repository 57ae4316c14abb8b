"""Synthetic tasks that separate attention variants: recall, copying and long-range retrieval,
generated on the fly from a seed.

Each task is a :class:`~attnkit.data.batches.ShardedBatches` source of causal-LM batches in
the convention of :class:`~attnkit.data.CausalLMBatches` (``input_ids (B, L)`` and ``labels
(B, L)``; :class:`~attnkit.models.CausalLM` scores ``logits[:, t]`` against ``labels[:, t +
1]``) whose labels are -100 everywhere except on the *answer* tokens, so the loss and
:func:`answer_accuracy` cover the answers only. Example ``i`` of a source is drawn from a
NumPy generator seeded with ``mix_seed(seed, split, i)``: the same seed gives the same
examples in every process and batch layout, ``split="val"`` gives a disjoint stream of
examples for validation, and ordering, resume and sharding are those of ``ShardedBatches``
(a training source of ``num_examples`` examples is a finite training set, revisited in a new
order every epoch, as in Zoology's 100k-example sets).

Token layout: id 0 is the blank / filler token, id 1 the separator; the tasks draw their
content from the ids above (split into key, value and filler ranges where a task needs it).

===================  ======================================================================
task                 one example (``L = seq_len``)
===================  ======================================================================
``mqar``             multi-query associative recall (Arora et al. 2023, "Zoology", §3;
                     :class:`MQARBatches`): ``D`` key-value pairs, then every key queried
                     once, the answer being its value.
``copy``             copying (Jelassi et al. 2024, "Repeat After Me"): ``M`` random tokens,
                     the separator, the same ``M`` tokens again (the answers).
``selective_copy``   selective copying (Gu & Dao 2023, "Mamba", §3.1): ``M`` tokens scattered
                     among blanks, the separator, the ``M`` tokens in order (the answers).
``retrieval``        long-range retrieval (passkey retrieval, Mohtashami & Jaggi 2023):
                     ``D`` key-value needles at random depths in random filler; the last
                     two tokens are the separator and one of the keys, the answer its value.
===================  ======================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from attnkit.data.batches import IGNORE_INDEX, ShardedBatches, mix_seed

__all__ = ["SyntheticBatches", "MQARBatches", "CopyBatches", "SelectiveCopyBatches",
           "RetrievalBatches", "TASKS", "AnswerAccuracy", "answer_accuracy", "BLANK", "SEP"]

BLANK, SEP = 0, 1
_SPLITS = {"train": 0x7A1, "val": 0x7A2}


class SyntheticBatches(ShardedBatches):
    """Base of the synthetic tasks: ``num_examples`` examples of ``seq_len`` tokens over a
    vocabulary of ``vocab_size`` ids, example ``i`` drawn by :meth:`example`. Subclasses set
    ``name`` and implement :meth:`_draw`."""

    name: ClassVar[str] = "synthetic"

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0, *, seq_len: int,
                 vocab_size: int, split: str = "train", shuffle: bool = True, rank: int = 0,
                 world: int = 1):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        if not isinstance(seq_len, int) or seq_len < 4:
            raise ValueError(f"{self.name}: seq_len must be an int >= 4, got {seq_len!r}")
        if not isinstance(vocab_size, int) or vocab_size < 4:
            raise ValueError(f"{self.name}: vocab_size must be an int >= 4, got {vocab_size!r}")
        if num_examples < 1:
            raise ValueError(f"{self.name}: num_examples must be >= 1, got {num_examples}")
        self.seq_len, self.vocab_size, self.split = seq_len, vocab_size, split
        self.content_seed = seed
        super().__init__(num_examples, batch_size, seed, shuffle=shuffle, rank=rank,
                         world=world)

    # ---- examples ---------------------------------------------------------------------------
    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One example: ``(ids (L,), labels (L,))`` int64, labels -100 off the answers."""
        raise NotImplementedError

    def example(self, index: int) -> tuple[Tensor, Tensor]:
        """Example ``index`` (a pure function of the seed, the split and the index)."""
        if not 0 <= index < self.num_examples:
            raise IndexError(f"example {index} out of range [0, {self.num_examples})")
        rng = np.random.default_rng(mix_seed(self.content_seed, _SPLITS[self.split], index))
        ids, labels = self._draw(rng)
        return torch.from_numpy(ids), torch.from_numpy(labels)

    def _collate(self, rows: list[int], group: list[int], keys: list[int]) -> dict[str, Tensor]:
        pairs = [self.example(i) for i in rows]
        return {"input_ids": torch.stack([p[0] for p in pairs]),
                "labels": torch.stack([p[1] for p in pairs])}

    def describe(self) -> str:
        return f"{self.name}: seq_len {self.seq_len}, vocab {self.vocab_size}"

    def _blank(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.full(self.seq_len, BLANK, dtype=np.int64),
                np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64))


class MQARBatches(SyntheticBatches):
    """Multi-query associative recall, built as Zoology's ``multiquery_ar`` (Arora et al.
    2023, §3 and App. E; HazyResearch/zoology ``zoology/data/multiquery_ar.py``)::

        k1 v1 k2 v2 … kD vD | 0 … kσ1 0 … kσ2 0 …      (L tokens)
        labels: the value vσi on the token after each query kσi, -100 elsewhere

    Keys are ``D`` distinct ids of ``[1, V/2)``, values ``D`` distinct ids of ``[V/2, V)``.
    The ``L - 2D`` positions after the pairs have ``space = (L - 2D) / 2`` even slots; each
    key is queried once, at slot ``g`` (distinct per key) drawn from the power law
    ``p(g) ∝ a·g^(a-1)``, ``g = 1 … space`` (``power_a`` ``a = 0.01``: queries come soon after
    the pairs more often than late, as repeated bigrams do in text). The other positions hold
    0, or (``random_fill``, Zoology's ``random_non_queries``) uniform random ids of
    ``[0, V)``. Zoology's Figure 2 uses ``random_fill=False``, vocabulary 8192 and
    ``(L, D)`` in ``(64, 4), (128, 8), (256, 16)``. Requires ``L`` even, ``4D <= L`` and
    ``V > L``; the model reads the query ``kσi`` at position ``t`` and predicts ``vσi`` from
    there (``labels[t + 1]``, the causal shift).
    """

    name = "mqar"

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0, *, seq_len: int = 64,
                 vocab_size: int = 8192, kv_pairs: int = 8, power_a: float = 0.01,
                 random_fill: bool = False, **kwargs):
        super().__init__(num_examples, batch_size, seed, seq_len=seq_len,
                         vocab_size=vocab_size, **kwargs)
        L, V, D = seq_len, vocab_size, kv_pairs
        if not isinstance(D, int) or D < 1:
            raise ValueError(f"mqar: kv_pairs must be a positive int, got {D!r}")
        if L % 2:
            raise ValueError(f"mqar: seq_len must be even (key-value slots), got {L}")
        if 4 * D > L:
            raise ValueError(f"mqar: {D} key-value pairs need seq_len >= 4 * kv_pairs = "
                             f"{4 * D} (pairs, then a slot per query), got seq_len {L}")
        if V <= L:
            raise ValueError(f"mqar: vocab_size must exceed seq_len (Zoology's construction), "
                             f"got vocab_size {V} <= seq_len {L}")
        if V // 2 - 1 < D:
            raise ValueError(f"mqar: vocab_size {V} has only {V // 2 - 1} keys for {D} pairs")
        if not 0 < power_a <= 1:
            raise ValueError(f"mqar: power_a must be in (0, 1], got {power_a}")
        self.kv_pairs, self.power_a, self.random_fill = D, power_a, random_fill
        space = (L - 2 * D) // 2
        p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
        self._gap_logp = np.log(p / p.sum())

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        L, V, D = self.seq_len, self.vocab_size, self.kv_pairs
        ids, labels = self._blank()
        keys = 1 + rng.choice(V // 2 - 1, size=D, replace=False)
        values = V // 2 + rng.choice(V - V // 2, size=D, replace=False)
        ids[0:2 * D:2], ids[1:2 * D:2] = keys, values
        # D distinct slots, drawn one after another with probability ∝ p among those left
        # (NumPy's choice(replace=False, p=p), as Zoology calls it), by Gumbel-top-k (Kool et
        # al. 2019): the same distribution, 9x faster
        gaps = np.argsort(-(self._gap_logp + rng.gumbel(size=len(self._gap_logp))))[:D]
        queries = 2 * D + 2 * gaps  # even slots after the pairs; queries[i] asks keys[i]
        ids[queries] = keys
        labels[queries + 1] = values
        if self.random_fill:
            filler = np.ones(L, dtype=bool)
            filler[:2 * D] = False
            filler[queries] = False
            ids[filler] = rng.integers(0, V, size=int(filler.sum()))
        return ids, labels

    def describe(self) -> str:
        return (f"mqar: {self.kv_pairs} key-value pairs, seq_len {self.seq_len}, vocab "
                f"{self.vocab_size}" + (", random fill" if self.random_fill else ""))


class CopyBatches(SyntheticBatches):
    """Copying (the string-copy task of Jelassi et al. 2024, "Repeat After Me: Transformers
    are Better than State Space Models at Copying")::

        x1 … xM SEP x1 … xM 0 …        labels: x1 … xM on the copy, -100 elsewhere

    ``x`` uniform over ``[2, V)``; ``copy_len`` ``M`` defaults to ``(L - 1) // 2``, the
    longest string that fits (the rest is blank padding)."""

    name = "copy"

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0, *, seq_len: int = 64,
                 vocab_size: int = 32, copy_len: int | None = None, **kwargs):
        super().__init__(num_examples, batch_size, seed, seq_len=seq_len,
                         vocab_size=vocab_size, **kwargs)
        M = (seq_len - 1) // 2 if copy_len is None else copy_len
        if not isinstance(M, int) or M < 1 or 2 * M + 1 > seq_len:
            raise ValueError(f"{self.name}: copy_len must be in [1, (seq_len - 1) // 2 = "
                             f"{(seq_len - 1) // 2}], got {M!r}")
        self.copy_len = M

    def _tokens(self, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(2, self.vocab_size, size=self.copy_len)

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        M = self.copy_len
        ids, labels = self._blank()
        x = self._tokens(rng)
        ids[:M], ids[M] = x, SEP
        ids[M + 1:2 * M + 1] = labels[M + 1:2 * M + 1] = x
        return ids, labels

    def describe(self) -> str:
        return f"copy: {self.copy_len} tokens, seq_len {self.seq_len}, vocab {self.vocab_size}"


class SelectiveCopyBatches(CopyBatches):
    """Selective copying (Gu & Dao 2023, "Mamba", §3.1 and Fig. 2)::

        0 x1 0 0 x2 … 0 xM 0 SEP x1 … xM        labels: x1 … xM on the copy

    The ``M`` tokens (uniform over ``[2, V)``) sit at sorted, distinct, uniformly random
    positions of a context of ``C = L - M - 1`` positions, the others blank (0); the model
    must reproduce them in order, skipping the blanks. ``copy_len`` defaults to ``L // 4``."""

    name = "selective_copy"

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0, *, seq_len: int = 64,
                 vocab_size: int = 32, copy_len: int | None = None, **kwargs):
        super().__init__(num_examples, batch_size, seed, seq_len=seq_len,
                         vocab_size=vocab_size,
                         copy_len=max(1, seq_len // 4) if copy_len is None else copy_len,
                         **kwargs)

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        L, M = self.seq_len, self.copy_len
        ids, labels = self._blank()
        x = self._tokens(rng)
        context = L - M - 1
        where = np.sort(rng.choice(context, size=M, replace=False))
        ids[where] = x
        ids[context] = SEP
        ids[context + 1:] = labels[context + 1:] = x
        return ids, labels

    def describe(self) -> str:
        return (f"selective_copy: {self.copy_len} tokens among {self.seq_len - self.copy_len - 1}"
                f" positions, seq_len {self.seq_len}, vocab {self.vocab_size}")


class RetrievalBatches(SyntheticBatches):
    """Long-range retrieval (passkey / needle-in-a-haystack retrieval, Mohtashami & Jaggi
    2023, "Landmark Attention", §4.2), at any length::

        f f … k1 v1 f … k2 v2 … f f SEP kj vj        labels: vj on the last token only

    Filler ``f`` is uniform over ``[2, V/2)``; the ``D`` (``kv_pairs``) needles have distinct
    keys from ``[V/2, 3V/4)`` and values from ``[3V/4, V)``, at distinct random depths of the
    first ``L - 3`` positions (uniform over the non-overlapping placements); the query ``kj``
    is one needle's key, uniformly chosen. The needle is on average ``L/2`` tokens from the
    query, so a window shorter than ``L`` sees it only sometimes."""

    name = "retrieval"

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0, *, seq_len: int = 256,
                 vocab_size: int = 64, kv_pairs: int = 1, **kwargs):
        super().__init__(num_examples, batch_size, seed, seq_len=seq_len,
                         vocab_size=vocab_size, **kwargs)
        D = kv_pairs
        if not isinstance(D, int) or D < 1:
            raise ValueError(f"retrieval: kv_pairs must be a positive int, got {D!r}")
        if 2 * D > seq_len - 3:
            raise ValueError(f"retrieval: {D} needles need seq_len >= 2 * kv_pairs + 3 = "
                             f"{2 * D + 3}, got {seq_len}")
        if vocab_size < 16 or vocab_size // 4 < D:
            raise ValueError(f"retrieval: vocab_size must be >= 16 and leave a key per needle "
                             f"(vocab_size // 4 >= kv_pairs), got vocab_size {vocab_size} for "
                             f"{D} needles")
        self.kv_pairs = D

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        L, V, D = self.seq_len, self.vocab_size, self.kv_pairs
        ids, labels = self._blank()
        hay = L - 3
        ids[:hay] = rng.integers(2, V // 2, size=hay)
        keys = rng.choice(np.arange(V // 2, 3 * V // 4), size=D, replace=False)
        values = rng.integers(3 * V // 4, V, size=D)
        # D non-overlapping 2-token needles in hay positions: choose D of hay - D slots, then
        # spread them (the i-th chosen slot moves right by i)
        starts = np.sort(rng.choice(hay - D, size=D, replace=False)) + np.arange(D)
        order = rng.permutation(D)
        ids[starts], ids[starts + 1] = keys[order], values[order]
        j = int(rng.integers(D))
        ids[L - 3], ids[L - 2], ids[L - 1] = SEP, keys[j], values[j]
        labels[L - 1] = values[j]
        return ids, labels

    def describe(self) -> str:
        return (f"retrieval: {self.kv_pairs} needle{'s' if self.kv_pairs > 1 else ''}, seq_len "
                f"{self.seq_len}, vocab {self.vocab_size}")


#: Task name -> batch source class.
TASKS: dict[str, type[SyntheticBatches]] = {
    cls.name: cls for cls in (MQARBatches, CopyBatches, SelectiveCopyBatches, RetrievalBatches)}


# ---- the metric -------------------------------------------------------------------------------


@dataclass
class AnswerAccuracy:
    """Counts over answer tokens: ``correct`` of ``answers`` argmax predictions were right;
    ``exact`` of ``examples`` examples had every answer right. Add them to accumulate."""

    correct: int = 0
    answers: int = 0
    exact: int = 0
    examples: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.answers if self.answers else float("nan")

    @property
    def exact_match(self) -> float:
        return self.exact / self.examples if self.examples else float("nan")

    def __add__(self, other: AnswerAccuracy) -> AnswerAccuracy:
        return AnswerAccuracy(self.correct + other.correct, self.answers + other.answers,
                              self.exact + other.exact, self.examples + other.examples)


def answer_accuracy(logits: Tensor, labels: Tensor, *, shift: bool = True) -> AnswerAccuracy:
    """Argmax accuracy over the answer positions only (labels not -100).

    ``logits (B, L, V)``, ``labels (B, L)``. ``shift=True`` (causal LMs, the tasks above):
    ``logits[:, t]`` predicts ``labels[:, t + 1]``; ``False``: ``logits[:, t]`` predicts
    ``labels[:, t]``. An example without answers counts in neither ``exact`` nor
    ``examples``."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"need logits (B, L, V) and labels (B, L), got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    labels = labels.to(logits.device)
    answer = labels != IGNORE_INDEX  # (B, L')
    right = (logits.argmax(-1) == labels) & answer
    has = answer.any(-1)
    exact = (right.sum(-1) == answer.sum(-1)) & has
    return AnswerAccuracy(int(right.sum()), int(answer.sum()), int(exact.sum()), int(has.sum()))
