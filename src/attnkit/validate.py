"""Argument checks shared by configs, models, generation and the commands.

Every check raises early, before anything is allocated or computed, with a message that names
the argument, the offending value and what is valid::

    positive_int("n_heads", 0)              ValueError: n_heads must be a positive int, got 0
    token_ids(ids, 256)                     ValueError: input_ids holds token id 300, but ...
    finite("q", q, where="attend")          ValueError: attend: q has 1 non-finite value; ...

Tensor checks that read values (:func:`token_ids`, :func:`finite`) cost one host sync; callers
decide when that is free (see :func:`host_check_is_free`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["positive_int", "nonneg_int", "number", "fraction", "one_of", "flag",
           "token_ids", "finite", "nonempty_ids", "host_check_is_free"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int ``>= 1`` (bools are not ints here)."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def nonneg_int(name: str, value: Any) -> int:
    """``value`` if it is an int ``>= 0``."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def number(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` if it is a finite real number (not a bool) in the given interval."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
    if not ok:
        lo = "" if low == -math.inf else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high == math.inf else f"{'<' if high_open else '<='} {high:g}"
        rng = " and ".join(p for p in (lo, hi) if p)
        raise ValueError(f"{name} must be a finite number{' ' + rng if rng else ''}, "
                         f"got {value!r}")
    return float(value)


def fraction(name: str, value: Any) -> float:
    """A probability-like setting in ``[0, 1)`` (dropout rates, masking fractions)."""
    return number(name, value, low=0.0, high=1.0, high_open=True)


def one_of(name: str, value: Any, valid: tuple[Any, ...] | list[Any]) -> Any:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(repr, valid))}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool (``check_finite="yes"`` is a mistake, not a truthy flag)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


# ---- tensors ---------------------------------------------------------------------------------


def host_check_is_free(t: Tensor, *, training: bool = False) -> bool:
    """Whether a value check on ``t`` (one host sync) may run here: never inside
    ``torch.compile`` (it would break the graph); on an accelerator not while training (the
    step must not wait on the device; the training data is checked when it is tokenized);
    otherwise yes (on the CPU a sync costs nothing)."""
    if torch.compiler.is_compiling():
        return False
    return t.is_cpu or not training


def nonempty_ids(name: str, ids: Any) -> Tensor:
    """``ids`` if it is a 2-D int64 / int32 tensor ``(B, L)`` (what embeddings index with)
    with ``B, L >= 1``."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a (B, L) tensor of token ids, got {type(ids).__name__}")
    if ids.dtype not in (torch.long, torch.int):
        raise ValueError(f"{name} must hold integer token ids (torch.long or torch.int), got "
                        f"dtype {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must be (B, L), got shape {tuple(ids.shape)}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}): it needs at least one "
                         f"sequence of at least one token")
    return ids


def token_ids(ids: Tensor, vocab_size: int, *, name: str = "input_ids",
              ignore: int | None = None, size_name: str = "vocab_size") -> None:
    """Every id of ``ids`` in ``0 .. vocab_size - 1`` (``ignore``, e.g. -100 in labels, also
    allowed); else a ``ValueError`` naming the largest (or smallest) offending id and the
    valid range. One host sync (``aminmax``). ``size_name``: the config field of the range
    (``type_vocab_size``, ``num_labels``); for ``vocab_size`` the message adds that the ids
    come from another tokenizer."""
    if not ids.numel():
        return
    t = ids if ignore is None else ids[ids != ignore]
    if not t.numel():
        return
    if t.numel() <= 256:  # a decoding step's ids: Python is faster than two kernels
        vals = t.flatten().tolist()
        lo, hi = min(vals), max(vals)
    else:
        lo, hi = (int(x) for x in torch.stack(torch.aminmax(t)).tolist())
    if 0 <= lo and hi < vocab_size:
        return
    bad = hi if hi >= vocab_size else lo
    also = f" or {ignore} (ignored)" if ignore is not None else ""
    why = ("; the ids were made by another tokenizer than the one this model was built for"
           if size_name == "vocab_size" else "")
    raise ValueError(f"{name} holds {'token ' if size_name == 'vocab_size' else ''}id {bad}, "
                     f"but the model's config has {size_name}={vocab_size} (valid: "
                     f"0..{vocab_size - 1}{also}){why}")


def finite(name: str, t: Tensor, *, where: str) -> None:
    """``ValueError`` when ``t`` holds NaN or ±inf, naming the count, the first bad value and
    its index. One host sync."""
    bad = ~torch.isfinite(t)
    n = int(bad.sum())
    if not n:
        return
    first = tuple(int(i) for i in bad.nonzero()[0])  # row-major: the first bad entry
    value = float(t[first])
    shown = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    raise ValueError(f"{where}: {name} has {n} non-finite value{'s' if n > 1 else ''}; the "
                     f"first is {shown} at index {first} (shape {tuple(t.shape)})")
