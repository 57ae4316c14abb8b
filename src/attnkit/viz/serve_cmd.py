"""``attnkit viz serve``: registers the ``serve`` command on the viz Typer sub-app.

Importing this module is what adds the command (``attnkit.viz.cli`` imports it); the web
dependencies (FastAPI, uvicorn) are imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import typer

from attnkit.viz.cli import app

__all__ = ["serve_command"]

EXIT_USAGE = 2  # as every attnkit command (attnkit.commands.common)
_LIMITS = {"max_chars": 50_000, "max_tokens": 4096, "memory_budget_mib": 1024}


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
    max_chars: int = typer.Option(_LIMITS["max_chars"], "--max-chars", min=1,
                                  help="Longest text accepted, in characters."),
    max_tokens: int = typer.Option(_LIMITS["max_tokens"], "--max-tokens", min=1,
                                   help="Inputs are truncated to this many tokens."),
    memory_budget: int = typer.Option(
        _LIMITS["memory_budget_mib"], "--memory-budget", min=1,
        help="MiB of captured attention maps the server keeps for views of long inputs."),
    allow_host: list[str] = typer.Option(  # noqa: B008
        None, "--allow-host", help="Also answer requests whose Host header is NAME (besides "
        "localhost and --host; repeatable; '*' for any). Others are refused: DNS rebinding."),
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
        raise typer.Exit(EXIT_USAGE) from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: serving on {host}: anyone who can reach it can run the model "
                   "(clients must use a name given with --allow-host, or the address itself)",
                   err=True)
    try:
        serve(str(checkpoint), host=host, port=port, allowed_hosts=allow_host or [],
              max_chars=max_chars, max_tokens=max_tokens, memory_budget=memory_budget * 2**20)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {' '.join(str(e).split())}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
