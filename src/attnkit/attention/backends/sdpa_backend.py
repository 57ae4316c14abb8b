"""``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient /
cuDNN kernels on GPU, the flash kernel on CPU).

Pure causal calls pass ``is_causal`` (no mask is built); causal with ``Lq < Lk`` uses the
bottom-right aligned bias; other patterns are materialised to a dense bool matrix; additive
score modifiers (ALiBi, relative bias) are materialised as a float bias.

:func:`sdpa` is the one call site of the fused kernel (this backend and the fast path of
:class:`~attnkit.attention.multihead.MultiHeadAttention`). On CPU it runs bf16/fp16 calls
that need gradients over short key sequences in fp32: PyTorch's CPU flash-attention
*backward* in reduced precision has a large per-head cost (measured with 1 thread, causal,
bf16 forward+backward vs the same call upcast to fp32: 2.6-3.9x slower at Lk=64, 1.8-3.0x at
128, 1.0-1.5x at 256, faster from 512 on), while the fp32 kernel at these lengths costs
little; the casts are O(L·D) against the kernel's O(L²·D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkit.attention.backends.common import dense_mask
from attnkit.attention.masks import Mask

NAME = "sdpa"
EXACT = True

#: Longest key sequence at which CPU bf16/fp16 attention with gradients runs in fp32.
CPU_HALF_GRAD_UPCAST_MAX_KV = 256


def _upcast_for_cpu_backward(q: Tensor, k: Tensor, v: Tensor) -> bool:
    return (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
            and k.shape[-2] <= CPU_HALF_GRAD_UPCAST_MAX_KV and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or v.requires_grad))


def sdpa(q: Tensor, k: Tensor, v: Tensor, *, attn_mask: Tensor | None = None,
         dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
         enable_gqa: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention`` (same arguments), with CPU reduced-precision
    training calls over short keys computed in fp32 and cast back (module docstring)."""
    if _upcast_for_cpu_backward(q, k, v):
        dtype = q.dtype
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.float()
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=attn_mask, dropout_p=dropout_p,
                is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        return out.to(dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale,
                                          enable_gqa=enable_gqa)


def supports(req) -> str | None:
    if req.return_weights:
        return "does not return attention weights (use math)"
    if req.score_mod is not None and not req.score_mod.additive:
        return f"score_mod {req.score_mod.name} is not additive (use flex or blocked)"
    return None


def forward(q: Tensor, k: Tensor, v: Tensor, *, mask, score_mod, scale: float, dropout_p: float,
            return_weights: bool) -> tuple[Tensor, None]:
    B, Hq, Lq, _ = q.shape
    Lk = k.shape[2]
    is_causal = isinstance(mask, Mask) and mask.kind == "causal"
    attn_mask = None
    if is_causal and (Lq != Lk or score_mod is not None):
        is_causal = False
        attn_mask = mask.dense(Lq, Lk, device=q.device)
    elif not is_causal:
        attn_mask = dense_mask(mask, B, Hq, Lq, Lk, q.device)
    dead = None  # fully masked query rows: a float bias row of -inf gives NaN in some kernels
    if score_mod is not None:
        bias = score_mod.bias(Lq, Lk, batch=B, heads=Hq, device=q.device, dtype=q.dtype,
                              mask=attn_mask)  # -inf where attn_mask is False
        if score_mod.finite and attn_mask is not None:
            dead = ~attn_mask.any(dim=-1, keepdim=True)  # from the (smaller) bool mask
        elif not score_mod.finite:
            dead = torch.isneginf(bias).all(dim=-1, keepdim=True)
        attn_mask = bias
    out = sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
               scale=scale, enable_gqa=k.shape[1] != Hq)
    if dead is not None:  # branch-free (no host sync, no graph break under torch.compile)
        out = out.masked_fill(dead, 0.0)
    return out, None
