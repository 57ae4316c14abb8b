"""ViT checkpoints (Hugging Face ``ViTForImageClassification`` layout) <-> attnkit
:class:`~attnkit.models.vit.ViTForImageClassification`.

Name map (HF ``vit.encoder.layer.{i}.`` -> attnkit ``encoder.layers.{i}.``)::

    attention.attention.{query,key,value}   attn.qkv        rows concatenated [q | k | v]
    attention.output.dense                  attn.out_proj
    layernorm_before / layernorm_after      norm1 / norm2
    intermediate.dense / output.dense       ffn.w1 / ffn.w2

plus ``vit.embeddings.patch_embeddings.projection`` -> ``patch_embed``,
``vit.embeddings.cls_token`` -> ``cls_token``, ``vit.embeddings.position_embeddings`` ->
``pos_embed``, ``vit.layernorm`` -> ``encoder.final_norm`` and ``classifier``. This is the
on-disk layout transformers writes (5.x renames modules in memory, not in checkpoints).
A pooler (``vit.pooler.*``, ViTModel exports) is ignored: classification reads ``[CLS]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from attnkit.interop.common import (
    drop_keys,
    incompatible,
    load_fused,
    load_state,
    read_config,
    save_checkpoint,
    split_fused,
)
from attnkit.models.vit import ViTConfig, ViTForImageClassification

__all__ = ["load_vit", "save_vit", "config_from_hf", "config_to_hf", "weight_map"]

_IGNORED = [r"^vit\.pooler\."]


def config_from_hf(hf: dict[str, Any]) -> ViTConfig:
    """A :class:`ViTConfig` from a ViT ``config.json`` dict (``num_labels = len(id2label)``)."""
    if hf.get("model_type") != "vit":
        raise ValueError(f"not a ViT config: model_type={hf.get('model_type')!r}")
    problems = []
    if hf.get("hidden_act", "gelu") != "gelu":
        problems.append(f"hidden_act={hf.get('hidden_act')!r} (supported: 'gelu')")
    if hf.get("use_mask_token", False):
        problems.append("use_mask_token=True (masked image modelling is not supported)")
    incompatible("unsupported ViT config", problems)
    id2label = hf.get("id2label")
    num_labels = len(id2label) if id2label is not None else hf.get("num_labels", 2)
    image, patch = hf.get("image_size", 224), hf.get("patch_size", 16)
    if isinstance(image, (list, tuple)) or isinstance(patch, (list, tuple)):
        sizes = {*(image if isinstance(image, (list, tuple)) else [image])}
        psizes = {*(patch if isinstance(patch, (list, tuple)) else [patch])}
        if len(sizes) != 1 or len(psizes) != 1:
            raise ValueError(f"unsupported ViT config: non-square image_size={image!r} / "
                             f"patch_size={patch!r}")
        image, patch = sizes.pop(), psizes.pop()
    return ViTConfig(
        image_size=image, patch_size=patch, channels=hf.get("num_channels", 3),
        d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"], num_labels=num_labels,
        norm_eps=hf.get("layer_norm_eps", 1e-12), dropout=hf.get("hidden_dropout_prob", 0.0),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.0),
        qkv_bias=hf.get("qkv_bias", True))


def config_to_hf(cfg: ViTConfig) -> dict[str, Any]:
    """The ViT ``config.json`` dict for ``cfg`` (labels named ``LABEL_i``)."""
    labels = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    return {
        "architectures": ["ViTForImageClassification"], "model_type": "vit",
        "image_size": cfg.image_size, "patch_size": cfg.patch_size,
        "num_channels": cfg.channels, "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff, "hidden_act": "gelu", "layer_norm_eps": cfg.norm_eps,
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attn_dropout,
        "qkv_bias": cfg.qkv_bias, "initializer_range": 0.02, "encoder_stride": cfg.patch_size,
        "id2label": labels, "label2id": {v: int(k) for k, v in labels.items()},
    }


def weight_map(cfg: ViTConfig) -> list[tuple[tuple[str, ...], str]]:
    """``(hf_names, attnkit_name)`` for every tensor; several HF names are concatenated along
    dim 0 (the fused ``[q | k | v]`` projection)."""
    emb = "vit.embeddings."
    rows: list[tuple[tuple[str, ...], str]] = [
        ((f"{emb}cls_token",), "cls_token"), ((f"{emb}position_embeddings",), "pos_embed"),
        ((f"{emb}patch_embeddings.projection.weight",), "patch_embed.weight"),
        ((f"{emb}patch_embeddings.projection.bias",), "patch_embed.bias"),
    ]
    for i in range(cfg.n_layers):
        hf, ours = f"vit.encoder.layer.{i}.", f"encoder.layers.{i}."
        qkv = ("weight", "bias") if cfg.qkv_bias else ("weight",)
        rows += [(tuple(f"{hf}attention.attention.{x}.{p}" for x in ("query", "key", "value")),
                  f"{ours}attn.qkv.{p}") for p in qkv]
        for h, o in (("attention.output.dense", "attn.out_proj"), ("layernorm_before", "norm1"),
                     ("layernorm_after", "norm2"), ("intermediate.dense", "ffn.w1"),
                     ("output.dense", "ffn.w2")):
            rows += [((f"{hf}{h}.{p}",), f"{ours}{o}.{p}") for p in ("weight", "bias")]
    rows += [(("vit.layernorm.weight",), "encoder.final_norm.weight"),
             (("vit.layernorm.bias",), "encoder.final_norm.bias")]
    if cfg.num_labels:
        rows += [(("classifier.weight",), "classifier.weight"),
                 (("classifier.bias",), "classifier.bias")]
    return rows


def load_vit(directory: str | Path, *, dtype: torch.dtype | None = None
             ) -> ViTForImageClassification:
    """A :class:`ViTForImageClassification` from a HF ViT directory (``config.json`` +
    safetensors). Parameters keep float32 unless ``dtype`` is given; returned in eval mode."""
    cfg = config_from_hf(read_config(directory))
    state = drop_keys(load_state(directory), _IGNORED)
    return load_fused(ViTForImageClassification(cfg), weight_map(cfg), state,
                      f"ViT checkpoint {directory}", family="ViT", dtype=dtype)


def save_vit(model: ViTForImageClassification, directory: str | Path, *,
             extra_config: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a HF ViT checkpoint that ``ViTForImageClassification`` loads.

    ``extra_config`` is merged into ``config.json`` (e.g. real ``id2label`` names).
    """
    tensors = split_fused(weight_map(model.config), dict(model.named_parameters()))
    return save_checkpoint(directory, config_to_hf(model.config), tensors,
                           dtype=model.patch_embed.weight.dtype, extra_config=extra_config)
