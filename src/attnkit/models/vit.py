"""Vision Transformer for image classification (Dosovitskiy et al. 2021, "An Image is Worth
16x16 Words").

An image ``(B, C, H, W)`` is cut into ``N = (H/P)·(W/P)`` non-overlapping ``P×P`` patches, each
linearly projected to ``d_model`` (a ``Conv2d`` with kernel = stride = ``P``); a learned
``[CLS]`` token is prepended and learned absolute positions are added (eq. 1)::

    z_0 = [x_cls; x_p^1 E; ...; x_p^N E] + E_pos          E_pos: (N + 1, d_model)
    z_l = pre-norm Transformer block (MHSA, GELU MLP)     l = 1..L            (eqs. 2-3)
    y   = head(LN(z_L)[:, 0])                                                 (eq. 4)

Matches Hugging Face ``ViTForImageClassification`` (LayerNorm eps 1e-12, exact GELU, biases).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.layers import BlockConfig
from attnkit.models.config import ModelConfig
from attnkit.models.stacks import TransformerStack
from attnkit.validate import host_check_is_free, token_ids

__all__ = ["ViTConfig", "ViTForImageClassification", "ViTOutput"]


@dataclass
class ViTConfig(ModelConfig):
    """Hyper-parameters of a :class:`ViTForImageClassification` (defaults: ViT-B/16, 224²).

    ``num_labels = 0`` leaves the head out (logits are then the final ``[CLS]`` features).
    """

    family: ClassVar[str] = "vit"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # Dosovitskiy et al. 2021, Table 1 "ViT-Base", 16×16 patches (google/vit-base-patch16-224).
        "vit-base-16": dict(image_size=224, patch_size=16, channels=3, d_model=768, n_layers=12,
                            n_heads=12, d_ff=3072, num_labels=1000),
        # ViT-Ti/16 (Steiner et al. 2021, "How to train your ViT").
        "vit-tiny": dict(image_size=224, patch_size=16, channels=3, d_model=192, n_layers=12,
                         n_heads=3, d_ff=768, num_labels=1000),
    }

    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    num_labels: int = 1000
    norm_eps: float = 1e-12
    dropout: float = 0.0
    attn_dropout: float = 0.0
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "d_model", "n_layers", "n_heads",
                     "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_labels < 0:
            raise ValueError(f"num_labels must be >= 0, got {self.num_labels}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size "
                             f"({self.patch_size})")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads "
                             f"({self.n_heads})")

    @property
    def num_patches(self) -> int:
        """``N = (image_size / patch_size)²``."""
        return (self.image_size // self.patch_size) ** 2


@dataclass
class ViTOutput:
    """Logits, optional loss, and on request hidden states / attention weights per layer."""

    logits: Tensor  # (B, num_labels)
    loss: Tensor | None = None
    hidden: Tensor | None = None  # (B, N + 1, d_model), after the final LayerNorm
    hidden_states: list[Tensor] = field(default_factory=list)  # input of each layer + output
    attentions: list[Tensor] = field(default_factory=list)  # per layer (B, H, N + 1, N + 1)


class ViTForImageClassification(nn.Module):
    """ViT encoder + linear classifier on the ``[CLS]`` token (see the module docstring).

    Parameters: ``patch_embed`` (Conv2d), ``cls_token (1, 1, d)``, ``pos_embed (1, N + 1, d)``,
    ``encoder`` (pre-norm :class:`TransformerStack` with the final LayerNorm), ``classifier``.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.d_model
        self.patch_embed = nn.Conv2d(cfg.channels, d, kernel_size=cfg.patch_size,
                                     stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, d))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        block = BlockConfig(d_model=d, n_heads=cfg.n_heads, d_ff=cfg.d_ff, activation="gelu",
                            norm="layernorm", norm_eps=cfg.norm_eps, norm_position="pre",
                            dropout=cfg.dropout, attn_dropout=cfg.attn_dropout, bias=True)
        self.encoder = TransformerStack(block, cfg.n_layers, final_norm=True)
        if not cfg.qkv_bias:
            for layer in self.encoder.layers:
                layer.attn.qkv.bias = None
        self.classifier = nn.Linear(d, cfg.num_labels) if cfg.num_labels else nn.Identity()

    def embed(self, pixel_values: Tensor) -> Tensor:
        """``(B, C, H, W) -> z_0 (B, N + 1, d_model)``: patches, ``[CLS]``, positions."""
        cfg = self.config
        want = (cfg.channels, cfg.image_size, cfg.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != want:
            raise ValueError(f"pixel_values must be (B, {want[0]}, {want[1]}, {want[2]}), got "
                             f"{tuple(pixel_values.shape)} (no position interpolation)")
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # (B, d, H/P, W/P)
        x = x.flatten(2).transpose(1, 2)  # (B, N, d), patches in row-major order
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, d)
        return self.drop(torch.cat([cls, x], dim=1) + self.pos_embed)

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None, *,
                return_weights: bool = False, output_hidden_states: bool = False) -> ViTOutput:
        """Classify ``pixel_values (B, C, H, W)``; ``labels (B,)`` give a cross-entropy loss."""
        out = self.encoder(self.embed(pixel_values), return_weights=return_weights,
                           output_hidden_states=output_hidden_states)
        logits = self.classifier(out.hidden[:, 0])  # (B, num_labels)
        loss = None
        if labels is not None:
            if not self.config.num_labels:
                raise ValueError("labels given but the model has no classifier (num_labels=0)")
            if host_check_is_free(labels, training=self.training):
                token_ids(labels, self.config.num_labels, name="labels", size_name="num_labels")
            loss = F.cross_entropy(logits.float(), labels)
        return ViTOutput(logits=logits, loss=loss, hidden=out.hidden,
                         hidden_states=out.hidden_states, attentions=out.attentions)
