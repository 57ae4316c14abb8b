"""Helpers shared by backends."""

from __future__ import annotations

import torch
from torch import Tensor

from attnkit.attention.masks import Mask


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, Hkv, L, D) -> (B, Hkv*n_rep, L, D): each key/value head serves ``n_rep`` query heads."""
    if n_rep == 1:
        return x
    B, H, L, D = x.shape
    return x[:, :, None].expand(B, H, n_rep, L, D).reshape(B, H * n_rep, L, D)


def dense_mask(mask: Mask | Tensor | None, B: int, H: int, Lq: int, Lk: int,
               device: torch.device) -> Tensor | None:
    """Any mask argument as a bool tensor broadcastable to (B, H, Lq, Lk), or None."""
    if mask is None:
        return None
    if isinstance(mask, Mask):
        if mask.kind == "full":
            return None
        return mask.dense(Lq, Lk, batch=B, heads=H, device=device)
    if mask.dim() < 4:  # (Lk,), (Lq, Lk), ...: kernels want (B|1, H|1, Lq|1, Lk)
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    return mask if mask.device == device else mask.to(device)
