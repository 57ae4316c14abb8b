"""Scoring functions beyond the scaled dot product.

* :class:`CosineAttention` — cosine similarity with a learned temperature (Liu et al. 2022,
  "Swin Transformer V2"; Henry et al. 2020, "Query-Key Normalization for Transformers")::

      score(q, k) = τ · cos(q, k) = τ · (q / ‖q‖) · (k / ‖k‖)
      τ = exp(min(logit_scale, log τ_max))                      (learned; Swin V2: τ_max = 100)

  Scores are bounded by ``±τ``, so the softmax can't saturate from growing activations.
  Runs through :func:`~attnkit.attention.core.attend`, so every backend, mask and score_mod works.

* :class:`AdditiveAttention` — Bahdanau et al. 2015, "Neural Machine Translation by Jointly
  Learning to Align and Translate"::

      score(q, k) = vᵀ tanh(W_q q + W_k k)        W_q: D_q → A,  W_k: D_k → A,  v ∈ R^A

  The score is not a bilinear form, so no matmul kernel applies: it is computed by broadcasting
  ``(B, H, Lq, 1, A) + (B, H, 1, Lk, A)``, i.e. ``O(B·H·Lq·Lk·A)`` memory. ``chunk_size``
  processes that many queries at a time to bound it at ``O(B·H·chunk·Lk·A)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.attention.core import attend
from attnkit.attention.masks import Mask
from attnkit.attention.score_mods import ScoreMod

__all__ = ["CosineAttention", "AdditiveAttention"]


class CosineAttention(nn.Module):
    """Scaled-cosine attention with a learnable temperature (Swin V2 / QK-norm).

    Args:
        num_heads: if given, one temperature per head (Swin V2); else a single shared one.
        init_temperature: initial ``τ`` (Swin V2 uses 10).
        max_temperature: clamp on ``τ`` (Swin V2: 100, i.e. ``logit_scale <= log 100``).
        eps: guards the normalisation of zero vectors.

    ``τ = exp(logit_scale)`` is the learnable parameter's exponential, clamped above. It is folded
    into the normalised queries (``q̂ · τ``) and ``attend`` runs with ``scale=1``: numerically the
    same as ``scale=τ``, but gradients reach ``logit_scale`` and per-head ``τ`` broadcast.
    """

    def __init__(self, num_heads: int | None = None, init_temperature: float = 10.0,
                 max_temperature: float = 100.0, eps: float = 1e-6) -> None:
        super().__init__()
        if num_heads is not None and (not isinstance(num_heads, int) or num_heads < 1):
            raise ValueError(f"num_heads must be a positive int or None, got {num_heads!r}")
        if not 0 < init_temperature <= max_temperature:
            raise ValueError(
                f"need 0 < init_temperature <= max_temperature, got init_temperature="
                f"{init_temperature}, max_temperature={max_temperature}"
            )
        self.num_heads = num_heads
        self.max_log_scale = math.log(max_temperature)
        self.eps = eps
        n = 1 if num_heads is None else num_heads
        self.logit_scale = nn.Parameter(torch.full((n,), math.log(init_temperature)))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, max_temperature={math.exp(self.max_log_scale):g}"

    @property
    def temperature(self) -> Tensor:
        """``τ`` per head ``(H,)`` (or ``(1,)`` when shared), after clamping."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None,
                backend: str = "auto", return_weights: bool = False,
                score_mod: ScoreMod | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """q ``(B, Hq, Lq, D)``, k ``(B, Hkv, Lk, D)``, v ``(B, Hkv, Lk, Dv)`` → ``(B, Hq, Lq, Dv)``
        (plus weights ``(B, Hq, Lq, Lk)`` when ``return_weights``). Masks as in ``attend``."""
        if q.dim() != 4:
            raise ValueError(
                f"q must be 4-D (batch, heads, length, head_dim), got {tuple(q.shape)}"
            )
        if self.num_heads is not None and q.shape[1] != self.num_heads:
            raise ValueError(
                f"CosineAttention was built for num_heads={self.num_heads}, but q has "
                f"{q.shape[1]} heads (q shape {tuple(q.shape)})"
            )
        tau = self.temperature.to(q.dtype).view(1, -1, 1, 1)  # (1, H|1, 1, 1)
        qn = F.normalize(q, dim=-1, eps=self.eps) * tau  # (B, Hq, Lq, D), rows of norm τ
        kn = F.normalize(k, dim=-1, eps=self.eps)  # (B, Hkv, Lk, D), unit rows
        return attend(qn, kn, v, mask=mask, score_mod=score_mod, scale=1.0, backend=backend,
                      return_weights=return_weights)


