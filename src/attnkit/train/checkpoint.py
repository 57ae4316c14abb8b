"""The checkpoint directory: everything to rebuild a model, or to resume its training exactly.

::

    ckpt/
      config.json             {"format", "format_version", "attnkit_version", "architecture",
                               "model": model.config.to_dict(), "train": {...},
                               "tokenizer": {"class", "path"} (optional)}
      model.safetensors       weights; tied tensors are stored once (metadata "attnkit.tied"
                              maps each alias to the stored name)
      optimizer.safetensors   optimizer state tensors as "state/<param name>/<key>"; the rest
                              (param groups, non-tensor state) as JSON in the metadata
      trainer_state.json      step, tokens seen, best val loss, RNG states, data-source state,
                              scheduler state, ... (whatever the trainer passes)
      metrics.jsonl           the run's metrics up to this step (copied from the live log)
      tokenizer/              ``tokenizer.save(directory)`` output (optional)

``config.json`` may carry more entries (``extra_config``), e.g. ``"sentence_pooling"`` for a
BERT encoder imported from sentence-transformers (:mod:`attnkit.interop.sentence_transformers`).

No pickle anywhere: tensors go through safetensors, everything else through JSON. Optimizer
state is keyed by parameter *name* (:mod:`~attnkit.train.optim_state`), so a checkpoint
written by a single process, DDP or FSDP resumes under any of them.

Writes are atomic: the files go to a temporary directory beside the target, are fsynced, and
the directory is renamed into place (an existing checkpoint is first renamed to ``<name>.old``
and deleted afterwards). A crash leaves either the old or the new checkpoint complete; if it
strikes between the two renames, readers fall back to ``<name>.old``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from attnkit.jsonconfig import read_json
from attnkit.models.registry import architecture_of, build_model
from attnkit.tensor_files import CheckpointError, read_safetensors
from attnkit.train import optim_state, rng

__all__ = [
    "CheckpointError", "save_checkpoint", "load_model", "load_training_state", "read_config",
    "read_model_state", "load_weights", "read_optimizer_state", "read_trainer_state",
    "resolve_checkpoint", "tokenizer_dir", "atomic_directory",
]

FORMAT = "attnkit-checkpoint"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, OPTIMIZER = "config.json", "model.safetensors", "optimizer.safetensors"
TRAINER_STATE, METRICS, TOKENIZER = "trainer_state.json", "metrics.jsonl", "tokenizer"
_TIED_KEY = "attnkit.tied"


# ---- atomic directory writes -----------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; on a clean exit it replaces
    ``target`` (old → ``<name>.old``, new → ``target``, old deleted). On an exception the
    temporary directory is removed and ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.rglob("*"):  # mkdtemp makes 0700, safetensors 0600: use the umask
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
            if f.is_file():
                _fsync(f)
        os.chmod(tmp, 0o777 & ~umask)
        _fsync(tmp)
        old = target.with_name(target.name + ".old")
        if target.exists():
            if old.exists():  # target is complete, so a leftover .old is stale
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target.with_name(target.name + ".old"), ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` if it holds a checkpoint, else ``<path>.old`` left by an interrupted replace."""
    path = Path(path)
    if (path / CONFIG).is_file():
        return path
    old = path.with_name(path.name + ".old")
    if (old / CONFIG).is_file():
        warnings.warn(f"{path} is missing (a save was interrupted while replacing it); using "
                      f"the previous checkpoint {old}", stacklevel=2)
        return old
    if path.is_dir():
        raise FileNotFoundError(f"{path} is not an attnkit checkpoint: no {CONFIG} (found: "
                                f"{sorted(p.name for p in path.iterdir())})")
    raise FileNotFoundError(f"no checkpoint at {path}")


# ---- small helpers ---------------------------------------------------------------------------


def _write_json(path: Path, obj: Any, what: str) -> None:
    try:
        text = json.dumps(obj, indent=2)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON-serialisable: {e}") from e
    path.write_text(text + "\n")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    try:
        return read_json(path, kind=None)
    except ValueError as e:
        raise CheckpointError(f"corrupt checkpoint: {e}") from None


