"""Training: the loop, checkpoints, optimizer and schedule, multi-process data parallelism.

::

    from attnkit.train import Trainer, TrainConfig, load_model

    summary = Trainer(model, train_source, val_source, TrainConfig(steps=2000)).train()
    model = load_model("runs/default/best")

Modules: :mod:`~attnkit.train.config` (``TrainConfig``), :mod:`~attnkit.train.trainer`
(``Trainer``), :mod:`~attnkit.train.checkpoint` (the checkpoint directory format),
:mod:`~attnkit.train.optim` (AdamW param groups, warmup + cosine), :mod:`~attnkit.train.rng`
(RNG states as JSON), :mod:`~attnkit.train.metrics` (``metrics.jsonl``, TensorBoard, plot),
:mod:`~attnkit.train.distributed` (``torchrun``: DDP / FSDP2).
"""

from attnkit.train.checkpoint import (
    CheckpointError,
    load_model,
    load_training_state,
    save_checkpoint,
)
from attnkit.train.config import TrainConfig
from attnkit.train.optim import WarmupCosine, clip_grad_norm, make_optimizer, param_groups
from attnkit.train.trainer import BatchSource, Trainer, TrainSummary

__all__ = [
    "TrainConfig", "Trainer", "TrainSummary", "BatchSource", "save_checkpoint", "load_model",
    "load_training_state", "CheckpointError", "make_optimizer", "param_groups", "WarmupCosine",
    "clip_grad_norm",
]
