"""``attnkit viz serve``: registers the ``serve`` command on the viz Typer sub-app.

Importing this module is what adds the command (``attnkit.viz.cli`` imports it); the web
dependencies (FastAPI, uvicorn) are imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import typer

from attnkit.viz.cli import app

__all__ = ["serve_command"]


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    checkpoint: Path | None = typer.Option(  # noqa: B008
        None, "--checkpoint", "-c",
        help="attnkit training checkpoint (or a run directory: its best/), or a "
        "Hugging Face model "
        "directory with its tokenizer (also accepted before 'serve')."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; the default keeps the "
                             "server on this machine."),
    port: int = typer.Option(8765, min=1, max=65535, help="TCP port."),
    max_chars: int = typer.Option(2000, "--max-chars", min=1,
                                  help="Longest text accepted, in characters."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1,
                                   help="Inputs are truncated to this many tokens."),
) -> None:
    """Serve the interactive attention explorer at http://HOST:PORT/."""
    checkpoint = checkpoint or (ctx.obj or {}).get("checkpoint")
    if checkpoint is None:
        raise typer.BadParameter("--checkpoint DIR is required", param_hint="'--checkpoint'")
    try:
        from attnkit.viz.server import serve
    except ModuleNotFoundError as e:  # fastapi / uvicorn missing
        typer.echo(f"error: the explorer server needs {e.name!r}: pip install "
                   "'fastapi>=0.110' 'uvicorn>=0.29'", err=True)
        raise typer.Exit(1) from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: serving on {host}: anyone who can reach it can run the model",
                   err=True)
    try:
        serve(str(checkpoint), host=host, port=port, max_chars=max_chars,
              max_tokens=max_tokens)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
