"""Run configuration for the commands: config files (TOML / YAML / JSON), ``--set`` overrides
and the direct flags, resolved in that order into typed sections.

A config file has these top-level keys (all optional)::

    objective = "causal"            # causal | mlm | seq2seq
    model_preset = "char-gpt"       # a preset of the objective's model family ...

    [model]                         # ... and overrides of its fields. Without a preset, a
    n_layers = 2                    #     section naming every required field (causal:
                                    #     max_seq_len, d_model, n_layers, n_heads) is the
                                    #     whole model config
    [train]                         # TrainConfig fields
    steps = 500
    lr = 3e-4

    [data]                          # DataConfig fields (below)
    path = "my_corpus/"

    [tokenizer]                     # TokenizerConfig fields (below)
    kind = "bpe"
    vocab_size = 4096

Precedence (later wins): the command's defaults (on ``--resume``: the run's saved
``run.json``), the config file, the direct flags (``--steps``, ``--lr``, ...), then every
``--set SECTION.KEY=VALUE`` in order. ``--set`` values are typed by the field they set
(``--set train.betas=0.9,0.99``, ``--set model.d_ff=none``, ``--set model.rope_scaling=
'{"type": "linear", "factor": 2}'``). Unknown sections and keys are errors that list the
valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Union

from attnkit.commands.common import CliError

__all__ = ["DataConfig", "TokenizerConfig", "RunConfig", "OBJECTIVES", "SECTIONS",
           "load_config_file", "parse_set", "coerce", "check_value", "coerce_fields",
           "field_types"]

OBJECTIVES = ("causal", "mlm", "seq2seq")
SECTIONS = ("objective", "model_preset", "model", "train", "data", "tokenizer")
TOKENIZER_KINDS = ("auto", "char", "bpe", "wordpiece")


@dataclasses.dataclass
class DataConfig:
    """Where the training text comes from and how it is cut into examples.

    ``path``: None = the built-in corpus (Python's own documentation); else a text file, a
    folder of ``*.txt``/``*.md`` files, or a ``.jsonl`` file (``text_field`` of each line);
    for ``seq2seq`` a ``.jsonl``/``.json``/``.csv`` of ``source_field``/``target_field``
    records. ``val_path``: a separate validation set; without it ``val_fraction`` of the
    documents (split by a hash of their titles, ``split_seed``) are held out. ``seq_len``:
    tokens per training window (default: the model's context; 128 for MLM).
    """

    path: str | None = None
    val_path: str | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    text_field: str = "text"
    source_field: str = "source"
    target_field: str = "target"
    seq_len: int | None = None
    max_source_len: int = 128
    max_target_len: int = 128
    mlm_probability: float = 0.15

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.seq_len is not None and self.seq_len < 2:
            raise ValueError(f"data.seq_len must be >= 2, got {self.seq_len}")


@dataclasses.dataclass
class TokenizerConfig:
    """``kind``: ``auto`` (char for ``char-gpt``, WordPiece for MLM, byte-level BPE otherwise),
    ``char``, ``bpe``, ``wordpiece``, or a path to a saved tokenizer (a directory with
    ``tokenizer.json``, or the file). ``vocab_size`` is the BPE/WordPiece target size
    (``char`` takes every character of the corpus)."""

    kind: str = "auto"
    vocab_size: int = 4096
    lowercase: bool = True

    def __post_init__(self) -> None:
        if self.vocab_size < 8:
            raise ValueError(f"tokenizer.vocab_size must be >= 8, got {self.vocab_size}")


@dataclasses.dataclass
class RunConfig:
    """Everything ``attnkit train`` needs, as written to ``<out>/run.json``."""

    objective: str = "causal"
    model_preset: str | None = None
    model: dict[str, Any] = dataclasses.field(default_factory=dict)  # preset overrides
    train: dict[str, Any] = dataclasses.field(default_factory=dict)  # TrainConfig fields
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "model_preset": self.model_preset,
                "model": dict(self.model), "train": dict(self.train),
                "data": dataclasses.asdict(self.data),
                "tokenizer": dataclasses.asdict(self.tokenizer)}


# ---- files ----------------------------------------------------------------------------------


def load_config_file(path: str | Path, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config file as a dict: ``.toml`` (tomllib), ``.yaml``/``.yml`` (PyYAML, if
    installed) or ``.json``. Top-level keys are checked against :data:`SECTIONS` plus a
    command's own ``extra_keys`` (``attnkit compare``: ``compare``, ``variants``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CliError(f"config file not found: {p}")
    suffix = p.suffix.lower()
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CliError(f"config file {p} is not UTF-8 (byte offset {e.start})") from None
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ModuleNotFoundError:
                raise CliError(f"config file {p}: YAML needs PyYAML, which is not installed; "
                               "run: pip install pyyaml (or use a .toml / .json file)") from None
            data = yaml.safe_load(text)
            data = {} if data is None else data
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise CliError(f"config file {p}: unsupported type {suffix or '(none)'!r}; use "
                           ".toml, .yaml/.yml or .json")
    except CliError:
        raise
    except Exception as e:  # noqa: BLE001 - each parser has its own error type
        raise CliError(f"config file {p} could not be parsed: {e}") from None
    if not isinstance(data, dict):
        raise CliError(f"config file {p} must hold a mapping of sections, got "
                       f"{type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS) - set(extra_keys))
    if unknown:
        raise CliError(f"config file {p}: unknown top-level keys {unknown}; valid keys: "
                       f"{[*SECTIONS, *extra_keys]}")
    for section in ("model", "train", "data", "tokenizer"):
        if section in data and not isinstance(data[section], dict):
            raise CliError(f"config file {p}: [{section}] must be a table/mapping, got "
                           f"{type(data[section]).__name__}")
    for key in ("objective", "model_preset"):
        if key in data and not isinstance(data[key], str):
            raise CliError(f"config file {p}: {key} must be a string, got {data[key]!r}")
    return data


# ---- typed values ---------------------------------------------------------------------------

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved type}`` of a dataclass (ClassVars excluded)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def _literal(text: str) -> Any:
    """JSON if it parses, else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


_PHRASES = {bool: "a boolean (true/false)", int: "an integer", float: "a number",
            str: "a string", type(None): "none"}


def _type_name(tp: Any) -> str:
    """``int | None`` -> ``"an integer or none"`` (what a value must be, in words)."""
    args = _union_args(tp)
    if args is not None:
        return " or ".join(_type_name(a) for a in args)
    return _PHRASES.get(tp) or getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(text: str, tp: Any) -> Any:
    """Parse the string ``text`` as a value of type ``tp`` (ValueError if it is not one)."""
    text = text.strip()
    if tp is Any:
        return _literal(text)
    args = _union_args(tp)
    if args is not None:
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        order = sorted((a for a in args if a is not type(None)),
                       key=lambda a: {bool: 0, int: 1, float: 2, str: 9}.get(a, 5))
        for a in order:
            try:
                return coerce(text, a)
            except ValueError:
                continue
        raise ValueError(f"expected {_type_name(tp)}, got {text!r}")
    if tp is type(None):
        if text.lower() in ("none", "null"):
            return None
        raise ValueError(f"expected none, got {text!r}")
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            f = float(text)  # "1e3" is an int too
        except ValueError:
            f = math.nan
        if not f.is_integer():
            raise ValueError(f"expected an integer, got {text!r}")
        return int(f)
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if tp is str:
        return text
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        value = _literal(text)
        if not isinstance(value, list):
            value = [v.strip() for v in text.strip("()[]").split(",") if v.strip()]
        elems = typing.get_args(tp)
        homogeneous = origin is list or (len(elems) == 2 and elems[1] is Ellipsis)
        if origin is tuple and elems and not homogeneous and len(value) != len(elems):
            raise ValueError(f"expected {len(elems)} comma-separated values, got {text!r}")

        def elem_type(i: int) -> Any:
            if not elems:
                return Any
            return elems[0] if homogeneous else elems[i]

        items = [coerce(v if isinstance(v, str) else json.dumps(v), elem_type(i))
                 for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        value = _literal(text)
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {text!r}")
        return value
    return _literal(text)


def check_value(value: Any, tp: Any) -> Any:
    """A typed value (from a TOML / JSON / YAML file) checked against ``tp`` the way
    :func:`coerce` reads a string: ``ValueError`` with the same message when it is not one
    (``true`` is no number, ``2.5`` no integer); ints become floats for float fields, lists
    tuples for tuple fields."""
    if tp is Any:
        return value
    args = _union_args(tp)
    if args is not None:
        if value is None and type(None) in args:
            return None
        for a in sorted((a for a in args if a is not type(None)),
                        key=lambda a: {bool: 0, int: 1, float: 2, str: 9}.get(a, 5)):
            try:
                return check_value(value, a)
            except ValueError:
                continue
        raise ValueError(f"expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ValueError(f"expected none, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected a boolean (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        elems = typing.get_args(tp)
        homogeneous = origin is list or (len(elems) == 2 and elems[1] is Ellipsis)
        if origin is tuple and elems and not homogeneous and len(value) != len(elems):
            raise ValueError(f"expected {len(elems)} values, got {value!r}")
        items = [check_value(v, (elems[0] if homogeneous else elems[i]) if elems else Any)
                 for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping (a JSON object / TOML table), got {value!r}")
        return value
    return value


def _valid_keys_error(what: str, unknown: list[str], valid: list[str]) -> CliError:
    return CliError(f"unknown [{what}] key{'s' if len(unknown) > 1 else ''} {unknown}; valid "
                    f"keys: {sorted(valid)}")


def coerce_fields(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    """Check ``values``' keys against ``cls``'s fields, and every value against the field's
    type: strings (``--set``, some YAML scalars) are parsed by :func:`coerce`, typed values
    (TOML / JSON / YAML) checked by :func:`check_value` — one typed path, so a file and a flag
    accept and reject the same values."""
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise _valid_keys_error(what, unknown, list(types_))
    out = {}
    for k, v in values.items():
        tp = types_[k]
        args = _union_args(tp)
        want_str = tp is str or (args is not None and str in args)
        if isinstance(v, str) and args is not None and bool in args and v.strip().lower() in (
                "true", "false", "yes", "no"):  # bool | str (e.g. resume): the words are bools
            v = v.strip().lower() in ("true", "yes")
        else:
            try:
                v = coerce(v, tp) if isinstance(v, str) and not want_str else check_value(v, tp)
            except ValueError as e:
                raise CliError(f"{what}.{k}: {e}") from None
        out[k] = v
    return out


def parse_set(item: str) -> tuple[str, str | None, str]:
    """``"train.lr=3e-4"`` -> ``("train", "lr", "3e-4")``; ``"objective=mlm"`` ->
    ``("objective", None, "mlm")``."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise CliError(f"--set {item!r}: expected SECTION.KEY=VALUE (e.g. train.lr=3e-4)")
    section, dot, name = key.partition(".")
    if section in ("objective", "model_preset") and not dot:
        return section, None, value.strip()
    if section not in ("model", "train", "data", "tokenizer") or not dot or not name:
        raise CliError(f"--set {item!r}: unknown key {key!r}; expected SECTION.KEY=VALUE with "
                       "SECTION one of model, train, data, tokenizer (or objective=..., "
                       "model_preset=...)")
    return section, name, value
