"""The training loop: ``Trainer(model, train_source, val_source, config).train()``.

One optimizer step = ``grad_accum`` micro-batches from the batch source, forward under
autocast (``precision``; fp32 master weights, see :mod:`attnkit.train.precision`), backward,
gradient clipping, AdamW step, warmup + cosine schedule.
Micro-batches are weighted by their share of the step's (global) target tokens — labels not
-100, after the causal shift — so accumulation and data parallelism compute the gradient of
the mean loss over the whole batch, padding or not. The step itself never waits on the device:
losses stay tensors and are read (``.item()``) only at log steps.

Reproducible: the run is seeded (``seed + rank``), and a checkpoint holds the data-source
position, all RNG states, the optimizer, schedule and loss-accumulator states, so a resumed
run (``resume=True``) reproduces the uninterrupted one bit for bit on CPU. Ctrl-C stops at the
next step boundary (at the next log step when distributed) and saves ``last``; a
``KeyboardInterrupt`` raised inside a step (e.g. by a batch source) discards the partial step
and saves the state from before it (Python's and NumPy's global RNG states excepted: they
are read at the interruption, and the trainer never draws from them). A second Ctrl-C aborts
without saving. Changing ``steps`` / ``warmup_steps`` / ``min_lr`` on resume reshapes the
schedule from the current step on (with a warning, as for other changed settings).

Outputs in ``out_dir``: ``metrics.jsonl``, ``last/`` and ``best/`` checkpoints
(:mod:`attnkit.train.checkpoint`), ``loss_curve.png`` (matplotlib), ``tb/`` (TensorBoard).

``batch_source`` protocol: ``next_batch() -> dict`` of ``model.forward`` kwargs including
``labels``; ``state_dict()`` (JSON-safe; called once per step, so keep it O(1)) and
``load_state_dict(state)``; optionally ``eval_batches(max_batches)`` for validation (else
``next_batch()`` is called ``eval_batches`` times). Under ``torchrun`` each rank's source
yields its own shard, and all ranks must see the same number of validation batches.
"""

from __future__ import annotations

import math
import signal
import statistics
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from attnkit.train import distributed as D
from attnkit.train import rng
from attnkit.train.checkpoint import (
    METRICS,
    TRAINER_STATE,
    CheckpointError,
    load_training_state,
    read_config,
    read_optimizer_state,
    read_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)
from attnkit.train.config import TrainConfig
from attnkit.train.losses import compute_loss, count_targets
from attnkit.train.metrics import MetricsLog, plot_loss_curve, read_metrics
from attnkit.train.optim import WarmupCosine, clip_grad_norm, make_optimizer
from attnkit.train.precision import autocast_dtype, needs_loss_scaling

__all__ = ["BatchSource", "TrainConfig", "TrainSummary", "Trainer"]


# config keys that may change between a run and its resumption without a warning
_RUN_KEYS = {"resume", "out_dir", "progress", "tensorboard", "compile", "log_every",
             "eval_every", "save_every", "device"}


