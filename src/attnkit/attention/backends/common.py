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


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """q ``(B, Hq, Lq, D)``, k ``(B, Hkv, Lk, D)``, v ``(B, Hkv, Lk, Dv)`` floating tensors on
    one device with one dtype and ``Hq % Hkv == 0``; else an error naming the shapes. Shared
    by every attention function that takes heads."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (batch, heads, length, head_dim), got shape {tuple(t.shape)}"
            )
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    B, Hq, Lq, D = q.shape
    Bk, Hkv, Lk, Dk = k.shape
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"k and v must agree in (batch, heads, length): k {tuple(k.shape)} "
            f"vs v {tuple(v.shape)}"
        )
    if Bk != B:
        raise ValueError(f"batch mismatch: q has {B}, k/v have {Bk} "
                         f"(q {tuple(q.shape)}, k {tuple(k.shape)})")
    if Dk != D:
        raise ValueError(f"head_dim mismatch: q has D={D}, k has D={Dk}; q·k needs equal last dims")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(
            f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv}) for GQA/MQA; "
            f"valid Hkv values: {[d for d in range(1, Hq + 1) if Hq % d == 0]}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
