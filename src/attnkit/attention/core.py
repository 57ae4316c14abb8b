"""``attend``: one entry point for attention, many backends.

    out = softmax(score_mod(Q Kᵀ · scale) masked) V          scale defaults to 1/√D

Shapes: q ``(B, Hq, Lq, D)``, k ``(B, Hkv, Lk, D)``, v ``(B, Hkv, Lk, Dv)`` with ``Hq % Hkv == 0``
(grouped-query / multi-query attention: query head ``h`` reads key/value head ``h // (Hq/Hkv)``).
``Lq != Lk`` is allowed (cross attention, decoding with a cache); masks see query rows in key
coordinates, so causal is bottom-right aligned (see :mod:`attnkit.attention.masks`).

``backend="auto"`` picks the fastest *exact* backend that supports the request; ``explain``
says which one and why each other was passed over.

Degenerate and bad inputs (the same in every backend):

* NaN / ±inf in q, k or v propagate as in PyTorch's reference SDPA (``SDPBackend.MATH``):
  an output row that reads one (its own query row, or a key / value it may attend to) is
  non-finite, never a plausible-looking zero. Values at positions a row may *not* attend to
  may or may not reach it (kernels that compute masked tiles read them; tiled ones skip
  them). ``check_finite=True`` raises instead, naming the tensor and its first bad index.
* A row whose every key is masked yields zeros, whatever q, k and v hold.
* ``Lq = 0`` gives an empty ``(B, Hq, 0, Dv)`` output; ``Lk = 0`` gives zeros (every row is
  fully masked); ``B = 0`` an empty batch.
* A sliding window that covers the whole sequence is dense: it runs as ``causal`` (or as no
  mask) and costs what that costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from attnkit.attention import backends
from attnkit.attention.backends.common import check_qkv
from attnkit.attention.masks import Mask
from attnkit.attention.score_mods import ScoreMod
from attnkit.validate import finite, flag

__all__ = ["attend", "explain", "check_qkv", "Request", "Decision", "MaskArg"]

MaskArg = Mask | Tensor | None

# Patterns whose block layout keeps at most this fraction of tiles go to a block-sparse backend.
SPARSE_DENSITY = 0.5


@dataclass(frozen=True)
class Request:
    """Everything a backend needs to decide whether it can serve a call."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    v_dim: int
    device: torch.device
    dtype: torch.dtype
    needs_grad: bool
    mask: MaskArg
    score_mod: ScoreMod | None
    dropout_p: float
    return_weights: bool

    @property
    def mask_kind(self) -> str:
        """"none", "causal", "full", "pattern" (a Mask) or "dense" (a bool tensor)."""
        if self.mask is None:
            return "none"
        if isinstance(self.mask, Mask):
            return self.mask.kind if self.mask.kind in ("causal", "full") else "pattern"
        return "dense"

    def density(self, q_block: int = 128, kv_block: int | None = None) -> float:
        """Fraction of ``q_block × kv_block`` tiles a pattern keeps (1.0 for dense or no
        mask). The layout is cached on the mask, so probing at the tile size of the backend
        that will run builds nothing twice."""
        if self.mask_kind != "pattern":
            return 1.0
        lay = self.mask.block_layout(self.q_len, self.kv_len, q_block=q_block,
                                     kv_block=q_block if kv_block is None else kv_block,
                                     batch=self.batch, heads=self.q_heads, device=self.device)
        return lay.density


@dataclass
class Decision:
    """What ``auto`` picked, and why every other backend was or wasn't eligible."""

    backend: str
    reasons: dict[str, str] = field(default_factory=dict)  # backend -> why rejected / "ok"
    why: str = ""

    def __str__(self) -> str:
        lines = [f"backend: {self.backend}  ({self.why})"]
        for name, r in self.reasons.items():
            lines.append(f"  {name:<8} {r}")
        return "\n".join(lines)


# ---- validation --------------------------------------------------------------------------


