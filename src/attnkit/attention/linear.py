"""Kernelized linear attention: replace ``exp(qᵀk)`` by a feature-map inner product.

Softmax attention weighs value ``j`` for query ``i`` by ``sim(q_i, k_j) = exp(q_iᵀk_j / √d)``.
If ``sim(q, k) ≈ φ(q)ᵀφ(k)`` for a feature map ``φ: R^d → R^m_{≥0}``, associativity gives

    out_i = Σ_j φ(q_i)ᵀφ(k_j) v_j / Σ_j φ(q_i)ᵀφ(k_j) = φ(q_i)ᵀ(Σ_j φ(k_j)v_jᵀ) / φ(q_i)ᵀΣ_j φ(k_j)

i.e. non-causally ``out = φ(Q)(φ(K)ᵀV) / (φ(Q)·Σ_j φ(K)_j)``: O(N·m·Dv) time instead of O(N²·D)
(Katharopoulos et al. 2020, "Transformers are RNNs", arXiv:2006.16236).

Causal attention needs prefix sums ``S_i = Σ_{j≤i} φ(k_j)v_jᵀ``, ``z_i = Σ_{j≤i} φ(k_j)``. We
compute them *chunked*: split the sequence into chunks of ``C`` positions; within a chunk use
the small quadratic form ``tril(φ(Q_c)φ(K_c)ᵀ) V_c``; across chunks carry the running state
``S`` (an exclusive cumulative sum of per-chunk ``φ(K_c)ᵀV_c``). Cost O(N·C·(m+Dv) + N·m·Dv),
never an N×N matrix. The normaliser ``z`` rides along as an extra all-ones value column.

Feature maps:

* :class:`EluFeatureMap` — ``φ(x) = elu(x) + 1`` (Katharopoulos et al. 2020). Not an estimate of
  the softmax kernel; a different (positive) similarity. Has no temperature: ``scale`` unused.
* :class:`FavorFeatureMap` — FAVOR+ positive orthogonal random features (Choromanski et al.
  2021, "Rethinking Attention with Performers", arXiv:2009.14794)::

      φ(x) = exp(ωᵀx − ‖x‖²/2) / √m,   x = q·d^{-1/4},   ω_1..ω_m ~ N(0, I_d)

  so that ``E[φ(q)ᵀφ(k)] = exp(qᵀk/√d)`` exactly (unbiased, and positive so the normaliser
  never goes negative). The ω are drawn in orthogonal blocks (QR of Gaussian d×d matrices)
  and rows rescaled by chi(d)-distributed norms so each row is still marginally Gaussian.
  For numerical stability a constant is subtracted in the exponent (as the paper's code does):
  per row for queries, one global maximum per (batch, head) for keys — both cancel in the
  ratio. With causal attention the key maximum includes future keys; inputs with a huge spread
  of ``ωᵀk − ‖k‖²/2`` can therefore underflow early rows (a known FAVOR+ limitation).

Shapes: q ``(B, Hq, Lq, D)``, k ``(B, Hkv, Lk, D)``, v ``(B, Hkv, Lk, Dv)``, ``Hq % Hkv == 0``.
Causal with ``Lq != Lk`` is bottom-right aligned: query ``i`` sits at key position
``i + Lk − Lq`` (see :mod:`attnkit.attention.masks`). Half inputs are computed in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.attention.backends.common import check_qkv, repeat_kv
from attnkit.validate import positive_int

__all__ = [
    "FeatureMap",
    "EluFeatureMap",
    "FavorFeatureMap",
    "orthogonal_gaussian",
    "linear_attention",
    "linear_attention_reference",
    "LinearAttention",
    "DEFAULT_CHUNK",
]

DEFAULT_CHUNK = 128  # tuned on CPU (fp32, D=64, 2 threads): best of 32..256 at N = 4096-16384


# ---- feature maps --------------------------------------------------------------------------


class FeatureMap(nn.Module):
    """``φ``: ``(..., L, d) -> (..., L, m)`` with non-negative entries.

    ``forward(x, is_query=..., key_mask=...)`` may rescale all keys of one (batch, head) by one
    common positive constant and each query row by its own (both cancel in the normalisation).
    ``key_mask`` ``(B, L)`` (True = real key) marks keys whose features will be discarded.
    """

    def forward(self, x: Tensor, *, is_query: bool, key_mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class EluFeatureMap(FeatureMap):
    """``φ(x) = elu(x) + 1`` (Katharopoulos et al. 2020); ``m = d``."""

    def forward(self, x: Tensor, *, is_query: bool, key_mask: Tensor | None = None) -> Tensor:
        return F.elu(x).add_(1.0)  # in place is autograd-safe: elu's backward reads its input


def orthogonal_gaussian(m: int, d: int, *, generator: torch.Generator | None = None,
                        ortho: bool = True, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(m, d)`` projection for FAVOR+: stacked orthogonal ``d×d`` blocks (QR of Gaussian
    matrices, the last block truncated), each row rescaled to a chi(d)-distributed norm.
    ``ortho=False`` gives i.i.d. Gaussian rows (plain random features)."""
    if not ortho:
        return torch.randn(m, d, generator=generator, dtype=dtype)
    blocks = []
    for _ in range(-(-m // d)):
        g = torch.randn(d, d, generator=generator, dtype=dtype)
        qmat, r = torch.linalg.qr(g)
        qmat = qmat * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, 1.0)  # Haar
        blocks.append(qmat.T)  # rows orthonormal
    w = torch.cat(blocks)[:m]  # (m, d)
    norms = torch.randn(m, d, generator=generator, dtype=dtype).norm(dim=1, keepdim=True)
    return w * norms


class FavorFeatureMap(FeatureMap):
    """FAVOR+ positive orthogonal random features: ``E[φ(q)ᵀφ(k)] = exp(scale · qᵀk)``.

    Args:
        head_dim: ``d``.
        num_features: ``m`` (default ``round(d·ln d)``, the paper's choice).
        scale: softmax temperature; default ``1/√d`` (inputs are multiplied by ``√scale``,
            i.e. ``d^{-1/4}``).
        ortho: orthogonal blocks (FAVOR+) or i.i.d. Gaussian rows.
        seed: seeds the generator that draws ω (and every later :meth:`redraw`).
    """

    projection: Tensor  # (m, d) buffer

    def __init__(self, head_dim: int, num_features: int | None = None, *,
                 scale: float | None = None, ortho: bool = True, seed: int = 0) -> None:
        super().__init__()
        if head_dim < 1:
            raise ValueError(f"head_dim must be >= 1, got {head_dim}")
        m = max(1, round(head_dim * math.log(head_dim))) if num_features is None else num_features
        if m < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.head_dim, self.num_features, self.ortho = head_dim, m, ortho
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        self._gen = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", self._draw().float())

    def _draw(self) -> Tensor:
        return orthogonal_gaussian(self.num_features, self.head_dim, generator=self._gen,
                                   ortho=self.ortho)

    @torch.no_grad()
    def redraw(self) -> None:
        """Draw a fresh projection ω from the module's generator (in place, same device)."""
        self.projection.copy_(self._draw().to(self.projection))

    def _exponent(self, x: Tensor) -> Tensor:
        """``ωᵀx̃ − ‖x̃‖²/2`` with ``x̃ = x·√scale``: ``(..., L, d) -> (..., L, m)``."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"FavorFeatureMap built for head_dim {self.head_dim}, "
                             f"got inputs with last dim {x.shape[-1]}")
        x = x * math.sqrt(self.scale)
        return x @ self.projection.to(x.dtype).T - 0.5 * (x * x).sum(-1, keepdim=True)

    def features(self, x: Tensor) -> Tensor:
        """Unstabilised ``φ(x)``, the unbiased estimator itself (may overflow for large x)."""
        return torch.exp(self._exponent(x)) / math.sqrt(self.num_features)

    def forward(self, x: Tensor, *, is_query: bool, key_mask: Tensor | None = None) -> Tensor:
        e = self._exponent(x)  # (B, H, L, m)
        if not is_query and key_mask is not None:  # padded keys: φ = 0, excluded from the max
            e = e.masked_fill(~key_mask[:, None, :, None], float("-inf"))
        with torch.no_grad():  # the stabiliser is a constant: it cancels in the ratio
            if is_query:
                c = e.amax(dim=-1, keepdim=True)  # per row
            else:
                c = e.amax(dim=(-1, -2), keepdim=True)  # per (batch, head)
                c = torch.where(torch.isfinite(c), c, torch.zeros_like(c))
        return torch.exp(e - c) / math.sqrt(self.num_features)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, num_features={self.num_features}, ortho={self.ortho}"


# ---- the algorithm -------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _prepare(q: Tensor, k: Tensor, v: Tensor, feature_map: FeatureMap, key_mask: Tensor | None,
             ) -> tuple[Tensor, Tensor, Tensor]:
    """Features and the augmented values ``[v, 1]`` in the compute dtype.

    Returns ``fq (B, Hq, Lq, m)``, ``fk (B, Hkv, Lk, m)`` (padded keys zeroed),
    ``v1 (B, Hkv, Lk, Dv+1)``."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    B, Hq, _, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if k.shape[:3] != v.shape[:3] or k.shape[0] != B or k.shape[-1] != D:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if key_mask is not None:
        key_mask = key_mask.to(device=k.device)
        if key_mask.dtype != torch.bool or tuple(key_mask.shape) != (B, Lk):
            raise ValueError(f"key_mask must be bool (B, Lk) = {(B, Lk)}, got "
                             f"{key_mask.dtype} {tuple(key_mask.shape)}")
    ct = _compute_dtype(q.dtype)
    q, k, v = q.to(ct), k.to(ct), v.to(ct)
    fq = feature_map(q, is_query=True)
    fk = feature_map(k, is_query=False, key_mask=key_mask)
    if key_mask is not None:  # a zero feature row removes the key exactly
        fk = fk.masked_fill(~key_mask[:, None, :, None], 0.0)
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    return fq, fk, v1


def _normalise(out1: Tensor, eps: float) -> Tensor:
    """``[num, den] -> num / max(den, eps)`` (den = 0 only when no key is visible: output 0)."""
    return out1[..., :-1] / out1[..., -1:].clamp_min(eps)


def _causal_chunked(fq: Tensor, fk: Tensor, v1: Tensor, state: Tensor | None, C: int) -> Tensor:
    """Aligned causal pass (query ``i`` sees keys ``j ≤ i``) plus an initial state.

    fq ``(B, Hkv, G, L, m)``, fk ``(B, Hkv, L, m)``, v1 ``(B, Hkv, L, E)``,
    state ``(B, Hkv, m, E)`` or None  ->  ``(B, Hkv, G, L, E)`` (un-normalised).
    """
    B, Hkv, G, L, m = fq.shape
    E = v1.shape[-1]
    C = max(1, min(C, L))
    pad = (-L) % C
    if pad:  # zero rows: padded keys contribute nothing, padded queries are sliced off
        fq, fk, v1 = (F.pad(t, (0, 0, 0, pad)) for t in (fq, fk, v1))
    n = (L + pad) // C
    fk = fk.reshape(B, Hkv, n, C, m)
    v1 = v1.reshape(B, Hkv, n, C, E)
    # Fold the G query heads sharing a key head into the chunk rows: (B, Hkv, n, G*C, m).
    fq = fq.reshape(B, Hkv, G, n, C, m).transpose(2, 3).reshape(B, Hkv, n, G * C, m)
    kv = fk.transpose(-1, -2) @ v1  # (B, Hkv, n, m, E) per-chunk φ(K_c)ᵀ[V_c, 1]
    S = torch.cat([torch.zeros_like(kv[:, :, :1]), kv[:, :, :-1]], dim=2).cumsum(dim=2)
    if state is not None:
        S = S + state[:, :, None]
    scores = fq @ fk.transpose(-1, -2)  # (B, Hkv, n, G*C, C); matmul's backward needs no output
    scores = scores.view(B, Hkv, n, G, C, C).tril_().view(B * Hkv * n, G * C, C)
    # all earlier chunks (state S) + this chunk, causally: (B*Hkv*n, G*C, E)
    out = torch.baddbmm(fq.reshape(B * Hkv * n, G * C, m) @ S.reshape(B * Hkv * n, m, E),
                        scores, v1.reshape(B * Hkv * n, C, E))
    out = out.view(B, Hkv, n, G, C, E).transpose(2, 3).reshape(B, Hkv, G, n * C, E)
    return out[:, :, :, :L]


def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, feature_map: FeatureMap | None = None,
                     causal: bool = False, chunk_size: int | None = None, eps: float = 1e-6,
                     key_mask: Tensor | None = None) -> Tensor:
    """Kernelized attention ``out_i = Σ_j φ(q_i)ᵀφ(k_j) v_j / Σ_j φ(q_i)ᵀφ(k_j)``.

    Args:
        q: ``(B, Hq, Lq, D)``; k: ``(B, Hkv, Lk, D)``; v: ``(B, Hkv, Lk, Dv)``; ``Hq % Hkv == 0``.
        feature_map: ``φ`` (default :class:`EluFeatureMap`).
        causal: query ``i`` sees keys ``j ≤ i + Lk − Lq`` (bottom-right aligned).
        chunk_size: causal chunk length (default :data:`DEFAULT_CHUNK`); ignored if not causal.
        eps: floor on the normaliser; a query that sees no key outputs zeros.
        key_mask: optional bool ``(B, Lk)``, True = real key (key padding; exact).

    Returns:
        ``(B, Hq, Lq, Dv)`` in ``q``'s dtype.
    """
    check_qkv(q, k, v)
    fm = EluFeatureMap() if feature_map is None else feature_map
    C = DEFAULT_CHUNK if chunk_size is None else int(chunk_size)
    if C < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, Hq, Lq, _ = q.shape
    fq, fk, v1 = _prepare(q, k, v, fm, key_mask)
    Hkv, Lk, m, E = fk.shape[1], fk.shape[2], fk.shape[-1], v1.shape[-1]
    G = Hq // Hkv
    if not causal:
        kv = fk.transpose(-1, -2) @ v1  # (B, Hkv, m, E)
        out1 = fq.reshape(B, Hkv, G * Lq, m) @ kv  # (B, Hkv, G*Lq, E)
    else:
        off = Lk - Lq
        state = None
        if off > 0:  # keys before the first query: seen by every query
            state = fk[:, :, :off].transpose(-1, -2) @ v1[:, :, :off]  # (B, Hkv, m, E)
            fk, v1 = fk[:, :, off:], v1[:, :, off:]
        elif off < 0:  # first -off queries see no key: left-pad with zero (absent) keys
            fk, v1 = F.pad(fk, (0, 0, -off, 0)), F.pad(v1, (0, 0, -off, 0))
        out1 = _causal_chunked(fq.reshape(B, Hkv, G, Lq, m), fk, v1, state, C)
    return _normalise(out1.reshape(B, Hq, Lq, E), eps).to(q.dtype)


