"""Shared plumbing for Hugging Face checkpoint directories.

A checkpoint directory holds ``config.json`` and the weights as ``model.safetensors`` (or shards
listed in ``model.safetensors.index.json``). Weights are only ever read with ``safetensors``:
pickle files (``pytorch_model.bin``) can execute code on load and are refused.

Family converters (GPT-2, LLaMA, BERT, T5, ...) follow one recipe::

    hf_cfg = read_config(directory)                # dict, model_type checked by the caller
    state = load_state(directory)                  # {name: tensor}, nothing executed
    state = drop_keys(state, [r"\\.attn\\.bias$"])  # buffers older exports carry
    check_keys(expected_shapes, state, "GPT-2")    # one ValueError listing every problem
    ...copy into the model...
    write_checkpoint(directory, config_dict, tensors)   # atomic: temp dir, then rename

Most families map each attnkit parameter to one or more HF tensors (``(hf_names, attnkit_name)``
rows; several names are one fused parameter split along dim 0, like ``qkv``). For them
:func:`load_fused` does the check-and-copy step and :func:`split_fused` +
:func:`save_checkpoint` the saving.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from attnkit.jsonconfig import read_json
from attnkit.tensor_files import read_safetensors

__all__ = [
    "CONFIG_NAME", "WEIGHTS_NAME", "INDEX_NAME", "read_config", "load_state", "drop_keys",
    "check_keys", "write_checkpoint", "dtype_name", "incompatible", "require", "FusedRows",
    "checked_params", "fused_shapes", "copy_fused", "split_fused", "finish_load", "load_fused",
    "save_checkpoint",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")
_MAX_LISTED = 50

#: ``(hf_names, attnkit_name)`` rows; several HF names are concatenated along dim 0
FusedRows = Sequence[tuple[Sequence[str], str]]
ModelT = TypeVar("ModelT", bound=nn.Module)


def read_config(directory: str | Path) -> dict[str, Any]:
    """``directory/config.json`` as a dict (clear errors for a missing or broken file)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"no {CONFIG_NAME} in {directory}; expected a Hugging Face checkpoint "
                         f"directory (config.json + model.safetensors)")
    return read_json(path)


def _shard_files(directory: Path) -> list[Path]:
    """Shard files named by ``model.safetensors.index.json``, which must stay in ``directory``."""
    index = read_json(directory / INDEX_NAME)
    if not isinstance(index.get("weight_map", {}), dict):
        raise ValueError(f"{directory / INDEX_NAME}: 'weight_map' must map tensor names to "
                         "shard files")
    names = sorted(set(map(str, index.get("weight_map", {}).values())))
    if not names:
        raise ValueError(f"{directory / INDEX_NAME} has an empty weight_map")
    for n in names:
        if Path(n).name != n or not n.endswith(".safetensors"):
            raise ValueError(f"{INDEX_NAME} names shard {n!r}: shards must be *.safetensors "
                             f"files inside the checkpoint directory")
    return [directory / n for n in names]


def load_state(directory: str | Path) -> dict[str, Tensor]:
    """All tensors of ``model.safetensors`` or of the shards in ``model.safetensors.index.json``
    (on CPU, in their stored dtype). Never unpickles anything."""
    d = Path(directory)
    if (d / WEIGHTS_NAME).is_file():
        return read_safetensors(d / WEIGHTS_NAME)[0]
    if (d / INDEX_NAME).is_file():
        state: dict[str, Tensor] = {}
        for f in _shard_files(d):
            if not f.is_file():
                raise ValueError(f"shard {f.name} listed in {INDEX_NAME} is missing from {d}")
            part = read_safetensors(f)[0]
            dup = sorted(set(part) & set(state))
            if dup:
                raise ValueError(f"tensors {dup[:_MAX_LISTED]} appear in more than one shard")
            state.update(part)
        return state
    pickles = [n for n in _PICKLE_NAMES if (d / n).exists()]
    if pickles:
        raise ValueError(
            f"{d} has only pickle weights ({', '.join(pickles)}); attnkit reads safetensors "
            f"only (pickle can run code on load). Convert once in a trusted environment, e.g. "
            f"AutoModel.from_pretrained(d).save_pretrained(d, safe_serialization=True)")
    raise ValueError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {d}")


def drop_keys(state: Mapping[str, Tensor], patterns: Iterable[str]) -> dict[str, Tensor]:
    """``state`` without the keys matching any regex in ``patterns`` (``re.search``)."""
    regs = [re.compile(p) for p in patterns]
    return {k: v for k, v in state.items() if not any(r.search(k) for r in regs)}


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f" ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}): " + ", ".join(shown) + more


def check_keys(expected: Mapping[str, tuple[int, ...] | torch.Size], got: Mapping[str, Tensor],
               context: str, *, optional: Iterable[str] = ()) -> None:
    """Compare a checkpoint against what a model needs; raise one ``ValueError`` listing every
    missing key, unexpected key and shape mismatch (``name: expected (..), got (..)``).

    ``expected`` maps checkpoint names to shapes; names in ``optional`` may be absent.
    """
    opt = set(optional)
    missing = sorted(k for k in expected if k not in got and k not in opt)
    unexpected = sorted(k for k in got if k not in expected)
    shapes = sorted(
        f"{k}: expected {tuple(expected[k])}, got {tuple(got[k].shape)}"
        for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k]))
    if missing or unexpected or shapes:
        lines = [f"{context}: the checkpoint does not match the model config"]
        if missing:
            lines.append(_listing("missing keys", missing))
        if unexpected:
            lines.append(_listing("unexpected keys", unexpected))
        if shapes:
            lines.append(_listing("shape mismatches", shapes))
        raise ValueError("\n".join(lines))


