"""``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient /
cuDNN kernels on GPU, the flash kernel on CPU).

Pure causal calls pass ``is_causal`` (no mask is built); causal with ``Lq < Lk`` uses the
bottom-right aligned bias; other patterns are materialised to a dense bool matrix; additive
score modifiers (ALiBi, relative bias) are materialised as a float bias. Fully masked rows are
set to zeros after the kernel, so no kernel's handling of them (or a NaN in a value they never
read) can leak through.

Non-finite inputs: PyTorch's CPU flash kernel treats a key block whose scores are all NaN as
fully masked and returns zeros for it (a NaN query row, or a row whose only key in a block is
NaN, comes out as zeros or as a finite average that ignores the NaN). :func:`sdpa`
checks q and k for NaN/inf on the CPU (one reduction each; a host sync costs nothing there) and
sends such calls to PyTorch's math kernel, which propagates them. Compiled code skips the check
(no graph break).

:func:`sdpa` is the one call site of the fused kernel (this backend and the fast path of
:class:`~attnkit.attention.multihead.MultiHeadAttention`). On CPU it runs bf16/fp16 calls
that need gradients over short key sequences in fp32: PyTorch's CPU flash-attention
*backward* in reduced precision has a large per-head cost (measured with 1 thread, causal,
bf16 forward+backward vs the same call upcast to fp32: 2.6-3.9x slower at Lk=64, 1.8-3.0x at
128, 1.0-1.5x at 256, faster from 512 on), while the fp32 kernel at these lengths costs
little; the casts are O(L·D) against the kernel's O(L²·D).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

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
         known_finite: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention`` (GQA when k has fewer heads than q), the one call
    site of the fused kernel (module docstring): NaN/inf in q and k propagate on the CPU too
    (``known_finite``: the caller has already established that they are finite —
    ``MultiHeadAttention`` decoding with a cache checks only each step's new tokens — so the
    check is skipped), and CPU reduced-precision training calls over short keys run in fp32
    and are cast back."""
    gqa = k.shape[1] != q.shape[1]
    kw = dict(attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
              enable_gqa=gqa)
    if not known_finite and on_cpu_eager(q) and not (all_finite(q) and all_finite(k)):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, **kw)
    if _upcast_for_cpu_backward(q, k, v):
        dtype = q.dtype
        if attn_mask is not None and attn_mask.is_floating_point():
            kw["attn_mask"] = attn_mask.float()
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kw)
        return out.to(dtype)
    return F.scaled_dot_product_attention(q, k, v, **kw)


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
    # fully masked query rows (B|1, H|1, Lq, 1): zeros whatever the kernel gives (a float bias
    # row of -inf is NaN in some kernels; a NaN key or value is read as 0 · NaN in others)
    dead = None if attn_mask is None else _dead_rows(mask, attn_mask)
    if score_mod is not None:
        bias = score_mod.bias(Lq, Lk, batch=B, heads=Hq, device=q.device, dtype=q.dtype,
                              mask=attn_mask)  # -inf where attn_mask is False
        if not score_mod.finite:
            dead = torch.isneginf(bias).all(dim=-1, keepdim=True)
        attn_mask = bias
    out = sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
               scale=scale)
    if dead is not None:  # branch-free: no host sync, no graph break
        grad = torch.is_grad_enabled() and out.requires_grad  # the kernel saved out
        out = out.masked_fill(dead, 0.0) if grad else out.masked_fill_(dead, 0.0)
    return out, None


def _dead_rows(mask, allowed: Tensor) -> Tensor | None:
    """``~allowed.any(-1)``: the rows that attend to nothing. For a pattern of indices only
    (not batch-dependent: causal, windows, strided, BigBird, ...) the answer is cached per
    shape on the mask, None when no row is dead (one host read, once per shape); padding,
    document masks and bool tensors are data: computed per call, without a host read."""
    if not isinstance(mask, Mask) or mask.batch_dependent or torch.compiler.is_compiling():
        return ~allowed.any(dim=-1, keepdim=True)
    key = ("dead_rows", *allowed.shape, str(allowed.device))
    if key not in mask._cache:
        dead = ~allowed.any(dim=-1, keepdim=True)
        mask._cache[key] = dead if bool(dead.any()) else None
    return mask._cache[key]


def on_cpu_eager(t: Tensor) -> bool:
    """Where the NaN check runs: CPU tensors (a host sync is free there), eager mode only (no
    graph break under ``torch.compile``)."""
    return t.is_cpu and not torch.compiler.is_compiling()


def all_finite(t: Tensor) -> bool:
    """No NaN/inf in ``t``: one reduction, no allocation. A sum that overflows also reads as
    non-finite (the math kernel is then merely slower); fp16 sums in fp32 so that it rarely
    does, bf16 (fp32's range) sums in its own type, which is 10x faster than a cast."""
    if not t.numel():
        return True
    total = t.sum(dtype=torch.float32) if t.dtype == torch.float16 else t.sum()
    return math.isfinite(total.item())
