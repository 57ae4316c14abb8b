"""``linear``: kernelized linear attention (Katharopoulos et al. 2020), **approximate**.

    out_i = Σ_j φ(q_i)ᵀφ(k_j) v_j / Σ_j φ(q_i)ᵀφ(k_j),      φ(x) = elu(x) + 1

This is a different similarity from ``exp(qᵀk·scale)``, so ``EXACT = False`` and ``auto`` never
picks it; ask for it with ``backend="linear"``. O(N) in sequence length: causal uses chunked
prefix sums (see :mod:`attnkit.attention.linear`). ``scale`` is unused (elu+1 has no
temperature). Only no mask, ``full`` and ``causal`` are served: linear attention never forms
the score matrix, so arbitrary patterns cannot be applied (key padding is available directly
through ``linear_attention(..., key_mask=...)``). For FAVOR+ random features (an unbiased
softmax estimate) use :class:`attnkit.attention.linear.LinearAttention` with
:class:`~attnkit.attention.linear.FavorFeatureMap`.
"""

from __future__ import annotations

from torch import Tensor

from attnkit.attention.linear import EluFeatureMap, linear_attention
from attnkit.attention.masks import Mask

NAME = "linear"
EXACT = False

_FEATURE_MAP = EluFeatureMap()


def supports(req) -> str | None:
    if req.return_weights:
        return "does not return attention weights: linear attention never forms them (use math)"
    if req.score_mod is not None:
        return (f"score_mod {req.score_mod.name} is not supported: the feature map replaces "
                f"the scores, there are none to modify")
    if req.dropout_p > 0.0:
        return "attention dropout is not supported: there is no probability matrix to drop from"
    kind = req.mask_kind
    if kind == "pattern":
        return (f"mask {req.mask.name} is not supported: only no mask, full or causal "
                f"(linear attention never forms the score matrix to mask)")
    if kind == "dense":
        return ("bool tensor masks are not supported: only no mask, full or causal "
                "(for key padding call attnkit.attention.linear.linear_attention(key_mask=...))")
    return None


def forward(q: Tensor, k: Tensor, v: Tensor, *, mask, score_mod, scale: float, dropout_p: float,
            return_weights: bool) -> tuple[Tensor, None]:
    causal = isinstance(mask, Mask) and mask.kind == "causal"
    return linear_attention(q, k, v, feature_map=_FEATURE_MAP, causal=causal), None
