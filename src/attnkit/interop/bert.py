"""BERT checkpoints (Hugging Face ``BertModel`` / ``BertFor*`` layout) <-> attnkit BERT.

Name map (encoder keys; a head model prefixes them with ``bert.``), layer ``i``
(HF ``encoder.layer.{i}.`` -> attnkit ``encoder.layers.{i}.``)::

    attention.self.{query,key,value}   attn.qkv            fused [q | k | v] (concat rows)
    attention.output.dense             attn.out_proj
    attention.output.LayerNorm         norm1               post-norm after attention
    intermediate.dense                 ffn.w1
    output.dense                       ffn.w2
    output.LayerNorm                   norm2               post-norm after the FFN

plus ``embeddings.{word,position,token_type}_embeddings`` -> ``embeddings.{word,position.emb,
token_type}``, ``embeddings.LayerNorm`` -> ``embeddings.norm``, ``pooler.dense`` -> ``pooler``.
Heads: ``cls.predictions.transform.{dense,LayerNorm}`` -> ``transform``/``transform_norm`` and
``cls.predictions.bias`` -> ``decoder_bias`` (the decoder weight is tied to the word
embeddings), ``classifier`` (sequence / token classification), ``qa_outputs`` (QA).

Accepted on load: encoder keys with or without ``bert.`` (sentence-transformers stores them
bare), the ``embeddings.position_ids`` buffer, legacy ``LayerNorm.gamma/beta`` names, a stored
copy of the tied decoder weight, the NSP head ``cls.seq_relationship`` and a pooler that the
requested head does not use. Everything else must match exactly: one ValueError lists every
missing key, unexpected key and shape mismatch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnkit.interop.common import (
    drop_keys,
    incompatible,
    load_fused,
    load_state,
    read_config,
    save_checkpoint,
    split_fused,
)
from attnkit.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)

__all__ = ["load_bert", "load_bert_as_saved", "head_for_checkpoint", "save_bert",
           "config_from_hf", "config_to_hf", "weight_map", "HEADS"]

BertLike = (BertModel | BertForMaskedLM | BertForSequenceClassification
            | BertForTokenClassification | BertForQuestionAnswering)

HEADS: dict[str | None, type[nn.Module]] = {
    None: BertModel, "mlm": BertForMaskedLM, "classification": BertForSequenceClassification,
    "token": BertForTokenClassification, "qa": BertForQuestionAnswering,
}
_ARCH = {BertModel: "BertModel", BertForMaskedLM: "BertForMaskedLM",
         BertForSequenceClassification: "BertForSequenceClassification",
         BertForTokenClassification: "BertForTokenClassification",
         BertForQuestionAnswering: "BertForQuestionAnswering"}
# config.json "architectures" -> head (BertForPreTraining: its MLM half; NSP is not supported)
_HEAD_OF_ARCH = {arch: head for head, cls in HEADS.items() for c, arch in _ARCH.items()
                 if c is cls} | {"BertForPreTraining": "mlm"}
_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "relu": "relu"}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
_HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.")
_IGNORED = [r"(^|\.)embeddings\.position_ids$", r"^cls\.seq_relationship\."]


def config_from_hf(hf: dict[str, Any]) -> BertConfig:
    """A :class:`BertConfig` from a BERT ``config.json`` dict."""
    if hf.get("model_type") != "bert":
        raise ValueError(f"not a BERT config: model_type={hf.get('model_type')!r}")
    act = hf.get("hidden_act", "gelu")
    problems = []
    if act not in _ACT_FROM_HF:
        problems.append(f"hidden_act={act!r} (supported: {sorted(_ACT_FROM_HF)})")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type={hf['position_embedding_type']!r} "
                        f"(only 'absolute')")
    if hf.get("is_decoder", False) or hf.get("add_cross_attention", False):
        problems.append("is_decoder/add_cross_attention=True (attnkit BERT is an encoder)")
    d, h = hf.get("hidden_size", 768), hf.get("num_attention_heads", 12)
    if d % h:
        problems.append(f"hidden_size={d} not divisible by num_attention_heads={h}")
    incompatible("unsupported BERT config", problems)
    labels = hf.get("id2label")
    num_labels = len(labels) if labels else hf.get("num_labels", 2)
    pad = hf.get("pad_token_id")
    return BertConfig(
        vocab_size=hf["vocab_size"], max_position=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2), d_model=d,
        n_layers=hf.get("num_hidden_layers", 12), n_heads=h,
        d_ff=hf.get("intermediate_size", 4 * d), activation=_ACT_FROM_HF[act],
        norm_eps=hf.get("layer_norm_eps", 1e-12), dropout=hf.get("hidden_dropout_prob", 0.1),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        pad_token_id=0 if pad is None else pad, num_labels=num_labels)


def config_to_hf(cfg: BertConfig, architecture: str = "BertModel") -> dict[str, Any]:
    """The HF ``config.json`` dict for ``cfg`` (``architecture``: e.g. "BertForMaskedLM")."""
    incompatible("this model cannot be saved as BERT",
                 [] if cfg.activation in _ACT_TO_HF else [f"activation={cfg.activation!r}"])
    labels = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    return {
        "architectures": [architecture], "model_type": "bert",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff, "hidden_act": _ACT_TO_HF[cfg.activation],
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attn_dropout,
        "max_position_embeddings": cfg.max_position, "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.norm_eps, "initializer_range": 0.02,
        "pad_token_id": cfg.pad_token_id, "position_embedding_type": "absolute",
        "is_decoder": False, "add_cross_attention": False, "tie_word_embeddings": True,
        "classifier_dropout": None, "id2label": labels,
        "label2id": {v: int(k) for k, v in labels.items()},
    }


def _encoder_map(cfg: BertConfig, pooler: bool) -> list[tuple[tuple[str, ...], str]]:
    """``(hf names, attnkit name)`` for the encoder, both without prefixes."""
    rows: list[tuple[tuple[str, ...], str]] = [
        (("embeddings.word_embeddings.weight",), "embeddings.word.weight"),
        (("embeddings.position_embeddings.weight",), "embeddings.position.emb.weight"),
        (("embeddings.token_type_embeddings.weight",), "embeddings.token_type.weight"),
        (("embeddings.LayerNorm.weight",), "embeddings.norm.weight"),
        (("embeddings.LayerNorm.bias",), "embeddings.norm.bias"),
    ]
    per_layer = [("attention.output.dense", "attn.out_proj"),
                 ("attention.output.LayerNorm", "norm1"), ("intermediate.dense", "ffn.w1"),
                 ("output.dense", "ffn.w2"), ("output.LayerNorm", "norm2")]
    for i in range(cfg.n_layers):
        hf, ours = f"encoder.layer.{i}.", f"encoder.layers.{i}."
        for p in ("weight", "bias"):
            rows.append((tuple(f"{hf}attention.self.{n}.{p}" for n in ("query", "key", "value")),
                         f"{ours}attn.qkv.{p}"))
            rows += [((f"{hf}{h}.{p}",), f"{ours}{o}.{p}") for h, o in per_layer]
    if pooler:
        rows += [(("pooler.dense.weight",), "pooler.weight"),
                 (("pooler.dense.bias",), "pooler.bias")]
    return rows


def weight_map(model: BertLike) -> list[tuple[tuple[str, ...], str]]:
    """``(hf names, attnkit name)`` for every parameter of ``model``; several HF names are
    concatenated along dim 0 (the fused q|k|v projection)."""
    if isinstance(model, BertModel):
        return _encoder_map(model.config, model.pooler is not None)
    enc = _encoder_map(model.config, model.bert.pooler is not None)
    rows = [(tuple(f"bert.{n}" for n in hf), f"bert.{o}") for hf, o in enc]
    if isinstance(model, BertForMaskedLM):
        t = "cls.predictions.transform."
        rows += [((f"{t}dense.weight",), "transform.weight"),
                 ((f"{t}dense.bias",), "transform.bias"),
                 ((f"{t}LayerNorm.weight",), "transform_norm.weight"),
                 ((f"{t}LayerNorm.bias",), "transform_norm.bias"),
                 (("cls.predictions.bias",), "decoder_bias")]
    else:
        head = "qa_outputs" if isinstance(model, BertForQuestionAnswering) else "classifier"
        rows += [((f"{head}.{p}",), f"{head}.{p}") for p in ("weight", "bias")]
    return rows


def _normalise(state: dict[str, Tensor], head: str | None) -> dict[str, Tensor]:
    """Canonical names: encoder keys prefixed ``bert.`` for a head model and bare for
    ``BertModel``; legacy ``gamma``/``beta``; ignorable buffers dropped; for ``head=None``
    any head weights dropped."""
    state = {re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight",
                    re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)): v
             for k, v in state.items()}
    state = drop_keys(state, _IGNORED)
    prefixed = any(k.startswith("bert.") for k in state)
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        is_head = k.startswith(_HEAD_PREFIXES)
        if head is None and is_head:
            continue  # the encoder alone was asked for
        if prefixed and not is_head and not k.startswith("bert."):
            out[k] = v  # stray key: reported as unexpected
            continue
        core = k.removeprefix("bert.") if prefixed else k
        out[core if head is None or is_head else f"bert.{core}"] = v
    if "cls.predictions.decoder.bias" in out:  # the same parameter as cls.predictions.bias
        out.setdefault("cls.predictions.bias", out["cls.predictions.decoder.bias"])
        del out["cls.predictions.decoder.bias"]
    return out


def head_for_checkpoint(directory: str | Path) -> str | None:
    """The head that a HF BERT directory's ``config.json`` ``architectures`` names ("mlm" for
    ``BertForMaskedLM`` / ``BertForPreTraining``, "classification", "token", "qa"), or None
    (``BertModel``, no or an unknown architecture)."""
    arch = (read_config(directory).get("architectures") or [None])[0]
    return _HEAD_OF_ARCH.get(arch)


def load_bert_as_saved(directory: str | Path, **kwargs: Any) -> BertLike:
    """:func:`load_bert` with the head the checkpoint was saved with
    (:func:`head_for_checkpoint`) unless ``head=`` is given; what ``load_hf`` calls."""
    kwargs.setdefault("head", head_for_checkpoint(directory))
    return load_bert(directory, **kwargs)


def load_bert(directory: str | Path, head: str | None = None, *,
              dtype: torch.dtype | None = None, strict: bool = True) -> BertLike:
    """An attnkit BERT from a HF directory (``config.json`` + safetensors weights).

    ``head``: None (:class:`BertModel`, with a pooler iff the checkpoint has one), "mlm",
    "classification", "token" or "qa". With ``strict=False`` missing head weights keep their
    random init and unexpected keys are ignored (HF ``from_pretrained`` behaviour); encoder
    keys and all shapes are always checked. Returned in eval mode, float32 unless ``dtype``.
    """
    if head not in HEADS:
        raise ValueError(f"unknown BERT head {head!r}; valid: {list(HEADS)}")
    cfg = config_from_hf(read_config(directory))
    state = _normalise(load_state(directory), head)
    ctx = f"BERT checkpoint {directory} (head={head!r})"
    if head is None:
        model: BertLike = BertModel(cfg, add_pooler=any(k.startswith("pooler.") for k in state))
    else:
        model = HEADS[head](cfg)
        if model.bert.pooler is None:  # e.g. MLM from a checkpoint trained with NSP
            state = drop_keys(state, [r"^bert\.pooler\."])
    if isinstance(model, BertForMaskedLM) and "cls.predictions.decoder.weight" in state:
        dec = state.pop("cls.predictions.decoder.weight")
        word = state.get("bert.embeddings.word_embeddings.weight")
        if word is not None and (dec.shape != word.shape or not torch.equal(dec, word)):
            raise ValueError(f"{ctx}: cls.predictions.decoder.weight differs from the word "
                             f"embeddings; attnkit BERT ties them (untied MLM unsupported)")
    rows = weight_map(model)
    optional: list[str] = []
    if not strict:
        names = {n for hf, _ in rows for n in hf}
        optional = [n for n in names if not n.startswith(("bert.", "embeddings.", "encoder.",
                                                          "pooler."))]
        state = {k: v for k, v in state.items() if k in names}
    return load_fused(model, rows, state, ctx, family="BERT", dtype=dtype, optional=optional)


def save_bert(model: BertLike, directory: str | Path, *,
              extra_config: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a HF checkpoint that ``transformers.<same class>.from_pretrained``
    loads (``BertModel``, ``BertForMaskedLM``, ...). ``extra_config`` is merged into
    ``config.json``. A :class:`BertModel` without pooler loads in HF with a fresh pooler."""
    arch = _ARCH.get(type(model))
    if arch is None:
        raise TypeError(f"save_bert takes one of {sorted(_ARCH.values())}, got "
                        f"{type(model).__name__}")
    cfg = model.config
    if isinstance(model, BertForQuestionAnswering):  # HF sizes qa_outputs by num_labels
        cfg = cfg.replace(num_labels=2)
    params = dict(model.named_parameters())
    rows = weight_map(model)
    return save_checkpoint(directory, config_to_hf(cfg, arch), split_fused(rows, params),
                           dtype=params[rows[0][1]].dtype, extra_config=extra_config)
