"""AdamW with decoupled weight decay on the right parameters, warmup + cosine learning-rate
schedule, gradient clipping.

Weight decay (Loshchilov & Hutter 2019) applies to the *weight matrices of linear maps* only:
a parameter is decayed iff it is the ``weight`` of an ``nn.Linear`` or convolution and is not
also an ``nn.Embedding``'s table. Everything else is not decayed:

* biases and norm gains (1-D: decaying them pulls activations towards zero, not a
  complexity penalty),
* embedding tables (token, learned position, relative-position bias; the lookup sees only
  the rows in the batch, so decay would shrink rare tokens towards zero). A tied LM head
  shares the token table, so it is not decayed either (GPT-2/nanoGPT decay it; most
  LLaMA-style recipes do not),
* free-standing parameters (ViT's ``[CLS]`` token and position table, learned temperatures).

The rule goes by module type, so it holds for every attnkit model and for user modules built
from standard layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["param_groups", "make_optimizer", "WarmupCosine", "clip_grad_norm"]

_DECAYED_OWNERS = (nn.Linear, nn.modules.conv._ConvNd)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW param groups, ``"decay"`` (``weight_decay``) and ``"no_decay"`` (0), by the
    rule in the module docstring. Each parameter appears once (tied weights included); groups
    carry a ``"name"``; an empty group is left out."""
    decay_ids: set[int] = set()
    embedding_ids: set[int] = set()
    for module in model.modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, nn.Parameter):
            continue
        if isinstance(module, nn.Embedding):
            embedding_ids.add(id(w))
        elif isinstance(module, _DECAYED_OWNERS):
            decay_ids.add(id(w))
    decay, no_decay = [], []
    for p in model.parameters():  # deduplicated: a tied weight is listed once
        if not p.requires_grad:
            continue
        (decay if id(p) in decay_ids and id(p) not in embedding_ids else no_decay).append(p)
    groups = [{"name": "decay", "params": decay, "weight_decay": weight_decay},
              {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1,
                   betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, *,
                   fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`. ``fused=None`` uses the fused kernel when the
    parameters' device supports it (CUDA, and CPU in recent torch), else the multi-tensor
    ``foreach`` implementation; ``True`` / ``False`` force the choice."""
    groups = param_groups(model, weight_decay)
    kw = dict(lr=lr, betas=tuple(betas), eps=eps)
    if fused is not False:
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, ValueError):  # device or dtype without a fused kernel
            if fused:
                raise
    return torch.optim.AdamW(groups, foreach=True, **kw)


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """The multiplier of the peak learning rate at optimizer step ``step`` (0-based)::

        step < warmup:            (step + 1) / (warmup + 1)                   linear ramp
        warmup <= step <= total:  r + (1 - r) · ½(1 + cos(π · (step - warmup)/(total - warmup)))
        step > total:             r                                            r = min_lr / lr
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine(LRScheduler):
    """Linear warmup then cosine decay to ``min_lr`` (see :func:`warmup_cosine`).

    Every param group's learning rate is its initial ``lr`` times the multiplier, so
    ``min_lr`` is reached by the group whose initial lr is the optimizer's peak ``lr`` and the
    others keep their ratio. Call :meth:`step` once after every ``optimizer.step()``; its
    ``state_dict`` is plain JSON.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup_steps: int,
                 total_steps: int, min_lr: float = 0.0, last_epoch: int = -1):
        if warmup_steps < 0 or total_steps < 1:
            raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got "
                             f"{warmup_steps}, {total_steps}")
        peak = max(g.get("initial_lr", g["lr"]) for g in optimizer.param_groups)
        if not 0.0 <= min_lr <= peak:
            raise ValueError(f"min_lr must be in [0, lr={peak}], got {min_lr}")
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.min_ratio = min_lr / peak if peak > 0 else 0.0
        super().__init__(optimizer, last_epoch)

    def state_dict(self) -> dict[str, Any]:
        """Progress only (JSON-safe): the schedule's shape comes from the constructor, so a
        resumed run may change ``total_steps`` / ``warmup_steps`` / ``min_lr``."""
        shape = ("warmup_steps", "total_steps", "min_ratio")
        return {k: v for k, v in super().state_dict().items() if k not in shape}

    def multiplier(self, step: int) -> float:
        """The learning-rate multiplier at (0-based) optimizer step ``step``."""
        return warmup_cosine(step, warmup_steps=self.warmup_steps,
                             total_steps=self.total_steps, min_ratio=self.min_ratio)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        m = self.multiplier(self.last_epoch)
        return [base * m for base in self.base_lrs]


def clip_grad_norm(params: Iterable[Tensor] | nn.Module, max_norm: float) -> Tensor:
    """Scale gradients in place so their global L2 norm is at most ``max_norm``; return the
    norm before clipping as a tensor (no host synchronisation: read it at log steps only).
    Works on DTensor (FSDP2) gradients too."""
    if isinstance(params, nn.Module):
        params = params.parameters()
    params = list(params)
    grads = [p.grad for p in params if p.grad is not None]
    if grads and grads[0].device.type in ("cpu", "cuda"):
        dev, dtype = grads[0].device, grads[0].dtype
        if all(type(g) is Tensor and g.device == dev and g.dtype == dtype for g in grads):
            # The common case (plain tensors, one device and dtype): the ops of
            # torch.nn.utils.clip_grad_norm_'s foreach path — same numbers — without its
            # per-call grouping and per-tensor Python work (~50 % of its host time here).
            with torch.no_grad():
                total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)))
                torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
            return total
    return torch.nn.utils.clip_grad_norm_(params, max_norm)
