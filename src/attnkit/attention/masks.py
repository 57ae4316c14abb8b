"""Attention patterns as index predicates.

A pattern is written once, as a predicate over indices, and every backend consumes that one
definition (the FlexAttention ``mask_mod`` convention)::

    mask_mod(b, h, q_idx, kv_idx) -> bool      # True = query q_idx may attend to key kv_idx

Predicates are plain tensor expressions, so the same function works under broadcasting (to
build a dense matrix or a block layout) and under ``vmap`` (FlexAttention's ``BlockMask``).

Position convention: ``q_idx`` is given in *key coordinates*. When ``Lq < Lk`` (decoding with
a KV cache) the queries are the **last** ``Lq`` positions of the key sequence, so query row
``i`` is passed as ``q_idx = i + (Lk - Lq)``. Causal is therefore ``q_idx >= kv_idx`` for every
shape — bottom-right aligned, as in FlashAttention 2 and ``causal_lower_right``.

Patterns combine with ``&`` (both allow), ``|`` (either allows) and ``~`` (negation).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "Mask",
    "BlockLayout",
    "full",
    "causal",
    "padding",
    "sliding_window",
    "dilated_window",
    "strided",
    "fixed",
    "global_tokens",
    "block_local",
    "bigbird",
    "document",
    "from_dense",
]

MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
# Materialised forms kept per Mask and kind (least recently used go first): a few dense
# matrices (large), more of the small tile layouts / plans / BlockMasks.
_CACHE_LIMITS = {"dense": 4, "other": 16}


def _on(t: Tensor, like: Tensor) -> Tensor:
    """``t`` on ``like``'s device (no-op when already there)."""
    return t if t.device == like.device else t.to(like.device)


class ShapeCache(OrderedDict):
    """A mask's materialised forms by ``(kind, shape...)`` key, least recently used first,
    with at most ``limits[kind]`` entries of each kind (:data:`_CACHE_LIMITS`), so a pattern
    shared by many shapes (one causal mask over a decoding loop) stays bounded."""

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        limit = _CACHE_LIMITS.get(key[0], _CACHE_LIMITS["other"])
        same = [k for k in self if k[0] == key[0]]
        for k in same[: max(0, len(same) - limit)]:
            del self[k]


@dataclass(frozen=True)
class BlockLayout:
    """A pattern at block granularity.

    ``any[b, h, i, j]`` is True when query block ``i`` and key block ``j`` share at least one
    allowed pair; ``full[b, h, i, j]`` when every pair in the block is allowed (no element
    mask needed). Leading dims are 1 when the pattern does not depend on batch / head.
    """

    any: Tensor  # (B|1, H|1, nQ, nK) bool
    full: Tensor  # (B|1, H|1, nQ, nK) bool
    q_block: int
    kv_block: int
    q_len: int
    kv_len: int

    @property
    def density(self) -> float:
        """Fraction of (query block, key block) pairs that must be computed."""
        return float(self.any.float().mean())


