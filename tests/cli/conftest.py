"""CLI tests: the commands run in-process through Typer's CliRunner (subprocesses only for
``python -m attnkit.cli`` and torchrun), with tiny models, a few steps and a small corpus."""

import pytest
from _cli_util import TINY, cli

from attnkit.data import builtin_documents


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    """~24k characters of the built-in corpus in one text file."""
    text = "\n\n".join(d.text for d in builtin_documents()[:12])[:24_000]
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_file):
    """A 3-step tiny char-gpt run: its output directory and stdout."""
    out = tmp_path_factory.mktemp("run") / "char"
    r = cli("train", "--data", corpus_file, "--steps", 3, *TINY, "--out", out,
            "--sample-chars", 40)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return out, r.stdout
