"""Token strings for display: tokenizer pieces made readable in plots and in the explorer.

* byte-level BPE (GPT-2, ``train_bpe``): pieces are written in GPT-2's byte-to-unicode alphabet
  (``Ġ`` = space, ``Ċ`` = newline); they are mapped back to bytes and decoded as UTF-8;
* SentencePiece byte fallback ``<0x0A>`` becomes the byte it stands for;
* WordPiece ``##`` continuation prefixes are kept (they carry the word structure);
* whitespace is made visible: space → ``▁`` (SentencePiece's marker), newline → ``↵``,
  tab → ``⇥``, other control characters → ``\\xNN``; an empty piece → ``∅``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

__all__ = ["SPACE_MARK", "display_token", "display_tokens", "is_byte_level"]

SPACE_MARK = "\u2581"  # ▁
_VISIBLE = {" ": SPACE_MARK, "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printable bytes map to themselves, the other
    bytes to ``chr(256 + n)`` in order."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def is_byte_level(tokenizer: object) -> bool:
    """True for a Hugging Face tokenizer whose decoder is ``ByteLevel`` (GPT-2 style)."""
    inner = getattr(tokenizer, "tok", None)  # attnkit HFTokenizer wraps tokenizers.Tokenizer
    dec = getattr(inner, "decoder", None)
    return type(dec).__name__ == "ByteLevel"


def _visible(s: str) -> str:
    out = []
    for ch in s:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) or "\u2205"


def display_token(piece: str | None, byte_level: bool = False) -> str:
    """One tokenizer piece as a readable label (see the module docstring)."""
    if piece is None:
        return "\ufffd"
    if byte_level:
        dec = _byte_decoder()
        if all(c in dec for c in piece):
            piece = bytes(dec[c] for c in piece).decode("utf-8", errors="replace")
    else:
        m = _BYTE_FALLBACK.match(piece)
        if m:
            piece = bytes([int(m.group(1), 16)]).decode("latin-1")
    return _visible(piece)


def display_tokens(ids: Sequence[int], tokenizer: object | None) -> tuple[list[str], list[str]]:
    """``(display, raw)`` strings for ``ids``: raw pieces from ``tokenizer.id_to_token`` (or
    the ids as text without a tokenizer) and their :func:`display_token` forms."""
    if tokenizer is None:
        raw = [str(int(i)) for i in ids]
        return list(raw), raw
    raw = [tokenizer.id_to_token(int(i)) for i in ids]  # type: ignore[attr-defined]
    bl = is_byte_level(tokenizer)
    return [display_token(p, bl) for p in raw], [p if p is not None else "" for p in raw]
