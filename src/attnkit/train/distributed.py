"""Multi-process data-parallel training under ``torchrun`` (no home-made launcher)::

    torchrun --standalone --nproc_per_node=8 -m attnkit.cli train ... --distributed ddp

``torchrun`` sets ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE``; :func:`init_distributed` starts
the process group from them (NCCL on CUDA, Gloo on CPU) when ``WORLD_SIZE > 1`` and pins each
process to ``cuda:LOCAL_RANK``. Modes:

* ``"ddp"`` — :class:`~torch.nn.parallel.DistributedDataParallel`: every rank holds the full
  model, gradients are all-reduced (averaged) during backward.
* ``"fsdp"`` — FSDP2 (``torch.distributed.fsdp.fully_shard``) on every
  :class:`~attnkit.layers.TransformerBlock`, then on the root (embeddings, head, final norm):
  parameters, gradients and optimizer state are sharded; full state dicts for checkpoints are
  gathered to rank 0 on CPU with ``torch.distributed.checkpoint.state_dict``. Works on CPU
  with Gloo as well as on CUDA with NCCL.

Each rank's batch source must be built with ``rank`` / ``world_size`` so it yields its own
shard; the trainer weights every micro-batch by its share of the *global* target-token count,
so the averaged gradient equals that of one process seeing the whole global batch. Only rank
0 logs, shows progress and writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from attnkit.train.optim_state import load_optimizer_state, optimizer_state_by_name

__all__ = ["DistInfo", "resolve_device", "available_devices", "init_distributed", "wrap_model",
           "unwrap",
           "full_model_state", "full_optimizer_state", "load_full_optimizer_state",
           "all_reduce_sum", "all_gather_object", "barrier", "grad_sync", "cleanup"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: ``cuda:LOCAL_RANK`` if CUDA is available, else CPU; ``"cuda"`` gets the
    local rank's index; anything else is passed to :class:`torch.device`. A device this
    machine does not have (``cuda`` without CUDA, ``cuda:3`` with two GPUs, ``mps`` off a
    Mac) is a ``ValueError`` that lists the devices it has."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {spec!r} is not a device name; valid here: "
                         f"{', '.join(available_devices())}") from None
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    usable = {"cpu": True, "meta": True,
              "cuda": torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count(),
              "mps": torch.backends.mps.is_available(),
              "xpu": hasattr(torch, "xpu") and torch.xpu.is_available()}.get(dev.type, True)
    if not usable:
        why = (f"this machine has {torch.cuda.device_count()} CUDA device(s)"
               if dev.type == "cuda" and torch.cuda.is_available()
               else f"no {dev.type.upper()} device is available"
               + (f" (this torch {torch.__version__} is built without CUDA)"
                  if dev.type == "cuda" and torch.version.cuda is None else ""))
        raise ValueError(f"device {spec!r}: {why}; valid here: "
                         f"{', '.join(available_devices())}")
    return dev


def available_devices() -> list[str]:
    """The ``--device`` values this machine can run: ``auto``, ``cpu``, ``cuda[:N]``, ``mps``."""
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        out.append("mps")
    return out


def init_distributed(mode: str = "ddp", device: str = "auto") -> DistInfo:
    """Read the ``torchrun`` environment; start the process group when ``WORLD_SIZE > 1``
    (idempotent). A single process (no ``torchrun``) gets rank 0 of 1 whatever ``mode``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world == 1:
        return DistInfo(0, 1, 0, dev)
    if mode == "none":
        raise RuntimeError(f"WORLD_SIZE={world} (launched by torchrun?) but distributed='none';"
                           f" use distributed='ddp' or 'fsdp', or run a single process")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend,
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def cleanup() -> None:
    """Destroy the process group if one was started."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _blocks(model: nn.Module) -> list[nn.Module]:
    from attnkit.layers import TransformerBlock

    return [m for m in model.modules() if isinstance(m, TransformerBlock)]


def wrap_model(model: nn.Module, mode: str, info: DistInfo) -> nn.Module:
    """DDP wrapper, or the model sharded in place by FSDP2; ``model`` itself when a single
    process runs. FSDP first broadcasts rank 0's parameters and buffers (DDP does so itself),
    so every rank starts from the same weights whatever their seeds."""
    if not info.enabled or mode == "none":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t.data, src=0)
        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"unknown distributed mode {mode!r}; valid: 'none', 'ddp', 'fsdp'")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under ``torch.compile`` and DDP wrappers (FSDP2 shards in place)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The full (unsharded) state dict; for FSDP a collective that gathers it to rank 0 on
    CPU (other ranks get ``{}``)."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(unwrap(model), options=_full_options())
    return unwrap(model).state_dict()


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name; for FSDP gathered to rank 0 (collective)."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(unwrap(model), optimizer, options=_full_options())
    return optimizer_state_by_name(unwrap(model), optimizer)


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any]) -> None:
    """Load a by-name full optimizer state (every rank passes the whole state)."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(unwrap(model), optimizer, state,
                                 options=StateDictOptions(full_state_dict=True))
    else:
        load_optimizer_state(unwrap(model), optimizer, state)


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    """In-place sum over ranks (no-op for one process); returns ``t``."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (JSON-safe values only are sent here)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


@contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter inside (the non-final micro-batches of
    gradient accumulation) when ``enabled`` is False."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with nullcontext() if enabled else model.no_sync():
            yield
        return
    inner = unwrap(model)
    if _is_fsdp(inner):
        inner.set_requires_gradient_sync(enabled)
    yield
