"""One ``attnkit compare`` run from start to finish: resolve its configuration, prepare the
data and the model, train through the :class:`~attnkit.train.Trainer`, measure, and write
``result.json`` — or skip it when it is already done, or resume it exactly when it was
interrupted.

A run directory is an ``attnkit train`` output directory (``run.json``, ``metrics.jsonl``,
``loss_curve.png``, ``last/`` and ``best/`` checkpoints) plus ``result.json``, written last
(atomically): a directory with ``result.json`` is finished, one with ``last/`` but no
``result.json`` was interrupted and resumes from ``last/`` (the trainer's exact resume).
Either way its ``run.json`` must match the settings the command resolves now.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnkit.commands.common import RUN_FILE, CliError, fail, human, write_json
from attnkit.commands.compare_config import CompareSettings, PlannedRun, Point
from attnkit.commands.train_config import ResolvedRun, resolve_run
from attnkit.commands.train_data import Prepared, model_config, prepare

__all__ = ["RESULT_FILE", "RunContext", "RunState", "resolve_planned", "run_state",
           "check_saved", "prepare_planned", "calibrate_step_time", "run_info",
           "train_and_measure", "measure", "read_result", "parameter_count", "decode_plan"]

RESULT_FILE = "result.json"
_TOKENIZER_KEY = "tokenizer_settings.json"  # beside data/tokenizer: what it was built from
# settings that describe an invocation, not the run (ignored when checking a saved run)
_RUNTIME = ("resume", "out_dir", "progress", "device", "distributed", "tensorboard")
# step-derived settings: a time budget fixes the step count only once it has been measured
_STEP_DERIVED = ("steps", "warmup_steps", "eval_every", "save_every")


@dataclass
class RunContext:
    """What every run of one comparison shares."""

    settings: CompareSettings
    file_data: dict[str, Any]  # the config file's run sections
    flags: dict[str, Any]  # attnkit train flags (steps, seed, device, ...)
    recipe: dict[str, Any]  # the task's base run (below the file)
    data_dir: Path  # the shared tokenizer and token files (corpus)
    fresh: bool = False
    tokenizer: Any | None = None  # the corpus tokenizer, once built


@dataclass
class _Vocabulary:
    """What :func:`model_config` needs of a tokenizer, for a synthetic task's ids."""

    vocab_size: int
    kind: str = "synthetic"


def resolve_planned(ctx: RunContext, run: PlannedRun, steps: int | None = None
                    ) -> ResolvedRun:
    """The run's configuration, exactly as ``attnkit train --out DIR --set ...`` resolves it
    (``steps``: a time budget's measured step count)."""
    flags = {**ctx.flags, "out": str(run.out_dir)}
    if steps is not None:
        flags["steps"] = steps
    try:
        return resolve_run(ctx.file_data, run.sets, flags, defaults=ctx.recipe)
    except (CliError, ValueError, TypeError) as e:
        fail(f"variant {run.variant.name!r} ({run.point.describe()}): {e}")


# ---- state on disk ----------------------------------------------------------------------------


@dataclass
class RunState:
    """``done`` (result.json), ``interrupted`` (a checkpoint to resume) or ``new``."""

    status: str
    steps: int | None = None  # the saved run's step count (a time budget's measurement)


def _comparable(info: dict[str, Any]) -> dict[str, Any]:
    """The settings of a ``run.json`` (not what was built from them: the model config
    follows from them and the tokenizer)."""
    out = {k: v for k, v in info.items()
           if k not in ("model_config", "architecture", "tokenizer_kind")}
    out["train"] = {k: v for k, v in (info.get("train") or {}).items() if k not in _RUNTIME}
    return out


def _differences(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
                             and list(a) == list(b)):
            out.append(f"{prefix}{k} ({a!r} -> {b!r})")
    return out


