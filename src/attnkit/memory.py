"""Memory budgets: refuse an allocation that cannot fit before making it.

A position table of ``max_seq_len = 10**8`` rows, a KV cache for ``10**9`` new tokens or a
``config.json`` naming a billion-word vocabulary would otherwise fail deep in the allocator
(or, with memory overcommit, get the process killed once the pages are touched). The checks
here compare an estimate with what the device has free and raise a ``ValueError`` with both
figures::

    require(nbytes, "cpu", what="a KVCache of 1000000032 positions", fix="generate fewer tokens")
    check_model(config, "CausalLM")         # parameters + buffers, before building the model
    check_training(config, "CausalLM", batch=12, seq_len=64, device="cpu", settings="...")

Model sizes are measured on PyTorch's ``meta`` device (shapes only, nothing allocated), so
they are exact for parameters and buffers — and skipped when a bound from the config alone
(:func:`size_bound`) is already small. Allocations under :data:`SMALL` are never checked.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["SMALL", "available_bytes", "require", "human_bytes", "Footprint",
           "model_footprint", "size_bound", "check_model", "check_training", "training_bytes"]

SMALL = 256 << 20  # below this, an allocation is not worth a look at /proc/meminfo


def human_bytes(n: float) -> str:
    """``1.5e9 -> '1.40 GiB'``."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if abs(n) >= 1 << shift:
            return f"{n / (1 << shift):.2f} {unit}"
    return f"{int(n)} B"


