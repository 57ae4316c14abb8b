"""Key/value caches for incremental (autoregressive) decoding.

At step ``t`` a decoder needs the keys and values of every earlier position; recomputing them
costs O(t) projections per step, caching them costs O(1). Each attention layer owns one cache::

    k_all, v_all = cache.update(k_new, v_new)     # (B, Hkv, Lnew, D) -> (B, Hkv, Lk, D)
    out = attend(q, k_all, v_all, mask=masks.causal())

Queries are the **last** ``Lnew`` positions of the returned keys, which is exactly the
bottom-right alignment of :mod:`attnkit.attention.masks`, so the same ``causal()`` mask serves the
prefill (``Lq == Lk``) and every decoding step (``Lq < Lk``).

Positions: ``cache.pos`` is the absolute position of the next token (= tokens seen so far).
Rotary embeddings must be applied with those absolute positions *before* ``update`` — keys are
cached already rotated. :meth:`next_positions` gives ``pos, pos+1, ..., pos+Lnew-1``.

The caches are meant for inference (``torch.no_grad()``): ``update`` writes in place.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnkit.memory import require

__all__ = ["KVCache", "SlidingWindowCache"]


class _CacheBase:
    """Shape checks and the position counter shared by both caches."""

    def __init__(self, batch: int, n_kv_heads: int, capacity: int, head_dim: int,
                 v_dim: int | None, dtype: torch.dtype, device: torch.device | str | None):
        for name, val in (("batch", batch), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        self.batch, self.n_kv_heads, self.head_dim = batch, n_kv_heads, head_dim
        self.v_dim = head_dim if v_dim is None else v_dim
        nbytes = batch * n_kv_heads * capacity * (head_dim + self.v_dim) * dtype.itemsize
        require(nbytes, device or torch.get_default_device(),
                what=f"a {type(self).__name__} of {capacity:,} positions x {batch} rows x "
                f"{n_kv_heads} heads", fix="generate fewer tokens (max_new_tokens) or shorter "
                "prompts")
        self.k = torch.zeros(batch, n_kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros(batch, n_kv_heads, capacity, self.v_dim, dtype=dtype, device=device)
        self.pos = 0  # absolute position of the next token
        # True once a step wrote NaN/inf (MultiHeadAttention checks each step's projections on
        # the CPU, so decoding checks only new tokens for sdpa's NaN guard)
        self.nonfinite = False

    def _check(self, k_new: Tensor, v_new: Tensor) -> int:
        want_k = (self.batch, self.n_kv_heads, self.head_dim)
        if k_new.dim() != 4 or (k_new.shape[0], k_new.shape[1], k_new.shape[3]) != want_k:
            raise ValueError(
                f"{type(self).__name__} expects k_new of shape (B={self.batch}, "
                f"Hkv={self.n_kv_heads}, L, D={self.head_dim}), got {tuple(k_new.shape)}"
            )
        want_v = (self.batch, self.n_kv_heads, k_new.shape[2], self.v_dim)
        if tuple(v_new.shape) != want_v:
            raise ValueError(f"v_new must have shape {want_v}, got {tuple(v_new.shape)}")
        if k_new.dtype != self.k.dtype or k_new.device != self.k.device:
            raise TypeError(
                f"cache holds {self.k.dtype} on {self.k.device}, got k_new {k_new.dtype} on "
                f"{k_new.device}; build the cache with matching dtype/device"
            )
        return k_new.shape[2]

    def next_positions(self, length: int) -> Tensor:
        """Absolute positions ``(length,)`` of the next ``length`` tokens (for RoPE)."""
        return torch.arange(self.pos, self.pos + length, device=self.k.device)

    def reset(self) -> None:
        """Forget everything (buffers are kept, the counter goes back to 0)."""
        self.pos = 0
        self.nonfinite = False

    def __len__(self) -> int:
        return self.pos


class KVCache(_CacheBase):
    """Static cache: preallocated ``(B, Hkv, max_len, D)`` buffers filled left to right.

    ``update`` writes the new keys at ``[pos, pos + Lnew)`` and returns the valid prefix
    ``k[:, :, :pos + Lnew]`` (a view, no copy).
    """

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, *,
                 v_dim: int | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        super().__init__(batch, n_kv_heads, max_len, head_dim, v_dim, dtype, device)
        self.max_len = max_len

    def update(self, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``(B, Hkv, Lnew, D)`` keys/values; return all ``(B, Hkv, pos + Lnew, D)``."""
        n = self._check(k_new, v_new)
        end = self.pos + n
        if end > self.max_len:
            raise ValueError(
                f"KVCache overflow: {self.pos} cached + {n} new = {end} positions > "
                f"max_len={self.max_len}; allocate a larger cache or use SlidingWindowCache"
            )
        self.k[:, :, self.pos:end] = k_new
        self.v[:, :, self.pos:end] = v_new
        self.pos = end
        return self.k[:, :, :end], self.v[:, :, :end]


class SlidingWindowCache(_CacheBase):
    """Ring buffer holding the ``window`` most recent positions (Mistral-style local attention).

    Absolute position ``p`` lives in slot ``p % window``; memory is O(window) however long the
    generation runs. ``update`` returns keys in **temporal order**: the last ``window - 1``
    cached positions followed by the ``Lnew`` new ones, i.e. the contiguous positions
    ``[pos - (window-1), pos + Lnew)`` clipped at 0.

    Which mask: these are exactly the keys a window of ``window`` keys (the query included)
    can reach, and they are contiguous, so with bottom-right alignment

    * ``masks.sliding_window(window - 1, 0)`` on the returned keys is always correct
      (prefill, chunks, single tokens) and equals the same mask on the full sequence;
    * for single-token steps (``Lnew == 1``) at most ``window`` keys come back and a plain
      ``masks.causal()`` (or no mask) is equivalent. For chunks with ``Lnew > 1`` causal alone
      would let early queries of the chunk see keys beyond their window: use sliding_window.

    Positions for RoPE are the absolute ones, ``cache.pos``, not slot indices.
    """

    def __init__(self, batch: int, n_kv_heads: int, window: int, head_dim: int, *,
                 v_dim: int | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        super().__init__(batch, n_kv_heads, window, head_dim, v_dim, dtype, device)
        self.window = window

    def _ordered(self, n: int) -> tuple[Tensor, Tensor]:
        """The last ``n`` cached positions in temporal order, ``(B, Hkv, n, D)``."""
        n = min(n, self.pos, self.window)
        slots = torch.arange(self.pos - n, self.pos, device=self.k.device) % self.window
        return self.k.index_select(2, slots), self.v.index_select(2, slots)

    def update(self, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        """Add ``(B, Hkv, Lnew, D)``; return ``(B, Hkv, min(pos, window-1) + Lnew, D)``."""
        n = self._check(k_new, v_new)
        k_old, v_old = self._ordered(self.window - 1)
        k_all = torch.cat([k_old, k_new], dim=2)
        v_all = torch.cat([v_old, v_new], dim=2)
        # Write the last min(n, window) new positions into their ring slots.
        keep = min(n, self.window)
        slots = torch.arange(self.pos + n - keep, self.pos + n, device=self.k.device) % self.window
        self.k[:, :, slots] = k_new[:, :, n - keep:]
        self.v[:, :, slots] = v_new[:, :, n - keep:]
        self.pos += n
        return k_all, v_all