@dataclass(frozen=True, eq=False)
class Mask:
    """An attention pattern: a predicate ``fn(b, h, q_idx, kv_idx) -> bool`` plus metadata.

    ``kind`` lets backends recognise patterns they implement natively ("full", "causal");
    everything else is "custom". ``batch_dependent``/``head_dependent`` say whether the
    predicate reads ``b``/``h`` (so materialised forms keep those dims, else size 1).
    ``window``: ``(left, right)`` of a :func:`sliding_window`, so :meth:`for_shape` can tell
    when it covers the whole sequence.
    """

    fn: MaskFn
    name: str
    kind: str = "custom"
    batch_dependent: bool = False
    head_dependent: bool = False
    batch_size: int | None = None  # set when the pattern indexes a per-batch tensor
    window: tuple[int, int] | None = None
    _cache: dict = field(default_factory=lambda: ShapeCache(), repr=False, compare=False)

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return self.fn(b, h, q_idx, kv_idx)

    def __repr__(self) -> str:
        return f"Mask({self.name})"

    def for_shape(self, q_len: int, kv_len: int) -> Mask:
        """This pattern, or the dense kind it equals at ``(q_len, kv_len)``: a window that
        reaches every earlier key (``left >= kv_len - 1``) is ``causal`` with ``right = 0``
        and ``full`` with ``right >= q_len - 1`` — so it costs what those cost."""
        if self.window is None:
            return self
        left, right = self.window
        if left >= kv_len - 1:  # the largest q_idx - kv_idx is kv_len - 1
            if right >= q_len - 1:  # the largest kv_idx - q_idx is q_len - 1
                return _FULL
            if right == 0:
                return _CAUSAL
        return self

    # ---- combinators -------------------------------------------------------------------
    def _combine(self, other: Mask, op: str) -> Mask:
        if not isinstance(other, Mask):
            raise TypeError(f"cannot combine Mask with {type(other).__name__}; expected a Mask")
        if self.batch_size and other.batch_size and self.batch_size != other.batch_size:
            raise ValueError(
                f"cannot combine {self.name} (batch {self.batch_size}) with "
                f"{other.name} (batch {other.batch_size})"
            )
        f, g = self.fn, other.fn
        if op == "&":
            fn = lambda b, h, q, kv: f(b, h, q, kv) & g(b, h, q, kv)  # noqa: E731
        else:
            fn = lambda b, h, q, kv: f(b, h, q, kv) | g(b, h, q, kv)  # noqa: E731
        return Mask(
            fn,
            f"({self.name} {op} {other.name})",
            batch_dependent=self.batch_dependent or other.batch_dependent,
            head_dependent=self.head_dependent or other.head_dependent,
            batch_size=self.batch_size or other.batch_size,
        )

    def __and__(self, other: Mask) -> Mask:
        return self._combine(other, "&")

    def __or__(self, other: Mask) -> Mask:
        return self._combine(other, "|")

    def __invert__(self) -> Mask:
        f = self.fn
        return Mask(
            lambda b, h, q, kv: ~f(b, h, q, kv),
            f"~{self.name}",
            batch_dependent=self.batch_dependent,
            head_dependent=self.head_dependent,
            batch_size=self.batch_size,
        )

    # ---- materialisation ---------------------------------------------------------------
    def _dims(self, batch: int, heads: int) -> tuple[int, int]:
        return (batch if self.batch_dependent else 1, heads if self.head_dependent else 1)

    def dense(
        self,
        q_len: int,
        kv_len: int,
        *,
        batch: int = 1,
        heads: int = 1,
        device: torch.device | str | None = None,
        q_start: int = 0,
        q_stop: int | None = None,
    ) -> Tensor:
        """Dense bool matrix ``(B|1, H|1, Lq, Lk)``; True = may attend.

        ``q_start``/``q_stop`` select a slice of query rows (local row indices), which is how
        block layouts are built without materialising the whole matrix at once.
        """
        # Cached only in eager mode: a traced graph builds its mask once anyway, and a traced
        # tensor (symbolic shapes under torch.export) must not outlive the trace in the cache.
        whole = q_start == 0 and q_stop in (None, q_len) and not torch.compiler.is_compiling()
        q_stop = q_len if q_stop is None else q_stop
        nb, nh = self._dims(batch, heads)
        key = ("dense", q_len, kv_len, nb, nh, str(device))
        if whole and key in self._cache:
            return self._cache[key]
        offset = kv_len - q_len
        b = torch.arange(nb, device=device).view(-1, 1, 1, 1)
        h = torch.arange(nh, device=device).view(1, -1, 1, 1)
        q = torch.arange(q_start + offset, q_stop + offset, device=device).view(1, 1, -1, 1)
        kv = torch.arange(kv_len, device=device).view(1, 1, 1, -1)
        out = self.fn(b, h, q, kv).expand(nb, nh, q_stop - q_start, kv_len)
        if whole:  # patterns are immutable: keep it (ShapeCache bounds how many)
            self._cache[key] = out
        return out

    def block_layout(
        self,
        q_len: int,
        kv_len: int,
        *,
        q_block: int = 128,
        kv_block: int = 128,
        batch: int = 1,
        heads: int = 1,
        device: torch.device | str | None = None,
    ) -> BlockLayout:
        """Which (query block, key block) tiles are non-empty / full. Cached per shape."""
        nb, nh = self._dims(batch, heads)
        key = ("layout", q_len, kv_len, q_block, kv_block, nb, nh, str(device))
        if key in self._cache:
            return self._cache[key]
        n_q = -(-q_len // q_block)
        n_kv = -(-kv_len // kv_block)
        any_ = torch.zeros(nb, nh, n_q, n_kv, dtype=torch.bool, device=device)
        full_ = torch.zeros_like(any_)
        pad_kv = n_kv * kv_block - kv_len
        # Evaluate a band of query blocks at a time: bounded memory (~16M bools a band).
        band = max(1, (1 << 24) // max(1, kv_len * q_block * nb * nh))
        for i0 in range(0, n_q, band):
            i1 = min(n_q, i0 + band)
            r0, r1 = i0 * q_block, min(q_len, i1 * q_block)
            d = self.dense(q_len, kv_len, batch=batch, heads=heads, device=device,
                           q_start=r0, q_stop=r1)
            # Pad rows/cols to whole blocks: padding counts as "allowed" for `full` and
            # "not allowed" for `any` (out-of-range positions are never computed).
            pad_q = (i1 - i0) * q_block - (r1 - r0)
            d_any = torch.nn.functional.pad(d, (0, pad_kv, 0, pad_q), value=False)
            d_all = torch.nn.functional.pad(d, (0, pad_kv, 0, pad_q), value=True)
            shape = (nb, nh, i1 - i0, q_block, n_kv, kv_block)
            any_[:, :, i0:i1] = d_any.reshape(shape).any(dim=5).any(dim=3)
            full_[:, :, i0:i1] = d_all.reshape(shape).all(dim=5).all(dim=3)
        layout = BlockLayout(any_, full_ & any_, q_block, kv_block, q_len, kv_len)
        self._cache[key] = layout
        return layout

    def block_mask(
        self,
        q_len: int,
        kv_len: int,
        *,
        batch: int = 1,
        heads: int = 1,
        device: torch.device | str = "cpu",
        block_size: int = 128,
    ):
        """FlexAttention ``BlockMask`` for this pattern (bottom-right aligned). Cached per shape."""
        from torch.nn.attention.flex_attention import create_block_mask

        nb, nh = self._dims(batch, heads)
        key = ("block_mask", q_len, kv_len, block_size, nb, nh, str(device))
        if key not in self._cache:
            offset = kv_len - q_len
            f = self.fn
            mod = f if offset == 0 else (lambda b, h, q, kv: f(b, h, q + offset, kv))
            self._cache[key] = create_block_mask(
                mod,
                B=nb if self.batch_dependent else None,
                H=nh if self.head_dependent else None,
                Q_LEN=q_len,
                KV_LEN=kv_len,
                device=device,
                BLOCK_SIZE=block_size,
            )
        return self._cache[key]


# ---- constructors ----------------------------------------------------------------------


def _check_nonneg(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def _check_pos(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def full() -> Mask:
    """Every query attends to every key (no mask)."""
    return Mask(lambda b, h, q, kv: (q >= 0) | (kv >= 0), "full", kind="full")


def causal() -> Mask:
    """``kv_idx <= q_idx`` (bottom-right aligned when Lq < Lk; see module docstring)."""
    return Mask(lambda b, h, q, kv: kv <= q, "causal", kind="causal")


def padding(lengths: Tensor | Sequence[int] | None = None, *,
            key_mask: Tensor | None = None) -> Mask:
    """Key padding: from per-sequence ``lengths`` (B,) or a bool ``key_mask`` (B, Lk), True = real.

    Exactly one of the two must be given.
    """
    if (lengths is None) == (key_mask is None):
        raise ValueError("padding() takes exactly one of lengths=(B,) or key_mask=(B, Lk)")
    if lengths is not None:
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        if lengths.dim() != 1:
            raise ValueError(f"padding lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
        if (lengths < 0).any():
            raise ValueError(f"padding lengths must be >= 0, got {lengths.tolist()}")
        L = lengths
        return Mask(lambda b, h, q, kv: kv < _on(L, kv)[b], "padding(lengths)",
                    batch_dependent=True, batch_size=len(L))
    km = torch.as_tensor(key_mask)
    if km.dtype != torch.bool or km.dim() != 2:
        raise ValueError(
            f"padding key_mask must be a bool tensor of shape (B, Lk), got "
            f"dtype={km.dtype} shape={tuple(km.shape)}"
        )
    return Mask(lambda b, h, q, kv: _on(km, kv)[b, kv], "padding(key_mask)",
                batch_dependent=True, batch_size=km.shape[0])


def sliding_window(left: int, right: int = 0) -> Mask:
    """Local attention: ``q_idx - left <= kv_idx <= q_idx + right``.

    ``left`` keys before and ``right`` keys after the query (the query itself always included);
    ``sliding_window(w, 0)`` is causal with a window of ``w + 1`` keys (Mistral-style). A
    window at least as wide as the sequence is dense (see :meth:`Mask.for_shape`): ``attend``
    runs it as ``causal`` (``right = 0``) or with no mask, at their cost.
    """
    _check_nonneg("left", left)
    _check_nonneg("right", right)
    lo, hi = min(left, _REACH_MAX), min(right, _REACH_MAX)  # beyond int64: no limit anyway
    return Mask(lambda b, h, q, kv: (q - kv <= lo) & (kv - q <= hi),
                f"sliding_window({left},{right})", window=(left, right))


_REACH_MAX = 1 << 62  # farther than any index difference


def dilated_window(left: int, right: int = 0, dilation: int = 2) -> Mask:
    """Dilated local window (Longformer): keys within reach whose distance is a multiple of
    ``dilation``; ``left``/``right`` are counted in dilated steps."""
    _check_nonneg("left", left)
    _check_nonneg("right", right)
    _check_pos("dilation", dilation)
    d = dilation
    return Mask(
        lambda b, h, q, kv: ((q - kv) % d == 0) & (q - kv <= left * d) & (kv - q <= right * d),
        f"dilated_window({left},{right},d={d})",
    )


def strided(stride: int) -> Mask:
    """Sparse Transformer strided pattern (Child et al. 2019), causal: a query sees the
    previous ``stride`` positions and every ``stride``-th position before it."""
    _check_pos("stride", stride)
    s = stride
    return Mask(
        lambda b, h, q, kv: (kv <= q) & ((q - kv < s) | ((q - kv) % s == 0)),
        f"strided({s})",
    )


def fixed(stride: int, summary: int = 1) -> Mask:
    """Sparse Transformer fixed pattern, causal: a query sees its own block of ``stride``
    positions and the last ``summary`` positions of every block (the "summary" cells)."""
    _check_pos("stride", stride)
    _check_pos("summary", summary)
    if summary > stride:
        raise ValueError(f"summary ({summary}) must be <= stride ({stride})")
    s, c = stride, summary
    return Mask(
        lambda b, h, q, kv: (kv <= q) & ((q // s == kv // s) | (kv % s >= s - c)),
        f"fixed({s},{c})",
    )


def global_tokens(indices: Sequence[int] | Tensor, length: int | None = None) -> Mask:
    """Longformer global attention: the tokens at ``indices`` attend to everything and are
    attended by everything. Combine with a window: ``sliding_window(w, w) | global_tokens(...)``.
    """
    idx = torch.as_tensor(indices, dtype=torch.long).flatten()
    if idx.numel() == 0:
        raise ValueError("global_tokens needs at least one index")
    if (idx < 0).any():
        raise ValueError(f"global token indices must be >= 0, got {idx.tolist()}")
    n = int(idx.max()) + 1 if length is None else length
    is_global = torch.zeros(max(n, int(idx.max()) + 1), dtype=torch.bool)
    is_global[idx] = True
    G = is_global
    size = G.numel()

    def fn(b, h, q, kv):
        g = _on(G, kv)
        # q < 0 (Lq > Lk: queries before the first key) is no token: never global, no wrap-around
        q_in = (q >= 0) & (q < size)
        return g[q.clamp(0, size - 1)] & q_in | g[kv.clamp(max=size - 1)] & (kv < size)

    return Mask(fn, f"global_tokens({idx.tolist()[:4]}{'...' if idx.numel() > 4 else ''})")


def block_local(block_size: int) -> Mask:
    """Attend only within non-overlapping blocks of ``block_size`` positions."""
    _check_pos("block_size", block_size)
    s = block_size
    return Mask(lambda b, h, q, kv: q // s == kv // s, f"block_local({s})")


def bigbird(
    block_size: int,
    *,
    window_blocks: int = 1,
    global_blocks: int = 1,
    random_blocks: int = 2,
    num_blocks: int,
    seed: int = 0,
) -> Mask:
    """BigBird (Zaheer et al. 2020), block form: each query block sees ``window_blocks`` blocks
    either side, the first ``global_blocks`` blocks (which also see everything), and
    ``random_blocks`` blocks drawn with ``seed`` — the same draw on every call.
    ``num_blocks`` = ceil(sequence length / block_size) fixes the random table's size.
    """
    _check_pos("block_size", block_size)
    _check_pos("num_blocks", num_blocks)
    for n, v in (("window_blocks", window_blocks), ("global_blocks", global_blocks),
                 ("random_blocks", random_blocks)):
        _check_nonneg(n, v)
    g = torch.Generator().manual_seed(seed)
    rand = torch.zeros(num_blocks, num_blocks, dtype=torch.bool)
    for i in range(num_blocks):
        if random_blocks:
            perm = torch.randperm(num_blocks, generator=g)[:random_blocks]
            rand[i, perm] = True
    R, s, w, gb, nbk = rand, block_size, window_blocks, global_blocks, num_blocks

    def fn(b, h, q, kv):
        qb, kb = q // s, kv // s
        r = _on(R, kv)[qb.clamp(max=nbk - 1), kb.clamp(max=nbk - 1)]
        return ((qb - kb).abs() <= w) | (qb < gb) | (kb < gb) | r

    return Mask(fn, f"bigbird(bs={s},w={w},g={gb},r={random_blocks},seed={seed})")


def document(ids: Tensor) -> Mask:
    """Document / segment mask for packed sequences: ``ids[b, q] == ids[b, kv]``.

    ``ids`` is (B, Lk) integer segment ids in key coordinates.
    """
    ids = torch.as_tensor(ids)
    if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(
            f"document ids must be an integer tensor (B, Lk), got dtype={ids.dtype} "
            f"shape={tuple(ids.shape)}"
        )
    I = ids

    def fn(b, h, q, kv):
        t = _on(I, kv)
        # q < 0 (Lq > Lk) sits before the key sequence: in no document (no wrap-around index)
        return (t[b, q.clamp(min=0)] == t[b, kv]) & (q >= 0)

    return Mask(fn, "document", batch_dependent=True, batch_size=ids.shape[0])


def from_dense(mask: Tensor) -> Mask:
    """Wrap an explicit bool matrix ``(B|1, H|1, Lq, Lk)`` as a pattern (query rows in local
    coordinates; only valid for the exact shape it was built for)."""
    if mask.dtype != torch.bool or mask.dim() != 4:
        raise ValueError(
            f"from_dense expects a 4-D bool tensor, got {mask.dtype} {tuple(mask.shape)}")
    M = mask
    lq, lk = M.shape[-2:]
    off = lk - lq

    def fn(b, h, q, kv):
        t = _on(M, kv)
        return t[b.clamp(max=t.shape[0] - 1), h.clamp(max=t.shape[1] - 1), q - off, kv]

    return Mask(fn, f"dense{tuple(mask.shape)}", batch_dependent=M.shape[0] > 1,
                head_dependent=M.shape[1] > 1, batch_size=M.shape[0] if M.shape[0] > 1 else None)


# the dense kinds a wide window reduces to (Mask.for_shape): one instance each, so their
# materialised forms are cached once
_FULL = full()
_CAUSAL = causal()
