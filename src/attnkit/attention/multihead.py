"""Multi-head attention as a module (Vaswani et al. 2017, with GQA/MQA, RoPE and KV caches).

    head_i = attend(x W_Q^i, c W_K^g(i), c W_V^g(i))        c = x (self) or context (cross)
    MHA(x) = concat(head_1, ..., head_H) W_O

``n_kv_heads < n_heads`` shares each key/value head among ``n_heads / n_kv_heads`` query heads
(grouped-query attention, Ainslie et al. 2023; ``n_kv_heads = 1`` is multi-query attention,
Shazeer 2019): query head ``i`` reads key/value head ``g(i) = i // (n_heads / n_kv_heads)``.

Self-attention uses one fused projection producing ``[q | k | v]`` (``n_heads·Dh`` +
``2·n_kv_heads·Dh`` features; the layout of ``nn.MultiheadAttention.in_proj_weight`` when
``n_kv_heads == n_heads``). Cross-attention (``is_cross=True``) projects queries from ``x`` and
keys/values from ``context`` separately.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from attnkit.attention import backends
from attnkit.attention.backends.sdpa_backend import all_finite, on_cpu_eager, sdpa
from attnkit.attention.cache import KVCache, SlidingWindowCache
from attnkit.attention.core import MaskArg, attend
from attnkit.attention.masks import Mask
from attnkit.attention.score_mods import ScoreMod
from attnkit.validate import fraction, number, one_of, positive_int

__all__ = ["MultiHeadAttention", "RopeFn"]

# rope(q (B,Hq,L,D), k (B,Hkv,L,D), positions (L,) | (B,L)) -> (q, k), e.g. RotaryEmbedding.
# (CausalLM passes its default positions as a ``range``; RotaryEmbedding takes both.)
RopeFn = Callable[[Tensor, Tensor, Tensor | range], tuple[Tensor, Tensor]]
Cache = KVCache | SlidingWindowCache


def _track(cache: Cache | None, new: Tensor) -> None:
    """Mark ``cache`` when this step's projections (``new``: its keys, with the queries or
    values beside them) hold NaN/inf; sticky, so a decoding step checks only its new tokens
    (CPU, eager mode: where the NaN guard of ``sdpa`` runs)."""
    if cache is not None and not cache.nonfinite and on_cpu_eager(new) and not all_finite(new):
        cache.nonfinite = True


def _check_input(name: str, x: Tensor, width: int, batch: int | None = None) -> None:
    """``x`` is a floating ``(B, L, width)`` tensor (shape checks only: no host sync)."""
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != width or (
            batch is not None and x.shape[0] != batch):
        b = "B" if batch is None else f"B={batch}"
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be ({b}, L, {width}), got {got}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor (hidden states), got "
                        f"{x.dtype}; token ids go through an embedding first")


class MultiHeadAttention(nn.Module):
    """Multi-head (grouped-query) attention.

    Args:
        d_model: model width (input and output features).
        n_heads: query heads ``H``.
        n_kv_heads: key/value heads ``Hkv`` (``H % Hkv == 0``); default ``H``.
        head_dim: per-head width ``Dh``; default ``d_model // H`` (then ``H`` must divide it).
        qkv_bias / out_bias: biases on the input / output projections.
        attn_dropout: dropout on attention probabilities (training only).
        resid_dropout: dropout on the output (training only).
        is_cross: cross-attention (keys/values from ``context``).
        context_dim: width of ``context`` for cross-attention; default ``d_model``.
        backend: default :func:`~attnkit.attend` backend for this layer (a call may override it;
            when weights are requested the reference path serves them).
        scale: multiplier on ``q kᵀ``; default ``1/√Dh``. T5 uses ``1.0`` (its initialisation
            absorbs the factor, Raffel et al. 2020).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        *,
        qkv_bias: bool = True,
        out_bias: bool = True,
        attn_dropout: float = 0.0,
        resid_dropout: float = 0.0,
        is_cross: bool = False,
        context_dim: int | None = None,
        scale: float | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        positive_int("d_model", d_model)
        one_of("backend", backend, ("auto", *backends.NAMES))
        fraction("attn_dropout", attn_dropout)
        fraction("resid_dropout", resid_dropout)
        if scale is not None:
            number("scale", scale, low=0.0, low_open=True)
        self.backend = backend
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads < 1 or n_kv_heads < 1:
            raise ValueError(f"n_heads and n_kv_heads must be >= 1, got {n_heads}, {n_kv_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(
                f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads}); valid "
                f"n_kv_heads: {[d for d in range(1, n_heads + 1) if n_heads % d == 0]}"
            )
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(
                    f"d_model ({d_model}) is not divisible by n_heads ({n_heads}); "
                    f"pass head_dim explicitly or pick n_heads dividing d_model"
                )
            head_dim = d_model // n_heads
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = (
            d_model, n_heads, n_kv_heads, head_dim)
        self.is_cross = is_cross
        self.attn_dropout = attn_dropout
        self.scale = scale
        q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
        if is_cross:
            self.q_proj = nn.Linear(d_model, q_dim, bias=qkv_bias)
            self.kv_proj = nn.Linear(context_dim or d_model, 2 * kv_dim, bias=qkv_bias)
        else:
            if context_dim is not None:
                raise ValueError("context_dim only applies to cross-attention (is_cross=True)")
            self.qkv = nn.Linear(d_model, q_dim + 2 * kv_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(q_dim, d_model, bias=out_bias)  # W_O
        self.resid_drop = nn.Dropout(resid_dropout)

    # ---- head split / merge -----------------------------------------------------------
    @staticmethod
    def _split(t: Tensor, heads: int) -> Tensor:
        """(B, L, heads·Dh) -> (B, heads, L, Dh)"""
        B, L, F = t.shape
        return t.view(B, L, heads, F // heads).transpose(1, 2)

    @staticmethod
    def _merge(t: Tensor) -> Tensor:
        """(B, H, L, Dh) -> (B, L, H·Dh)"""
        B, H, L, Dh = t.shape
        return t.transpose(1, 2).reshape(B, L, H * Dh)

    def new_cache(self, batch: int, max_len: int, *, window: int | None = None,
                  dtype: torch.dtype | None = None, device: torch.device | str | None = None
                  ) -> Cache:
        """An empty cache for this layer: :class:`KVCache` of ``max_len`` positions, or a
        :class:`SlidingWindowCache` when ``window`` is given (``max_len`` may then be 0: no
        limit) — unless ``0 < max_len <= window``: a window that wide sees every position
        anyway, so the static cache of ``max_len`` serves it without a ring buffer of
        ``window`` slots. dtype/device default to the layer's parameters."""
        w = self.out_proj.weight
        kw = dict(dtype=dtype or w.dtype, device=device or w.device)
        if window is not None and not 0 < max_len <= window:
            return SlidingWindowCache(batch, self.n_kv_heads, window, self.head_dim, **kw)
        return KVCache(batch, self.n_kv_heads, max_len, self.head_dim, **kw)

    # ---- forward ------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        *,
        context: Tensor | None = None,
        mask: MaskArg = None,
        score_mod: ScoreMod | None = None,
        rope: RopeFn | None = None,
        positions: Tensor | range | None = None,
        cache: Cache | None = None,
        return_weights: bool = False,
        backend: str | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from ``x (B, L, d_model)``.

        Args:
            context: ``(B, Lc, context_dim)`` keys/values source; required iff ``is_cross``.
            mask: a :class:`~attnkit.attention.masks.Mask` or bool tensor broadcastable to
                ``(B, H, Lq, Lk)`` (True = may attend); rows bottom-right aligned with a cache.
            score_mod: e.g. ALiBi or a relative position bias (self-attention).
            rope: applied to q and k at ``positions`` before caching (self-attention only).
            positions: absolute positions ``(L,)`` or ``(B, L)`` (or a ``range``, passed on to
                ``rope`` as is); default ``cache.pos + arange(L)`` (or ``arange(L)`` without
                cache).
            cache: a :class:`KVCache` / :class:`SlidingWindowCache`, updated in place. For
                cross-attention a :class:`KVCache` stores the projected context on the first
                call and later calls reuse it (``context`` is then ignored).

        Returns:
            ``out (B, L, d_model)``, or ``(out, weights (B, H, Lq, Lk))``.
        """
        _check_input("x", x, self.d_model)
        B, L, _ = x.shape
        if self.is_cross:
            if rope is not None:
                raise ValueError("rope applies to self-attention; cross-attention has no "
                                 "shared position axis")
            if cache is not None and not isinstance(cache, KVCache):
                raise TypeError("cross-attention caches the projected context in a KVCache")
            q = self._split(self.q_proj(x), self.n_heads)  # (B, H, L, Dh)
            if cache is not None and cache.pos > 0:  # context already projected and cached
                k, v = cache.k[:, :, :cache.pos], cache.v[:, :, :cache.pos]
                known = not cache.nonfinite and on_cpu_eager(q) and all_finite(q)
                return self._attend(q, k, v, mask, score_mod, return_weights, backend,
                                    known_finite=known)
            if context is None:
                raise ValueError("cross-attention needs context=(B, Lc, context_dim)")
            _check_input("context", context, self.kv_proj.in_features, batch=B)
            kv = self.kv_proj(context)  # (B, Lc, 2·Hkv·Dh)
            _track(cache, kv)
            k, v = kv.chunk(2, dim=-1)  # 2 × (B, Lc, Hkv·Dh)
        else:
            if context is not None:
                raise ValueError("context given to a self-attention layer; build it with "
                                 "is_cross=True for cross-attention")
            q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            qkv = self.qkv(x)  # (B, L, (H + 2·Hkv)·Dh)
            _track(cache, qkv)  # this step's q and k: one check covers both
            q, k, v = qkv.split([q_dim, kv_dim, kv_dim], dim=-1)
            q = self._split(q, self.n_heads)  # (B, H, L, Dh)
        k = self._split(k, self.n_kv_heads)  # (B, Hkv, Lk, Dh)
        v = self._split(v, self.n_kv_heads)  # (B, Hkv, Lk, Dh)

        if rope is not None:
            if positions is None:
                start = cache.pos if cache is not None else 0
                positions = torch.arange(start, start + L, device=x.device)
            q, k = rope(q, k, positions)
        known = False
        if cache is not None:
            k, v = cache.update(k, v)  # (B, Hkv, Lcached + L, Dh)
            # (off the CPU nothing is tracked and nothing checked: the guard is CPU-only)
            known = not cache.nonfinite and (
                not self.is_cross or (on_cpu_eager(q) and all_finite(q)))

        return self._attend(q, k, v, mask, score_mod, return_weights, backend,
                            known_finite=known)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: MaskArg, score_mod: ScoreMod | None,
                return_weights: bool, backend: str | None, *, known_finite: bool = False
                ) -> Tensor | tuple[Tensor, Tensor]:
        """Heads ``(B, H, Lq, Dh)`` × ``(B, Hkv, Lk, Dh)`` -> merged, projected ``(B, Lq, d)``.
        ``known_finite``: q and every key are known to hold no NaN/inf (a cache that tracked
        its keys), so the CPU NaN guard of the direct SDPA call is skipped."""
        if backend is None:
            backend = "auto" if return_weights else self.backend
        dropout_p = self.attn_dropout if self.training else 0.0
        direct, is_causal = mask is None, False
        if isinstance(mask, Mask) and mask.kind == "causal":
            if q.shape[2] == k.shape[2]:  # training / prefill (one symbol under torch.export)
                direct, is_causal = True, True
            elif q.shape[2] == 1:  # one query decoding with a cache: it sees every key
                direct = True
        if (backend == "auto" and score_mod is None and not return_weights
                and 0.0 <= dropout_p < 1.0 and q.dtype == k.dtype == v.dtype and direct):
            # What attend(backend="auto") does for these calls (its sdpa backend, is_causal),
            # without its per-call validation and dispatch: the heads come from this module's
            # own projections, so the checks cannot fail. One query decoding with a cache sees
            # every key (bottom-right causal): no mask at all.
            scale = 1.0 / math.sqrt(q.shape[-1]) if self.scale is None else float(self.scale)
            o = sdpa(q, k, v, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                     known_finite=known_finite)
            return self.resid_drop(self.out_proj(self._merge(o)))
        res = attend(q, k, v, mask=mask, score_mod=score_mod, scale=self.scale,
                     dropout_p=dropout_p, backend=backend, return_weights=return_weights)
        o, w = res if return_weights else (res, None)  # o: (B, H, Lq, Dh)
        out = self.resid_drop(self.out_proj(self._merge(o)))  # (B, Lq, d_model)
        return (out, w) if return_weights else out

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, cross={self.is_cross}")