def _read_safetensors(path: Path, device: str = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    return read_safetensors(path, device)


def _to_plain(obj: Any) -> Any:
    """Objects with ``to_dict`` (configs) become dicts; ``None`` stays ``None``."""
    if obj is None or isinstance(obj, Mapping):
        return None if obj is None else dict(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"expected a dict or an object with to_dict(), got {type(obj).__name__}")


def _dedupe(state: Mapping[str, Tensor], aliases: Mapping[str, str] | None = None
            ) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Unique tensors (CPU, contiguous) and ``{alias: stored name}`` for tensors that share
    memory with a stored one (added to ``aliases``)."""
    unique: dict[str, Tensor] = {}
    aliases = dict(aliases or {})
    seen: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, t in state.items():
        t = t.detach()
        if t.numel():
            key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.shape,
                   t.stride(), t.dtype)
            if key in seen:
                aliases[name] = seen[key]
                continue
            seen[key] = name
            sk = (t.device, t.untyped_storage().data_ptr())
            if sk in storages:  # a different view of a stored storage: safetensors refuses it
                t = t.clone()
            storages.add(sk)
        unique[name] = t.to("cpu").contiguous()
    return unique, aliases


def _drop_tied(model: nn.Module, state: dict[str, Tensor]
               ) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Keep one name per parameter the model shares between modules (a tied LM head) and
    return ``{alias: kept name}`` for the others. Goes by the module structure, so it also
    works on gathered (FSDP) state dicts, whose tied entries are separate copies."""
    groups: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    aliases: dict[str, str] = {}
    for names in groups.values():
        present = [n for n in names if n in state]
        for n in names[1:] if present else []:
            if n != present[0]:
                state.pop(n, None)
                aliases[n] = present[0]
    return state, aliases


def read_optimizer_state(path: str | Path) -> dict[str, Any]:
    """The by-name optimizer state of a checkpoint (CPU tensors; see
    :mod:`~attnkit.train.optim_state`)."""
    f = resolve_checkpoint(path) / OPTIMIZER
    try:
        return optim_state.from_tensors(*_read_safetensors(f))
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{f}: {e}") from e


# ---- save ------------------------------------------------------------------------------------


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    trainer_state: Mapping[str, Any] | None = None,
    train_config: Any | None = None,
    tokenizer: Any | None = None,
    *,
    model_state: Mapping[str, Tensor] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    metrics_file: str | Path | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically (see the module docstring).

    ``model`` is the unwrapped model (its ``config`` and class name go to ``config.json``);
    ``model_state`` / ``optimizer_state`` override ``model.state_dict()`` / the by-name
    optimizer state (FSDP passes gathered full states). ``trainer_state`` must be JSON-safe;
    its ``"rng"`` may be an :class:`~attnkit.train.rng.RngState` and defaults to the current
    RNG states; ``scheduler.state_dict()`` is stored under ``"scheduler"``. ``tokenizer`` needs
    a ``save(directory)`` method. ``metrics_file`` is copied to ``metrics.jsonl``.
    ``extra_config``: more JSON-safe entries for ``config.json`` (not its own keys).
    """
    _, arch = architecture_of(model)
    from attnkit import __version__

    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "attnkit_version": __version__,
        "architecture": arch, "model": model.config.to_dict(),
        "train": _to_plain(train_config),
    }
    clash = sorted(set(extra_config or {}) & (set(config) | {"tokenizer"}))
    if clash:
        raise ValueError(f"extra_config keys {clash} are the checkpoint's own config.json keys")
    config.update(extra_config or {})
    ts = dict(trainer_state or {})
    r = ts.get("rng")
    ts["rng"] = rng.encode(r if isinstance(r, rng.RngState) else rng.capture()) \
        if not isinstance(r, dict) else r
    if scheduler is not None:
        ts["scheduler"] = scheduler.state_dict()
    ts["format_version"] = FORMAT_VERSION
    weights, aliases = _dedupe(*_drop_tied(
        model, dict(model.state_dict() if model_state is None else model_state)))

    with atomic_directory(path) as tmp:
        save_file(weights, str(tmp / WEIGHTS),
                  metadata={"format": "pt", _TIED_KEY: json.dumps(aliases)})
        if optimizer is not None or optimizer_state is not None:
            if optimizer_state is None:
                optimizer_state = optim_state.optimizer_state_by_name(model, optimizer)
            tensors, meta = optim_state.to_tensors(optimizer_state)
            save_file(tensors, str(tmp / OPTIMIZER), metadata=meta)
        _write_json(tmp / TRAINER_STATE, ts, "trainer_state")
        if metrics_file is not None and Path(metrics_file).is_file():
            shutil.copyfile(metrics_file, tmp / METRICS)
        if tokenizer is not None:
            (tmp / TOKENIZER).mkdir()
            tokenizer.save(tmp / TOKENIZER)
            tcls = type(tokenizer)
            config["tokenizer"] = {"class": f"{tcls.__module__}.{tcls.__qualname__}",
                                   "path": TOKENIZER}
        _write_json(tmp / CONFIG, config, "config")  # last: its presence marks a checkpoint
    return Path(path)


# ---- load ------------------------------------------------------------------------------------


def read_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint, checked for format and version."""
    f = resolve_checkpoint(path) / CONFIG
    cfg = _read_json(f)
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or "model" not in cfg:
        raise CheckpointError(f"{f} is not an attnkit checkpoint config")
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{f}: format_version {cfg['format_version']} is newer than this "
                              f"attnkit reads ({FORMAT_VERSION}); upgrade attnkit")
    return cfg


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint (RNG states still encoded)."""
    return _read_json(resolve_checkpoint(path) / TRAINER_STATE)


def read_model_state(path: str | Path, map_location: str | torch.device = "cpu"
                     ) -> dict[str, Tensor]:
    """The state dict in ``model.safetensors``, tied aliases restored (as the same tensor)."""
    tensors, meta = _read_safetensors(resolve_checkpoint(path) / WEIGHTS, str(map_location))
    for alias, name in json.loads(meta.get(_TIED_KEY, "{}")).items():
        tensors[alias] = tensors[name]
    return tensors


def load_weights(model: nn.Module, state: Mapping[str, Tensor], *, strict: bool = True,
                 source: str = "checkpoint") -> None:
    """``model.load_state_dict(state)`` with an error that lists every missing, unexpected
    and wrongly shaped key (shape mismatches are errors even when not ``strict``)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if shapes or (strict and (missing or unexpected)):
        parts = [f"missing keys {missing}" if missing else "",
                 f"unexpected keys {unexpected}" if unexpected else "",
                 f"shape mismatches {shapes}" if shapes else ""]
        raise CheckpointError(f"{source} does not match {type(model).__name__}: "
                              + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=strict)


