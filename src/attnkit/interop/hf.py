"""One entry point for Hugging Face checkpoint directories, dispatching by model type.

    model = load_hf("path/to/gpt2")         # config.json's model_type picks the converter
    save_hf(model, "out/dir")               # the model's config picks the HF format

Converters are registered by dotted name (``"module:function"``) and imported on first use,
so adding a family is one line in each table below (BERT and T5 converters go here too).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from attnkit.interop.common import read_config

__all__ = ["LOADERS", "SAVERS", "load_hf", "save_hf"]

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


def save_hf(model: nn.Module, directory: str | Path, **kwargs: Any) -> Path:
    """Write ``model`` as a HF checkpoint directory that ``transformers`` loads."""
    family = getattr(getattr(model, "config", None), "family", None)
    if family not in SAVERS:
        raise ValueError(f"no Hugging Face exporter for {type(model).__name__} (config family "
                         f"{family!r}); supported families: {sorted(SAVERS)}")
    return _resolve(SAVERS[family])(model, directory, **kwargs)


def _save_causal_lm(model: nn.Module, directory: str | Path, **kwargs: Any) -> Path:
    """GPT-2 for learned absolute positions, LLaMA/Mistral for RoPE."""
    position = model.config.position
    if position == "learned":
        return _resolve("attnkit.interop.gpt2:save_gpt2")(model, directory, **kwargs)
    if position == "rope":
        return _resolve("attnkit.interop.llama:save_llama")(model, directory, **kwargs)
    raise ValueError(f"no Hugging Face format for a causal LM with position={position!r}; "
                     f"'learned' saves as GPT-2, 'rope' as LLaMA/Mistral")
