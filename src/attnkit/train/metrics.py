"""Training metrics: ``metrics.jsonl`` (one JSON object per line), optional TensorBoard, and
the loss-curve plot.

Records have a ``"kind"``: ``"train"`` (``step, loss, lr, grad_norm, tokens_per_s,
tokens_seen, ms_per_iter``) written every ``log_every`` steps, ``"eval"`` (``step, val_loss,
val_ppl``) after every evaluation. TensorBoard needs the ``tensorboard`` package; the plot
needs matplotlib (imported lazily, Agg canvas, no global backend change).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from attnkit.fileio import atomic_file

__all__ = ["MetricsLog", "read_metrics", "plot_loss_curve"]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (empty if the file does not exist)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


class MetricsLog:
    """Appends records to ``path`` (and TensorBoard scalars when ``tensorboard_dir`` is set).

    Only the process that owns the log (rank 0) should create one.
    """

    def __init__(self, path: str | Path, tensorboard_dir: str | Path | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ModuleNotFoundError(
                    "tensorboard=True needs the `tensorboard` package: pip install tensorboard "
                    "(or set tensorboard=False)") from e
            self._tb = SummaryWriter(str(tensorboard_dir))

    def reset(self, records: list[dict[str, Any]] | None = None) -> None:
        """Replace the file's contents with ``records`` (a resumed run drops the records a
        crashed run wrote after its last checkpoint)."""
        text = "".join(json.dumps(r) + "\n" for r in records or [])
        self.path.write_text(text)

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = record["step"]
            prefix = "val" if record.get("kind") == "eval" else "train"
            for k, v in record.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_loss_curve(records: list[dict[str, Any]], path: str | Path,
                    title: str = "loss") -> Path | None:
    """Train loss and validation loss against step, as a PNG at ``path``; None if there is
    nothing to plot."""
    train = [(r["step"], r["loss"]) for r in records
             if r.get("kind") == "train" and r.get("loss") is not None
             and math.isfinite(r["loss"])]
    val = [(r["step"], r["val_loss"]) for r in records
           if r.get("kind") == "eval" and r.get("val_loss") is not None
           and math.isfinite(r["val_loss"])]
    if not train and not val:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.plot(*zip(*train, strict=True), label="train", lw=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val", lw=1.5, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as f:  # a run killed while plotting leaves no truncated image
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)
