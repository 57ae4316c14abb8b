"""Position information for Transformers.

* :class:`SinusoidalPositions` — fixed absolute encodings added to the embeddings
  (Vaswani et al. 2017).
* :class:`LearnedPositions` — a learned table of absolute embeddings (GPT-2, BERT).
* :class:`RotaryEmbedding` — RoPE (Su et al. 2021): rotates q and k so that ``q·k`` depends
  only on the relative offset.
* ALiBi (Press et al. 2022) is a score modifier, re-exported here from
  :mod:`attnkit.attention.score_mods` as :func:`alibi`.

``positions`` arguments are integer tensors of absolute positions, ``(L,)`` or ``(B, L)``;
with a KV cache they start at ``cache.pos``. The modules also take an ``int`` length
(``arange(length)``) or a ``range`` with step 1 (``range(past, past + L)``, what
:class:`~attnkit.models.CausalLM` passes for its default positions): their bounds are known on
the host, so no value check reads the device (no host sync; no graph break under
``torch.compile``). A tensor's bounds cost one host sync (``aminmax``) where they are needed:
to reject negative positions and grow the sinusoidal / RoPE tables, and for
:class:`LearnedPositions`' friendly out-of-range error — in eager mode only: under
``torch.compile`` / ``torch.export`` a host read is a graph break, so compiled code skips the
checks and uses the tables at the size they have (built for the model's maximum length; the
lookup still rejects out-of-range indices). :func:`position_range` gives the default positions
in the form each mode wants.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnkit.attention.score_mods import alibi, alibi_slopes

__all__ = [
    "SinusoidalPositions", "LearnedPositions", "RotaryEmbedding", "rotate_half",
    "apply_rotary", "alibi", "alibi_slopes", "position_range",
]


Positions = Tensor | int | range


def position_range(start: int, length: int, device: torch.device | str) -> Tensor | range:
    """Positions ``start .. start + length - 1``: a ``range`` in eager mode (bounds known on
    the host: checked without a device sync), an ``arange`` tensor under ``torch.compile`` /
    ``torch.export`` (a Python ``range`` would specialise a dynamic length to a constant)."""
    if torch.compiler.is_compiling():
        return torch.arange(start, start + length, device=device)
    return range(start, start + length)


def _as_positions(positions: Positions, device: torch.device) -> tuple[Tensor, int | None]:
    """``(long tensor of positions, end)``. An int ``length`` becomes ``arange(length)`` and a
    ``range`` ``arange(start, stop)``, with ``end`` = largest position + 1 (0 when empty) known
    on the host; a tensor is returned as a long tensor with ``end=None`` (see :func:`_end`)."""
    if isinstance(positions, int):
        if positions < 0:
            raise ValueError(f"length must be >= 0, got {positions}")
        return torch.arange(positions, device=device), positions
    if isinstance(positions, range):
        if positions.step != 1 or positions.start < 0:
            raise ValueError(f"a range of positions must count up by 1 from >= 0, got "
                             f"{positions!r}")
        end = positions.stop if len(positions) else 0
        return torch.arange(positions.start, positions.stop, device=device), end
    if not isinstance(positions, Tensor) or positions.dtype.is_floating_point:
        raise TypeError(f"positions must be an int length, a range or an integer tensor, got "
                        f"{positions!r}")
    return positions.to(device=device, dtype=torch.long), None


def _end(pos: Tensor, end: int | None) -> int | None:
    """Largest position + 1 (0 when empty); for a tensor (``end`` None) this reads its bounds
    with one host sync and rejects negative positions — in eager mode only: under
    ``torch.compile`` (a host read is a graph break) it returns None and the tables are used
    at the size they have."""
    if end is not None:
        return end
    if torch.compiler.is_compiling():
        return None
    if not pos.numel():
        return 0
    lo, hi = torch.stack(torch.aminmax(pos)).tolist()
    if lo < 0:
        raise ValueError("positions must be >= 0")
    return hi + 1


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal encodings::

        PE[pos, 2i]   = sin(pos / base^(2i/d))
        PE[pos, 2i+1] = cos(pos / base^(2i/d))          base = 10000

    The table is a non-persistent buffer (not in the state dict), grown on demand.
    ``forward(positions | length) -> (L, d)`` or ``(B, L, d)`` for ``(B, L)`` positions.
    """

    def __init__(self, d_model: int, max_len: int = 2048, base: float = 10000.0):
        super().__init__()
        if d_model < 2 or d_model % 2:
            raise ValueError(f"SinusoidalPositions needs an even d_model >= 2, got {d_model}")
        self.d_model, self.base = d_model, float(base)
        self.register_buffer("pe", self._table(max_len), persistent=False)

    def _table(self, n: int, device: torch.device | None = None) -> Tensor:
        # Computed in float64 for accuracy at large positions, stored as float32.
        pos = torch.arange(n, dtype=torch.float64, device=device)[:, None]  # (n, 1)
        two_i = torch.arange(0, self.d_model, 2, dtype=torch.float64, device=device)  # (d/2,)
        angle = pos / self.base ** (two_i / self.d_model)  # (n, d/2)
        pe = torch.empty(n, self.d_model, dtype=torch.float64, device=device)
        pe[:, 0::2], pe[:, 1::2] = angle.sin(), angle.cos()
        return pe.float()

    def forward(self, positions: Positions) -> Tensor:
        pos, end = _as_positions(positions, self.pe.device)
        need = _end(pos, end)
        if need is not None and need > self.pe.shape[0]:
            self.pe = self._table(max(need, 2 * self.pe.shape[0]), self.pe.device)
        return self.pe[pos]


