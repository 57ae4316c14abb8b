"""The attention core: patterns, score modifiers, ``attend`` and its backends, multi-head
attention with KV caches, and the approximate variants (linear, hierarchical, LSH)."""

from attnkit.attention import masks, score_mods
from attnkit.attention.cache import KVCache, SlidingWindowCache
from attnkit.attention.core import Decision, Request, attend, explain
from attnkit.attention.hierarchical import HierarchicalAttention, hierarchical_attention
from attnkit.attention.linear import (
    EluFeatureMap,
    FavorFeatureMap,
    LinearAttention,
    linear_attention,
)
from attnkit.attention.lsh import LSHAttention, lsh_attention
from attnkit.attention.masks import BlockLayout, Mask
from attnkit.attention.multihead import MultiHeadAttention
from attnkit.attention.relative_bias import RelativePositionBias
from attnkit.attention.score_mods import ScoreMod
from attnkit.attention.scoring import AdditiveAttention, CosineAttention

__all__ = [
    "attend", "explain", "Decision", "Request", "Mask", "BlockLayout", "ScoreMod",
    "masks", "score_mods", "MultiHeadAttention", "KVCache", "SlidingWindowCache",
    "RelativePositionBias", "CosineAttention", "AdditiveAttention",
    "LinearAttention", "linear_attention", "EluFeatureMap", "FavorFeatureMap",
    "HierarchicalAttention", "hierarchical_attention", "LSHAttention", "lsh_attention",
]
