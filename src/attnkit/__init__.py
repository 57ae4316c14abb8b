"""attnkit: self-attention and the Transformers built on it — use it, read it, see it."""

from attnkit.attention import attend, explain, masks, score_mods

__version__ = "0.1.0"
__all__ = ["attend", "explain", "masks", "score_mods", "__version__"]
