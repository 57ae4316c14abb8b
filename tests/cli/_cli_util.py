"""Helpers shared by the CLI tests (a module of its own: conftest.py files cannot be
imported by name when several directories have one)."""

from typer.testing import CliRunner

from attnkit.cli import app

# a tiny char-gpt: 1 layer, width 32 (the preset's context 64 and vocabulary from the data)
TINY = ["--set", "model.n_layers=1", "--set", "model.d_model=32", "--set", "model.n_heads=2"]
runner = CliRunner()


def cli(*args):
    """Run ``attnkit ARGS`` in-process; the result has exit_code, stdout, stderr."""
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The one-line error of a failed command (and a check that there is nothing else)."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]
