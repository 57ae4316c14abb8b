"""The ``attnkit`` command line."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="attnkit",
    help="Self-attention and the Transformers built on it: use it, read it, see it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


@app.callback()
def _main() -> None:
    """attnkit command line."""


@app.command()
def demo(
    seq_len: int = typer.Option(256, min=8, help="Sequence length N."),
    batch: int = typer.Option(2, min=1, help="Batch size B."),
    heads: int = typer.Option(8, min=1, help="Query heads Hq."),
    kv_heads: int = typer.Option(2, min=1, help="Key/value heads Hkv (GQA when < Hq)."),
    head_dim: int = typer.Option(64, min=1, help="Head dimension D."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
    seed: int = typer.Option(0, help="Random seed for the inputs."),
) -> None:
    """Run every attention variant on one input; print backend, shape, error vs reference, time."""
    from attnkit.demo import run_demo

    if heads % kv_heads:
        raise typer.BadParameter(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    rows = run_demo(seq_len, batch, heads, kv_heads, head_dim, device, seed)
    table = Table(title=f"attnkit attention variants (N={seq_len}, device={device})")
    for col in ("variant", "backend", "shape", "reference", "max |err|", "ms", "note"):
        table.add_column(col, justify="right" if col in ("max |err|", "ms") else "left")
    for r in rows:
        err = "-" if r.max_err is None else f"{r.max_err:.1e}"
        ms = "-" if r.ms is None else f"{r.ms:.2f}"
        table.add_row(r.variant, r.backend, r.shape, r.reference, err, ms, r.note)
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    app()
