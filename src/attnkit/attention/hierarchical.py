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
    """Entries of the fast version's score tensor per (batch, head): ``N_pad·(W·block + nb)``."""
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
    """
    _check(q, k, v, block, neighbours)
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
    if not return_weights:
        return out
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
                s = torch.stack(keys) @ q[b, h, i].double() * scale + torch.tensor(bias).double()
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