def run_state(ctx: RunContext, run: PlannedRun) -> RunState:
    """What is on disk for ``run`` (``--fresh`` clears it)."""
    d = run.out_dir
    if ctx.fresh and d.exists():
        shutil.rmtree(d)
    has_result, has_ckpt = (d / RESULT_FILE).is_file(), (d / "last").is_dir()
    if not (has_result or has_ckpt):
        if d.exists():  # a run that never reached its first checkpoint: start over
            shutil.rmtree(d)
        return RunState("new")
    try:
        saved = json.loads((d / RUN_FILE).read_text())
    except (OSError, ValueError):
        fail(f"{d} holds a checkpoint but no readable {RUN_FILE}; remove it or pass --fresh")
    return RunState("done" if has_result else "interrupted",
                    (saved.get("train") or {}).get("steps"))


def check_saved(ctx: RunContext, run: PlannedRun, res: ResolvedRun) -> None:
    """The saved ``run.json`` of a finished or interrupted run must describe the run the
    command asks for now (``res``, resolved afresh)."""
    saved = json.loads((run.out_dir / RUN_FILE).read_text())
    a, b = _comparable(saved), _comparable(run_info(ctx, run, res))
    if ctx.settings.time_budget:  # the step count came from timing, not from the settings
        for key in _STEP_DERIVED:
            a["train"].pop(key, None)
            b["train"].pop(key, None)
    diff = _differences(a, b)
    if diff:
        fail(f"{run.out_dir} was trained with other settings: {'; '.join(diff[:6])}"
             f"{' ...' if len(diff) > 6 else ''}; rerun with the same settings, pass --fresh "
             "to retrain, or use another --out")


def read_result(run: PlannedRun) -> dict[str, Any] | None:
    f = run.out_dir / RESULT_FILE
    return json.loads(f.read_text()) if f.is_file() else None


# ---- data and model ---------------------------------------------------------------------------


def _task_sources(settings: CompareSettings, point: Point, tc: Any) -> tuple[Any, Any]:
    from attnkit.data.synthetic import TASKS

    cls = TASKS[settings.task]
    kw: dict[str, Any] = {"seq_len": point.seq_len,
                          "vocab_size": settings.task_value("vocab_size")}
    if settings.task in ("mqar", "retrieval"):
        kw["kv_pairs"] = point.kv_pairs
    if settings.task == "mqar":
        kw.update(power_a=settings.power_a, random_fill=settings.random_fill)
    if settings.task in ("copy", "selective_copy"):
        kw["copy_len"] = settings.copy_len
    train = cls(settings.num_train, tc.batch_size, tc.seed, split="train", **kw)
    val = cls(settings.num_val, tc.batch_size, tc.seed, split="val", shuffle=False, **kw)
    return train, val


def prepare_planned(ctx: RunContext, run: PlannedRun, res: ResolvedRun) -> Prepared:
    """Data sources and a freshly initialised model (seeded by ``train.seed``)."""
    from attnkit.train import distributed as D

    s = ctx.settings
    if not s.synthetic:
        key = {"data": dataclasses.asdict(res.run.data),
               "tokenizer": dataclasses.asdict(res.run.tokenizer),
               "objective": res.run.objective, "model_preset": res.run.model_preset}
        built = False
        if ctx.tokenizer is None and not res.resume:  # a resumed run has its checkpoint's
            ctx.tokenizer = _saved_tokenizer(ctx.data_dir, key)
            built = ctx.tokenizer is None
        prep = prepare(res, D.init_distributed("none", res.train.device),
                       data_dir=ctx.data_dir, tokenizer=ctx.tokenizer)
        if built:  # prepare trained it into data_dir/tokenizer
            write_json(ctx.data_dir / _TOKENIZER_KEY, key)
        ctx.tokenizer = prep.tokenizer
        if prep.val_source is None:
            fail("attnkit compare needs validation data: set data.val_fraction > 0 or pass "
                 "--val-data")
        return prep
    from attnkit.models.registry import build_model
    from attnkit.train import rng

    if res.run.objective != "causal":
        fail(f"the {s.task} task trains causal LMs; objective {res.run.objective!r} is for "
             "text corpora (--task corpus)")
    train, val = _task_sources(s, run.point, res.train)
    cfg = model_config(res.run, _Vocabulary(train.vocab_size))
    if cfg.max_seq_len < run.point.seq_len:
        fail(f"model.max_seq_len={cfg.max_seq_len} is shorter than the task's seq_len "
             f"{run.point.seq_len}")
    rng.seed_everything(res.train.seed)
    model = build_model(cfg, "CausalLM")
    describe = [f"data: {train.describe()}; {human(train.num_examples)} training examples, "
                f"{human(val.num_examples)} validation examples",
                f"model: {res.run.model_preset or 'custom'} (CausalLM, "
                f"{human(parameter_count(model))} parameters)"]
    return Prepared(None, model, train, val, describe)


