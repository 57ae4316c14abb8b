"""T5 relative position bias (Raffel et al. 2020, "Exploring the Limits of Transfer Learning
with a Unified Text-to-Text Transformer", §2.1).

Each head ``h`` adds a learned scalar to every attention logit, looked up by the *bucket* of
the relative position ``r = kv_idx - q_idx`` (T5's ``memory_position - query_position``)::

    score'(b, h, q, kv) = score + E[bucket(kv - q), h]          E: (num_buckets, num_heads)

Buckets (per direction when ``bidirectional``; ``n = num_buckets // 2`` if bidirectional else
``num_buckets``, ``e = n // 2`` exact buckets)::

    |r| <  e                : bucket |r|                              (one bucket per offset)
    e <= |r|                : e + ⌊ log(|r| / e) / log(max_distance / e) · (n - e) ⌋,
                              capped at n - 1                         (log-spaced bins)
    bidirectional, r > 0    : + n                                     (keys after the query)
    unidirectional          : r > 0 is clipped to 0 (only the past is distinguished)

This is exactly Mesh TensorFlow's / Hugging Face ``T5Attention._relative_position_bucket``.

:class:`RelativePositionBias` exposes the bias as an additive, head-dependent
:class:`~attnkit.attention.score_mods.ScoreMod`, so the same learned table runs under every
backend: materialised as a float bias (math, sdpa — gradients reach the table) or evaluated
per tile / under ``vmap`` (flex, blocked).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnkit.attention.score_mods import ScoreMod

__all__ = ["relative_position_bucket", "RelativePositionBias"]


def _check_buckets(bidirectional: bool, num_buckets: int, max_distance: int) -> None:
    if not isinstance(num_buckets, int) or isinstance(num_buckets, bool):
        raise ValueError(f"num_buckets must be an int, got {num_buckets!r}")
    per_dir = num_buckets // 2 if bidirectional else num_buckets
    if per_dir < 2:
        raise ValueError(
            f"num_buckets={num_buckets} is too small: need >= {4 if bidirectional else 2} "
            f"(bidirectional={bidirectional}) so each direction has an exact and a log bucket"
        )
    max_exact = per_dir // 2
    if not isinstance(max_distance, int) or max_distance <= max_exact:
        raise ValueError(
            f"max_distance must be an int > {max_exact} (the number of exact buckets for "
            f"num_buckets={num_buckets}), got {max_distance!r}"
        )


def relative_position_bucket(
    relative_position: Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> Tensor:
    """Map relative positions ``kv_idx - q_idx`` to T5 buckets in ``[0, num_buckets)``.

    Args:
        relative_position: integer tensor of any shape (``memory_position - query_position``).
        bidirectional: if False, positive offsets (future keys) share bucket 0 (T5 decoder).
        num_buckets: total buckets (split in two halves by direction when bidirectional).
        max_distance: offsets with ``|r| >= max_distance`` share the last bucket of their side.

    Returns:
        long tensor, same shape as ``relative_position``. See the module docstring for the formula.
    """
    _check_buckets(bidirectional, num_buckets, max_distance)
    if relative_position.dtype.is_floating_point or relative_position.dtype == torch.bool:
        raise ValueError(
            f"relative_position must be an integer tensor, got dtype {relative_position.dtype}"
        )
    rel = relative_position.to(torch.long)
    buckets = torch.zeros_like(rel)
    n = num_buckets
    if bidirectional:
        n //= 2
        buckets = buckets + (rel > 0).to(torch.long) * n
        rel = rel.abs()
    else:
        rel = -torch.min(rel, torch.zeros_like(rel))
    # rel is now in [0, inf)
    max_exact = n // 2
    is_small = rel < max_exact
    # Same float32 op order as the reference, so truncation agrees bit for bit; clamping to 1
    # only touches the `is_small` entries (discarded below) and avoids log(0) = -inf.
    large = max_exact + (
        torch.log(rel.clamp(min=1).float() / max_exact)
        / math.log(max_distance / max_exact)
        * (n - max_exact)
    ).to(torch.long)
    large = torch.min(large, torch.full_like(large, n - 1))
    return buckets + torch.where(is_small, rel, large)


class RelativePositionBias(nn.Module):
    """Learned T5 relative position bias, one scalar per (bucket, head).

    Args:
        num_heads: attention heads ``H`` (the bias is head dependent).
        num_buckets: number of relative-position buckets (T5: 32).
        max_distance: offsets beyond this share a bucket (T5: 128).
        bidirectional: True for encoders / cross attention, False for causal decoders.

    Use ``attend(q, k, v, score_mod=rpb.score_mod())`` or add ``rpb.bias(Lq, Lk)`` yourself.
    """

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = True) -> None:
        super().__init__()
        if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        _check_buckets(bidirectional, num_buckets, max_distance)
        self.num_heads = num_heads
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(num_buckets, num_heads)  # (num_buckets, H)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, num_buckets={self.num_buckets}, "
                f"max_distance={self.max_distance}, bidirectional={self.bidirectional}")

    def score_mod(self) -> ScoreMod:
        """The bias as an additive, head-dependent score modifier (``q_idx`` in key coordinates,
        i.e. bottom-right aligned when ``Lq < Lk``). Build it each forward pass: it closes over
        the live embedding weight, so gradients reach the table under math / sdpa."""
        W = self.embedding.weight  # (num_buckets, H)
        H, bidir, nb, md = self.num_heads, self.bidirectional, self.num_buckets, self.max_distance

        def fn(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            w = W if W.device == score.device else W.to(score.device)
            bucket = relative_position_bucket(kv_idx - q_idx, bidir, nb, md)
            return score + w[bucket, h.clamp(max=H - 1)].to(score.dtype)

        # params=(W,): ScoreMod.requires_grad then tells attend a backward is needed, so
        # backends that cannot differentiate into the table (CPU flex, blocked) decline.
        # per_forward: a fresh modifier per call, so every layer of one forward pass shares
        # one materialised bias on the SDPA path (as T5 passes position_bias layer to layer).
        return ScoreMod(fn, f"t5_bias(H={H},buckets={nb},max={md},bidir={bidir})",
                        additive=True, head_dependent=True, params=(W,), per_forward=True,
                        finite=True)

    def bias(self, q_len: int, kv_len: int, *, device: torch.device | str | None = None) -> Tensor:
        """The bias ``(1, H, Lq, Lk)``; query row ``i`` sits at key position ``i + Lk - Lq``
        (equals ``T5Attention.compute_bias`` with ``past_seen_tokens = Lk - Lq``)."""
        for name, n in (("q_len", q_len), ("kv_len", kv_len)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"{name} must be a non-negative int, got {n!r}")
        dev = self.embedding.weight.device if device is None else device
        return self.score_mod().bias(q_len, kv_len, batch=1, heads=self.num_heads, device=dev,
                                     dtype=self.embedding.weight.dtype)

    def forward(self, q_len: int, kv_len: int) -> Tensor:
        """Alias of :meth:`bias`: ``(1, H, Lq, Lk)``."""
        return self.bias(q_len, kv_len)
