"""Stacks of Transformer blocks: the encoder, the causal decoder, and the decoder with
cross-attention of an encoder–decoder model are all ``TransformerStack`` with different
block configs and masks.

Pre-norm stacks end with one final norm (``final_norm=True``); post-norm stacks don't need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from attnkit.attention.core import MaskArg
from attnkit.attention.multihead import Cache, RopeFn
from attnkit.attention.score_mods import ScoreMod
from attnkit.layers import BlockConfig, TransformerBlock, make_norm

__all__ = ["StackOutput", "TransformerStack"]


@dataclass
class StackOutput:
    """Last hidden state and, on request, every layer's hidden states and attention weights."""

    hidden: Tensor  # (B, L, d_model), after the final norm if any
    hidden_states: list[Tensor] = field(default_factory=list)  # input of each layer + output
    attentions: list[Tensor] = field(default_factory=list)  # per layer (B, H, Lq, Lk)
    cross_attentions: list[Tensor] = field(default_factory=list)  # per layer (B, H, Lq, Lc)


class TransformerStack(nn.Module):
    """``n_layers`` blocks sharing one :class:`BlockConfig`, plus an optional final norm."""

    def __init__(self, block: BlockConfig, n_layers: int, *, final_norm: bool):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.layers = nn.ModuleList(TransformerBlock(block) for _ in range(n_layers))
        self.final_norm = (make_norm(block.norm, block.d_model, block.norm_eps, block.bias)
                           if final_norm else None)

    def forward(
        self,
        x: Tensor,
        *,
        mask: MaskArg = None,
        context: Tensor | None = None,
        context_mask: MaskArg = None,
        score_mod: ScoreMod | None = None,
        rope: RopeFn | None = None,
        positions: Tensor | None = None,
        caches: list[Cache] | None = None,
        cross_caches: list[Cache] | None = None,
        output_hidden_states: bool = False,
        return_weights: bool = False,
    ) -> StackOutput:
        """``x (B, L, d_model)`` through every layer. ``caches``: one per layer (decoding)."""
        out = StackOutput(hidden=x)
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                out.hidden_states.append(x)
            x, w = layer(
                x, mask=mask, context=context, context_mask=context_mask, score_mod=score_mod,
                rope=rope, positions=positions,
                cache=None if caches is None else caches[i],
                cross_cache=None if cross_caches is None else cross_caches[i],
                return_weights=return_weights,
            )
            if return_weights:
                out.attentions.append(w)
                if layer.last_cross_weights is not None:
                    out.cross_attentions.append(layer.last_cross_weights)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if output_hidden_states:
            out.hidden_states.append(x)
        out.hidden = x
        return out
