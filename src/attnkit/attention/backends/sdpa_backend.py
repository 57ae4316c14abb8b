"""``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient /
cuDNN kernels on GPU, the flash kernel on CPU).

Pure causal calls pass ``is_causal`` (no mask is built); causal with ``Lq < Lk`` uses the
bottom-right aligned bias; other patterns are materialised to a dense bool matrix; additive
score modifiers (ALiBi, relative bias) are materialised as a float bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkit.attention.backends.common import dense_mask
from attnkit.attention.masks import Mask

NAME = "sdpa"
EXACT = True


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
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
        enable_gqa=k.shape[1] != Hq,
    )
    if dead is not None:  # branch-free (no host sync, no graph break under torch.compile)
        out = out.masked_fill(dead, 0.0)
    return out, None