def linear_attention_reference(q: Tensor, k: Tensor, v: Tensor, *,
                               feature_map: FeatureMap | None = None, causal: bool = False,
                               eps: float = 1e-6, key_mask: Tensor | None = None) -> Tensor:
    """The obviously-correct O(N²) version: ``A = φ(Q)φ(K)ᵀ`` (lower-triangular, bottom-right
    aligned, if causal; padded keys zeroed), ``out = A V / max(A·1, eps)``. Same arguments."""
    fm = EluFeatureMap() if feature_map is None else feature_map
    Hq, Lq = q.shape[1], q.shape[2]
    fq, fk, v1 = _prepare(q, k, v, fm, key_mask)
    Lk = fk.shape[2]
    n_rep = Hq // fk.shape[1]
    A = fq @ repeat_kv(fk, n_rep).transpose(-1, -2)  # (B, Hq, Lq, Lk)
    if causal:
        i = torch.arange(Lq, device=A.device)[:, None] + (Lk - Lq)
        A = A.masked_fill(torch.arange(Lk, device=A.device)[None, :] > i, 0.0)
    v = repeat_kv(v1[..., :-1], n_rep)
    out = (A @ v) / A.sum(-1, keepdim=True).clamp_min(eps)
    return out.to(q.dtype)


class LinearAttention(nn.Module):
    """Linear attention layer core (no projections): ``forward(q, k, v, causal=...)``.

    Args:
        feature_map: ``φ`` (default :class:`EluFeatureMap`).
        chunk_size, eps: see :func:`linear_attention`.
        redraw_interval: for a feature map with ``redraw()`` (FAVOR+), draw fresh random
            features every ``redraw_interval`` forward calls in training mode (Performer's
            feature redrawing); None = never.
    """

    def __init__(self, feature_map: FeatureMap | None = None, *, chunk_size: int | None = None,
                 eps: float = 1e-6, redraw_interval: int | None = None) -> None:
        super().__init__()
        self.feature_map = EluFeatureMap() if feature_map is None else feature_map
        if chunk_size is not None:
            positive_int("chunk_size", chunk_size)
        self.chunk_size, self.eps = chunk_size, eps
        if redraw_interval is not None and not hasattr(self.feature_map, "redraw"):
            raise ValueError(f"{type(self.feature_map).__name__} has no redraw(); "
                             f"redraw_interval needs random features")
        self.redraw_interval = redraw_interval
        self._calls = 0

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
                key_mask: Tensor | None = None) -> Tensor:
        if self.training and self.redraw_interval:
            if self._calls and self._calls % self.redraw_interval == 0:
                self.feature_map.redraw()
            self._calls += 1
        return linear_attention(q, k, v, feature_map=self.feature_map, causal=causal,
                                chunk_size=self.chunk_size, eps=self.eps, key_mask=key_mask)