def _saved_tokenizer(data_dir: Path, key: dict[str, Any]) -> Any | None:
    """The comparison's tokenizer from an earlier invocation, if it was built from the same
    data and settings (every run of a comparison uses one tokenizer)."""
    from attnkit.data import load_tokenizer

    try:
        saved = json.loads((data_dir / _TOKENIZER_KEY).read_text())
    except (OSError, ValueError):
        return None
    if saved != json.loads(json.dumps(key)) or not (data_dir / "tokenizer").is_dir():
        return None
    return load_tokenizer(data_dir / "tokenizer")


def parameter_count(model: Any) -> int:
    """Distinct parameters (a tied head counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def decode_plan(settings: CompareSettings, prep: Prepared) -> tuple[Any, int] | None:
    """``(prompt (B, P), new tokens)`` of the decoding measurement, or None (an encoder, or
    ``decode_tokens = 0``). Causal: the first ``P = L/4`` tokens of validation windows,
    then the rest of the window (``L - P`` tokens); seq2seq: the sources, 32 tokens."""
    cfg = prep.model.config
    family = getattr(cfg, "family", None)
    if family not in ("causal_lm", "seq2seq") or settings.decode_tokens == 0:
        return None
    batch = next(iter(prep.val_source.eval_batches(1)))
    ids = batch["input_ids"][:settings.decode_batch]
    if family == "seq2seq":
        return ids, settings.decode_tokens or 32
    L = ids.shape[1]
    P = max(1, L // 4)
    n = settings.decode_tokens or max(2, L - P)
    if cfg.position == "learned" and P + n - 1 > cfg.max_seq_len:
        fail(f"decode_tokens={n} after a {P}-token prompt needs {P + n - 1} positions; the "
             f"model's learned positions end at max_seq_len={cfg.max_seq_len}")
    return ids[:, :P], n


# ---- training ---------------------------------------------------------------------------------


def calibrate_step_time(prep: Prepared, res: ResolvedRun, steps: int) -> float:
    """Seconds per training step: the trainer's median step time over ``steps + 2`` steps
    (the median discounts the slow first steps) of a copy of the model, in a scratch
    directory; the data source is put back where it was."""
    from attnkit.train import Trainer

    state = prep.train_source.state_dict()
    twin = copy.deepcopy(prep.model)
    res.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".calibrate-", dir=res.out_dir) as tmp:
        tc = dataclasses.replace(res.train, steps=steps + 2, warmup_steps=0, eval_every=0,
                                 save_every=0, progress=False, tensorboard=False,
                                 resume=False, out_dir=tmp)
        trainer = Trainer(twin, prep.train_source, None, tc)
        try:
            summary = trainer.train()
        finally:
            trainer.close()
    prep.train_source.load_state_dict(state)
    return summary.ms_per_iter / 1000


def run_info(ctx: RunContext, run: PlannedRun, res: ResolvedRun,
             prep: Prepared | None = None) -> dict[str, Any]:
    """What ``run.json`` records: ``attnkit train``'s fields (the settings, and with
    ``prep`` the model built from them) plus the task, the sweep point and the variant."""
    info: dict[str, Any] = {**res.run.to_dict(),
                            "variant": {"name": run.variant.name, "set": list(run.variant.sets)},
                            "point": run.point.to_dict(),
                            "time_budget": ctx.settings.time_budget}
    if prep is not None:
        info.update({"model_config": prep.model.config.to_dict(),
                     "architecture": type(prep.model).__name__,
                     "tokenizer_kind": getattr(prep.tokenizer, "kind", None)})
    if ctx.settings.synthetic:
        keys = ("task", "vocab_size", "copy_len", "power_a", "random_fill", "num_train",
                "num_val")
        info["task"] = {k: ctx.settings.task_value(k) if k != "task" else ctx.settings.task
                        for k in keys}
    for key in ("path", "val_path"):
        if info["data"][key] is not None:
            info["data"][key] = str(Path(info["data"][key]).expanduser().resolve())
    return info


def train_and_measure(ctx: RunContext, run: PlannedRun, res: ResolvedRun, prep: Prepared,
                      info: dict[str, Any]) -> dict[str, Any] | None:
    """Train (or resume) the run, then measure it and write ``result.json``; None if the
    training was interrupted (Ctrl-C: the trainer saved ``last/``)."""
    from attnkit.train import Trainer

    plan = decode_plan(ctx.settings, prep)  # checked before training, not after it
    if not res.resume:
        (run.out_dir / "metrics.jsonl").unlink(missing_ok=True)
    write_json(run.out_dir / RUN_FILE, info)
    trainer = Trainer(prep.model, prep.train_source, prep.val_source, res.train,
                      prep.tokenizer)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    if summary.interrupted:
        return None
    result = measure(ctx, run, res, prep, trainer.raw_model, plan)
    result["final_train_loss"] = summary.final_loss
    write_json(run.out_dir / RESULT_FILE, result)
    return result


def measure(ctx: RunContext, run: PlannedRun, res: ResolvedRun, prep: Prepared, model: Any,
            plan: tuple[Any, int] | None) -> dict[str, Any]:
    """Quality on the whole validation set, throughput, peak memory, parameters."""
    from attnkit.commands.compare_measure import (
        decode_peak,
        decode_speed,
        task_metrics,
        train_step_peak,
        train_time_axis,
        train_tokens_per_s,
    )
    from attnkit.commands.evaluate import lm_loss
    from attnkit.train.metrics import read_metrics

    model.eval()
    if ctx.settings.synthetic:
        quality = task_metrics(model, prep.val_source)
    else:
        m = lm_loss(model, prep.val_source)
        quality = {"val_loss": m["loss"], "val_ppl": m["perplexity"], "tokens": m["tokens"]}
    records = read_metrics(run.out_dir / "metrics.jsonl")
    axis = train_time_axis(records)
    decode = None if plan is None else decode_speed(model, *plan)
    batch = prep.train_source.next_batch()
    return {
        "variant": run.variant.name, "set": list(run.variant.sets),
        "point": run.point.to_dict(), "parameters": parameter_count(model),
        "steps": res.train.steps, "batch_size": res.train.batch_size,
        "tokens_per_step": int(batch["input_ids"].numel()),
        "train_s": axis[max(axis)] if axis else None,
        "train_tokens_per_s": train_tokens_per_s(records),
        "decode_tokens_per_s": decode,
        "decode": None if plan is None else {"batch": int(plan[0].shape[0]),
                                             "prompt": int(plan[0].shape[1]),
                                             "new_tokens": plan[1]},
        "train_peak_bytes": train_step_peak(model, batch, res.train.lr),
        "decode_peak_bytes": None if plan is None else decode_peak(model, *plan),
        "quality": quality,
        "device": str(next(model.parameters()).device),
    }
