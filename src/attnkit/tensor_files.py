"""Reading tensor files: safetensors only, one clear error for a file that is not one.

Every reader of weights or optimizer state (attnkit checkpoints, Hugging Face directories)
goes through :func:`read_safetensors`, so a truncated download, random bytes or a pickle
renamed to ``.safetensors`` all give the same one-line :class:`CheckpointError` naming the
file — and nothing is ever unpickled (pickle runs code on load).
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from torch import Tensor

__all__ = ["CheckpointError", "read_safetensors", "looks_like_pickle"]

# torch.save writes a zip archive (PK..) since 1.6, plain pickles start with 0x80 + protocol
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, corrupt, or does not match the model it is loaded into."""


def looks_like_pickle(path: str | Path) -> bool:
    """Whether ``path`` starts like a pickle or a ``torch.save`` zip (read as bytes only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return any(head.startswith(m) for m in _PICKLE_MAGIC)


def read_safetensors(path: str | Path, device: str = "cpu"
                     ) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors of a safetensors file and its metadata; ``FileNotFoundError`` when the file
    is missing, :class:`CheckpointError` when it is not a readable safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # safetensors raises its own error types for truncated/garbled files
        what = ("it looks like a pickle / torch.save file, which attnkit never loads (pickle "
                "can run code); convert it to safetensors in a trusted environment"
                if looks_like_pickle(path) else f"{type(e).__name__}: {e}")
        raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({what})") from e