class BatchSource(Protocol):
    def next_batch(self) -> dict[str, Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainSummary:
    """What :meth:`Trainer.train` returns (rates cover this call's steps only)."""

    step: int
    final_loss: float | None
    val_loss: float | None
    val_ppl: float | None
    best_val_loss: float | None
    tokens_seen: int
    tokens_per_s: float
    ms_per_iter: float  # median over this call's steps
    wall_s: float
    interrupted: bool
    out_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Snapshot:
    """Everything a step mutates outside the model/optimizer: taken after every step."""

    data: dict
    val_data: dict | None
    torch_rng: tuple[Tensor, list[Tensor]]  # Python's / NumPy's are read when saving


class _StopRequest:
    """First SIGINT: stop at the next boundary. Second: abort (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.requested = self.hard = False
        self._prev: Any = None

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._prev = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.hard = True
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Ctrl-C: saving a checkpoint at the next step boundary (again to abort)")

    def __exit__(self, *exc: Any) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)


# trainer_state.json as save() writes it: field -> (accepted types, required)
_STATE_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "step": ((int,), True), "tokens_seen": ((int,), True), "rng": ((dict,), True),
    "data": ((dict,), True), "scheduler": ((dict,), True), "loss_count": ((int,), False),
    "loss_sum": ((int, float), False), "best_val_loss": ((int, float, type(None)), False),
    "last_val_loss": ((int, float, type(None)), False),
    "last_train_loss": ((int, float, type(None)), False),
    "val_data": ((dict, type(None)), False), "scaler": ((dict, type(None)), False),
    "rng_ranks": ((list, type(None)), False),
}


def _check_state(state: Any, path: Path) -> None:
    """``CheckpointError`` naming the first field of ``trainer_state.json`` that is missing or
    of the wrong type (counts must be ints >= 0)."""
    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"{path}: {msg} (edited or corrupt; resume from another "
                               "checkpoint or train without --resume)")

    if not isinstance(state, dict):
        raise bad(f"must hold a JSON object, got {type(state).__name__}")
    for name, (types, required) in _STATE_FIELDS.items():
        if name not in state:
            if required:
                raise bad(f"field {name!r} is missing")
            continue
        v = state[name]
        counts = types == (int,)
        if (isinstance(v, bool) and bool not in types) or not isinstance(v, types) or (
                counts and v < 0):
            want = "an int >= 0" if counts else " or ".join(
                {dict: "a JSON object", list: "a list", int: "a number", float: "a number",
                 type(None): "null"}[t] for t in types if t is not float)
            raise bad(f"field {name!r} must be {want}, got {v!r}")


class Trainer:
    """Trains ``model`` (unwrapped, on any device: it is moved) on ``train_source``."""

    def __init__(self, model: nn.Module, train_source: BatchSource,
                 val_source: BatchSource | None = None, config: TrainConfig | None = None,
                 tokenizer: Any | None = None):
        self.config = c = config or TrainConfig()
        self.dist = D.init_distributed(c.distributed, c.device)
        self.device = self.dist.device
        self.train_source, self.val_source, self.tokenizer = train_source, val_source, tokenizer
        self.out_dir = Path(c.out_dir)
        self.raw_model = model.to(self.device)
        self.amp_dtype = autocast_dtype(c.precision, self.device)  # None: fp32
        self.step = self.tokens_seen = 0
        self.best_val_loss: float | None = None
        self.last_val_loss: float | None = None
        self.last_train_loss: float | None = None

        resume = None if c.resume is False else (
            self.out_dir / "last" if c.resume is True else Path(c.resume))
        if resume is not None:
            resume = resolve_checkpoint(resume)  # weights before wrapping: FSDP shards them
            load_training_state(resume, self.raw_model, restore_rng=False)
        self.model = D.wrap_model(self.raw_model, c.distributed, self.dist)
        self.optimizer = make_optimizer(self.raw_model, c.lr, c.weight_decay, c.betas)
        self.scheduler = WarmupCosine(self.optimizer, warmup_steps=c.warmup_steps,
                                      total_steps=c.steps, min_lr=c.min_lr)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=needs_loss_scaling(self.amp_dtype))
        self.forward_model = torch.compile(self.model) if c.compile else self.model
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0
        self._grad_norm: Tensor | None = None
        self._lr = c.lr
        self._pending_rng: rng.RngState | None = None
        self._rng_ready = False
        self._saved: dict[str, int] = {}
        self.metrics: MetricsLog | None = None
        if self.dist.is_main:
            self.metrics = MetricsLog(self.out_dir / METRICS,
                                      self.out_dir / "tb" if c.tensorboard else None)
        self._phase, self._paused = "idle", 0.0
        if resume is not None:
            self._resume(resume)
        self._boundary = self._snapshot()

    # ---- setup ------------------------------------------------------------------------------
    def _resume(self, path: Path) -> None:
        saved = read_config(path).get("train") or {}
        mine = self.config.to_dict()
        changed = sorted(k for k in mine if k not in _RUN_KEYS and saved.get(k, mine[k]) != mine[k])
        if changed and self.dist.is_main:
            warnings.warn("resuming with a different training config: " + ", ".join(
                f"{k} {saved[k]!r} -> {mine[k]!r}" for k in changed), stacklevel=3)
        _check_state(read_trainer_state(path), path / TRAINER_STATE)
        state = load_training_state(path, self.raw_model, None, self.scheduler,
                                    restore_rng=False, load_model_weights=False)
        D.load_full_optimizer_state(self.model, self.optimizer, read_optimizer_state(path))
        self.train_source.load_state_dict(state["data"])
        if self.val_source is not None and state.get("val_data") is not None:
            self.val_source.load_state_dict(state["val_data"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.best_val_loss, self.last_val_loss = state.get("best_val_loss"), \
            state.get("last_val_loss")
        self.last_train_loss = state.get("last_train_loss")
        if self.dist.is_main:  # the saved sum is over ranks: rank 0 carries it
            self._loss_sum.fill_(state.get("loss_sum", 0.0))
        self._loss_count = state.get("loss_count", 0)
        per_rank = state.get("rng_ranks")
        if per_rank and len(per_rank) == self.dist.world_size:
            self._pending_rng = rng.decode(per_rank[self.dist.rank])
        else:
            if self.dist.enabled:
                warnings.warn("checkpoint has no per-rank RNG states for this world size; "
                              "every rank restores rank 0's", stacklevel=2)
            self._pending_rng = rng.decode(state["rng"])
        if self.metrics is not None:  # drop records a crashed run wrote after the checkpoint
            self.metrics.reset([r for r in read_metrics(path / METRICS)
                                if r["step"] <= self.step])
        self._say(f"resumed from {path} at step {self.step}")

    def _say(self, msg: str) -> None:
        if self.dist.is_main and self.config.progress:
            tqdm.write(msg)

    # ---- one step ---------------------------------------------------------------------------
    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, Tensor) else v
                for k, v in batch.items()}

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_step(self) -> None:
        c, world = self.config, self.dist.world_size
        self._phase = "forward"
        batches = [self._to_device(self.train_source.next_batch()) for _ in range(c.grad_accum)]
        weights: list[Any]
        if c.grad_accum == 1 and world == 1:
            # one micro-batch, one process: its weight is n / n = 1 — skip counting targets
            # (a few small device ops and an extra multiply in the autograd graph per step)
            weights = [None]
        else:
            counts = [count_targets(self.raw_model, b) for b in batches]
            if all(n is not None for n in counts):
                n = torch.stack(counts)  # type: ignore[arg-type]
                total = D.all_reduce_sum(n.sum(), self.dist).clamp(min=1)
                weights = list((n.float() * world / total).unbind())
            else:
                weights = [1.0 / c.grad_accum] * c.grad_accum
        step_loss: Tensor | None = None
        tokens = 0
        for i, (b, w) in enumerate(zip(batches, weights, strict=True)):
            sync = nullcontext() if world == 1 else D.grad_sync(self.model, i == c.grad_accum - 1)
            with sync:
                with self._autocast():
                    loss = compute_loss(self.forward_model, self.raw_model, b,
                                        c.label_smoothing)
                    if w is not None:
                        loss = loss * w
                self.scaler.scale(loss).backward()
            step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
            ids = b.get("input_ids")
            tokens += world * (ids.numel() if isinstance(ids, Tensor)
                               else next(v for v in b.values() if isinstance(v, Tensor)).shape[0])
        self._phase = "update"
        if c.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            # the optimizer's parameters: no walk over the module tree every step
            self._grad_norm = clip_grad_norm(
                [p for g in self.optimizer.param_groups for p in g["params"]], c.grad_clip)
        self._lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._loss_sum += step_loss
        self._loss_count += 1
        self.tokens_seen += tokens
        self.step += 1
        self._boundary = self._snapshot()
        self._phase = "idle"

    def _snapshot(self) -> _Snapshot:
        vs = self.val_source
        val = vs.state_dict() if vs is not None and not hasattr(vs, "eval_batches") else None
        return _Snapshot(self.train_source.state_dict(), val, rng.capture_torch())

    # ---- logging, evaluation, checkpoints ---------------------------------------------------
    def _log(self, bar: tqdm) -> None:
        t = self._loss_sum.clone()
        D.all_reduce_sum(t, self.dist)
        loss = t.item() / self.dist.world_size / max(self._loss_count, 1)
        self._loss_sum.zero_()
        self._loss_count = 0
        now = time.perf_counter()
        dt = max(now - self._t_log - self._paused, 1e-9)
        tok_s = (self.tokens_seen - self._tokens_log) / dt
        recent = self._step_times[self._steps_log:]
        gn = self._grad_norm
        if gn is not None and hasattr(gn, "full_tensor"):
            gn = gn.full_tensor()
        rec = {"kind": "train", "step": self.step, "loss": loss, "lr": self._lr,
               "grad_norm": None if gn is None else gn.item(), "tokens_per_s": tok_s,
               "tokens_seen": self.tokens_seen,
               "ms_per_iter": 1000 * statistics.median(recent) if recent else None}
        self._t_log, self._paused, self._tokens_log = now, 0.0, self.tokens_seen
        self._steps_log = len(self._step_times)
        self.last_train_loss = loss
        if self.metrics is not None:
            self.metrics.log(rec)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self._lr:.2e}", tok_s=f"{tok_s:,.0f}")

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean validation loss (per target token) over ``eval_batches`` batches, averaged
        over ranks; None without a validation source. Computed in fp32 whatever the training
        precision, so it equals ``attnkit evaluate`` and compares across precisions."""
        vs = self.val_source
        if vs is None:
            return None
        model = self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) \
            else self.model
        was_training = model.training
        model.eval()
        n_max = self.config.eval_batches
        it = vs.eval_batches(n_max) if hasattr(vs, "eval_batches") \
            else (vs.next_batch() for _ in range(n_max))
        acc = torch.zeros(2, device=self.device)
        for i, b in enumerate(it):
            if i >= n_max:
                break
            b = self._to_device(b)
            loss = compute_loss(model, self.raw_model, b).float()
            n = count_targets(self.raw_model, b)
            n = torch.ones((), device=self.device) if n is None else n.float()
            acc += torch.stack([loss * n, n])
        model.train(was_training)
        D.all_reduce_sum(acc, self.dist)
        total, count = acc.tolist()
        return total / count if count else None

    def _eval_step(self) -> None:
        t0 = time.perf_counter()
        vl = self.evaluate()
        if vl is not None:
            self.last_val_loss = vl
            ppl = math.exp(vl) if vl < 700 else math.inf
            if self.metrics is not None:
                self.metrics.log({"kind": "eval", "step": self.step, "val_loss": vl,
                                  "val_ppl": ppl})
            self._say(f"step {self.step}: val_loss {vl:.4f}  val_ppl {ppl:.2f}")
            if self.best_val_loss is None or vl < self.best_val_loss:
                self.best_val_loss = vl
                self.save("best")
        self._paused += time.perf_counter() - t0

    def save(self, name: str = "last") -> Path:
        """Write ``out_dir/name`` with the state at the last step boundary (collective when
        distributed: every rank must call it)."""
        t0 = time.perf_counter()
        snap = self._boundary
        enc = rng.encode(rng.capture(snap.torch_rng))
        ts: dict[str, Any] = {
            "step": self.step, "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss, "last_val_loss": self.last_val_loss,
            "last_train_loss": self.last_train_loss,
            "loss_sum": D.all_reduce_sum(self._loss_sum.clone(), self.dist).item(),
            "loss_count": self._loss_count, "rng": enc, "data": snap.data,
            "val_data": snap.val_data, "world_size": self.dist.world_size,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }
        if self.dist.enabled:
            ts["rng_ranks"] = D.all_gather_object(enc, self.dist)
        model_state = D.full_model_state(self.model)
        optim_state = D.full_optimizer_state(self.model, self.optimizer)
        path = self.out_dir / name
        if self.dist.is_main:
            save_checkpoint(path, self.raw_model, None, self.scheduler, ts, self.config,
                            self.tokenizer, model_state=model_state, optimizer_state=optim_state,
                            metrics_file=self.out_dir / METRICS)
        D.barrier(self.dist)
        self._saved[name] = self.step
        self._paused += time.perf_counter() - t0
        return path

    # ---- the loop ---------------------------------------------------------------------------
    def train(self, max_steps: int | None = None) -> TrainSummary:
        """Train to ``config.steps`` (or stop after step ``max_steps``, e.g. to split a run
        across jobs — the schedule still spans ``config.steps``); return a summary."""
        c = self.config
        stop_at = c.steps if max_steps is None else min(max_steps, c.steps)
        if self._pending_rng is not None:
            rng.restore(self._pending_rng)
            self._pending_rng = None
        elif not self._rng_ready:
            rng.seed_everything(c.seed + self.dist.rank)
        self._rng_ready = True
        self.raw_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self._boundary = self._snapshot()
        self._phase = "idle"
        self._step_times: list[float] = []
        self._t_log, self._paused, self._tokens_log, self._steps_log = \
            time.perf_counter(), 0.0, self.tokens_seen, 0
        t_start, tokens_start = time.perf_counter(), self.tokens_seen
        bar = tqdm(total=c.steps, initial=self.step, desc="train", unit="step",
                   dynamic_ncols=True, disable=not (c.progress and self.dist.is_main))
        interrupted = False
        with _StopRequest() as stop:
            try:
                while self.step < stop_at:
                    t0 = time.perf_counter()
                    self._train_step()
                    self._step_times.append(time.perf_counter() - t0)
                    bar.update(1)
                    log_now = self.step % c.log_every == 0 or self.step == c.steps
                    if log_now:
                        self._log(bar)
                    if self.val_source is not None and (
                            (c.eval_every and self.step % c.eval_every == 0)
                            or self.step == c.steps):
                        self._eval_step()
                    if c.save_every and self.step % c.save_every == 0:
                        self.save("last")
                    if self._stop_requested(stop, log_now):
                        interrupted = True
                        break
            except KeyboardInterrupt:
                if stop.hard or self._phase == "update" or self.dist.enabled:
                    raise
                interrupted = True
                self.optimizer.zero_grad(set_to_none=True)  # drop the partial step
            finally:
                bar.close()
            if interrupted:
                self._say(f"interrupted: saving {self.out_dir / 'last'} at step {self.step}")
            if self._saved.get("last") != self.step:
                self.save("last")
        if self.metrics is not None:
            self.metrics.flush()
            self._plot()
        train_time = sum(self._step_times)
        vl = self.last_val_loss
        return TrainSummary(
            step=self.step, final_loss=self.last_train_loss, val_loss=vl,
            val_ppl=None if vl is None else (math.exp(vl) if vl < 700 else math.inf),
            best_val_loss=self.best_val_loss, tokens_seen=self.tokens_seen,
            tokens_per_s=(self.tokens_seen - tokens_start) / train_time if train_time else 0.0,
            ms_per_iter=1000 * statistics.median(self._step_times) if self._step_times else 0.0,
            wall_s=time.perf_counter() - t_start, interrupted=interrupted,
            out_dir=str(self.out_dir))

    def _stop_requested(self, stop: _StopRequest, log_now: bool) -> bool:
        if not self.dist.enabled:
            return stop.requested
        if not log_now:  # ranks agree at log steps only (they synchronise there anyway)
            return False
        flag = torch.tensor(float(stop.requested), device=self.device)
        return D.all_reduce_sum(flag, self.dist).item() > 0

    def _plot(self) -> None:
        try:
            plot_loss_curve(read_metrics(self.out_dir / METRICS), self.out_dir / "loss_curve.png",
                            title=f"{self.out_dir.name}: loss")
        except ImportError:
            warnings.warn("matplotlib is not installed: no loss_curve.png", stacklevel=2)

    def close(self) -> None:
        """Close TensorBoard; tear down the process group if distributed."""
        if self.metrics is not None:
            self.metrics.close()
        if self.dist.enabled:
            D.cleanup()