def _allowed(mask: Mask | Tensor | None, B: int, H: int, Lq: int, Lk: int, *, batched_heads: bool,
             device: torch.device) -> Tensor | None:
    """The mask as bool ``(B|1, H|1, Lq, Lk)`` (True = may attend), or None for no mask."""
    if mask is None:
        return None
    if isinstance(mask, Mask):
        if mask.batch_size is not None and mask.batch_size != B:
            raise ValueError(
                f"mask {mask.name} was built for batch {mask.batch_size}, inputs have batch {B}"
            )
        return None if mask.kind == "full" else mask.dense(Lq, Lk, batch=B, heads=H, device=device)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        what = f"tensor of dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"mask must be an attnkit Mask, a bool tensor or None, got {what}")
    target = (B, H, Lq, Lk) if batched_heads else (B, Lq, Lk)
    try:
        ok = mask.dim() <= len(target) and torch.broadcast_shapes(mask.shape, target) == target
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to {target}")
    m = mask.to(device)
    m = m.reshape((1,) * (len(target) - m.dim()) + tuple(m.shape))
    return m if batched_heads else m.unsqueeze(1)  # (B|1, H|1, Lq|1, Lk)


def _masked_softmax(scores: Tensor, allowed: Tensor | None) -> Tensor:
    """Softmax over the last dim in fp32 with the math backend's semantics: masked → -inf,
    a row with every key masked (or no keys, ``Lk = 0``) → all-zero probabilities (not NaN)."""
    s = scores.float()
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    if s.shape[-1] == 0:
        return s
    row_max = s.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(s - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    return e / torch.where(denom > 0, denom, torch.ones_like(denom))


class AdditiveAttention(nn.Module):
    """Bahdanau (additive / "concat") attention: ``score = vᵀ tanh(W_q q + W_k k)``.

    Args:
        query_dim: ``D_q``; key_dim: ``D_k`` (defaults to ``query_dim``).
        attn_dim: hidden size ``A`` of the scoring MLP.
        bias: add a learnable bias inside the tanh (on the query projection).
        chunk_size: default number of queries scored at once (None = all). Peak memory of the
            score computation is ``B·H·min(chunk_size, Lq)·Lk·A`` elements.
    """

    def __init__(self, query_dim: int, attn_dim: int, key_dim: int | None = None, *,
                 bias: bool = False, chunk_size: int | None = None) -> None:
        super().__init__()
        key_dim = query_dim if key_dim is None else key_dim
        for name, n in (("query_dim", query_dim), ("key_dim", key_dim), ("attn_dim", attn_dim)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        self._check_chunk(chunk_size)
        self.query_dim, self.key_dim, self.attn_dim = query_dim, key_dim, attn_dim
        self.chunk_size = chunk_size
        self.w_q = nn.Linear(query_dim, attn_dim, bias=bias)  # W_q: D_q → A
        self.w_k = nn.Linear(key_dim, attn_dim, bias=False)  # W_k: D_k → A
        self.v = nn.Parameter(torch.empty(attn_dim))  # v ∈ R^A
        nn.init.uniform_(self.v, -1 / math.sqrt(attn_dim), 1 / math.sqrt(attn_dim))

    @staticmethod
    def _check_chunk(chunk_size: int | None) -> None:
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")

    def extra_repr(self) -> str:
        return (f"query_dim={self.query_dim}, key_dim={self.key_dim}, attn_dim={self.attn_dim}, "
                f"chunk_size={self.chunk_size}")

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """Raw scores ``vᵀ tanh(W_q q + W_k k)``: q ``(B, H, Lq, D_q)``, k ``(B, H|1, Lk, D_k)``
        → ``(B, H, Lq, Lk)`` (unchunked; for inspection)."""
        qa, ka = self.w_q(q), self.w_k(k)  # (B, H, Lq, A), (B, H|1, Lk, A)
        return torch.tanh(qa.unsqueeze(-2) + ka.unsqueeze(-3)) @ self.v.to(qa.dtype)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None,
                return_weights: bool = False, chunk_size: int | None = None,
                ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend with additive scores.

        Args:
            q: ``(B, H, Lq, D_q)`` or ``(B, Lq, D_q)``.
            k: ``(B, H|1, Lk, D_k)`` or ``(B, Lk, D_k)`` (same rank as q).
            v: ``(B, H|1, Lk, Dv)`` or ``(B, Lk, Dv)``.
            mask: attnkit :class:`Mask` (materialised with ``mask.dense(Lq, Lk, batch=B,
                heads=H)``), a bool tensor broadcastable to ``(B, H, Lq, Lk)`` (4-D inputs) or
                ``(B, Lq, Lk)`` (3-D inputs), True = may attend; or None.
            return_weights: also return the probabilities (same layout as the scores).
            chunk_size: overrides the module's ``chunk_size`` for this call.

        Returns:
            ``out`` shaped like q with last dim ``Dv``; plus weights ``(B, [H,] Lq, Lk)``.
            Masked keys get probability 0; a query with no allowed key outputs zeros.
        """
        if q.dim() not in (3, 4) or k.dim() != q.dim() or v.dim() != q.dim():
            raise ValueError(
                f"q, k, v must all be 4-D (B, H, L, D) or all 3-D (B, L, D); got q "
                f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
        batched_heads = q.dim() == 4
        if not batched_heads:
            q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
        B, H, Lq, Dq = q.shape
        Lk = k.shape[2]
        if Dq != self.query_dim or k.shape[-1] != self.key_dim:
            raise ValueError(
                f"expected q last dim {self.query_dim} and k last dim {self.key_dim}, got q "
                f"{tuple(q.shape)} and k {tuple(k.shape)}"
            )
        if k.shape[:3] != v.shape[:3] or k.shape[0] != B or k.shape[1] not in (1, H):
            raise ValueError(
                f"k/v must be (B={B}, H={H} or 1, Lk, ·) and agree in (B, H, Lk); got k "
                f"{tuple(k.shape)}, v {tuple(v.shape)}"
            )
        chunk = self.chunk_size if chunk_size is None else chunk_size
        self._check_chunk(chunk)
        chunk = Lq if chunk is None else max(1, min(chunk, Lq))
        allowed = _allowed(mask, B, H, Lq, Lk, batched_heads=batched_heads, device=q.device)

        qa = self.w_q(q)  # (B, H, Lq, A)
        ka = self.w_k(k).unsqueeze(-3)  # (B, H|1, 1, Lk, A)
        w = self.v.to(qa.dtype)
        outs, probs_all = [], []
        for i in range(0, max(Lq, 1), chunk):
            j = min(Lq, i + chunk)
            s = torch.tanh(qa[:, :, i:j].unsqueeze(-2) + ka) @ w  # (B, H, c, Lk); c·Lk·A peak
            a = allowed
            if a is not None and a.shape[-2] > 1:
                a = a[..., i:j, :]  # (B|1, H|1, c, Lk)
            p = _masked_softmax(s, a)  # (B, H, c, Lk) fp32
            outs.append((p @ v.float()).to(q.dtype))  # (B, H, c, Dv)
            if return_weights:
                probs_all.append(p.to(q.dtype))
        out = torch.cat(outs, dim=2)  # (B, H, Lq, Dv)
        weights = torch.cat(probs_all, dim=2) if return_weights else None
        if not batched_heads:
            out = out.squeeze(1)
            weights = None if weights is None else weights.squeeze(1)
        return (out, weights) if return_weights else out
