"""The attention core: patterns, score modifiers, ``attend`` and its backends."""

from attnkit.attention import masks, score_mods
from attnkit.attention.core import Decision, Request, attend, explain
from attnkit.attention.masks import BlockLayout, Mask
from attnkit.attention.score_mods import ScoreMod

__all__ = [
    "attend", "explain", "Decision", "Request", "Mask", "BlockLayout", "ScoreMod",
    "masks", "score_mods",
]
