"""Atomic file writes: the target is replaced whole or not at all, and a killed writer's
temporary file is removed by the next write."""

import pytest

from attnkit.fileio import atomic_file, atomic_write_text, temp_sibling


def test_replace_whole_and_clear_a_killed_writers_temp(tmp_path):
    target = tmp_path / "sub" / "run.json"
    atomic_write_text(target, "one")
    stale = target.with_name(".run.json.999999.tmp")  # what `kill -9` mid-write leaves
    stale.write_text("half")
    other = target.with_name(".other.json.999999.tmp")
    other.write_text("not ours")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == [".other.json.999999.tmp",
                                                               "run.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "tokens.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"partial")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.bin"]
    assert temp_sibling(target).name.startswith(".tokens.bin.")
