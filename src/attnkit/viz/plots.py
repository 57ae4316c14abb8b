"""Static figures of attention maps with matplotlib (imported lazily, Agg canvas, no pyplot).

Figures are built as ``matplotlib.figure.Figure`` objects attached to an Agg canvas, so
nothing touches pyplot's global state or needs a display; :func:`save_figure` writes ``.png``
or ``.svg``. Token tick labels shrink and rotate with the sequence length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from attnkit.viz.result import AttentionCapture

__all__ = ["plot_head", "plot_grid", "plot_rollout", "plot_head_stats", "save_figure"]

CMAP = "viridis"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _font_size(n: int) -> float:
    """Tick label size for ``n`` labels: 10 pt up to 16 tokens, down to 4 pt at ~100+."""
    return max(4.0, min(10.0, 10.0 - (n - 16) * 0.07))


def _label_axes(ax: Axes, q_tokens: Sequence[str] | None, k_tokens: Sequence[str] | None,
                n_q: int, n_k: int, max_labels: int = 160) -> None:
    for tokens, n, axis in ((k_tokens, n_k, "x"), (q_tokens, n_q, "y")):
        if tokens is None or n > max_labels:
            continue
        pos = list(range(n))
        size = _font_size(n)
        if axis == "x":
            ax.set_xticks(pos, [str(t) for t in tokens], rotation=90, fontsize=size)
        else:
            ax.set_yticks(pos, [str(t) for t in tokens], fontsize=size)
    ax.tick_params(length=0)


def _np(x: Tensor) -> Any:
    return x.detach().float().cpu().numpy()


def plot_head(weights: Tensor, q_tokens: Sequence[str] | None = None,
              k_tokens: Sequence[str] | None = None, title: str | None = None, *,
              cmap: str = CMAP, vmax: float | None = None) -> Figure:
    """Heatmap of one ``(Lq, Lk)`` map: queries down, keys across, token tick labels,
    colorbar. ``k_tokens`` defaults to ``q_tokens`` (self-attention)."""
    if weights.dim() != 2:
        raise ValueError(f"plot_head takes one (Lq, Lk) map, got {tuple(weights.shape)}")
    Lq, Lk = weights.shape
    k_tokens = q_tokens if k_tokens is None else k_tokens
    side = min(14.0, max(4.0, 0.22 * max(Lq, Lk) + 2.0))
    fig = _figure(side * max(0.6, min(1.6, Lk / max(Lq, 1))) + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(_np(weights), cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto",
                   interpolation="nearest")
    _label_axes(ax, q_tokens, k_tokens, Lq, Lk)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="attention weight")
    return fig


def plot_grid(capture: AttentionCapture, kind: str | None = None, *, cmap: str = CMAP,
              cell: float = 1.4) -> Figure:
    """Layers × heads grid of small maps of one kind (default the capture's first kind):
    rows are the kept layers, columns the kept heads, each map scaled to its own maximum."""
    kind = kind or capture.kinds[0]
    w = capture._check_kind(kind)
    layers, heads = capture.layers[kind], capture.heads[kind]
    nl, nh = len(layers), len(heads)
    fig = _figure(cell * nh + 0.6, cell * nl + 0.6)
    axes = fig.subplots(nl, nh, squeeze=False)
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            ax.imshow(_np(w[r, c]), cmap=cmap, vmin=0.0, aspect="auto", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"head {head}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
    fig.suptitle(f"{kind} attention ({capture.model.get('architecture', 'model')})",
                 fontsize=10)
    return fig


def plot_rollout(rollout: Tensor, tokens: Sequence[str], title: str = "attention rollout",
                 *, cmap: str = CMAP) -> Figure:
    """A rollout / flow matrix ``(L, L)`` as a heatmap (rows: output positions, columns: input
    tokens), or one row ``(L,)`` as a bar chart over the input tokens."""
    if rollout.dim() == 2:
        fig = plot_head(rollout, tokens, tokens, title, cmap=cmap)
        ax = fig.axes[0]
        ax.set_xlabel("input token")
        ax.set_ylabel("output position")
        return fig
    if rollout.dim() != 1:
        raise ValueError(f"expected (L, L) or (L,), got {tuple(rollout.shape)}")
    n = rollout.shape[0]
    fig = _figure(min(14.0, max(4.0, 0.25 * n + 2.0)), 3.5)
    ax = fig.add_subplot()
    ax.bar(range(n), _np(rollout))
    ax.set_xticks(range(n), [str(t) for t in tokens], rotation=90, fontsize=_font_size(n))
    ax.set_ylabel("share")
    ax.set_title(title)
    return fig


def plot_head_stats(entropy: Tensor, distance: Tensor | None = None, *,
                    layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                    annotate: bool | None = None) -> Figure:
    """Side-by-side heatmaps layers × heads of per-head entropy (nats) and mean attention
    distance (tokens), from :func:`~attnkit.viz.analysis.head_stats`. Values are written in
    the cells for grids up to 16 × 16 (``annotate``)."""
    panels = [("entropy (nats)", entropy)] + ([("mean distance", distance)]
                                               if distance is not None else [])
    nl, nh = entropy.shape
    layers = list(range(nl)) if layers is None else list(layers)
    heads = list(range(nh)) if heads is None else list(heads)
    annotate = (nl <= 16 and nh <= 16) if annotate is None else annotate
    w = min(8.0, max(3.0, 0.45 * nh + 1.8))
    fig = _figure(w * len(panels), min(10.0, max(2.5, 0.4 * nl + 1.5)))
    for idx, (name, vals) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), idx + 1)
        arr = _np(vals)
        im = ax.imshow(arr, cmap="magma", aspect="auto", interpolation="nearest")
        ax.set_xticks(range(nh), [str(h) for h in heads], fontsize=_font_size(nh))
        ax.set_yticks(range(nl), [str(layer) for layer in layers], fontsize=_font_size(nl))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(name)
        if annotate:
            lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
            for r in range(nl):
                for c in range(nh):
                    bright = (arr[r, c] - lo) > 0.6 * (hi - lo)  # magma is light at the top
                    ax.text(c, r, f"{arr[r, c]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if bright else "white")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return fig


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (``.png`` or ``.svg``, chosen by the suffix)."""
    p = Path(path)
    if p.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"save_figure writes .png or .svg, got {p.name!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi, format=p.suffix.lower()[1:])
    return p
