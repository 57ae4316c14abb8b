"""Files written atomically: a temporary sibling, renamed over the target when complete.

A reader sees the old file or the new one, never half of one, and a writer killed half-way
(``kill -9``, power loss before the rename) leaves only its temporary file behind:
``.<name>.<pid>.tmp``, which the next write of the same target removes. Directories (a
checkpoint) have their own two-rename scheme in :func:`attnkit.train.checkpoint.atomic_directory`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["temp_sibling", "atomic_file", "atomic_write_text"]


def temp_sibling(path: str | Path) -> Path:
    """``.<name>.<pid>.tmp`` beside ``path`` (its folder is created), after removing the
    temporary files an earlier, killed writer of ``path`` left there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """``open`` a temporary sibling of ``path`` for writing; on a clean exit it replaces
    ``path``, on an exception it is removed and ``path`` is untouched."""
    tmp = temp_sibling(path)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path, "w") as f:
        f.write(text)
