"""What ``attnkit compare`` trains, as data: the task, the sweep points, the budget and the
variants, and their resolution into one ``attnkit train`` run configuration per (point,
variant) through :func:`~attnkit.commands.train_config.resolve_run` — the same typed path
as ``attnkit train --set ...``, not a second config system.

A *variant* is a name and a list of ``--set`` overrides of the run configuration
(``SECTION.KEY=VALUE``, applied after everything else). It may change the model
(``model.*``, ``model_preset``) and the optimisation (``train.lr``, ...), never what the
comparison holds equal: the data, tokenizer, seed and budget.

Layers of a run, later wins: the task's recipe (:data:`TASK_RECIPES`), the config file's
run sections, the direct flags, ``--set``, the sweep point (``data.seq_len`` /
``model.max_seq_len``), the variant's overrides.

Config file: the sections of an ``attnkit train`` file (the base run), plus::

    [compare]                       # CompareSettings fields (flags override them)
    task = "mqar"
    kv_pairs = [1, 2, 4]
    time_budget = 60.0

    [variants.dense]                # one table per variant: `set` and/or sections whose
    set = []                        # entries become `--set` items (nested tables are
    [variants.window.model]         # dotted keys: model.attention.kind = ...)
    sliding_window = 16
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnkit.commands.common import CliError, fail
from attnkit.commands.config_files import coerce_fields, load_config_file, parse_set

__all__ = ["DEFAULT_VARIANTS", "TASK_NAMES", "TASK_RECIPES", "CompareSettings", "Variant",
           "Point", "PlannedRun", "parse_variants", "file_variants", "load_compare_file",
           "sweep_points", "plan_runs", "check_variant_sets"]

#: The variants ``attnkit compare`` trains when none are given (``--variant`` / a config
#: file's ``[variants]`` replace them): name -> ``--set`` overrides of the base run.
DEFAULT_VARIANTS: dict[str, tuple[str, ...]] = {
    "dense": (),
    "sliding_window": ("model.sliding_window=8",),
}

TASK_NAMES = ("corpus", "mqar", "copy", "selective_copy", "retrieval")

# Zoology's smallest attention model (Arora et al. 2023, Fig. 2: 2 layers, width 64, one
# head, learned positions; Zoology has no MLP, here a narrow one), AdamW at 1e-3 without
# weight decay. On MQAR with 8 pairs, length 64: 88% accuracy after 2000 steps with d_ff=64,
# 69% with d_ff=256; at lr 3e-3, or with weight decay 0.1, the recall circuit had not formed
# after 1500 steps. How soon it forms varies with the seed and grows with the length: the
# MQAR default (length 16, 3000 steps: 96-100% for dense attention at 1, 2 and 4 pairs) is
# sized for a CPU; at Zoology's lengths (64-256, vocabulary 8192) it needs many more steps.
_TINY_GPT = {"model_preset": "gpt2-tiny",
             "model": {"d_model": 64, "n_layers": 2, "n_heads": 1, "d_ff": 64, "dropout": 0.0}}
_TINY_TRAIN = {"lr": 1e-3, "weight_decay": 0.0}

#: Per task: the base run (below the config file) and the task's own defaults, sized so the
#: default run of each task ends within ~10 minutes on 2 CPU cores.
TASK_RECIPES: dict[str, dict[str, Any]] = {
    "corpus": {"run": {"train": {"steps": 2000}}, "task": {}},  # attnkit train's default
    "mqar": {"run": {**_TINY_GPT, "train": {**_TINY_TRAIN, "steps": 3000, "batch_size": 64}},
             "task": {"seq_lens": (16,), "kv_pairs": (1, 2, 4), "vocab_size": 256}},
    "copy": {"run": {**_TINY_GPT, "train": {**_TINY_TRAIN, "steps": 500, "batch_size": 32}},
             "task": {"seq_lens": (33,), "vocab_size": 32}},
    "selective_copy": {"run": {**_TINY_GPT, "train": {**_TINY_TRAIN, "steps": 3000,
                                                      "batch_size": 32}},
                       "task": {"seq_lens": (32,), "vocab_size": 32}},
    "retrieval": {"run": {**_TINY_GPT, "train": {**_TINY_TRAIN, "steps": 1000,
                                                 "batch_size": 32}},
                  "task": {"seq_lens": (64, 128, 256), "kv_pairs": (1,), "vocab_size": 64}},
}

# what a variant may not change: the comparison holds these equal
_HELD_EQUAL_TRAIN = ("steps", "batch_size", "grad_accum", "seed", "eval_every", "eval_batches",
                     "save_every", "log_every", "out_dir", "resume", "device", "distributed",
                     "progress", "tensorboard")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


@dataclass
class CompareSettings:
    """The comparison itself (the run configuration is ``attnkit train``'s).

    ``task``: ``corpus`` (the text of ``data.path``, default the built-in corpus; validation
    loss / perplexity) or a synthetic task (answer accuracy). ``seq_lens`` / ``kv_pairs``:
    the sweep (one run per combination and variant; None = the task's default).
    ``vocab_size``, ``copy_len``, ``power_a``, ``random_fill``: the synthetic task's
    parameters (see :mod:`attnkit.data.synthetic`); ``num_train`` / ``num_val`` its
    training set and validation set sizes. Budget: ``time_budget`` seconds of training per
    run if set (turned into a step count by timing ``calibration_steps`` steps of each
    variant), else the run's ``train.steps``. ``param_tolerance``: the largest relative
    difference of a variant's parameter count from the first variant's. ``decode_tokens`` /
    ``decode_batch``: the greedy decoding measured after training (0 tokens = none;
    default: the rest of the context after a quarter-context prompt).
    """

    task: str = "corpus"
    seq_lens: tuple[int, ...] | None = None
    kv_pairs: tuple[int, ...] | None = None
    vocab_size: int | None = None
    copy_len: int | None = None
    power_a: float = 0.01
    random_fill: bool = False
    num_train: int = 100_000
    num_val: int = 1000
    time_budget: float | None = None
    calibration_steps: int = 8
    param_tolerance: float = 0.01
    decode_tokens: int | None = None
    decode_batch: int = 1

    def __post_init__(self) -> None:
        if self.task not in TASK_NAMES:
            raise ValueError(f"unknown task {self.task!r}; valid: {', '.join(TASK_NAMES)}")
        for name in ("seq_lens", "kv_pairs"):
            v = getattr(self, name)
            if v is not None:
                v = tuple(v)
                if not v or not all(isinstance(x, int) and x >= 1 for x in v):
                    raise ValueError(f"{name} must be positive integers, got {list(v)}")
                if len(set(v)) != len(v):
                    raise ValueError(f"{name} has repeated values: {list(v)}")
                setattr(self, name, v)
        if self.task == "corpus":
            for name in ("kv_pairs", "vocab_size", "copy_len"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is a synthetic-task setting; the corpus task "
                                     "takes its vocabulary from the tokenizer")
        if self.kv_pairs is not None and self.task not in ("mqar", "retrieval"):
            raise ValueError(f"kv_pairs applies to mqar and retrieval, not {self.task}")
        if self.copy_len is not None and self.task not in ("copy", "selective_copy"):
            raise ValueError(f"copy_len applies to copy and selective_copy, not {self.task}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be > 0 seconds, got {self.time_budget}")
        if self.calibration_steps < 1:
            raise ValueError(f"calibration_steps must be >= 1, got {self.calibration_steps}")
        if not self.param_tolerance >= 0:
            raise ValueError(f"param_tolerance must be >= 0, got {self.param_tolerance}")
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError("num_train and num_val must be >= 1")
        if self.decode_tokens is not None and self.decode_tokens < 0:
            raise ValueError(f"decode_tokens must be >= 0, got {self.decode_tokens}")
        if self.decode_batch < 1:
            raise ValueError(f"decode_batch must be >= 1, got {self.decode_batch}")

    @property
    def synthetic(self) -> bool:
        return self.task != "corpus"

    def task_value(self, name: str) -> Any:
        """A task setting, or the recipe's default when unset."""
        v = getattr(self, name)
        return TASK_RECIPES[self.task]["task"].get(name) if v is None else v

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("seq_lens", "kv_pairs"):
            d[k] = None if d[k] is None else list(d[k])
        return d


@dataclass(frozen=True)
class Variant:
    """A name and its ``--set`` overrides of the base run."""

    name: str
    sets: tuple[str, ...] = ()

    def label(self) -> str:
        return " ".join(self.sets) if self.sets else "(base run)"


@dataclass(frozen=True)
class Point:
    """One sweep point: the sequence length (None: the corpus run's own) and, for mqar /
    retrieval, the number of key-value pairs."""

    seq_len: int | None
    kv_pairs: int | None = None

    @property
    def key(self) -> str:
        """Directory name: ``L64``, ``L64-kv8``, ``default``."""
        parts = ([] if self.seq_len is None else [f"L{self.seq_len}"]) + (
            [] if self.kv_pairs is None else [f"kv{self.kv_pairs}"])
        return "-".join(parts) or "default"

    def describe(self) -> str:
        parts = ([] if self.seq_len is None else [f"seq_len {self.seq_len}"]) + (
            [] if self.kv_pairs is None else [f"kv_pairs {self.kv_pairs}"])
        return ", ".join(parts) or "default length"

    def to_dict(self) -> dict[str, Any]:
        return {"seq_len": self.seq_len, "kv_pairs": self.kv_pairs}


@dataclass
class PlannedRun:
    """One (point, variant) run: its directory and the ``--set`` items that define it."""

    point: Point
    variant: Variant
    out_dir: Path
    sets: list[str] = field(default_factory=list)


# ---- variants -------------------------------------------------------------------------------


def _check_name(name: str, where: str) -> str:
    if not _NAME.match(name):
        fail(f"{where}: variant name {name!r} must be 1-64 letters, digits, '_', '-', '.' or "
             "'+' (it names the run's directory)")
    return name


def check_variant_sets(name: str, sets: tuple[str, ...]) -> None:
    """A variant changes the model or the optimisation, never what is held equal."""
    for item in sets:
        try:
            section, key, _ = parse_set(item)
        except CliError as e:
            fail(f"variant {name!r}: {e}")
        if section in ("data", "tokenizer", "objective"):
            fail(f"variant {name!r} sets {item!r}: every variant trains on the same data and "
                 "tokenizer; set it for all runs with --set, not per variant")
        if section == "train" and key in _HELD_EQUAL_TRAIN:
            fail(f"variant {name!r} sets {item!r}: train.{key} is held equal across variants "
                 "(the budget, seed and evaluation are the comparison's); set it for all runs "
                 "with --set or --steps / --time-budget")


def parse_variants(items: list[str]) -> dict[str, tuple[str, ...]]:
    """``--variant`` items: ``NAME=SECTION.KEY=VALUE`` (repeat a name to add overrides),
    ``NAME=`` (the base run as it is) or a bare built-in name (:data:`DEFAULT_VARIANTS`)."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        name = _check_name(name.strip(), f"--variant {item!r}")
        if not sep:
            if name not in DEFAULT_VARIANTS:
                fail(f"--variant {item!r}: unknown built-in variant {name!r} (built-in: "
                     f"{', '.join(DEFAULT_VARIANTS)}); define one as NAME=SECTION.KEY=VALUE, "
                     f"e.g. --variant window=model.sliding_window=16")
            out.setdefault(name, []).extend(DEFAULT_VARIANTS[name])
            continue
        out.setdefault(name, [])
        if rest.strip():
            out[name].append(rest.strip())
    variants = {k: tuple(v) for k, v in out.items()}
    for k, v in variants.items():
        check_variant_sets(k, v)
    return variants


def _flatten(prefix: str, table: Mapping[str, Any]) -> list[str]:
    items = []
    for k, v in table.items():
        if isinstance(v, Mapping):
            items += _flatten(f"{prefix}.{k}", v)
        else:
            items.append(f"{prefix}.{k}={v if isinstance(v, str) else json.dumps(v)}")
    return items


def file_variants(table: Any, path: str) -> dict[str, tuple[str, ...]]:
    """A config file's ``[variants.NAME]`` tables: ``set = [...]`` ``--set`` items, and/or
    ``model_preset`` / ``[variants.NAME.model]`` / ``[variants.NAME.train]`` entries."""
    if not isinstance(table, Mapping) or not table:
        fail(f"config file {path}: [variants] must be a table of variant tables, e.g. "
             "[variants.dense] set = []")
    out = {}
    for name, spec in table.items():
        _check_name(str(name), f"config file {path}")
        if isinstance(spec, list):  # variants.NAME = ["model.x=1", ...]
            spec = {"set": spec}
        if not isinstance(spec, Mapping):
            fail(f"config file {path}: [variants.{name}] must be a table, got {spec!r}")
        unknown = sorted(set(spec) - {"set", "model", "train", "model_preset"})
        if unknown:
            fail(f"config file {path}: [variants.{name}] has unknown keys {unknown}; valid: "
                 "set, model_preset, model, train")
        sets = spec.get("set", [])
        if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
            fail(f"config file {path}: variants.{name}.set must be a list of "
                 f"'SECTION.KEY=VALUE' strings, got {sets!r}")
        items = list(sets)
        if "model_preset" in spec:
            items.append(f"model_preset={spec['model_preset']}")
        for section in ("model", "train"):
            if section in spec:
                if not isinstance(spec[section], Mapping):
                    fail(f"config file {path}: [variants.{name}.{section}] must be a table")
                items += _flatten(section, spec[section])
        out[str(name)] = tuple(items)
    for k, v in out.items():
        check_variant_sets(k, v)
    return out


def load_compare_file(path: str | None) -> tuple[dict[str, Any], dict[str, Any],
                                                  dict[str, tuple[str, ...]] | None]:
    """``(run sections, [compare] settings, variants or None)`` of a config file."""
    if not path:
        return {}, {}, None
    data = load_config_file(path, extra_keys=("compare", "variants"))
    settings = data.pop("compare", {})
    if not isinstance(settings, Mapping):
        fail(f"config file {path}: [compare] must be a table, got {settings!r}")
    settings = coerce_fields(CompareSettings, dict(settings), "compare")
    variants = file_variants(data.pop("variants"), path) if "variants" in data else None
    return data, settings, variants


# ---- sweep ----------------------------------------------------------------------------------


def sweep_points(settings: CompareSettings) -> list[Point]:
    """Every combination of the sequence lengths and key-value pair counts."""
    seq_lens = settings.task_value("seq_lens")
    kv = settings.task_value("kv_pairs") if settings.task in ("mqar", "retrieval") else None
    return [Point(L, d) for L, d in itertools.product(seq_lens or [None], kv or [None])]


def point_sets(settings: CompareSettings, point: Point, objective: str) -> list[str]:
    """The ``--set`` items a sweep point adds: the window length and a context that holds
    it (synthetic tasks: the model's context is the task's length)."""
    if point.seq_len is None:
        return []
    L = point.seq_len
    if settings.synthetic:
        return [f"model.max_seq_len={L}"]
    if objective == "causal":
        return [f"data.seq_len={L}", f"model.max_seq_len={L}"]
    return [f"data.seq_len={L}"]


def plan_runs(settings: CompareSettings, variants: Mapping[str, tuple[str, ...]],
              base_sets: list[str], out_dir: Path, objective: str) -> list[PlannedRun]:
    """One run per (point, variant), in that order: ``<out>/runs/<point>/<variant>``."""
    runs = []
    for point in sweep_points(settings):
        for name, sets in variants.items():
            runs.append(PlannedRun(point, Variant(name, tuple(sets)),
                                   out_dir / "runs" / point.key / name,
                                   [*base_sets, *point_sets(settings, point, objective),
                                    *sets]))
    return runs
