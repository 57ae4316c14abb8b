"""The training configuration: a typed dataclass, JSON in and out, unknown keys are errors."""

from __future__ import annotations

import dataclasses
from typing import Any

from attnkit.jsonconfig import JsonConfig
from attnkit.validate import flag, nonneg_int, number, one_of, positive_int

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
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = tuple(number("betas", b, low=0.0, high=1.0, high_open=True)
                           for b in self.betas)  # type: ignore[assignment]
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_batches"):
            positive_int(name, getattr(self, name))
        for name in ("warmup_steps", "eval_every", "save_every", "seed"):
            nonneg_int(name, getattr(self, name))
        number("lr", self.lr, low=0.0, low_open=True)
        number("min_lr", self.min_lr, low=0.0, high=self.lr)
        number("weight_decay", self.weight_decay, low=0.0)
        number("grad_clip (0 = off)", self.grad_clip, low=0.0)
        number("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        one_of("precision", self.precision, PRECISIONS)
        one_of("distributed", self.distributed, DISTRIBUTED)
        for name in ("compile", "tensorboard", "progress"):
            flag(name, getattr(self, name))
        for name in ("out_dir", "device"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not isinstance(self.resume, (bool, str)):
            raise ValueError(f"resume must be true/false or a checkpoint path, got "
                             f"{self.resume!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d