def require(config: Mapping[str, Any], keys: Iterable[str], context: str) -> None:
    """Raise one ``ValueError`` naming every key of ``keys`` absent from ``config``."""
    missing = [k for k in keys if config.get(k) is None]
    if missing:
        raise ValueError(f"{context}: config.json lacks required keys {missing}")


def incompatible(context: str, problems: list[str]) -> None:
    """Raise one ``ValueError`` listing every config incompatibility (no-op when empty)."""
    if problems:
        raise ValueError(f"{context}:\n" + "\n".join(f"  - {p}" for p in problems))


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16 -> "bfloat16"`` (the spelling of HF ``config.json``)."""
    return str(dtype).removeprefix("torch.")


def write_checkpoint(directory: str | Path, config: Mapping[str, Any],
                     tensors: Mapping[str, Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` to ``directory``, atomically.

    Both files are written into a fresh temp directory next to the target first. A new
    ``directory`` is then created by one rename; into an existing one each file is moved with
    ``os.replace`` (other files such as a tokenizer are kept; a stale shard index and its shards
    are removed so loaders cannot pick them up). Tensors are copied to contiguous CPU storage
    (safetensors refuses views sharing memory).
    """
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_file(data, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
        if not target.exists():
            try:
                tmp.rename(target)
                return target
            except OSError:  # created concurrently: fall through to the per-file path
                pass
        if (target / INDEX_NAME).is_file():
            for shard in _shard_files(target):
                shard.unlink(missing_ok=True)
            (target / INDEX_NAME).unlink()
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            os.replace(tmp / name, target / name)
        return target
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def checked_params(model: nn.Module, names: Iterable[str], family: str) -> dict[str, Tensor]:
    """``model``'s parameters by name; asserts that ``names`` (the attnkit side of the family's
    weight map) are exactly those parameters."""
    params = dict(model.named_parameters())
    assert set(names) == set(params), f"{family} weight map out of date"
    return params


def _part_rows(rows: int, parts: int, sizes: Sequence[int] | None) -> list[int]:
    """Dim-0 sizes of the ``parts`` HF tensors of a ``rows``-row parameter."""
    if parts == 1:
        return [rows]
    return list(sizes) if sizes is not None else [rows // parts] * parts


def fused_shapes(rows: FusedRows, params: Mapping[str, Tensor],
                 sizes: Sequence[int] | None = None) -> dict[str, tuple[int, ...]]:
    """The HF shape of every name in ``rows``: a fused parameter splits along dim 0 into equal
    parts, or into ``sizes`` rows when given (e.g. q, k, v under grouped-query attention)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for names, ours in rows:
        shape = tuple(params[ours].shape)
        for n, r in zip(names, _part_rows(shape[0], len(names), sizes), strict=True):
            shapes[n] = (r, *shape[1:])
    return shapes


def copy_fused(params: Mapping[str, Tensor], rows: FusedRows,
               state: Mapping[str, Tensor]) -> None:
    """Copy each row's HF tensors, concatenated along dim 0, into its parameter (no autograd);
    a row with a tensor absent from ``state`` keeps its current values."""
    with torch.no_grad():
        for names, ours in rows:
            if all(n in state for n in names):
                params[ours].copy_(torch.cat([state[n] for n in names], dim=0))


def split_fused(rows: FusedRows, params: Mapping[str, Tensor],
                sizes: Sequence[int] | None = None) -> dict[str, Tensor]:
    """The HF tensors of ``params`` (the inverse of :func:`copy_fused`): each fused parameter is
    split along dim 0 as in :func:`fused_shapes`."""
    tensors: dict[str, Tensor] = {}
    for names, ours in rows:
        t = params[ours]
        parts = t.split(_part_rows(t.shape[0], len(names), sizes)) if len(names) > 1 else [t]
        tensors.update(zip(names, parts, strict=True))
    return tensors


def finish_load(model: ModelT, dtype: torch.dtype | None) -> ModelT:
    """``model`` cast to ``dtype`` (when given) and switched to eval mode."""
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def load_fused(model: ModelT, rows: FusedRows, state: Mapping[str, Tensor], context: str, *,
               family: str, dtype: torch.dtype | None = None, sizes: Sequence[int] | None = None,
               optional: Iterable[str] = ()) -> ModelT:
    """Fill ``model`` from a normalised checkpoint ``state`` by its weight map ``rows``.

    Checks that ``rows`` covers the model (see :func:`checked_params`), raises the
    :func:`check_keys` error (with ``context``; names in ``optional`` may be absent), copies
    with :func:`copy_fused` and returns the model via :func:`finish_load`.
    """
    params = checked_params(model, (o for _, o in rows), family)
    check_keys(fused_shapes(rows, params, sizes), state, context, optional=optional)
    copy_fused(params, rows, state)
    return finish_load(model, dtype)


def save_checkpoint(directory: str | Path, config: Mapping[str, Any],
                    tensors: Mapping[str, Tensor], *, dtype: torch.dtype,
                    extra_config: Mapping[str, Any] | None = None) -> Path:
    """:func:`write_checkpoint` of ``config`` with ``"dtype"`` set to the weights' ``dtype``
    and then ``extra_config`` merged in (its keys win, ``"dtype"`` included)."""
    hf = {**config, "dtype": dtype_name(dtype), **(extra_config or {})}
    return write_checkpoint(directory, hf, tensors)
