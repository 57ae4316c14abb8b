"""Mixed precision: which autocast dtype a run computes in, chosen from the device.

``precision="auto"`` picks bf16 autocast where the hardware computes bf16 natively — CUDA
devices with bf16 support, and CPUs with AVX-512 BF16 or AMX-BF16 (where oneDNN runs bf16
matrix multiplies on ``brg_matmul:avx10_1_512_amx``: 4–6× the fp32 FLOP/s of the same core)
— and fp32 elsewhere (emulated bf16 is slower than fp32).

Autocast keeps the parameters, their gradients and the optimizer state in fp32 ("master
weights"): only the inputs of matrix multiplies are cast to the low-precision dtype, and
reductions (softmax, norms, the loss) run in fp32. bf16 needs **no loss scaling**: it has
fp32's 8 exponent bits, so gradients as small as ~1e-38 stay representable (what is lost
is mantissa, 8 bits instead of 24, which scaling would not restore). fp16 has 5 exponent
bits — values below ~6e-8 flush to zero — so fp16 runs add a dynamic gradient scaler
(:func:`needs_loss_scaling`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["CPU_BF16_FLAGS", "cpu_bf16_flags", "cpu_has_native_bf16", "autocast_dtype",
           "needs_loss_scaling", "describe"]

#: ``/proc/cpuinfo`` flags meaning the CPU executes bf16 dot products natively.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_bf16_flags(cpuinfo: str | None = None) -> tuple[str, ...]:
    """Which of :data:`CPU_BF16_FLAGS` the CPU reports (``cpuinfo``: the text of
    ``/proc/cpuinfo``; read from the system when None). Off Linux, PyTorch's own CPU probe
    (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``) answers."""
    if cpuinfo is None:
        cpuinfo = _read_cpuinfo()
        if cpuinfo is None:
            return _torch_probe()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return tuple(f for f in CPU_BF16_FLAGS if f in flags)


def _read_cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def _torch_probe() -> tuple[str, ...]:
    cpu = torch.cpu
    found = []
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        found.append("avx512_bf16")
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        found.append("amx_bf16")
    return tuple(found)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this machine's CPU computes bf16 natively (AVX-512 BF16 or AMX-BF16)."""
    return bool(cpu_bf16_flags())


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``"auto" | "fp32" | "bf16" | "fp16"``) on
    ``device``; None = plain fp32. ``auto``: bf16 on CUDA devices that support it and on CPUs
    with native bf16 (see the module docstring), else fp32."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_native_bf16() else None
        return None
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; valid: auto, {', '.join(_DTYPES)}")
    return _DTYPES[precision]


def needs_loss_scaling(dtype: torch.dtype | None) -> bool:
    """fp16 only: its 5 exponent bits underflow small gradients; bf16 and fp32 do not."""
    return dtype is torch.float16


def describe(precision: str, device: torch.device) -> str:
    """One line for the run report, e.g. ``bf16 autocast, fp32 master weights (auto: CPU
    has avx512_bf16, amx_bf16)``."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        what = "fp32"
    else:
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        what = f"{name} autocast, fp32 master weights" + (
            ", dynamic loss scaling" if needs_loss_scaling(dtype) else "")
    if precision != "auto":
        return what
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        why = f"CPU has {', '.join(flags)}" if flags else "CPU has no native bf16"
    else:
        why = f"{device.type} device"
    return f"{what} (auto: {why})"