def load_model(path: str | Path, map_location: str | torch.device = "cpu", *,
               strict: bool = True) -> nn.Module:
    """Rebuild the model of a checkpoint from ``config.json`` (via the family registry) and
    load its weights; returned on ``map_location``, in the stored floating dtype, in eval
    mode."""
    path = resolve_checkpoint(path)
    cfg = read_config(path)
    try:
        model = build_model(cfg["model"], cfg.get("architecture"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG}: cannot build the model: {e}") from e
    state = read_model_state(path, "cpu")
    load_weights(model, state, strict=strict, source=str(path / WEIGHTS))
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1 and (dt := dtypes.pop()) != torch.float32:
        model.to(dt)
    return model.to(map_location).eval()


def load_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    restore_rng: bool = True,
    load_model_weights: bool = True,
) -> dict[str, Any]:
    """Load weights, optimizer and scheduler state into existing objects and (by default)
    restore the RNG states; return ``trainer_state.json``'s dict.

    ``model`` must have the checkpoint's config (differences are listed in the error).
    """
    path = resolve_checkpoint(path)
    cfg = read_config(path)
    mine = model.config.to_dict()
    if cfg["model"] != mine:
        diff = sorted(k for k in set(mine) | set(cfg["model"])
                      if mine.get(k) != cfg["model"].get(k))
        raise CheckpointError(
            f"{path / CONFIG}: model config differs from the model's in "
            + ", ".join(f"{k} (checkpoint {cfg['model'].get(k)!r}, model {mine.get(k)!r})"
                        for k in diff))
    if load_model_weights:
        load_weights(model, read_model_state(path, "cpu"), source=str(path / WEIGHTS))
    if optimizer is not None:
        try:
            optim_state.load_optimizer_state(model, optimizer, read_optimizer_state(path))
        except ValueError as e:
            raise CheckpointError(f"{path / OPTIMIZER}: {e}") from e
    state = read_trainer_state(path)
    if scheduler is not None:
        if "scheduler" not in state:
            raise CheckpointError(f"{path / TRAINER_STATE} has no scheduler state")
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng and "rng" in state:
        rng.restore(rng.decode(state["rng"]))
    return state


def tokenizer_dir(path: str | Path) -> Path | None:
    """The directory the tokenizer was saved to (for ``load_tokenizer``), or None."""
    path = resolve_checkpoint(path)
    tok = read_config(path).get("tokenizer")
    return path / tok["path"] if tok else None
