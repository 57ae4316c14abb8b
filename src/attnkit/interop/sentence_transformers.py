"""sentence-transformers model directories: the pooling on top of a BERT encoder.

A sentence-transformers directory is a Hugging Face BERT directory plus ``modules.json``,
which lists the pipeline ``Transformer -> Pooling -> (Normalize)``::

    e = normalise(pool(BertModel(tokenise(text)).last_hidden_state, attention_mask))

:class:`SentencePooling` is that pooling as data (mean or CLS pooling, L2 normalisation, the
longest input). :func:`read_sentence_pooling` reads it from a directory written by any
sentence-transformers version (2.x–5.x: ``sentence_transformers.models.*`` types and
``pooling_mode_*`` flags; 6.x: ``pooling_mode`` names, the length in ``tokenizer_config.json``);
:func:`write_sentence_transformers` writes the classic layout, which every version loads::

    modules.json                 [Transformer (path ""), Pooling ("1_Pooling"), Normalize]
    sentence_bert_config.json    {"max_seq_length": ..., "do_lower_case": false}
    1_Pooling/config.json        {"word_embedding_dimension": d, "pooling_mode_mean_tokens": ...}

(lower-casing, if any, is the tokenizer's normaliser). ``attnkit embed`` computes the same
embeddings with attnkit's BERT (:mod:`attnkit.embed`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnkit.jsonconfig import JsonConfig

__all__ = ["SentencePooling", "read_sentence_pooling", "write_sentence_transformers",
           "POOLINGS"]

POOLINGS = ("mean", "cls")
MODULES = "modules.json"
ST_CONFIG = "sentence_bert_config.json"
POOLING_DIR = "1_Pooling"
_TYPES = {"Transformer": "sentence_transformers.models.Transformer",
          "Pooling": "sentence_transformers.models.Pooling",
          "Normalize": "sentence_transformers.models.Normalize"}


@dataclass(frozen=True)
class SentencePooling(JsonConfig):
    """How token states become one sentence vector: ``pooling`` ("mean" over real tokens, or
    "cls": the first token's state), then L2 ``normalize``; inputs truncated to
    ``max_seq_length`` tokens (None: the model's position table)."""

    pooling: str = "mean"
    normalize: bool = True
    max_seq_length: int | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not supported; valid: {POOLINGS}")
        if self.max_seq_length is not None and (not isinstance(self.max_seq_length, int)
                                                or self.max_seq_length < 1):
            raise ValueError(f"max_seq_length must be None or a positive int, got "
                             f"{self.max_seq_length!r}")


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _pooling(config: dict[str, Any], where: Path) -> str:
    """The pooling of a ``1_Pooling/config.json`` (both formats)."""
    mode = config.get("pooling_mode")  # sentence-transformers 6: one name
    if isinstance(mode, str):
        modes = [mode]
    else:
        modes = sorted(k.removeprefix("pooling_mode_") for k, v in config.items()
                       if k.startswith("pooling_mode_") and v is True)
    names = {"mean_tokens": "mean", "cls_token": "cls", "mean": "mean", "cls": "cls"}
    picked = [names.get(m, m) for m in modes]
    if picked in (["mean"], ["cls"]):
        return picked[0]
    if not modes:
        return "mean"  # no flag set: sentence-transformers' default
    raise ValueError(f"{where}: pooling {modes} is not supported (attnkit pools by mean or "
                     f"the CLS token)")


def read_sentence_pooling(directory: str | Path) -> SentencePooling | None:
    """The pooling of a sentence-transformers directory, or None when it has no
    ``modules.json`` (a plain Hugging Face model)."""
    d = Path(directory)
    modules = _json(d / MODULES)
    if modules is None:
        return None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ValueError(f"{d / MODULES} must be a list of module entries")
    by_kind = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules}
    extra = sorted(set(by_kind) - set(_TYPES))
    if extra:
        raise ValueError(f"{d / MODULES}: modules {extra} are not supported (attnkit runs "
                         f"Transformer -> Pooling -> Normalize)")
    pool_entry = by_kind.get("Pooling")
    pooling = "mean"
    if pool_entry is not None:
        where = d / str(pool_entry.get("path") or POOLING_DIR) / "config.json"
        pooling = _pooling(_json(where) or {}, where)
    st = _json(d / ST_CONFIG) or {}
    length = st.get("max_seq_length")
    if length is None:  # sentence-transformers 6 keeps it as the tokenizer's model_max_length
        length = (_json(d / "tokenizer_config.json") or {}).get("model_max_length")
        length = length if isinstance(length, int) and length < 1_000_000 else None
    return SentencePooling(pooling, "Normalize" in by_kind, length)


def write_sentence_transformers(directory: str | Path, pooling: SentencePooling,
                                dim: int) -> list[str]:
    """Write the sentence-transformers files for ``pooling`` over a ``dim``-wide encoder
    into the model directory ``directory``; returns the paths written (relative)."""
    d = Path(directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": _TYPES["Transformer"]},
               {"idx": 1, "name": "1", "path": POOLING_DIR, "type": _TYPES["Pooling"]}]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": _TYPES["Normalize"]})
    pool = {"word_embedding_dimension": dim,
            "pooling_mode_cls_token": pooling.pooling == "cls",
            "pooling_mode_mean_tokens": pooling.pooling == "mean",
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
    st: dict[str, Any] = {"do_lower_case": False}
    if pooling.max_seq_length is not None:
        st["max_seq_length"] = pooling.max_seq_length
    (d / POOLING_DIR).mkdir(parents=True, exist_ok=True)
    files = {MODULES: modules, ST_CONFIG: st, f"{POOLING_DIR}/config.json": pool}
    for name, obj in files.items():
        (d / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return list(files)
