"""The training configuration: a typed dataclass, JSON in and out, unknown keys are errors."""

from __future__ import annotations

import dataclasses
from typing import Any

from attnkit.jsonconfig import JsonConfig

__all__ = ["TrainConfig", "PRECISIONS", "DISTRIBUTED"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DISTRIBUTED = ("none", "ddp", "fsdp")


@dataclasses.dataclass
class TrainConfig(JsonConfig):
    """Hyper-parameters and switches of a :class:`~attnkit.train.trainer.Trainer` run.

    Batches: ``batch_size`` sequences per micro-batch *per process* (the batch source is built
    with it); one optimizer step sees ``batch_size · grad_accum · world_size`` sequences.
    Learning rate: linear warmup over ``warmup_steps`` to ``lr``, cosine decay to ``min_lr`` at
    ``steps``. ``grad_clip`` 0 disables clipping; ``eval_every`` / ``save_every`` 0 evaluate /
    save only at the end. ``precision``: ``"auto"`` is bf16 autocast on CUDA devices that
    support it and on CPUs with native bf16 (AVX-512 BF16 / AMX), fp32 elsewhere;
    ``"bf16"`` / ``"fp16"`` force autocast (fp16 adds a gradient scaler; see
    :mod:`attnkit.train.precision`). ``resume``: ``True``
    continues from ``out_dir/last``, a string from that checkpoint directory. ``distributed``:
    ``"ddp"`` / ``"fsdp"`` under ``torchrun`` (see :mod:`attnkit.train.distributed`).
    """

    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    eval_every: int = 250
    eval_batches: int = 20
    save_every: int = 500
    log_every: int = 10
    seed: int = 1337
    precision: str = "auto"
    compile: bool = False
    out_dir: str = "runs/default"
    resume: bool | str = False
    tensorboard: bool = False
    distributed: str = "none"
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_batches"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, "
                             f"min_lr={self.min_lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {PRECISIONS}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"unknown distributed {self.distributed!r}; valid: {DISTRIBUTED}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d
