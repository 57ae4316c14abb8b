"""``flex``: PyTorch FlexAttention with a ``BlockMask`` built from the pattern.

Runs compiled kernels on GPU (training and inference). On CPU, PyTorch provides no
FlexAttention backward, so this backend serves CPU calls only when no gradient is needed.
Rows whose log-sum-exp is ``-inf`` (nothing allowed) are set to zeros after the kernel.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import AuxRequest

from attnkit.attention.masks import Mask, from_dense

NAME = "flex"
EXACT = True


BLOCK = 128  # FlexAttention's BlockMask tile (create_block_mask's default BLOCK_SIZE)


def tile_sizes(q_len: int, kv_len: int) -> tuple[int, int]:
    """``(query block, key block)`` of the BlockMask this backend builds."""
    return BLOCK, BLOCK


def supports(req) -> str | None:
    if req.return_weights:
        return "does not return attention weights (use math)"
    if req.dropout_p > 0:
        return "no attention dropout in FlexAttention"
    if req.device.type == "cpu" and req.needs_grad:
        return "PyTorch has no FlexAttention backward on CPU (use blocked)"
    if req.device.type not in ("cpu", "cuda", "xpu"):
        return f"FlexAttention does not run on {req.device.type}"
    if req.dtype == torch.float64 and req.device.type == "cuda":
        return "float64 is not supported by the FlexAttention GPU kernel"
    return None


@functools.cache
def _kernel(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    if device_type == "cpu":
        return flex_attention  # eager; compilation on CPU costs more than it saves for one call
    return torch.compile(flex_attention, dynamic=False)


def forward(q: Tensor, k: Tensor, v: Tensor, *, mask, score_mod, scale: float, dropout_p: float,
            return_weights: bool) -> tuple[Tensor, None]:
    B, Hq, Lq, _ = q.shape
    Lk = k.shape[2]
    offset = Lk - Lq
    if isinstance(mask, Tensor):
        m4 = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
        mask = from_dense(m4.expand(-1, -1, Lq, Lk))
    block_mask = None
    if isinstance(mask, Mask) and mask.kind != "full":
        block_mask = mask.block_mask(Lq, Lk, batch=B, heads=Hq, device=q.device,
                                     block_size=BLOCK)
    mod = None
    if score_mod is not None:
        f = score_mod.fn
        mod = f if offset == 0 else (lambda s, b, h, qi, kv: f(s, b, h, qi + offset, kv))
    with warnings.catch_warnings():  # CPU runs eager on purpose (see _kernel); don't nag
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out, aux = _kernel(q.device.type)(
            q, k, v, score_mod=mod, block_mask=block_mask, scale=scale,
            enable_gqa=k.shape[1] != Hq, return_aux=AuxRequest(lse=True),
        )
    lse = aux.lse  # (B, Hq, Lq)
    # a row whose every score is -inf (fully masked) is zeros, even when a NaN value it never
    # reads sits in one of its computed tiles (0 · NaN)
    return out.masked_fill(torch.isneginf(lse).unsqueeze(-1), 0.0), None
