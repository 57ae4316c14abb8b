"""Shared plumbing of the commands: one-line errors (exit code 2), rank-0 output, and loading
a model + tokenizer from an attnkit checkpoint, a run directory or a Hugging Face directory."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

__all__ = ["CliError", "fail", "cli_errors", "rank", "is_main", "echo", "console",
           "cpu_threads", "busy_cores", "available_cores", "LoadedModel", "find_checkpoint",
           "checkpoint_kind", "load_any", "load_hf_model",
           "read_run_info", "write_json", "output_dir", "output_file", "human", "RUN_FILE",
           "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a Ctrl-C'd command, after it saved its state
RUN_FILE = "run.json"

# Tables stay readable when piped (rich would wrap them to 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)


class CliError(Exception):
    """A user error: printed as one line ``error: ...`` and exit code 2 (no traceback)."""


def fail(message: str) -> NoReturn:
    raise CliError(message)


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError):  # KeyError's str() is the repr of the key
        return f"missing key {e.args[0]!r}" if e.args else "missing key"
    return str(e).strip() or type(e).__name__


@contextmanager
def cli_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn user errors raised inside into ``error: <message>`` on stderr and exit code 2.

    Caught: :class:`CliError`, ``FileNotFoundError``/``NotADirectoryError``/
    ``IsADirectoryError``/``PermissionError``, ``ModuleNotFoundError`` (optional packages)
    and ``ValueError`` (which covers the data package's ``CorpusError``/``TokenFileError``,
    ``CheckpointError`` and the configs' validation), plus ``extra``. Wrap setup code only:
    a ValueError from deep inside a training step is a bug and should keep its traceback.
    """
    try:
        yield
    except typer.Exit:
        raise
    except (CliError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError, ModuleNotFoundError, ValueError, TypeError, *extra) as e:
        if isinstance(e, TypeError) and not _is_config_type_error(e):
            raise
        msg = " ".join(_message(e).split("\n"))
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def _is_config_type_error(e: TypeError) -> bool:
    """Dataclass constructors raise TypeError for missing required fields: a config error."""
    s = str(e)
    return "required positional argument" in s or "unexpected keyword argument" in s


# ---- ranks ----------------------------------------------------------------------------------


def rank() -> int:
    """This process's rank under ``torchrun`` (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def echo(message: str = "", *, err: bool = False) -> None:
    """``typer.echo`` on rank 0 only."""
    if is_main():
        typer.echo(message, err=err)


# ---- threads --------------------------------------------------------------------------------


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cores(window_s: float = 0.3) -> float | None:
    """How many of the CPUs this process may run on were busy during a ``window_s`` sleep
    (``/proc/stat`` jiffies: all but idle and iowait), i.e. busy with *other* processes;
    None where ``/proc/stat`` or CPU affinity is unavailable (not Linux)."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except (AttributeError, OSError):
        return None

    def sample() -> tuple[int, int]:
        busy = total = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name in cpus:
                    v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq ...
                    total += sum(v)
                    busy += sum(v) - v[3] - v[4]
        return busy, total

    try:
        b0, t0 = sample()
        time.sleep(window_s)
        b1, t1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if t1 <= t0:
        return None
    return len(cpus) * (b1 - b0) / (t1 - t0)


