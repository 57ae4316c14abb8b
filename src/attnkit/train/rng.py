"""Random-number-generator states as JSON: the torch CPU generator, every CUDA device's
generator, Python's :mod:`random` and NumPy's global generator.

Byte states (torch) are base64 of the raw state tensor; NumPy's MT19937 key is base64 of its
little-endian uint32 words; Python's Mersenne Twister state is a list of ints. :func:`capture`
returns raw objects (:func:`capture_torch` only torch's, cheaply enough to take every step);
:func:`encode` / :func:`decode` convert to and from JSON-safe dicts when a checkpoint is
written or read.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["RngState", "seed_everything", "capture_torch", "capture", "restore", "encode",
           "decode"]


@dataclass
class RngState:
    """Raw generator states, as the libraries return them."""

    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor]
    python: tuple[Any, ...]
    numpy: tuple[Any, ...]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), Python's ``random`` and NumPy's global RNG."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def capture_torch() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Torch's CPU and CUDA generator states only: about a microsecond, no device sync (the
    trainer takes this after every step; Python's and NumPy's states cost ~50 µs)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return torch.get_rng_state(), cuda


def capture(torch_state: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> RngState:
    """The current state of every generator (copies), or of Python's and NumPy's with an
    earlier :func:`capture_torch` result for torch's."""
    cpu, cuda = torch_state if torch_state is not None else capture_torch()
    return RngState(cpu, cuda, random.getstate(), np.random.get_state())


def restore(state: RngState) -> None:
    """Put every generator back to ``state``. CUDA states are restored per device when the
    number of visible devices matches; otherwise they are skipped (a CPU-only resume)."""
    torch.set_rng_state(state.torch_cpu)
    if state.torch_cuda and torch.cuda.is_available() \
            and torch.cuda.device_count() == len(state.torch_cuda):
        torch.cuda.set_rng_state_all(state.torch_cuda)
    random.setstate(state.python)
    np.random.set_state(state.numpy)


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().contiguous().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def encode(state: RngState) -> dict[str, Any]:
    """JSON-safe dict of ``state``."""
    version, mt, gauss = state.python
    kind, keys, pos, has_gauss, cached = state.numpy
    return {
        "torch_cpu": _b64(state.torch_cpu),
        "torch_cuda": [_b64(s) for s in state.torch_cuda],
        "python": {"version": version, "state": list(mt), "gauss_next": gauss},
        "numpy": {"kind": kind,
                  "keys": base64.b64encode(np.asarray(keys, dtype="<u4").tobytes())
                  .decode("ascii"),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }


def decode(data: dict[str, Any]) -> RngState:
    """Inverse of :func:`encode`."""
    try:
        py = data["python"]
        npd = data["numpy"]
        keys = np.frombuffer(base64.b64decode(npd["keys"]), dtype="<u4").astype(np.uint32)
        return RngState(
            torch_cpu=_unb64(data["torch_cpu"]),
            torch_cuda=[_unb64(s) for s in data.get("torch_cuda", [])],
            python=(py["version"], tuple(py["state"]), py["gauss_next"]),
            numpy=(npd["kind"], keys, npd["pos"], npd["has_gauss"], npd["cached_gaussian"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed RNG state in trainer_state.json: {e!r}") from e
