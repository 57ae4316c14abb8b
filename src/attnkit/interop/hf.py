"""One entry point for Hugging Face checkpoint directories, dispatching by model type.

    model = load_hf("path/to/gpt2")           # config.json's model_type picks the converter
    save_hf(model, "out/dir")                 # the model's config picks the HF format
    save_hf(model, "out/dir", tokenizer=tok)  # + what AutoTokenizer and pipeline() need

With a tokenizer the directory is complete for ``transformers``: ``tokenizer.json`` +
``tokenizer_config.json`` (:mod:`attnkit.interop.tokenizer`: the family's input layout,
checked to encode exactly as attnkit does), the special-token ids in ``config.json`` and a
``generation_config.json`` (EOS, padding, decoder start) for the text generators. A BERT
encoder saved with ``sentence_pooling`` also gets the sentence-transformers files
(:mod:`attnkit.interop.sentence_transformers`).

Converters are registered by dotted name (``"module:function"``) and imported on first use,
so adding a family is one line in each table below (BERT and T5 converters go here too).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from attnkit.interop.common import read_config

__all__ = ["LOADERS", "SAVERS", "CONFIG_CHECKS", "load_hf", "save_hf", "check_hf_export"]

# config.json "model_type" -> loader(directory) -> model
LOADERS: dict[str, str] = {
    "bert": "attnkit.interop.bert:load_bert_as_saved",  # head from config "architectures"
    "gpt2": "attnkit.interop.gpt2:load_gpt2",
    "llama": "attnkit.interop.llama:load_llama",
    "mistral": "attnkit.interop.llama:load_llama",
    "t5": "attnkit.interop.t5:load_t5",
    "vit": "attnkit.interop.vit:load_vit",
}

# model.config.family -> saver(model, directory). A family that maps to several HF formats
# registers a chooser (as causal_lm does: learned positions -> GPT-2, RoPE -> LLaMA/Mistral).
SAVERS: dict[str, str] = {
    "bert": "attnkit.interop.bert:save_bert",
    "causal_lm": "attnkit.interop.hf:_save_causal_lm",
    "seq2seq": "attnkit.interop.t5:save_t5",
    "vit": "attnkit.interop.vit:save_vit",
}

# model.config.family -> config_to_hf(config) of the format SAVERS writes: it raises, listing
# what the format cannot express, so an export is checked before anything is written.
CONFIG_CHECKS: dict[str, str] = {
    "bert": "attnkit.interop.bert:config_to_hf",
    "causal_lm": "attnkit.interop.hf:_causal_lm_config",
    "seq2seq": "attnkit.interop.t5:config_to_hf",
    "vit": "attnkit.interop.vit:config_to_hf",
}


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def load_hf(directory: str | Path, **kwargs: Any) -> nn.Module:
    """Load an attnkit model from a HF checkpoint directory (config.json + safetensors).

    ``kwargs`` go to the family loader (e.g. ``dtype=torch.bfloat16``).
    """
    model_type = read_config(directory).get("model_type")
    if model_type not in LOADERS:
        raise ValueError(f"unsupported model_type {model_type!r} in {directory}/config.json; "
                         f"supported: {sorted(LOADERS)}")
    return _resolve(LOADERS[model_type])(directory, **kwargs)


def check_hf_export(model: nn.Module, *, tokenizer: Any | None = None,
                    sentence_pooling: Any | None = None) -> None:
    """Raise the ``ValueError`` :func:`save_hf` would raise for these arguments, writing
    nothing: no exporter for the family, a config the HF format cannot express, a tokenizer
    that does not fit or has no exact ``transformers`` form, a misplaced ``sentence_pooling``."""
    family = getattr(getattr(model, "config", None), "family", None)
    if family not in SAVERS:
        raise ValueError(f"no Hugging Face exporter for {type(model).__name__} (config family "
                         f"{family!r}); supported families: {sorted(SAVERS)}")
    if family in CONFIG_CHECKS:
        _resolve(CONFIG_CHECKS[family])(model.config)
    if sentence_pooling is not None and type(model).__name__ != "BertModel":
        raise ValueError(f"sentence_pooling applies to a BertModel encoder, not "
                         f"{type(model).__name__}")
    if tokenizer is not None:
        from attnkit.interop.tokenizer import hf_tokenizer

        hf_tokenizer(tokenizer, _tokenizer_files(model, tokenizer)["family"])


def save_hf(model: nn.Module, directory: str | Path, *, tokenizer: Any | None = None,
            sentence_pooling: Any | None = None, **kwargs: Any) -> Path:
    """Write ``model`` as a HF checkpoint directory that ``transformers`` loads.

    ``tokenizer`` (an attnkit :class:`~attnkit.data.tokenizers.Tokenizer`): also write the
    files ``AutoTokenizer`` and ``pipeline`` need (module docstring); one that
    ``transformers`` cannot express exactly is a
    :class:`~attnkit.interop.tokenizer.TokenizerExportError`. ``sentence_pooling`` (a
    :class:`~attnkit.interop.sentence_transformers.SentencePooling`, ``BertModel`` only): also
    the sentence-transformers files. Everything is checked (:func:`check_hf_export`) before
    anything is written; a new (or empty) ``directory`` is built beside it and renamed into
    place, so it appears complete or not at all. ``kwargs`` go to the family saver (e.g.
    ``extra_config``).
    """
    check_hf_export(model, tokenizer=tokenizer, sentence_pooling=sentence_pooling)
    target = Path(directory)
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()  # an empty directory is written like a new one
    if target.exists():  # into an existing directory: file by file, others kept
        return _write_hf(model, target, tokenizer, sentence_pooling, kwargs)
    # a new directory appears complete or not at all: built beside it, then renamed
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_hf(model, tmp / target.name, tokenizer, sentence_pooling, kwargs)
        os.replace(tmp / target.name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_hf(model: nn.Module, out: Path, tokenizer: Any | None, sentence_pooling: Any | None,
              kwargs: dict[str, Any]) -> Path:
    family = model.config.family
    if tokenizer is not None:
        kwargs["extra_config"] = {**_token_ids(model, tokenizer),
                                  **(kwargs.get("extra_config") or {})}
    _resolve(SAVERS[family])(model, out, **kwargs)
    if tokenizer is not None:
        from attnkit.interop.tokenizer import save_hf_tokenizer

        save_hf_tokenizer(tokenizer, out, **_tokenizer_files(model, tokenizer))
        gen = _generation_config(read_config(out), family)
        if gen is not None:
            (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if sentence_pooling is not None:
        from attnkit.interop.sentence_transformers import write_sentence_transformers

        write_sentence_transformers(out, sentence_pooling, model.config.d_model)
    return out


def _tokenizer_files(model: nn.Module, tokenizer: Any) -> dict[str, Any]:
    """``save_hf_tokenizer`` arguments for ``model``; raises if ``tokenizer`` cannot serve
    it."""
    from attnkit.interop.tokenizer import FAMILIES

    cfg = model.config
    if cfg.family not in FAMILIES:
        raise ValueError(f"a {type(model).__name__} takes no tokenizer (families with text "
                         f"inputs: {FAMILIES})")
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than the "
                         f"model's vocab_size={cfg.vocab_size}")
    length = getattr(cfg, "max_seq_len", None) or getattr(cfg, "max_position", None)
    return {"family": cfg.family, "model_max_length": length}


def _token_ids(model: nn.Module, tokenizer: Any) -> dict[str, Any]:
    """config.json entries for the special tokens the model itself does not record."""
    if model.config.family != "causal_lm":
        return {}  # BERT / T5 configs carry pad (and eos, decoder start) ids already
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
            "pad_token_id": tokenizer.pad_id}


def _generation_config(hf: dict[str, Any], family: str) -> dict[str, Any] | None:
    """``generation_config.json`` for the text generators: their token ids from config.json."""
    if family not in ("causal_lm", "seq2seq"):
        return None
    keys = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    return {k: hf[k] for k in keys if hf.get(k) is not None}


def _causal_lm_format(position: str) -> str:
    """The interop module of a causal LM's HF format: GPT-2 for learned absolute positions,
    LLaMA/Mistral for RoPE."""
    if position == "learned":
        return "attnkit.interop.gpt2"
    if position == "rope":
        return "attnkit.interop.llama"
    raise ValueError(f"no Hugging Face format for a causal LM with position={position!r}; "
                     f"'learned' saves as GPT-2, 'rope' as LLaMA/Mistral")


def _causal_lm_config(cfg: Any) -> dict[str, Any]:
    return _resolve(f"{_causal_lm_format(cfg.position)}:config_to_hf")(cfg)


def _save_causal_lm(model: nn.Module, directory: str | Path, **kwargs: Any) -> Path:
    """GPT-2 for learned absolute positions, LLaMA/Mistral for RoPE."""
    module = _causal_lm_format(model.config.position)
    name = "save_gpt2" if module.endswith("gpt2") else "save_llama"
    return _resolve(f"{module}:{name}")(model, directory, **kwargs)