def _validate(q: Tensor, k: Tensor, v: Tensor, mask: MaskArg, score_mod, scale, dropout_p) -> None:
    check_qkv(q, k, v)
    B, Hq, Lq, _ = q.shape
    Lk = k.shape[2]
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    if score_mod is not None and not isinstance(score_mod, ScoreMod):
        raise TypeError(
            f"score_mod must be an attnkit ScoreMod (see attnkit.attention.score_mods), "
            f"got {type(score_mod).__name__}"
        )
    if isinstance(mask, Mask):
        if mask.batch_size is not None and mask.batch_size != B:
            raise ValueError(f"mask {mask.name} was built for batch {mask.batch_size}, "
                             f"inputs have batch {B}")
    elif isinstance(mask, Tensor):
        if mask.dtype != torch.bool:
            raise TypeError(
                f"a tensor mask must be bool (True = may attend), got dtype {mask.dtype}; "
                f"pass additive float biases as score_mod=bias_from_tensor(...)"
            )
        target = (B, Hq, Lq, Lk)
        try:
            ok = mask.dim() <= 4 and torch.broadcast_shapes(mask.shape, target) == target
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to "
                f"(B, Hq, Lq, Lk) = {target}"
            )
    elif mask is not None:
        raise TypeError("mask must be an attnkit Mask, a bool tensor or None, got "
                        f"{type(mask).__name__}")


def _request(q, k, v, mask, score_mod, dropout_p, return_weights) -> Request:
    B, Hq, Lq, D = q.shape
    return Request(
        batch=B, q_heads=Hq, kv_heads=k.shape[1], q_len=Lq, kv_len=k.shape[2], head_dim=D,
        v_dim=v.shape[-1], device=q.device, dtype=q.dtype,
        needs_grad=torch.is_grad_enabled() and (
            q.requires_grad or k.requires_grad or v.requires_grad
            or _mod_requires_grad(score_mod)),
        mask=mask, score_mod=score_mod, dropout_p=float(dropout_p), return_weights=return_weights,
    )


def _mod_requires_grad(score_mod: ScoreMod | None) -> bool:
    return bool(score_mod is not None and getattr(score_mod, "requires_grad", False))


# ---- dispatch ----------------------------------------------------------------------------


def _choose(req: Request) -> Decision:
    """The ``auto`` policy: among exact backends that support the request, prefer
    sdpa (fused kernels) for dense work and a block-sparse backend (flex on GPU, blocked
    elsewhere) when the pattern keeps few tiles; math is the fallback and serves weights."""
    reasons = {name: (backends.get(name).supports(req) or "ok") for name in backends.EXACT}
    ok = [n for n, r in reasons.items() if r == "ok"]
    if req.return_weights:
        return Decision("math", reasons, "weights requested: only math returns them")
    sparse_ok = [n for n in ("flex", "blocked") if n in ok]
    # flex on GPU (compiled kernels); elsewhere blocked (CPU flex is eager and forward-only)
    sparse = ("flex" if ("flex" in sparse_ok and req.device.type == "cuda") else sparse_ok[-1]
              if sparse_ok else None)
    if req.mask_kind == "pattern" and sparse is not None:
        if torch.compiler.is_compiling() and "sdpa" in ok:
            # the density is a host read a traced graph cannot branch on: a dense mask is
            # exact for every pattern (and padding, the usual one under compile, is dense)
            return Decision("sdpa", reasons, "compiling: pattern as a dense mask")
        dens = req.density(*backends.get(sparse).tile_sizes(req.q_len, req.kv_len))
        if dens <= SPARSE_DENSITY or "sdpa" not in ok:
            return Decision(sparse, reasons, f"pattern keeps {dens:.1%} of tiles: block-sparse")
        return Decision("sdpa", reasons, f"pattern keeps {dens:.1%} of tiles: dense fused kernel")
    if "sdpa" in ok:
        return Decision("sdpa", reasons, "fused kernel supports this mask/score_mod")
    if sparse is not None:
        return Decision(sparse, reasons, "score_mod or mask needs a tiled backend")
    return Decision("math", reasons, "reference fallback")