class LearnedPositions(nn.Module):
    """Learned absolute position embeddings: ``E[pos]`` for ``pos < max_len``."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.max_len = max_len
        self.emb = nn.Embedding(max_len, d_model)

    def forward(self, positions: Positions) -> Tensor:
        pos, end = _as_positions(positions, self.emb.weight.device)
        end = _end(pos, end)  # a tensor's bounds: one host sync, eager mode only
        if end is not None and end > self.max_len:
            raise ValueError(
                f"position {end - 1} is beyond LearnedPositions max_len={self.max_len} "
                f"(valid: 0..{self.max_len - 1}); learned tables cannot extrapolate")
        return self.emb(pos)


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dim (halves, GPT-NeoX / HF LLaMA convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x·cos + rotate_half(x)·sin`` — rotates pairs ``(x[j], x[j + D/2])`` by ``pos·θ_j``."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021).

    Frequencies ``θ_j = base^(-2j/D)`` for ``j < D/2``; position ``m`` rotates the feature pair
    ``(x[j], x[j + D/2])`` by the angle ``m·θ_j``. Pairs are the two **halves** of the head
    ("rotate_half", GPT-NeoX and Hugging Face LLaMA), not interleaved neighbours (original
    RoFormer / Meta LLaMA); checkpoints converted to HF format already use this layout.
    Because rotations compose, ``<R_m q, R_n k> = <q, R_{n-m} k>``: scores depend on ``n - m``.

    Context extension (``scaling``):

    * ``("linear", f)`` — position interpolation (Chen et al. 2023): ``m -> m / f``.
    * ``("ntk", f)`` — NTK-aware scaling: ``base' = base · f^(D/(D-2))``, stretching the low
      frequencies while keeping the highest one.

    The cos/sin tables are cached (non-persistent buffers) and grown on demand.
    ``forward(q, k, positions)`` (same as :meth:`apply`) is the ``rope`` callable that
    :class:`~attnkit.attention.multihead.MultiHeadAttention` expects.
    """

    def __init__(self, head_dim: int, base: float = 10000.0,
                 scaling: tuple[str, float] | None = None, max_len: int = 2048):
        super().__init__()
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"RotaryEmbedding needs an even head_dim >= 2, got {head_dim}")
        self.head_dim, self.base, self.scaling = head_dim, float(base), scaling
        self.factor = 1.0  # linear interpolation factor: positions are divided by it
        if scaling is not None:
            kind, factor = scaling
            if not factor > 0:
                raise ValueError(f"rope scaling factor must be > 0, got {factor}")
            if kind == "linear":
                self.factor = float(factor)
            elif kind == "ntk":
                self.base = self.base * float(factor) ** (head_dim / (head_dim - 2))
            else:
                raise ValueError(f"unknown rope scaling {kind!r}; valid: 'linear', 'ntk'")
        # θ_j = base^(-2j/D), computed as in HF LLaMA (float32) so the tables match theirs.
        inv_freq = 1.0 / (self.base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv_freq / self.factor, persistent=False)
        cos, sin = self._tables(max_len)
        self.register_buffer("cos_cached", cos, persistent=False)
        self.register_buffer("sin_cached", sin, persistent=False)

    def _tables(self, n: int) -> tuple[Tensor, Tensor]:
        t = torch.arange(n, dtype=torch.float, device=self.inv_freq.device)
        freqs = t[:, None] * self.inv_freq[None, :]  # (n, D/2): angle m·θ_j
        emb = torch.cat((freqs, freqs), dim=-1)  # (n, D): same angle for j and j + D/2
        return emb.cos(), emb.sin()

    def cos_sin(self, positions: Positions, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Tables at ``positions`` ((L,) -> (L, D); (B, L) -> (B, 1, L, D)), cast to ``dtype``."""
        pos, end = _as_positions(positions, self.inv_freq.device)
        need = _end(pos, end)
        if need is not None and need > self.cos_cached.shape[0]:
            self.cos_cached, self.sin_cached = self._tables(max(need, 2 * self.cos_cached.shape[0]))
        cos, sin = self.cos_cached[pos], self.sin_cached[pos]
        if pos.dim() == 2:  # per-sequence positions: broadcast over heads
            cos, sin = cos[:, None], sin[:, None]
        return cos.to(dtype), sin.to(dtype)

    def apply(self, q, k: Tensor | None = None, positions: Positions | None = None):
        """Rotate ``q (B, Hq, L, D)`` and ``k (B, Hkv, L, D)`` at absolute ``positions``.

        (``apply(fn)`` with a single callable keeps ``nn.Module.apply`` semantics, so
        ``model.apply(init_fn)`` still recurses through models holding a RotaryEmbedding.)
        """
        if k is None and positions is None and callable(q):
            return super().apply(q)
        if q.shape[-1] != self.head_dim or k.shape[-1] != self.head_dim:
            raise ValueError(
                f"RotaryEmbedding(head_dim={self.head_dim}) got q {tuple(q.shape)}, "
                f"k {tuple(k.shape)}"
            )
        cos, sin = self.cos_sin(positions, q.dtype)
        cos, sin = cos.to(q.device), sin.to(q.device)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def forward(self, q: Tensor, k: Tensor, positions: Positions) -> tuple[Tensor, Tensor]:
        return self.apply(q, k, positions)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base:g}, scaling={self.scaling}"

