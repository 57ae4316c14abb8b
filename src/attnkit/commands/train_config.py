"""Run configuration of ``attnkit train``: defaults, presets and objectives, and
:func:`resolve_run`, which merges (in order) the defaults or a resumed run's ``run.json``, a
config file, the direct flags and ``--set`` overrides into one :class:`ResolvedRun`."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnkit.commands.common import (
    RUN_FILE,
    fail,
    output_dir,
)
from attnkit.commands.config_files import (
    OBJECTIVES,
    DataConfig,
    RunConfig,
    TokenizerConfig,
    coerce_fields,
    load_config_file,
    parse_set,
)

__all__ = ["DEFAULT_PRESETS", "ARCHITECTURES", "DEFAULT_STEPS", "TRAIN_DEFAULTS",
           "ResolvedRun", "resolve_run", "model_config_class", "default_lr", "required_fields"]

DEFAULT_PRESETS = {"causal": "char-gpt", "mlm": "bert-tiny", "seq2seq": "t5-tiny"}
ARCHITECTURES = {"causal": "CausalLM", "mlm": "BertForMaskedLM", "seq2seq": "Seq2SeqLM"}
#: Steps of the default run: fits in ~5 minutes on 2 CPU cores, corpus build included.
DEFAULT_STEPS = 2000
#: nanoGPT's shakespeare-char recipe at the char-gpt preset's size (batch 12 x context 64);
#: the learning rate follows the model width (:func:`default_lr`), min_lr = lr / 10.
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": DEFAULT_STEPS, "batch_size": 12, "betas": (0.9, 0.99), "weight_decay": 0.1,
    "grad_clip": 1.0, "eval_batches": 20, "log_every": 10,
}
# Not carried over from a saved run.json: they describe this invocation.
_RUNTIME_KEYS = ("resume", "out_dir", "distributed", "device", "progress")

# ---- configuration --------------------------------------------------------------------------


def model_config_class(objective: str) -> type:
    from attnkit.models import BertConfig, CausalLMConfig, Seq2SeqConfig

    return {"causal": CausalLMConfig, "mlm": BertConfig, "seq2seq": Seq2SeqConfig}[objective]


def default_lr(d_model: int) -> float:
    """Peak learning rate by width (narrow models take larger steps; cf. GPT-3's table):
    3e-3 up to d_model 128 (char-gpt, 2000 steps: validation loss 1.52 vs 1.77 at 1e-3),
    1e-3 up to 512, 6e-4 above."""
    return 3e-3 if d_model <= 128 else 1e-3 if d_model <= 512 else 6e-4


def _preset_objective(name: str) -> str | None:
    for obj in OBJECTIVES:
        if name in model_config_class(obj).presets:
            return obj
    return None


def _all_presets() -> str:
    return "; ".join(f"{obj}: {', '.join(sorted(model_config_class(obj).presets))}"
                     for obj in OBJECTIVES)


@dataclass
class ResolvedRun:
    run: RunConfig
    train: Any  # TrainConfig
    out_dir: Path
    resume: bool


def required_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def resolve_run(config_file: str | Path | Mapping[str, Any] | None = None,
                sets: list[str] | None = None, flags: dict[str, Any] | None = None, *,
                defaults: Mapping[str, Any] | None = None) -> ResolvedRun:
    """Layer the command defaults (or the run's ``run.json`` on resume), the config file,
    the direct flags and ``--set`` into a :class:`RunConfig` and a ``TrainConfig``.

    ``config_file``: a path, or a config file's content already loaded (a mapping of the
    same sections). ``defaults``: a mapping of the same sections layered first, below the
    file (``attnkit compare``'s per-task recipes)."""
    from attnkit.train.config import TrainConfig

    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if isinstance(config_file, Mapping):
        file = dict(config_file)
    else:
        file = load_config_file(config_file) if config_file else {}
    recipe = dict(defaults or {})
    parsed = [parse_set(s) for s in sets or []]

    layers: list[dict[str, dict[str, Any]]] = [
        {s: dict(src.get(s, {})) for s in ("model", "train", "data", "tokenizer")}
        for src in (recipe, file)]
    flag_layer: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "data": {},
                                             "tokenizer": {}}
    for flag, (section, key) in _FLAG_KEYS.items():
        if flag in flags:
            flag_layer[section][key] = flags[flag]
    if flags.get("resume"):
        flag_layer["train"]["resume"] = True
    layers.append(flag_layer)
    set_layer: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "data": {},
                                            "tokenizer": {}}
    top: dict[str, Any] = {k: src[k] for src in (recipe, file)
                           for k in ("objective", "model_preset") if k in src}
    for key in ("objective", "model_preset"):
        if flags.get(key) is not None:
            top[key] = flags[key]
    for section, key, value in parsed:
        if key is None:
            top[section] = value
        else:
            set_layer[section][key] = value
    layers.append(set_layer)
    explicit = {s: set().union(*(layer[s] for layer in layers))
                for s in ("model", "train", "data", "tokenizer")}

    def last(section: str, key: str, default: Any = None) -> Any:
        value = default
        for layer in layers:
            if key in layer[section]:
                value = layer[section][key]
        return value

    # objective and preset (a preset implies its objective)
    objective, preset = top.get("objective"), top.get("model_preset")
    if objective is not None and objective not in OBJECTIVES:
        fail(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    if preset is not None:
        owner = _preset_objective(preset)
        if owner is None:
            fail(f"unknown preset {preset!r}; valid presets by objective: {_all_presets()}")
        if objective is not None and owner != objective:
            fail(f"preset {preset!r} is a {owner} model; --objective {objective} needs one of: "
                 f"{', '.join(sorted(model_config_class(objective).presets))}")
        objective = owner
    resume_flag = last("train", "resume", False)
    resume = resume_flag not in (False, "false", "False", "0", "no")
    out = last("train", "out_dir")
    obj_guess = objective or "causal"
    full_model = False
    if preset is None and "model" in file:  # a [model] naming every required field
        required = required_fields(model_config_class(obj_guess)) - {"vocab_size"}
        full_model = bool(required) and not required - set(file["model"])
    if out is None:
        name = preset or ("custom" if full_model else DEFAULT_PRESETS[obj_guess])
        out = str(Path("runs") / name)
    out_dir = output_dir(out, "--out")

    # base: command defaults, or the saved run on --resume
    base = RunConfig(train=dict(TRAIN_DEFAULTS))
    saved_file = out_dir / RUN_FILE
    if resume and saved_file.is_file():
        try:
            saved = json.loads(saved_file.read_text())
            base = RunConfig(
                objective=saved["objective"], model_preset=saved.get("model_preset"),
                model=dict(saved.get("model") or {}),
                train={k: v for k, v in (saved.get("train") or {}).items()
                       if k not in _RUNTIME_KEYS},
                data=DataConfig(**saved.get("data") or {}),
                tokenizer=TokenizerConfig(**saved.get("tokenizer") or {}))
        except (ValueError, KeyError, TypeError) as e:
            fail(f"cannot read {saved_file} to resume from ({type(e).__name__}: {e})")
        if preset is None and objective in (None, base.objective):  # the same model family
            objective, preset = base.objective, base.model_preset
            full_model = preset is None
    objective = objective or "causal"
    if preset is None and not full_model:
        preset = DEFAULT_PRESETS[objective]

    model_over = dict(base.model) if (preset == base.model_preset
                                      and objective == base.objective) else {}
    train = dict(base.train)
    data = dataclasses.asdict(base.data)
    tok = dataclasses.asdict(base.tokenizer)
    for layer in layers:
        model_over.update(layer["model"])
        train.update(layer["train"])
        data.update(layer["data"])
        tok.update(layer["tokenizer"])

    model_cls = model_config_class(objective)
    model_over = coerce_fields(model_cls, model_over, "model")
    # training defaults that follow the number of steps and the model width (unless set)
    train = coerce_fields(TrainConfig, train, "train")
    steps = train.get("steps", DEFAULT_STEPS)
    old_steps = base.train.get("steps")
    if resume and old_steps is not None and steps != old_steps:
        # a resumed run with a new length: re-derive what the saved run had derived from its
        # old length (a saved value equal to that derivation), unless given now
        for key in ("warmup_steps", "eval_every", "save_every"):
            if key not in explicit["train"] and train.get(key) == _derived(key, old_steps):
                del train[key]
    for key in ("warmup_steps", "eval_every", "save_every"):
        if key not in train:
            train[key] = _derived(key, steps)
    if "lr" not in train:
        width = model_over.get("d_model", (model_cls.presets.get(preset) or {}).get("d_model"))
        if not isinstance(width, int):
            width = next((f.default for f in dataclasses.fields(model_cls)
                          if f.name == "d_model" and isinstance(f.default, int)), 768)
        train["lr"] = default_lr(width)
    if "min_lr" not in train or ("lr" in explicit["train"]
                                 and "min_lr" not in explicit["train"]):
        train["min_lr"] = train["lr"] / 10
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "distributed" not in explicit["train"]:
        train["distributed"] = "ddp" if world > 1 else "none"
    elif world > 1 and train["distributed"] == "none":
        fail(f"launched with WORLD_SIZE={world} (torchrun) but --distributed none; use ddp or "
             "fsdp, or run a single process")
    train["out_dir"] = str(out_dir)
    train["resume"] = train.get("resume", False) if resume else False
    train.setdefault("progress", True)

    tc = TrainConfig.from_dict(coerce_fields(TrainConfig, train, "train"))
    run = RunConfig(objective=objective, model_preset=preset, model=model_over,
                    train=tc.to_dict(),
                    data=DataConfig(**coerce_fields(DataConfig, data, "data")),
                    tokenizer=TokenizerConfig(**coerce_fields(TokenizerConfig, tok, "tokenizer")))
    return ResolvedRun(run, tc, out_dir, resume)


def _derived(key: str, steps: int) -> int:
    """The default of a step-count-derived setting: warmup 10% (at most 100 steps); 8
    evaluations and saves (runs under 16 steps: at the end only)."""
    if key == "warmup_steps":
        return min(100, steps // 10)
    return steps // 8 if steps >= 16 else 0  # eval_every, save_every


_FLAG_KEYS: dict[str, tuple[str, str]] = {
    "steps": ("train", "steps"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "out": ("train", "out_dir"), "device": ("train", "device"),
    "compile": ("train", "compile"), "precision": ("train", "precision"),
    "tensorboard": ("train", "tensorboard"),
    "seed": ("train", "seed"), "eval_every": ("train", "eval_every"),
    "distributed": ("train", "distributed"), "data": ("data", "path"),
    "val_data": ("data", "val_path"), "tokenizer": ("tokenizer", "kind"),
    "vocab_size": ("tokenizer", "vocab_size"),
}

