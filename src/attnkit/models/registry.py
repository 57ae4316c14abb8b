"""Model families by name: rebuild a model from the ``config.json`` of a checkpoint.

A config dict carries its ``family`` (``"causal_lm"``, ``"bert"``, ``"seq2seq"``, ``"vit"``);
a family has one config class and one or more *architectures* (model classes sharing that
config — BERT's encoder and its four heads). A checkpoint records the architecture by class
name, because the config alone does not say which head a BERT checkpoint has::

    spec = architecture_of(model)            # ("bert", "BertForMaskedLM")
    model = build_model(cfg.to_dict(), "BertForMaskedLM")

Register further families with :func:`register_family`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnkit.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from attnkit.models.causal_lm import CausalLM, CausalLMConfig
from attnkit.models.config import ModelConfig
from attnkit.models.seq2seq import Seq2SeqConfig, Seq2SeqLM
from attnkit.models.vit import ViTConfig, ViTForImageClassification

__all__ = ["Family", "FAMILIES", "register_family", "architecture_of", "config_from_dict",
           "build_model"]


@dataclass(frozen=True)
class Family:
    """One model family: its config class, its architectures by class name, the default one."""

    config_cls: type[ModelConfig]
    architectures: dict[str, type[nn.Module]]
    default: str


FAMILIES: dict[str, Family] = {}


def register_family(config_cls: type[ModelConfig], *architectures: type[nn.Module],
                    default: type[nn.Module] | None = None) -> None:
    """Register ``config_cls.family`` with its model classes (the first is the default).
    Every class is built as ``cls(config)``. Re-registering a family replaces it."""
    if not architectures:
        raise ValueError("register_family needs at least one model class")
    default = default or architectures[0]
    FAMILIES[config_cls.family] = Family(
        config_cls, {a.__name__: a for a in architectures}, default.__name__)


register_family(CausalLMConfig, CausalLM)
register_family(BertConfig, BertForMaskedLM, BertModel, BertForSequenceClassification,
                BertForTokenClassification, BertForQuestionAnswering)
register_family(Seq2SeqConfig, Seq2SeqLM)
register_family(ViTConfig, ViTForImageClassification)


def _family(name: Any) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; registered: {sorted(FAMILIES)}")
    return FAMILIES[name]


def architecture_of(model: nn.Module) -> tuple[str, str]:
    """``(family, architecture)`` of a registered model instance (unwrap DDP/compile first)."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"{type(model).__name__} has no ModelConfig `.config`; only registered "
                        f"attnkit models can be checkpointed")
    fam = _family(config.family)
    # FSDP2 swaps the class for a subclass (FSDPCausalLM): look through the MRO.
    for cls in type(model).__mro__:
        if fam.architectures.get(cls.__name__) is cls:
            return config.family, cls.__name__
    raise ValueError(f"{type(model).__name__} is not a registered {config.family!r} "
                     f"architecture; registered: {sorted(fam.architectures)}")


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """The config object for a dict with a ``family`` key (strict: unknown keys are errors)."""
    if "family" not in data:
        raise ValueError(f"model config has no 'family' key; registered families: "
                         f"{sorted(FAMILIES)}")
    return _family(data["family"]).config_cls.from_dict(data)


def build_model(config: dict[str, Any] | ModelConfig, architecture: str | None = None, *,
                check_memory: bool = True) -> nn.Module:
    """A freshly initialised model for ``config`` (dict or config object); ``architecture``
    is a class name of the family (default: the family's default, e.g. ``BertForMaskedLM``).

    ``check_memory``: first size the model on the meta device and refuse (``ValueError`` with
    the figure) one whose parameters and buffers exceed the memory available — a config with
    an absurd ``max_seq_len`` or ``vocab_size`` fails here, not in the allocator."""
    cfg = config if isinstance(config, ModelConfig) else config_from_dict(config)
    fam = _family(cfg.family)
    name = architecture or fam.default
    if name not in fam.architectures:
        raise ValueError(f"unknown {cfg.family!r} architecture {name!r}; valid: "
                         f"{sorted(fam.architectures)}")
    if check_memory and torch.get_default_device().type != "meta":
        from attnkit.memory import check_model

        check_model(cfg, name)
    return fam.architectures[name](cfg)