def explain(
    q: Tensor, k: Tensor, v: Tensor, *, mask: MaskArg = None, score_mod: ScoreMod | None = None,
    dropout_p: float = 0.0, return_weights: bool = False,
) -> Decision:
    """Which backend ``attend(..., backend="auto")`` would use for these inputs, and why."""
    _validate(q, k, v, mask, score_mod, None, dropout_p)
    mask = _for_shape(mask, q, k)
    if _is_empty(q, k):
        return Decision("math", {}, "empty input: the result is defined without a kernel")
    return _choose(_request(q, k, v, mask, score_mod, dropout_p, return_weights))


def _for_shape(mask: MaskArg, q: Tensor, k: Tensor) -> MaskArg:
    """A pattern that is dense at this shape (a window wider than the sequence) as that dense
    kind (``causal`` / ``full``), so dispatch and kernels treat it as such."""
    return mask.for_shape(q.shape[2], k.shape[2]) if isinstance(mask, Mask) else mask


def _is_empty(q: Tensor, k: Tensor) -> bool:
    return q.shape[0] == 0 or q.shape[2] == 0 or k.shape[2] == 0


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: MaskArg = None,
    score_mod: ScoreMod | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
    return_weights: bool = False,
    check_finite: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Scaled dot-product attention ``softmax(score_mod(q kᵀ·scale) + mask) v``.

    Args:
        q: ``(B, Hq, Lq, D)``; k: ``(B, Hkv, Lk, D)``; v: ``(B, Hkv, Lk, Dv)``; ``Hq % Hkv == 0``.
        mask: a :class:`Mask` pattern, a bool tensor broadcastable to ``(B, Hq, Lq, Lk)``
            (True = may attend), or None. A query whose keys are all masked outputs zeros.
        score_mod: a :class:`ScoreMod` (ALiBi, relative bias, softcap, ...).
        scale: multiplier on ``q kᵀ``; default ``1/√D``.
        dropout_p: dropout on the attention probabilities (apply only in training).
        backend: "auto", "math", "sdpa", "flex", "blocked" or "linear" (approximate).
        return_weights: also return the probabilities ``(B, Hq, Lq, Lk)`` (math backend).
        check_finite: raise ``ValueError`` if q, k or v holds NaN or ±inf, naming the tensor
            and its first bad index (one host sync); by default non-finite values propagate
            (see the module docstring).

    Returns:
        ``out (B, Hq, Lq, Dv)``, or ``(out, weights)`` when ``return_weights``.
    """
    _validate(q, k, v, mask, score_mod, scale, dropout_p)
    if flag("check_finite", check_finite):
        for name, t in (("q", q), ("k", k), ("v", v)):
            finite(name, t, where="attend(check_finite=True)")
    mask = _for_shape(mask, q, k)
    if backend == "auto":
        # Fast path: the overwhelmingly common dense/causal call skips the capability table.
        if (score_mod is None and not return_weights and (mask is None or (
                isinstance(mask, Mask) and mask.kind in ("causal", "full")))):
            name = "sdpa"
        else:
            name = _choose(_request(q, k, v, mask, score_mod, dropout_p, return_weights)).backend
    else:
        if backend not in backends.NAMES:
            valid = ", ".join(map(repr, backends.NAMES))
            raise ValueError(f"unknown backend {backend!r}; valid: 'auto', {valid}")
        name = backend
        req = _request(q, k, v, mask, score_mod, dropout_p, return_weights)
        why_not = backends.get(name).supports(req)
        if why_not:
            raise ValueError(f"backend {name!r} cannot serve this call: {why_not}")
    if _is_empty(q, k):
        name = "math"  # no kernel needed: empty, or zeros (every row fully masked)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, weights = backends.get(name).forward(
        q, k, v, mask=mask, score_mod=score_mod, scale=scale, dropout_p=dropout_p,
        return_weights=return_weights,
    )
    return (out, weights) if return_weights else out
