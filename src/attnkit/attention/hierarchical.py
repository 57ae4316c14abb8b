"""Two-level hierarchical attention: exact local blocks + coarse block summaries.

In the spirit of H-Transformer-1D (Zhu & Soricut 2021) and of the local + global split of
Longformer (Beltagy et al. 2020). The sequence is cut into blocks of ``block`` positions.
Query ``i`` in block ``I`` sees, in **one** softmax:

* *local keys* — every key of blocks ``I-w .. I+w`` (``w = neighbours``; causal: ``I-w .. I``
  and only keys ``j <= i``), scored exactly: ``s_ij = scale · q_i·k_j``;
* *coarse tokens* — one summary per block ``J`` **not** covered locally (causal: only the
  fully past blocks ``J < I - w``), with mean-pooled key and value
  ``k̄_J = mean_{j∈J} k_j``, ``v̄_J = mean_{j∈J} v_j``, scored

      s_iJ = scale · q_i·k̄_J + log n_J                  (n_J = number of positions in block J)

The ``log n_J`` term lets a summary stand for the *mass* of its ``n_J`` keys: if the keys of
block ``J`` are all equal, ``Σ_{j∈J} exp(scale·q_i·k_j) v_j = exp(s_iJ) · v̄_J`` exactly, so the
output equals full (causal) attention whenever keys are constant within each coarse block, for
any values. Excluding locally covered blocks avoids counting their mass twice.

Cost per (batch, head): the score tensor has ``N_pad · (W·block + ⌈N/block⌉)`` entries
(``W = 2w+1``, causal ``w+1``; ``N_pad`` = N rounded up to whole blocks), i.e.
``O(N·(block + N/block))`` — ``O(N^1.5)`` at ``block ≈ √N`` instead of ``O(N²)``.

Two implementations: without weights, each query block is one batch entry of PyTorch's fused
``scaled_dot_product_attention`` over its gathered local keys + the summaries, with one
additive mask carrying the geometry (0 / ``log n_J`` / ``-inf``); with ``return_weights`` the
scores are materialised explicitly. :func:`hierarchical_attention_reference` loops query by
query; the tests compare all three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.attention.backends.common import repeat_kv

__all__ = [
    "HierarchicalAttention",
    "HierarchicalWeights",
    "hierarchical_attention",
    "hierarchical_attention_reference",
    "hierarchical_score_numel",
]


@dataclass(frozen=True)
class HierarchicalWeights:
    """Attention probabilities, split by kind. Rows are queries ``0..N-1``.

    ``local[..., i, t]`` is the weight on key position ``local_index[i // block, t]`` (entries
    with ``local_index == -1`` are padding and hold 0); ``summary[..., i, J]`` the weight on the
    coarse token of block ``J``.
    """

    local: Tensor  # (B, H, N, W·block)
    summary: Tensor  # (B, H, N, nb)
    local_index: Tensor  # (nb, W·block) long, -1 = no key


def _check(q: Tensor, k: Tensor, v: Tensor, block: int, neighbours: int) -> None:
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    if not isinstance(neighbours, int) or isinstance(neighbours, bool) or neighbours < 0:
        raise ValueError(f"neighbours must be a non-negative int, got {neighbours!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (batch, heads, length, dim), got {tuple(t.shape)}"
            )
    B, Hq, N, D = q.shape
    if k.shape[:3] != v.shape[:3] or k.shape[0] != B or k.shape[2] != N or k.shape[3] != D:
        raise ValueError(
            f"hierarchical attention is self-attention: need k (B={B}, Hkv, N={N}, D={D}) and "
            f"v (B, Hkv, N, Dv); got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if Hq % k.shape[1] != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({k.shape[1]})")


def _offsets(neighbours: int, causal: bool) -> range:
    return range(-neighbours, (0 if causal else neighbours) + 1)


def hierarchical_score_numel(seq_len: int, block: int, neighbours: int = 0,
                             causal: bool = False) -> int:
    """Scores per (batch, head) that one softmax spans: ``N_pad·(W·block + nb)`` (the
    weights path materialises them; the SDPA path streams them, minus unusable summaries)."""
    nb = -(-seq_len // block)
    return nb * block * (len(_offsets(neighbours, causal)) * block + nb)


def hierarchical_attention(q: Tensor, k: Tensor, v: Tensor, *, block: int, neighbours: int = 0,
                           causal: bool = False, scale: float | None = None,
                           return_weights: bool = False
                           ) -> Tensor | tuple[Tensor, HierarchicalWeights]:
    """Vectorised hierarchical attention (see the module docstring for the definition).

    Args:
        q: ``(B, Hq, N, D)``; k: ``(B, Hkv, N, D)``; v: ``(B, Hkv, N, Dv)``; ``Hq % Hkv == 0``.
        block: block size (local granularity and pooling size of the coarse tokens).
        neighbours: adjacent blocks on each side also attended exactly (causal: previous only).
        causal: query ``i`` uses only keys ``j <= i`` and summaries of fully past blocks.
        scale: multiplier on ``q·k``; default ``1/√D``.
        return_weights: also return :class:`HierarchicalWeights`.

    Returns:
        ``(B, Hq, N, Dv)`` (and the weights).

    Without weights, each query block is one batch entry of PyTorch's fused
    ``F.scaled_dot_product_attention`` over its ``W·block`` local keys and the ``nb`` coarse
    tokens, with the geometry (validity, causality, ``log n_J``) in an additive mask. With
    ``return_weights`` the probabilities are materialised explicitly (slower, more memory).
    """
    _check(q, k, v, block, neighbours)
    if return_weights:
        return _hierarchical_explicit(q, k, v, block=block, neighbours=neighbours,
                                      causal=causal, scale=scale)
    return _hierarchical_sdpa(q, k, v, block=block, neighbours=neighbours, causal=causal,
                              scale=scale)


# Causal fast path: query blocks are split into about nb / 32 groups, at most 8 (measured on CPU:
# fewer groups waste work on unusable summaries, more make the backward pass slower).
_GROUP_BLOCKS, _MAX_GROUPS = 32, 8


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else (fp32, bf16, fp16) is computed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sdpa_bias(N: int, block: int, neighbours: int, causal: bool, dtype: torch.dtype,
               device: torch.device) -> Tensor:
    """Additive SDPA mask ``(1, nb, block, W·block + nb)``, shared by every batch and head.

    Key axis: local keys in the order of :func:`_offsets` (block ``I+o``, then position in the
    block), then the coarse tokens ``J = 0..nb-1``. Entries: ``0`` (allowed local key),
    ``log n_J`` (allowed coarse token) or ``-inf`` (outside the sequence, in the causal future,
    or a coarse token whose block is covered locally / not fully past).
    """
    nb = max(1, -(-N // block))
    offs = torch.tensor(list(_offsets(neighbours, causal)), device=device)
    blk = torch.arange(nb, device=device)
    t = torch.arange(block, device=device)
    src_blk = blk[:, None] + offs[None, :]  # (nb, W)
    kpos = (src_blk[:, :, None] * block + t).reshape(nb, -1)  # (nb, W·block)
    in_range = ((src_blk >= 0) & (src_blk < nb))[:, :, None].expand(-1, -1, block)
    local_ok = (in_range.reshape(nb, -1) & (kpos < N))[:, None, :]  # (nb, 1, W·block)
    if causal:
        qpos = blk[:, None] * block + t  # (nb, block)
        local_ok = local_ok & (kpos[:, None, :] <= qpos[:, :, None])  # (nb, block, W·block)
    gap = blk[None, :] - blk[:, None]  # (I, J) -> J - I
    sum_ok = (gap < -neighbours) if causal else (gap.abs() > neighbours)  # (nb, nb)
    log_n = (N - blk * block).clamp(min=1, max=block).to(dtype).log()  # (nb,)
    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=device)
    bias_local = torch.where(local_ok, torch.zeros((), dtype=dtype, device=device), neg_inf)
    bias_sum = torch.where(sum_ok, log_n, neg_inf)[:, None, :]  # (nb, 1, nb)
    W = offs.numel()
    return torch.cat([bias_local.expand(nb, block, W * block),
                      bias_sum.expand(nb, block, nb)], dim=-1)[None]


def _hierarchical_sdpa(q: Tensor, k: Tensor, v: Tensor, *, block: int, neighbours: int,
                       causal: bool, scale: float | None) -> Tensor:
    """Fast path: fused SDPA (one call per query-block group), blocks on the head axis."""
    B, H, N, D = q.shape
    n_rep = H // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    ct = _compute_dtype(q.dtype)
    nb = max(1, -(-N // block))
    P = nb * block
    lo = neighbours  # blocks of zeros in front (offsets -w..), and behind when not causal
    hi = 0 if causal else neighbours
    qb = F.pad(q.to(ct), (0, 0, 0, P - N)).reshape(B * H, nb, block, D)

    counts = (N - torch.arange(nb, device=q.device) * block).clamp(1, block).to(ct)  # n_J

    def blocks(x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, H, N, E) -> zero-padded blocks (B·H, lo + nb + hi, block, E), means (B·H, nb, E)."""
        E = x.shape[-1]
        xb = F.pad(x.to(ct), (0, 0, lo * block, P - N + hi * block))
        xb = xb.reshape(B * H, lo + nb + hi, block, E)
        return xb, xb[:, lo:lo + nb].sum(2) / counts[:, None]

    def keys(xb: Tensor, pooled: Tensor, I0: int, I1: int, nJ: int) -> Tensor:
        """Keys of query blocks I0..I1-1: (B·H, I1-I0, W·block + nJ, E), local then coarse."""
        local = [xb[:, I0 + a:I1 + a] for a in range(lo + 1 + hi)]  # W × (B·H, ·, block, E)
        return torch.cat([*local, pooled[:, None, :nJ].expand(-1, I1 - I0, -1, -1)], dim=2)

    kb, kbar = blocks(k)
    vb, vbar = blocks(v)
    bias = _sdpa_bias(N, block, neighbours, causal, ct, q.device)  # (1, nb, block, L)
    L = (lo + 1 + hi) * block
    # Causal: block I only sees summaries J < I - w, so query blocks are split into G groups that
    # drop the summary columns no query in the group can use (up to ~1/3 of the work).
    G = max(1, min(_MAX_GROUPS, nb // _GROUP_BLOCKS)) if causal else 1
    edges = [round(nb * g / G) for g in range(G + 1)]
    outs = []
    for I0, I1 in zip(edges[:-1], edges[1:], strict=True):
        nJ = max(0, I1 - 1 - neighbours) if causal else nb
        outs.append(F.scaled_dot_product_attention(
            qb[:, I0:I1], keys(kb, kbar, I0, I1, nJ), keys(vb, vbar, I0, I1, nJ),
            attn_mask=bias[:, I0:I1, :, :L + nJ], scale=scale))
    out = outs[0] if G == 1 else torch.cat(outs, dim=1)  # (B·H, nb, block, Dv)
    return out.reshape(B, H, P, -1)[:, :, :N].to(q.dtype)  # (B, H, N, Dv)


def _hierarchical_explicit(q: Tensor, k: Tensor, v: Tensor, *, block: int, neighbours: int,
                           causal: bool, scale: float | None
                           ) -> tuple[Tensor, HierarchicalWeights]:
    """Weights path: materialises the fp32 scores ``(B, H, nb, block, W·block + nb)``."""
    B, H, N, D = q.shape
    n_rep = H // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    dev = q.device
    nb = max(1, -(-N // block))
    P = nb * block
    qp = F.pad(q.float(), (0, 0, 0, P - N)).view(B, H, nb, block, D)
    kp = F.pad(k.float(), (0, 0, 0, P - N))  # (B, H, P, D)
    vp = F.pad(v.float(), (0, 0, 0, P - N))  # (B, H, P, Dv)

    # ---- local keys: blocks I+o for o in offsets, gathered as (nb, W·block) key positions ----
    offs = torch.tensor(list(_offsets(neighbours, causal)), device=dev)
    blk = torch.arange(nb, device=dev)
    t = torch.arange(block, device=dev)
    src_blk = blk[:, None] + offs[None, :]  # (nb, W)
    kpos = (src_blk[:, :, None] * block + t).reshape(nb, -1)  # (nb, W·block)
    in_range = ((src_blk >= 0) & (src_blk < nb))[:, :, None].expand(-1, -1, block)
    kvalid = in_range.reshape(nb, -1) & (kpos < N)  # (nb, W·block)
    kpos_safe = torch.where(kvalid, kpos, torch.zeros_like(kpos))
    kl, vl = kp[:, :, kpos_safe], vp[:, :, kpos_safe]  # (B, H, nb, W·block, D|Dv)
    qpos = blk[:, None] * block + t  # (nb, block)
    local_ok = kvalid[:, None, :].expand(nb, block, -1)  # (nb, block, W·block)
    if causal:
        local_ok = local_ok & (kpos[:, None, :] <= qpos[:, :, None])
    s_local = (qp @ kl.transpose(-1, -2)) * scale  # (B, H, nb, block, W·block)

    # ---- coarse tokens: mean-pooled blocks with a log(count) bias -------------------------
    counts = (N - blk * block).clamp(max=block).clamp(min=1).float()  # (nb,)
    k_sum = kp.view(B, H, nb, block, D).sum(3) / counts[:, None]  # (B, H, nb, D)
    v_sum = vp.view(B, H, nb, block, -1).sum(3) / counts[:, None]  # (B, H, nb, Dv)
    s_sum = (qp @ k_sum.unsqueeze(2).transpose(-1, -2)) * scale + counts.log()  # (B,H,nb,block,nb)
    gap = blk[None, :] - blk[:, None]  # (I, J) -> J - I
    sum_ok = (gap < -neighbours) if causal else (gap.abs() > neighbours)  # (nb, nb)
    sum_ok = sum_ok[:, None, :].expand(nb, block, nb)

    # ---- one softmax over [local keys ∪ coarse tokens] --------------------------------------
    s = torch.cat([s_local, s_sum], dim=-1)
    ok = torch.cat([local_ok, sum_ok], dim=-1)  # (nb, block, W·block + nb)
    s = s.masked_fill(~ok, float("-inf"))
    row_max = s.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(s - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(denom > 0, denom, torch.ones_like(denom))
    L = kl.shape[-2]
    p_local, p_sum = p[..., :L], p[..., L:]
    out = p_local @ vl + p_sum @ v_sum.unsqueeze(2)  # (B, H, nb, block, Dv)
    out = out.reshape(B, H, P, -1)[:, :, :N].to(q.dtype)
    w = HierarchicalWeights(
        local=p_local.reshape(B, H, P, L)[:, :, :N].to(q.dtype),
        summary=p_sum.reshape(B, H, P, nb)[:, :, :N].to(q.dtype),
        local_index=torch.where(kvalid, kpos, torch.full_like(kpos, -1)),
    )
    return out, w


def hierarchical_attention_reference(q: Tensor, k: Tensor, v: Tensor, *, block: int,
                                     neighbours: int = 0, causal: bool = False,
                                     scale: float | None = None) -> Tensor:
    """Slow, obviously-correct version: for each query, list its keys explicitly (local keys,
    then one mean-pooled token per eligible block with bias ``log n_J``) and softmax over them."""
    _check(q, k, v, block, neighbours)
    B, H, N, D = q.shape
    n_rep = H // k.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    nb = -(-N // block)
    out = torch.zeros(B, H, N, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            K, V = k[b, h // n_rep].double(), v[b, h // n_rep].double()
            for i in range(N):
                I = i // block
                lo = I - neighbours
                hi = I if causal else I + neighbours
                keys, vals, bias = [], [], []
                for j in range(N):
                    if lo <= j // block <= hi and (not causal or j <= i):
                        keys.append(K[j])
                        vals.append(V[j])
                        bias.append(0.0)
                for J in range(nb):
                    if lo <= J <= hi or (causal and J > I):
                        continue  # covered exactly, or not fully in the past
                    a, z = J * block, min(N, (J + 1) * block)
                    keys.append(K[a:z].mean(0))
                    vals.append(V[a:z].mean(0))
                    bias.append(math.log(z - a))
                s = (torch.stack(keys) @ q[b, h, i].double() * scale
                     + torch.tensor(bias, dtype=torch.float64))
                out[b, h, i] = torch.softmax(s, dim=0) @ torch.stack(vals)
    return out.to(q.dtype)


class HierarchicalAttention(nn.Module):
    """Module form of :func:`hierarchical_attention` (no parameters, only configuration)."""

    def __init__(self, block: int, neighbours: int = 0, causal: bool = False,
                 scale: float | None = None) -> None:
        super().__init__()
        if not isinstance(block, int) or isinstance(block, bool) or block < 1:
            raise ValueError(f"block must be a positive int, got {block!r}")
        if not isinstance(neighbours, int) or isinstance(neighbours, bool) or neighbours < 0:
            raise ValueError(f"neighbours must be a non-negative int, got {neighbours!r}")
        self.block, self.neighbours, self.causal, self.scale = block, neighbours, causal, scale

    def extra_repr(self) -> str:
        return f"block={self.block}, neighbours={self.neighbours}, causal={self.causal}"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, return_weights: bool = False
                ) -> Tensor | tuple[Tensor, HierarchicalWeights]:
        """q ``(B, Hq, N, D)``, k ``(B, Hkv, N, D)``, v ``(B, Hkv, N, Dv)`` → ``(B, Hq, N, Dv)``."""
        return hierarchical_attention(q, k, v, block=self.block, neighbours=self.neighbours,
                                      causal=self.causal, scale=self.scale,
                                      return_weights=return_weights)