@contextmanager
def cpu_threads(requested: int, device: str) -> Iterator[str | None]:
    """Set torch's intra-op threads for the duration (restored afterwards); yields a note.

    ``requested`` > 0: that many. 0 (auto): torch's default, except on a CPU run when other
    processes keep cores busy: then only the cores that look free (at least 1). OpenMP threads
    that wait on a descheduled sibling spin, so an oversubscribed CPU runs a small model 5-20x
    slower than one thread would. "Busy" is measured now, over a short sleep
    (:func:`busy_cores`); where that cannot be read, the 1-minute load average stands in
    (it lags: a job that just ended still counts).
    """
    import torch

    before = torch.get_num_threads()
    note = None
    n = before
    if requested > 0:
        n = requested
    elif before > 1 and (device == "cpu" or (device == "auto"
                                              and not torch.cuda.is_available())):
        cores = available_cores()
        busy = busy_cores()
        if busy is None:
            try:
                busy, what = os.getloadavg()[0], "load average"
            except OSError:
                busy, what = 0.0, "load average"
        else:
            what = "cores busy with other work"
        world = int(os.environ.get("WORLD_SIZE", "1"))
        free = max(1, int(cores - busy + 0.5) // world)
        if free < before:
            n = free
            note = f"threads: {n} ({what} {busy:.1f} of {cores}; --threads N to override)"
    torch.set_num_threads(n)
    try:
        yield note
    finally:
        torch.set_num_threads(before)


# ---- checkpoints ----------------------------------------------------------------------------


def _config(path: Path) -> dict[str, Any] | None:
    """``path/config.json`` as a dict; None when there is none; a one-line error when it is
    there but not a JSON object (a truncated or binary file is not "no checkpoint")."""
    from attnkit.jsonconfig import read_json

    f = path / "config.json"
    if not f.is_file():
        return None
    try:
        return read_json(f)
    except ValueError as e:
        fail(f"{e}; it cannot be read as a model config")


def checkpoint_kind(path: Path) -> str | None:
    """``"attnkit"`` (an attnkit checkpoint), ``"hf"`` (a Hugging Face model directory with a
    ``model_type``) or None."""
    cfg = _config(path)
    if cfg is None:
        return None
    if cfg.get("format") == "attnkit-checkpoint":
        return "attnkit"
    if "model_type" in cfg:
        return "hf"
    return None


def find_checkpoint(path: str | Path) -> tuple[Path, str]:
    """``(checkpoint directory, kind)`` for a checkpoint directory, or a run's output
    directory (its ``best/``, else ``last/``)."""
    p = Path(path).expanduser()
    if not p.exists():
        # a save interrupted between its two renames leaves <name>.old
        old = p.with_name(p.name + ".old")
        if checkpoint_kind(old) == "attnkit":
            return old, "attnkit"
        fail(f"checkpoint not found: {p} (pass --checkpoint DIR; 'attnkit train' writes "
             "runs/char-gpt)")
    if not p.is_dir():
        fail(f"checkpoint {p} is not a directory")
    kind = checkpoint_kind(p)
    if kind is not None:
        return p, kind
    for sub in ("best", "last"):
        if checkpoint_kind(p / sub) == "attnkit":
            return p / sub, "attnkit"
    found = sorted(x.name for x in p.iterdir())[:12]
    fail(f"{p} is not a checkpoint: no attnkit config.json (nor best/ or last/ inside) and no "
         f"Hugging Face config.json with a model_type (found: {found})")


@dataclass
class LoadedModel:
    model: Any  # nn.Module, eval mode
    tokenizer: Any | None  # attnkit.data.Tokenizer
    path: Path
    kind: str  # "attnkit" or "hf"

    @property
    def architecture(self) -> str:
        return type(self.model).__name__

    def check_ids(self, ids: Any, what: str) -> None:
        """A one-line error when token ``ids`` (a list or array) reach beyond the model's
        vocabulary: the tokenizer beside the weights was made for another model."""
        vocab = getattr(self.model.config, "vocab_size", None)
        if vocab is None or not len(ids):
            return
        hi = int(ids.max() if hasattr(ids, "max") else max(ids))
        if hi >= vocab:
            tok = self.tokenizer
            fail(f"{what} encodes to token id {hi}, but the model in {self.path} has vocab_size="
                 f"{vocab} (valid ids: 0..{vocab - 1}): its {tok.kind} tokenizer "
                 f"({tok.vocab_size} tokens) was made for another model")


def _untruncated(tok: Any) -> Any:
    """A Hugging Face tokenizer.json may carry fixed padding/truncation: switch them off (the
    batch sources pad and truncate themselves)."""
    inner = getattr(tok, "tok", None)
    if inner is not None:
        inner.no_padding()
        inner.no_truncation()
    return tok


def load_hf_model(path: Path) -> Any:
    """``interop.hf.load_hf``, with BERT's head taken from ``architectures``."""
    from attnkit.interop.hf import load_hf

    cfg = _config(path) or {}
    if cfg.get("model_type") == "bert":
        from attnkit.interop.bert import load_bert_as_saved

        return load_bert_as_saved(path, strict=False)
    return load_hf(path)


def load_any(path: str | Path, device: str = "cpu", *, need_tokenizer: bool = True
             ) -> LoadedModel:
    """Model + tokenizer from an attnkit checkpoint / run directory or a HF directory."""
    from attnkit.data import load_tokenizer
    from attnkit.train.distributed import resolve_device

    device = str(resolve_device(device))  # a device this machine lacks: a one-line error
    ckpt, kind = find_checkpoint(path)
    if kind == "attnkit":
        from attnkit.train.checkpoint import load_model, tokenizer_dir

        model = load_model(ckpt, device)
        tdir = tokenizer_dir(ckpt)
        tok = load_tokenizer(tdir) if tdir is not None else None
        if tok is None and need_tokenizer:
            fail(f"checkpoint {ckpt} has no tokenizer/ (saved without one); it cannot encode "
                 "text")
    else:
        model = load_hf_model(ckpt).to(device).eval()
        tok = None
        if (ckpt / "tokenizer.json").is_file():
            tok = _untruncated(load_tokenizer(ckpt))
        elif need_tokenizer:
            fail(f"Hugging Face directory {ckpt} has no tokenizer.json; it cannot encode text")
    return LoadedModel(model, tok, ckpt, kind)


def read_run_info(ckpt: Path) -> dict[str, Any]:
    """The ``run.json`` written by ``attnkit train``/``finetune``: in the checkpoint
    directory, else in its parent (the run's output directory); ``{}`` if none."""
    for d in (ckpt, ckpt.parent):
        f = d / RUN_FILE
        if f.is_file():
            try:
                data = json.loads(f.read_text())
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return {}


def output_dir(path: str | Path, flag: str) -> Path:
    """``path`` as an output directory (created later if missing); a one-line error when it,
    or a folder above it, is an existing file."""
    p = Path(path).expanduser()
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                fail(f"{flag} {p}: {'it' if q == p else q} is a file; {flag} must be a "
                     "directory (it is created if missing)")
            break
    return p


def output_file(path: str | Path, flag: str) -> Path:
    """``path`` as an output file: a one-line error when it is an existing directory or a
    folder above it is a file."""
    p = Path(path).expanduser()
    if p.is_dir():
        fail(f"{flag} {p} is a directory: {flag} names the file to write")
    output_dir(p.parent, f"{flag}'s folder")
    return p


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically (:mod:`attnkit.fileio`)."""
    from attnkit.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"