def available_bytes(device: torch.device | str) -> int | None:
    """Memory a new allocation on ``device`` can get now: the kernel's ``MemAvailable`` for
    the CPU (Linux; else the free physical pages), free memory for a CUDA device; None where
    it cannot be told (then nothing is refused)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(dev)[0])
    return None


def require(nbytes: int, device: torch.device | str, *, what: str, fix: str) -> None:
    """``ValueError`` when ``nbytes`` on ``device`` exceed its available memory::

        {what} needs ~{nbytes}, more than the {available} available on {device}; {fix}
    """
    if nbytes < SMALL:
        return
    have = available_bytes(device)
    if have is not None and nbytes > have:
        raise ValueError(f"{what} needs ~{human_bytes(nbytes)}, more than the "
                         f"{human_bytes(have)} of memory available on {torch.device(device)}; "
                         f"{fix}")


class _ShapesOnly(TorchFunctionMode):
    """Sizing a model on the meta device needs shapes, not values: random initialisers are
    no-ops and ``arange`` an empty tensor of its length. (PyTorch's meta ``normal_`` and
    float ``arange`` are Python decompositions whose first call costs ~2 s of imports.)"""

    _SKIP = frozenset({Tensor.normal_, Tensor.uniform_, torch.nn.init.normal_,
                       torch.nn.init.uniform_, torch.nn.init.trunc_normal_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._SKIP:
            return args[0] if args else kwargs["tensor"]
        if func is torch.arange and all(isinstance(a, (int, float)) for a in args):
            start, end, step = (0, *args, 1)[-3:] if len(args) == 1 else (*args, 1)[:3]
            n = max(0, math.ceil((end - start) / step))
            ints = all(isinstance(a, int) for a in args)
            dtype = kwargs.get("dtype") or (torch.long if ints else torch.get_default_dtype())
            return torch.empty(n, dtype=dtype, device="meta")
        return func(*args, **kwargs)


@dataclass(frozen=True)
class Footprint:
    """Parameters and buffers of a model, without building it."""

    n_params: int  # distinct parameters (a tied head counts once)
    param_bytes: int
    buffer_bytes: int
    largest: str  # "name (shape)" of the largest tensor

    @property
    def bytes(self) -> int:
        return self.param_bytes + self.buffer_bytes


def model_footprint(config: Any, architecture: str | None = None) -> Footprint:
    """Parameter and buffer sizes of ``build_model(config, architecture)``, built on the meta
    device (nothing is allocated)."""
    from attnkit.models.registry import build_model

    with torch.device("meta"), _ShapesOnly():
        model = build_model(config, architecture, check_memory=False)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    params = {id(p): p for p in model.parameters()}
    name, big = max(tensors.items(), key=lambda kv: kv[1].numel())
    return Footprint(
        n_params=sum(p.numel() for p in params.values()),
        param_bytes=sum(p.numel() * p.element_size() for p in params.values()),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        largest=f"{name} {tuple(big.shape)}")


def size_bound(config: Any) -> int:
    """A quick upper bound on a model's parameter + buffer elements from its config alone
    (no model built): ``64 · (layers + 2) · a · b`` with ``a, b`` the two largest int fields
    (every tensor of the families is at most a product of two config sizes — vocabulary,
    positions, widths, a default ``d_ff = 4 · d_model`` — and a layer has fewer than 16 of
    them). Only used to skip the exact (meta-device) sizing for models small by any count."""
    fields = dict(vars(config))
    sizes = sorted((v for k, v in fields.items() if isinstance(v, int)
                    and not isinstance(v, bool) and not k.endswith("_id") and v > 1),
                   reverse=True) + [1, 1]
    layers = sum(v for k, v in fields.items() if "layers" in k and isinstance(v, int))
    return 64 * (layers + 2) * sizes[0] * sizes[1]


def check_model(config: Any, architecture: str | None = None) -> None:
    """Refuse (``ValueError`` with the figures) a model whose parameters and buffers cannot
    fit in the CPU memory available, before building it."""
    if 4 * size_bound(config) < SMALL:
        return
    fp = model_footprint(config, architecture)
    name = architecture or type(config).__name__.removesuffix("Config")
    require(fp.bytes, "cpu", what=f"a {name} with {fp.n_params:,} parameters (largest tensor: "
            f"{fp.largest})", fix="make the model config smaller")


def check_training(config: Any, architecture: str | None, *, batch: int, seq_len: int,
                   device: torch.device | str, settings: str) -> None:
    """Refuse a training run whose estimated memory (:func:`training_bytes`) exceeds what
    ``device`` has available; ``settings`` names the config values behind it."""
    d = getattr(config, "d_model", 0)
    layers = getattr(config, "n_layers", 0) + (getattr(config, "n_decoder_layers", 0) or 0)
    vocab = getattr(config, "vocab_size", 0)
    acts = 4 * batch * seq_len * (16 * d * layers + 2 * vocab)
    if 16 * size_bound(config) + acts < SMALL:
        return
    need, how = training_bytes(config, architecture, batch=batch, seq_len=seq_len)
    require(need, device, what=f"training this model ({settings}; {how})",
            fix="lower those sizes or the batch")


def training_bytes(config: Any, architecture: str | None, *, batch: int, seq_len: int,
                   footprint: Footprint | None = None) -> tuple[int, str]:
    """A lower estimate of what training needs in fp32, and how it adds up::

        16 bytes per parameter (weights, gradients, AdamW's two moments) + buffers
        + 4 · batch · seq_len · (16 · d_model · n_layers + 2 · vocab_size)   activations

    (about 16 values of width ``d_model`` saved per token and layer for the backward — norms,
    q/k/v, attention output, the 4x FFN hidden before and after its activation — plus the
    logits and their gradient; attention itself saves no ``L × L`` matrix in the fused
    kernels).
    """
    fp = footprint or model_footprint(config, architecture)
    d = getattr(config, "d_model", 0)
    layers = getattr(config, "n_layers", 0) + (getattr(config, "n_decoder_layers", 0) or 0)
    vocab = getattr(config, "vocab_size", 0)
    state = 16 * fp.n_params + fp.buffer_bytes
    acts = 4 * batch * seq_len * (16 * d * layers + 2 * vocab)
    how = (f"{fp.n_params:,} parameters with gradients and AdamW state: "
           f"{human_bytes(state)}; activations at batch {batch} x {seq_len} tokens: "
           f"{human_bytes(acts)}; largest tensor: {fp.largest}")
    return state + acts, how
