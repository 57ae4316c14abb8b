"""The training objective: the model's own loss, or label-smoothed cross-entropy from its
logits, and the number of target tokens a batch's mean loss runs over (micro-batch weights).

Conventions follow the models' losses: labels of -100 are ignored; a causal LM predicts
``labels[:, t + 1]`` from ``logits[:, t]`` (:class:`~attnkit.models.CausalLM` shifts inside,
so batches carry ``labels`` aligned with ``input_ids``); a seq2seq model's labels are the
decoder targets, its decoder inputs ``shift_right(labels)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["family_of", "count_targets", "compute_loss"]


def family_of(model: nn.Module) -> str | None:
    """``model.config.family`` (``"causal_lm"``, ``"bert"``, ...) or None."""
    return getattr(getattr(model, "config", None), "family", None)


def count_targets(model: nn.Module, batch: dict[str, Any]) -> Tensor | None:
    """Labels that count in ``model``'s mean loss (not -100; after the causal shift), as a
    0-d device tensor (no sync); None when labels are not token/class ids (regression, QA
    spans, no labels) — such micro-batches are weighted equally."""
    labels = batch.get("labels")
    if not isinstance(labels, Tensor) or labels.is_floating_point() \
            or type(model).__name__.endswith("QuestionAnswering"):
        return None
    if family_of(model) == "causal_lm":
        labels = labels[:, 1:]
    return (labels != -100).sum()


def compute_loss(forward: Callable[..., Any], model: nn.Module, batch: dict[str, Any],
                 label_smoothing: float = 0.0) -> Tensor:
    """``forward(**batch).loss``, or with ``label_smoothing > 0`` the label-smoothed
    cross-entropy of the logits (same shift and ignore index as the model's own loss).

    ``forward`` is what runs the model (it may be compiled or wrapped by DDP); ``model`` is
    the plain module, for its family and config.
    """
    if label_smoothing == 0:
        loss = forward(**batch).loss
        if loss is None:
            raise ValueError("the model returned no loss: batches need 'labels'")
        return loss
    labels = batch["labels"]
    kwargs = {k: v for k, v in batch.items() if k != "labels"}
    family = family_of(model)
    if family == "seq2seq" and "decoder_input_ids" not in kwargs:
        from attnkit.models.seq2seq import shift_right

        cfg = model.config
        kwargs["decoder_input_ids"] = shift_right(labels, cfg.decoder_start_token_id,
                                                  cfg.pad_token_id)
    logits = getattr(forward(**kwargs), "logits", None)
    if logits is None or labels.is_floating_point() or logits.shape[:-1] != labels.shape:
        raise ValueError("label_smoothing needs a model with token/class logits whose "
                         "shape[:-1] matches the labels (language models, classifiers)")
    if family == "causal_lm":  # as CausalLM's loss: logits[t] predicts labels[t + 1]
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(),
                           ignore_index=-100, label_smoothing=label_smoothing)
