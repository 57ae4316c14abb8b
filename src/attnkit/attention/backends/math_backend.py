"""``math``: the executable specification. Scores → score_mod → mask → softmax → V.

Softmax runs in fp32 for half-precision inputs; masked scores are ``-inf``, and a row whose
every key is masked (or with no keys at all, ``Lk = 0``) yields zero probabilities and a zero
output instead of NaN — set explicitly, so a NaN in a value it never reads cannot reach it
through ``0 · NaN``. Non-finite inputs otherwise propagate as IEEE arithmetic says.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnkit.attention.backends.common import dense_mask, repeat_kv

NAME = "math"
EXACT = True


def supports(req) -> str | None:
    return None  # the reference serves everything


def forward(q: Tensor, k: Tensor, v: Tensor, *, mask, score_mod, scale: float, dropout_p: float,
            return_weights: bool) -> tuple[Tensor, Tensor | None]:
    B, Hq, Lq, _ = q.shape
    Lk = k.shape[2]
    n_rep = Hq // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    # fp32 for half-precision inputs; fp32/fp64 inputs keep their own precision.
    cdt = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    scores = torch.matmul(q.to(cdt), k.to(cdt).transpose(-2, -1)) * scale  # (B, H, Lq, Lk)
    if score_mod is not None:
        scores = score_mod.apply(scores, offset=Lk - Lq)
    allowed = dense_mask(mask, B, Hq, Lq, Lk, q.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    if Lk == 0:  # no keys: every row is fully masked
        out = torch.matmul(scores, v.to(cdt))  # an empty sum: zeros (B, H, Lq, Dv), in the graph
        return out.to(q.dtype), (scores.to(q.dtype) if return_weights else None)
    # Fully masked rows: max is -inf; subtracting it would give NaN. Use 0 there instead.
    row_max = scores.amax(dim=-1, keepdim=True)  # (B, H, Lq, 1); NaN propagates
    dead = row_max == float("-inf")  # every score -inf: the row reads nothing
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(scores - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    probs = e / torch.where(denom > 0, denom, torch.ones_like(denom))
    weights = probs
    if dropout_p > 0.0:
        probs = torch.nn.functional.dropout(probs, p=dropout_p, training=True)
    out = torch.matmul(probs, v.to(cdt)).masked_fill(dead, 0.0).to(q.dtype)
    return out, (weights.to(q.dtype) if return_weights else None)
