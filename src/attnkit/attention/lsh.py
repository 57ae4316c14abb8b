"""LSH attention (Kitaev, Kaiser & Levskaya 2020, "Reformer: The Efficient Transformer", §3).

Shared-QK attention: one projection ``x`` serves as queries and keys; keys are unit-normalised,
``k_j = x_j / ‖x_j‖``, and ``score_ij = scale · x_i · k_j`` (``scale`` defaults to ``1/√D``).

1. **Hash** (angular LSH, Andoni et al. 2015): for each of ``n_hashes`` rounds draw a random
   rotation ``R ∈ R^{D × n_buckets/2}`` (one per head; from a seeded ``torch.Generator``) and set
   ``bucket(x) = argmax([xR ; −xR])``. Similar directions tend to share a bucket.
2. **Sort** positions by ``(bucket, position)`` and cut the sorted order into chunks of
   ``chunk_size``.
3. **Attend** within a chunk and to the previous chunk of the same round (the first chunk has
   none), and only to keys of the *same bucket*; with ``causal`` also only to ``j <= i``.
   A query never attends to itself unless it has no other key (a shared-QK token would
   otherwise always prefer itself).
4. **Combine rounds**: round ``r`` gives output ``o_r(i)`` and log-normaliser
   ``z_r(i) = logsumexp_j score_ij`` over its keys; ``o(i) = Σ_r softmax_r(z_r(i)) · o_r(i)``.
   This equals one softmax over the multiset union of the rounds' key sets (a key found in
   ``m`` rounds counts ``m`` times — the paper's optional duplicate-count correction is not
   applied, as in the reference implementations).

Cost per (batch, head, round): ``N/c`` chunks × ``c × 2c`` scores = ``O(N·c)``.

Causality caveat: with ``causal=True`` no weight ever lands on a future key, but *which* past
keys share a query's chunk depends on how the whole sequence (future included) hashed, as in
the original Reformer. With the buckets held fixed, outputs at ``i`` depend only on ``≤ i``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LSHAttention", "lsh_attention", "lsh_attention_reference", "lsh_buckets"]


def _check_inputs(qk: Tensor, v: Tensor, chunk_size: int) -> None:
    if qk.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"qk and v must be 4-D (batch, heads, length, dim), got qk {tuple(qk.shape)}, "
            f"v {tuple(v.shape)}"
        )
    if qk.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"qk and v must agree in (batch, heads, length): qk {tuple(qk.shape)} vs "
            f"v {tuple(v.shape)}"
        )
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _check_hashing(n_buckets: int, n_hashes: int) -> None:
    if not isinstance(n_buckets, int) or n_buckets < 1 or (n_buckets > 1 and n_buckets % 2):
        raise ValueError(f"n_buckets must be 1 or a positive even int, got {n_buckets!r}")
    if not isinstance(n_hashes, int) or n_hashes < 1:
        raise ValueError(f"n_hashes must be a positive int, got {n_hashes!r}")


def lsh_buckets(qk: Tensor, n_buckets: int, n_hashes: int = 1, *, seed: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Angular LSH bucket ids ``(B, H, n_hashes, N)`` for ``qk (B, H, N, D)``.

    ``bucket = argmax([x R_h,r ; −x R_h,r])`` with ``R_h,r ~ N(0, 1)^{D × n_buckets/2}``, drawn on
    the CPU from ``generator`` (or a fresh one seeded with ``seed``; if both are None, from the
    global RNG), so a seed gives the same buckets on every device.
    """
    _check_hashing(n_buckets, n_hashes)
    if qk.dim() != 4:
        raise ValueError(f"qk must be 4-D (batch, heads, length, dim), got {tuple(qk.shape)}")
    B, H, N, D = qk.shape
    if n_buckets == 1:
        return torch.zeros(B, H, n_hashes, N, dtype=torch.long, device=qk.device)
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    rot = torch.randn(H, D, n_hashes, n_buckets // 2, generator=generator)  # (H, D, R, nb/2)
    rotated = torch.einsum("bhnd,hdrk->bhrnk", qk.detach().float(), rot.to(qk.device))
    # argmax([xR ; −xR]) without building the concatenation: the largest entry is the top of
    # xR or minus the bottom of xR (ties go to the first half, as argmax's first index does)
    top, i_top = rotated.max(dim=-1)  # (B, H, R, N)
    bottom, i_bottom = rotated.min(dim=-1)
    return torch.where(top >= -bottom, i_top, i_bottom + n_buckets // 2)


def _resolve_buckets(qk, buckets, n_buckets, n_hashes, seed, generator) -> Tensor:
    if buckets is None:
        return lsh_buckets(qk, n_buckets, n_hashes, seed=seed, generator=generator)
    B, H, N, _ = qk.shape
    if buckets.dim() != 4 or buckets.shape[:2] != (B, H) or buckets.shape[3] != N:
        raise ValueError(
            f"buckets must be (B={B}, H={H}, n_hashes, N={N}), got {tuple(buckets.shape)}"
        )
    if buckets.dtype.is_floating_point or buckets.dtype == torch.bool:
        raise ValueError(f"buckets must be an integer tensor, got dtype {buckets.dtype}")
    return buckets.to(device=qk.device, dtype=torch.long)


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x ``(B, H, L, D)``, idx ``(B, H, R, M)`` → ``(B, H, R, M, D)`` with ``out[..., m, :] =
    x[..., idx[..., m], :]``."""
    B, H, L, D = x.shape
    R, M = idx.shape[2:]
    src = x.unsqueeze(2).expand(B, H, R, L, D)
    return src.gather(3, idx.unsqueeze(-1).expand(B, H, R, M, D))


def lsh_attention(qk: Tensor, v: Tensor, *, n_buckets: int = 8, n_hashes: int = 1,
                  chunk_size: int = 64, causal: bool = False, seed: int | None = None,
                  generator: torch.Generator | None = None, buckets: Tensor | None = None,
                  scale: float | None = None, return_weights: bool = False
                  ) -> Tensor | tuple[Tensor, Tensor]:
    """Reformer LSH attention, vectorised over batch, heads, rounds and chunks.

    Args:
        qk: shared queries/keys ``(B, H, N, D)``; v: ``(B, H, N, Dv)``.
        n_buckets, n_hashes, seed, generator: hashing (see :func:`lsh_buckets`).
        chunk_size: positions per chunk in sorted order (attends to its own + previous chunk).
        causal: attend only to keys ``j <= i`` (original positions).
        buckets: precomputed ``(B, H, n_hashes, N)`` bucket ids (overrides the hashing args).
        scale: multiplier on ``x_i·k_j``; default ``1/√D``.
        return_weights: also return the effective dense weights ``(B, H, N, N)`` (O(N²) memory;
            for inspection only).

    Returns:
        ``(B, H, N, Dv)`` (and the weights).
    """
    _check_inputs(qk, v, chunk_size)
    b_ids = _resolve_buckets(qk, buckets, n_buckets, n_hashes, seed, generator)
    B, H, N, D = qk.shape
    R = b_ids.shape[2]
    Dv = v.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    dev = qk.device
    c = chunk_size
    nc = max(1, -(-N // c))
    M = nc * c

    # Sort by (bucket, position); pad the sorted order with the sentinel position N.
    pos = torch.arange(N, device=dev)
    perm = (b_ids * N + pos).argsort(dim=-1)  # (B, H, R, N); keys unique → stable
    inv = perm.argsort(dim=-1)  # sorted slot of each position
    sb = F.pad(b_ids.gather(-1, perm), (0, M - N), value=-1)  # (B, H, R, M)
    sp = F.pad(perm, (0, M - N), value=N)  # (B, H, R, M) original positions

    x = qk.float()
    zero = x.new_zeros(B, H, 1, D)
    q_ext = torch.cat([x, zero], dim=2)  # (B, H, N+1, D); row N = padding
    k_ext = torch.cat([F.normalize(x, dim=-1), zero], dim=2)
    v_ext = torch.cat([v.float(), v.new_zeros(B, H, 1, Dv).float()], dim=2)
    qs = _gather_rows(q_ext, sp).view(B, H, R, nc, c, D)
    ks = _gather_rows(k_ext, sp).view(B, H, R, nc, c, D)
    vs = _gather_rows(v_ext, sp).view(B, H, R, nc, c, Dv)

    def with_prev(t: Tensor) -> Tensor:  # (B, H, R, nc, c, ...) -> (B, H, R, nc, 2c, ...)
        return torch.cat([t.roll(1, dims=3), t], dim=4)

    kw, vw = with_prev(ks), with_prev(vs)  # (B, H, R, nc, 2c, D|Dv)
    qpos, qb = sp.view(B, H, R, nc, c), sb.view(B, H, R, nc, c)
    kpos, kb = with_prev(qpos), with_prev(qb)  # (B, H, R, nc, 2c)
    has_prev = torch.arange(nc, device=dev) > 0  # chunk 0 has no previous chunk
    kvalid = (kpos < N) & torch.cat(
        [has_prev[:, None].expand(nc, c), torch.ones(nc, c, dtype=torch.bool, device=dev)], -1)

    allowed = kvalid.unsqueeze(-2) & (kb.unsqueeze(-2) == qb.unsqueeze(-1))  # (..., c, 2c)
    if causal:
        allowed &= kpos.unsqueeze(-2) <= qpos.unsqueeze(-1)
    is_self = kpos.unsqueeze(-2) == qpos.unsqueeze(-1)
    others = allowed & ~is_self
    allowed = torch.where(others.any(-1, keepdim=True), others, allowed & is_self)

    s = (qs @ kw.transpose(-1, -2)) * scale  # (B, H, R, nc, c, 2c)
    s = s.masked_fill(~allowed, float("-inf"))
    # Only padding rows have no key; give them a finite normaliser (no NaN in backward).
    lse = torch.logsumexp(s.masked_fill(~allowed.any(-1, keepdim=True), 0.0), -1, keepdim=True)
    p = torch.exp(s - lse)  # (B, H, R, nc, c, 2c), 0 where masked
    o = (p @ vw).view(B, H, R, M, Dv)

    # Unsort each round, then mix rounds by their normalisers.
    o_r = o.gather(3, inv.unsqueeze(-1).expand(B, H, R, N, Dv))  # (B, H, R, N, Dv)
    z_r = lse.view(B, H, R, M).gather(3, inv)  # (B, H, R, N)
    w_r = torch.softmax(z_r, dim=2)  # (B, H, R, N)
    out = (w_r.unsqueeze(-1) * o_r).sum(dim=2).to(v.dtype)  # (B, H, N, Dv)
    if not return_weights:
        return out
    cols = torch.where(kvalid, kpos, torch.full_like(kpos, N))  # (B, H, R, nc, 2c)
    cols = cols.unsqueeze(-2).expand(B, H, R, nc, c, 2 * c).reshape(B, H, R, M, 2 * c)
    dense = p.new_zeros(B, H, R, M, N + 1).scatter_add_(-1, cols, p.reshape(B, H, R, M, 2 * c))
    dense = dense.gather(3, inv.unsqueeze(-1).expand(B, H, R, N, N + 1))[..., :N]
    weights = (w_r.unsqueeze(-1) * dense).sum(dim=2).to(v.dtype)  # (B, H, N, N)
    return out, weights


def lsh_attention_reference(qk: Tensor, v: Tensor, *, n_buckets: int = 8, n_hashes: int = 1,
                            chunk_size: int = 64, causal: bool = False, seed: int | None = None,
                            generator: torch.Generator | None = None,
                            buckets: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Slow, obviously-correct LSH attention: per round and query, list the keys explicitly
    (same bucket, in the query's chunk or the previous one of the sorted order, causal, the
    self rule), softmax over them, then mix the rounds by their log-normalisers."""
    _check_inputs(qk, v, chunk_size)
    b_ids = _resolve_buckets(qk, buckets, n_buckets, n_hashes, seed, generator).cpu()
    B, H, N, D = qk.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    c = chunk_size
    out = torch.zeros(B, H, N, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            x, V = qk[b, h].double().cpu(), v[b, h].double().cpu()
            keys = x / x.norm(dim=-1, keepdim=True)
            outs, lses = [], []
            for r in range(b_ids.shape[2]):
                bk = b_ids[b, h, r].tolist()
                order = sorted(range(N), key=lambda i, bk=bk: (bk[i], i))
                rank = {p: n for n, p in enumerate(order)}
                o_r, z_r = torch.zeros(N, V.shape[-1], dtype=torch.float64), torch.zeros(N)
                for i in range(N):
                    chunk = rank[i] // c
                    window = order[max(0, chunk - 1) * c:(chunk + 1) * c]
                    cand = [j for j in window if bk[j] == bk[i] and (not causal or j <= i)]
                    keep = [j for j in cand if j != i] or [i]
                    s = (keys[keep] @ x[i]) * scale
                    z_r[i] = torch.logsumexp(s, 0)
                    o_r[i] = torch.softmax(s, 0) @ V[keep]
                outs.append(o_r)
                lses.append(z_r)
            mix = torch.softmax(torch.stack(lses).double(), dim=0)  # (R, N)
            out[b, h] = (mix.unsqueeze(-1) * torch.stack(outs)).sum(0)
    return out.to(device=v.device, dtype=v.dtype)


class LSHAttention(nn.Module):
    """Module form of :func:`lsh_attention`; ``forward(qk, v)``.

    ``seed`` (default 0) re-seeds the rotations on every call, so a module is deterministic;
    ``seed=None`` draws fresh rotations from the global RNG each call (Reformer training).
    """

    def __init__(self, n_buckets: int = 8, n_hashes: int = 1, chunk_size: int = 64,
                 causal: bool = False, seed: int | None = 0, scale: float | None = None) -> None:
        super().__init__()
        _check_hashing(n_buckets, n_hashes)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.n_buckets, self.n_hashes, self.chunk_size = n_buckets, n_hashes, chunk_size
        self.causal, self.seed, self.scale = causal, seed, scale

    def extra_repr(self) -> str:
        return (f"n_buckets={self.n_buckets}, n_hashes={self.n_hashes}, "
                f"chunk_size={self.chunk_size}, causal={self.causal}, seed={self.seed}")

    def buckets(self, qk: Tensor) -> Tensor:
        """The bucket ids this module would use for ``qk``: ``(B, H, n_hashes, N)``."""
        return lsh_buckets(qk, self.n_buckets, self.n_hashes, seed=self.seed)

    def forward(self, qk: Tensor, v: Tensor, return_weights: bool = False
                ) -> Tensor | tuple[Tensor, Tensor]:
        """qk ``(B, H, N, D)``, v ``(B, H, N, Dv)`` → ``(B, H, N, Dv)``."""
        return lsh_attention(qk, v, chunk_size=self.chunk_size, causal=self.causal,
                             buckets=self.buckets(qk), scale=self.scale,
                             return_weights=return_weights)
