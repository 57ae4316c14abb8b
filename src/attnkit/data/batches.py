"""Batch sources: the :class:`BatchSource` protocol, its shared machinery, and the
language-modelling sources (:class:`CausalLMBatches`, :class:`MaskedLMBatches`).

Every source is a deterministic, resumable stream of batches whose keys are the model's
``forward`` keyword arguments (``labels`` included). The stream is defined by

* an *example* list of ``n`` items (windows of a token stream, sentence pairs, QA features);
* an *order*: epoch ``e`` visits all ``n`` examples once, in ``randperm(n)`` drawn from a
  ``torch.Generator`` seeded with ``mix(seed, e)`` (or in order with ``shuffle=False``); the
  epochs are concatenated into one infinite sequence and batches are consecutive slices of
  it, so a batch may straddle an epoch boundary and no example is dropped;
* a cursor ``consumed`` = examples taken so far (across all ranks).

``state_dict()`` is therefore just ``{seed, consumed}`` (+ ``epoch``/``cursor`` for reading and
``num_examples`` as a check): plain ints, JSON-serialisable, and enough to continue the exact
same sequence of batches. Per-example randomness (MLM masking) is seeded by the example's
position in the stream, never by a shared generator, so it does not depend on how the stream
is cut into batches or shards.

**Sharding (DDP).** ``batch_size`` is always the per-rank batch; with ``world = N`` ranks the
global batch is ``batch_size × N`` consecutive examples of the stream and rank ``r`` takes the
contiguous block of rows ``[r·batch_size, (r+1)·batch_size)``. Concatenating the ranks' batches
in rank order gives exactly the batch a single process with ``batch_size × N`` and ``world=1``
gets (padding is to the longest example of the *global* batch, so shapes agree too). Set
``rank``/``world`` in the constructor or call :meth:`ShardedBatches.shard`.

**Evaluation.** ``eval_batches(max_batches)`` walks the examples in their stored order
(no shuffle, no sharding: every rank sees the same batches, so all ranks run the same number
of them and a cross-rank mean equals the single-process value; the last batch may be smaller)
with fixed per-example randomness, so validation numbers are reproducible.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from attnkit.data.tokenizers import Tokenizer
from attnkit.data.tokens import TokenFile

__all__ = ["BatchSource", "ShardedBatches", "EpochOrder", "mix_seed", "pad_sequences",
           "CausalLMBatches", "MaskedLMBatches", "IGNORE_INDEX"]

IGNORE_INDEX = -100
_EVAL_SALT = 0x5EED_E7A1


@runtime_checkable
class BatchSource(Protocol):
    """What the trainer consumes."""

    def next_batch(self) -> dict[str, Tensor]:
        """The next batch; keys match the model's forward kwargs, including ``labels``."""
        ...

    def state_dict(self) -> dict:
        """JSON-serialisable state: enough to continue the exact same sequence of batches."""
        ...

    def load_state_dict(self, state: dict) -> None: ...


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and platforms)."""
    data = b"".join(int(p).to_bytes(16, "little", signed=True) for p in parts)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def pad_sequences(seqs: Sequence[Sequence[int]], length: int, value: int) -> Tensor:
    """``(len(seqs), length)`` int64 tensor, each row right-padded with ``value``."""
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


class EpochOrder:
    """Maps a position in the infinite example stream to an example index (see module doc)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        if n <= 0:
            raise ValueError("a batch source needs at least one example")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._cached: tuple[int, Tensor] | None = None

    def permutation(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        if self._cached is None or self._cached[0] != epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            self._cached = (epoch, torch.randperm(self.n, generator=g))
        return self._cached[1]

    def indices(self, start: int, count: int) -> list[int]:
        """Example indices at stream positions ``start .. start + count - 1``."""
        out: list[int] = []
        pos = start
        while len(out) < count:
            epoch, cursor = divmod(pos, self.n)
            take = min(count - len(out), self.n - cursor)
            out.extend(self.permutation(epoch)[cursor:cursor + take].tolist())
            pos += take
        return out


class ShardedBatches(ABC):
    """Base of every batch source: ordering, sharding, state and evaluation. Subclasses set
    ``num_examples`` and implement :meth:`_collate`."""

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0, *,
                 shuffle: bool = True, rank: int = 0, world: int = 1):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.order = EpochOrder(num_examples, seed, shuffle)
        self.consumed = 0
        self.rank, self.world = 0, 1
        self.shard(rank, world)

    # ---- subclasses ---------------------------------------------------------------------
    @abstractmethod
    def _collate(self, rows: list[int], group: list[int], keys: list[int]) -> dict[str, Tensor]:
        """The batch of examples ``rows``; ``group`` is the whole global batch (pad to its
        longest), ``keys`` one seed per row for per-example randomness."""

    # ---- protocol -----------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.order.seed

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world

    @property
    def epoch(self) -> int:
        return self.consumed // self.num_examples

    def shard(self, rank: int, world: int) -> Self:
        """Make this source produce rank ``rank``'s block of each global batch of
        ``batch_size × world`` examples (in place; returns ``self``)."""
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
        self.rank, self.world = rank, world
        return self

    def next_batch(self) -> dict[str, Tensor]:
        B, G = self.batch_size, self.global_batch_size
        group = self.order.indices(self.consumed, G)
        lo = self.rank * B
        keys = [mix_seed(self.seed, self.consumed + lo + i) for i in range(B)]
        batch = self._collate(group[lo:lo + B], group, keys)
        self.consumed += G
        return batch

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        epoch, cursor = divmod(self.consumed, self.num_examples)
        return {"source": type(self).__name__, "seed": self.seed, "consumed": self.consumed,
                "epoch": epoch, "cursor": cursor, "num_examples": self.num_examples,
                "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (the seed and position are taken from it; the rank/world
        layout may differ as long as the global batch size is the same)."""
        src = state.get("source", type(self).__name__)
        if src != type(self).__name__:
            raise ValueError(f"state is for {src}, not {type(self).__name__}")
        if int(state["num_examples"]) != self.num_examples:
            raise ValueError(f"state was saved over {state['num_examples']} examples, this "
                             f"source has {self.num_examples}: the data changed")
        self.shuffle = bool(state.get("shuffle", self.shuffle))
        self.order = EpochOrder(self.num_examples, int(state["seed"]), self.shuffle)
        self.consumed = int(state["consumed"])

    def eval_batches(self, max_batches: int | None = None) -> Iterator[dict[str, Tensor]]:
        """Every example once, in stored order, ``batch_size`` per batch (not sharded)."""
        B = self.batch_size
        total = -(-self.num_examples // B)
        if max_batches is not None:
            total = min(total, max_batches)
        for b in range(total):
            rows = list(range(b * B, min((b + 1) * B, self.num_examples)))
            yield self._collate(rows, rows, [mix_seed(self.seed, _EVAL_SALT, i) for i in rows])

    def __len__(self) -> int:
        """Global batches per epoch (the last one may straddle into the next epoch)."""
        return -(-self.num_examples // self.global_batch_size)


# ---- token streams ---------------------------------------------------------------------------

TokenSource = TokenFile | np.ndarray | Tensor | str | Path


def _as_array(tokens: TokenSource) -> np.ndarray:
    if isinstance(tokens, (str, Path)):
        tokens = TokenFile.open(tokens)
    if isinstance(tokens, TokenFile):
        return tokens.tokens
    if isinstance(tokens, Tensor):
        return tokens.detach().cpu().reshape(-1).numpy()
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"a token stream must be 1-D, got shape {arr.shape}")
    return arr


def _window(data: np.ndarray, start: int, length: int) -> Tensor:
    return torch.from_numpy(np.asarray(data[start:start + length], dtype=np.int64))


class CausalLMBatches(ShardedBatches):
    """Packed next-token windows of a token stream: ``input_ids (B, L)`` and ``labels (B, L)``
    with ``labels == input_ids`` (:class:`~attnkit.models.CausalLM` shifts internally: logits
    at ``t`` are scored against ``labels[t + 1]``).

    Window ``k`` is ``tokens[k(L-1) : k(L-1) + L]``: consecutive windows share one token, so
    every token after the first is a *target* exactly once per epoch (``n = (N-1) // (L-1)``
    windows; the tail that does not fill a window is unused)."""

    def __init__(self, tokens: TokenSource, batch_size: int, seq_len: int, seed: int = 0, *,
                 shuffle: bool = True, rank: int = 0, world: int = 1):
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.data = _as_array(tokens)
        self.seq_len = seq_len
        n = (len(self.data) - 1) // (seq_len - 1)
        if n < 1:
            raise ValueError(f"{len(self.data)} tokens cannot fill one window of seq_len "
                             f"{seq_len}")
        super().__init__(n, batch_size, seed, shuffle=shuffle, rank=rank, world=world)

    def _collate(self, rows: list[int], group: list[int], keys: list[int]) -> dict[str, Tensor]:
        L = self.seq_len
        ids = torch.stack([_window(self.data, k * (L - 1), L) for k in rows])
        return {"input_ids": ids, "labels": ids.clone()}


class MaskedLMBatches(ShardedBatches):
    """BERT masked-LM windows of a token stream: ``[CLS] w [SEP]`` (the tokenizer's
    ``start_id``/``end_id``; omitted if it has none) over non-overlapping windows ``w`` of
    ``seq_len - 2`` tokens.

    Masking (BERT): each non-special token is selected with probability ``mlm_probability``
    (0.15); a selected token becomes ``[MASK]`` with probability 0.8, a uniformly random
    non-special token with 0.1, and stays unchanged with 0.1. ``labels`` hold the original id
    at selected positions and -100 elsewhere; special tokens (CLS/SEP, document separators,
    padding) are never selected. A row with nothing selected gets its lowest-draw eligible
    token selected, so no row (and no tiny batch) has an empty loss. Draws come from a
    generator seeded per example (see module doc). Returns ``input_ids``, ``attention_mask``
    (all ones: windows are packed) and ``labels``."""

    def __init__(self, tokens: TokenSource, tokenizer: Tokenizer, batch_size: int, seq_len: int,
                 seed: int = 0, *, mlm_probability: float = 0.15, mask_fraction: float = 0.8,
                 random_fraction: float = 0.1, shuffle: bool = True, rank: int = 0,
                 world: int = 1):
        if tokenizer.mask_id is None:
            raise ValueError(f"{tokenizer!r} has no mask token")
        if not (0 < mlm_probability <= 1 and 0 <= mask_fraction
                and 0 <= random_fraction and mask_fraction + random_fraction <= 1):
            raise ValueError("need 0 < mlm_probability <= 1 and mask_fraction + "
                             "random_fraction <= 1")
        self.data = _as_array(tokens)
        self.mask_id = tokenizer.mask_id
        self.start_id, self.end_id = tokenizer.start_id, tokenizer.end_id
        self.pad_id = tokenizer.pad_id
        self.special = torch.tensor(sorted(tokenizer.all_special_ids), dtype=torch.long)
        keep = torch.ones(tokenizer.vocab_size, dtype=torch.bool)
        keep[self.special] = False
        self.replacements = keep.nonzero().squeeze(1)
        self.mlm_probability = mlm_probability
        self.mask_fraction, self.random_fraction = mask_fraction, random_fraction
        self.seq_len = seq_len
        self.content_len = seq_len - (self.start_id is not None) - (self.end_id is not None)
        if self.content_len < 1:
            raise ValueError(f"seq_len {seq_len} leaves no room for tokens")
        n = len(self.data) // self.content_len
        if n < 1:
            raise ValueError(f"{len(self.data)} tokens cannot fill one window of "
                             f"{self.content_len}")
        super().__init__(n, batch_size, seed, shuffle=shuffle, rank=rank, world=world)

    def _row(self, k: int) -> Tensor:
        parts = [_window(self.data, k * self.content_len, self.content_len)]
        if self.start_id is not None:
            parts.insert(0, torch.tensor([self.start_id]))
        if self.end_id is not None:
            parts.append(torch.tensor([self.end_id]))
        return torch.cat(parts)

    def mask_tokens(self, ids: Tensor, key: int) -> tuple[Tensor, Tensor]:
        """BERT 80/10/10 masking of one ``(L,)`` row with a generator seeded by ``key``:
        ``(masked ids, labels)``."""
        g = torch.Generator().manual_seed(key)
        L = ids.shape[0]
        select_draw = torch.rand(L, generator=g)
        action_draw = torch.rand(L, generator=g)
        random_ids = self.replacements[torch.randint(len(self.replacements), (L,), generator=g)]
        eligible = ~torch.isin(ids, self.special)
        selected = (select_draw < self.mlm_probability) & eligible
        if not selected.any() and eligible.any():
            selected[torch.where(eligible, select_draw, 2.0).argmin()] = True
        labels = torch.where(selected, ids, IGNORE_INDEX)
        to_mask = selected & (action_draw < self.mask_fraction)
        to_random = selected & (action_draw >= self.mask_fraction) & (
            action_draw < self.mask_fraction + self.random_fraction)
        out = torch.where(to_mask, self.mask_id, ids)
        out = torch.where(to_random, random_ids, out)
        return out, labels

    def _collate(self, rows: list[int], group: list[int], keys: list[int]) -> dict[str, Tensor]:
        masked = [self.mask_tokens(self._row(k), key) for k, key in zip(rows, keys, strict=True)]
        ids = torch.stack([m[0] for m in masked])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "labels": torch.stack([m[1] for m in masked])}
