"""Score modifiers: functions applied to each raw attention score before the softmax.

Same convention as FlexAttention's ``score_mod``::

    score_mod(score, b, h, q_idx, kv_idx) -> score

with ``q_idx`` in key coordinates (see :mod:`attnkit.attention.masks`). A modifier that only
*adds* a bias independent of the score (ALiBi, T5 relative buckets) is marked ``additive``; such
a modifier can be materialised as a float bias matrix, which lets the SDPA backend run it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

__all__ = ["ScoreMod", "alibi", "alibi_slopes", "softcap", "bias_from_tensor"]

ScoreFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True, eq=False)
class ScoreMod:
    """A score modifier plus the metadata backends need to dispatch it."""

    fn: ScoreFn
    name: str
    additive: bool = False  # fn(s, ...) == s + bias(b, h, q, kv)
    batch_dependent: bool = False
    head_dependent: bool = True
    params: tuple[Tensor, ...] = field(default=(), repr=False)  # tensors fn reads (may be learned)
    # Built afresh for every forward pass (RelativePositionBias.score_mod()): its materialised
    # bias may then be shared by all layers even while gradients flow into ``params``.
    per_forward: bool = False
    finite: bool = False  # an additive bias that never holds -inf (so it masks out nothing)
    _last_bias: list = field(default_factory=list, repr=False)  # [(key, mask, bias)]: bias()

    @property
    def requires_grad(self) -> bool:
        """True when a tensor the modifier reads needs a gradient (``attend`` then treats the
        call as needing a backward, so backends without one for score_mod inputs decline)."""
        return any(p.requires_grad for p in self.params)

    def __call__(self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor,
                 kv_idx: Tensor) -> Tensor:
        return self.fn(score, b, h, q_idx, kv_idx)

    def __repr__(self) -> str:
        return f"ScoreMod({self.name})"

    def apply(self, scores: Tensor, q_start: int = 0, kv_start: int = 0, offset: int = 0) -> Tensor:
        """Apply to a score tile ``(B, H, lq, lk)`` whose first row is local query ``q_start``
        and first column key ``kv_start``; ``offset = Lk - Lq`` converts rows to key coordinates.
        """
        B, H, lq, lk = scores.shape
        dev = scores.device
        b = torch.arange(B, device=dev).view(-1, 1, 1, 1)
        h = torch.arange(H, device=dev).view(1, -1, 1, 1)
        q = torch.arange(q_start + offset, q_start + offset + lq, device=dev).view(1, 1, -1, 1)
        kv = torch.arange(kv_start, kv_start + lk, device=dev).view(1, 1, 1, -1)
        return self.fn(scores, b, h, q, kv)

    def for_one_forward(self) -> ScoreMod:
        """A copy that is ``per_forward``: within one forward pass its materialised bias is
        computed once and shared by every layer. Do not keep it across passes."""
        return replace(self, per_forward=True, _last_bias=[])

    def bias(self, q_len: int, kv_len: int, *, batch: int, heads: int,
             device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
             mask: Tensor | None = None) -> Tensor:
        """Materialise an additive modifier as a float bias ``(B|1, H|1, Lq, Lk)``; with a bool
        ``mask`` broadcastable to it, ``-inf`` where the mask is False (what SDPA takes).

        A ``per_forward`` modifier (one built for a single forward pass, see
        :meth:`for_one_forward`) keeps its last result and returns it again for the same
        request: every layer of a model asks for the same bias, with the same mask tensor, in
        one pass. A change to ``params`` or the mask (identity or version counter), grad mode
        or inference mode is a new request. Long-lived modifiers keep nothing (a kept
        ``(B, H, Lq, Lk)`` tensor would outlive the pass, and its graph a backward).
        """
        if not self.additive:
            raise ValueError(f"{self.name} is not additive; it cannot be materialised as a bias")
        nb = batch if self.batch_dependent else 1
        nh = heads if self.head_dependent else 1
        versions = _versions(self.params if mask is None else (*self.params, mask))
        reuse = self.per_forward and versions is not None and not torch.compiler.is_compiling()
        if reuse:
            key = (q_len, kv_len, nb, nh, str(device), dtype, torch.is_grad_enabled(),
                   torch.is_inference_mode_enabled(), versions)
            if self._last_bias:
                last_key, last_mask, last = self._last_bias[0]
                if last_key == key and last_mask is mask:
                    return last
        zeros = torch.zeros(nb, nh, q_len, kv_len, device=device, dtype=dtype)
        out = self.apply(zeros, offset=kv_len - q_len)
        if mask is not None:
            out = out.masked_fill(~mask, float("-inf"))
        if reuse:
            self._last_bias[:] = [(key, mask, out)]  # holding the mask keeps its identity valid
        return out


def _versions(tensors: tuple[Tensor, ...]) -> tuple[int, ...] | None:
    """The tensors' in-place version counters; None when one has none (inference tensors)."""
    try:
        return tuple(t._version for t in tensors)
    except RuntimeError:
        return None


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al. 2022): a geometric sequence starting at 2^(-8/n);
    for non-power-of-two head counts, interleave from the next power of two (as in the paper's
    code).
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")

    def pow2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        s = pow2(num_heads)
    else:
        closest = 2 ** math.floor(math.log2(num_heads))
        s = pow2(closest) + pow2(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(s, dtype=torch.float32)


def alibi(num_heads: int, slopes: Tensor | None = None, *, symmetric: bool = False) -> ScoreMod:
    """ALiBi (Press et al. 2022): ``score + slope_h * (kv_idx - q_idx)``, a linear penalty on
    distance to earlier keys (the paper's causal form). ``symmetric=True`` uses
    ``-slope_h * |q_idx - kv_idx|`` for bidirectional attention.
    """
    S = alibi_slopes(num_heads) if slopes is None else torch.as_tensor(slopes, dtype=torch.float32)
    if S.shape != (num_heads,):
        raise ValueError(f"alibi slopes must have shape ({num_heads},), got {tuple(S.shape)}")

    def fn(score, b, h, q, kv):
        s = S if S.device == score.device else S.to(score.device)
        d = -(q - kv).abs() if symmetric else kv - q
        return score + (s[h] * d).to(score.dtype)

    return ScoreMod(fn, f"alibi({num_heads}{',sym' if symmetric else ''})", additive=True,
                    params=(S,), finite=slopes is None or bool(torch.isfinite(S).all()))


def softcap(cap: float) -> ScoreMod:
    """Logit soft-capping (Gemma 2): ``cap * tanh(score / cap)``."""
    if not cap > 0:
        raise ValueError(f"softcap cap must be > 0, got {cap}")
    c = float(cap)
    return ScoreMod(lambda s, b, h, q, kv: c * torch.tanh(s / c), f"softcap({c})",
                    head_dependent=False)


def bias_from_tensor(bias: Tensor) -> ScoreMod:
    """An explicit additive bias ``(B|1, H|1, Lq, Lk)`` as a modifier (rows in local
    coordinates)."""
    if bias.dim() != 4 or not bias.dtype.is_floating_point:
        raise ValueError(f"bias must be a 4-D float tensor, got {bias.dtype} {tuple(bias.shape)}")
    Bt = bias
    lq, lk = bias.shape[-2:]
    off = lk - lq

    def fn(score, b, h, q, kv):
        t = Bt if Bt.device == score.device else Bt.to(score.device)
        bb = b.clamp(max=t.shape[0] - 1)
        hh = h.clamp(max=t.shape[1] - 1)
        return score + t[bb, hh, q - off, kv].to(score.dtype)

    # not `finite`: a mask-style bias (finfo.min, -1e9) may hold or round to -inf in low
    # precision, and the tensor may change after this call
    return ScoreMod(fn, f"bias{tuple(bias.shape)}", additive=True,
                    batch_dependent=bias.shape[0] > 1, head_dependent=bias.shape[1] > 1,
                    params=(bias,))
