"""Thread choice for the commands: measured busy cores, load-average fallback, overrides."""

import subprocess
import sys

import pytest
import torch

from attnkit.commands import common


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(common, "available_cores", lambda: 2)
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("busy,load,want", [
    (0.1, 1.9, 2),   # measured now: idle, whatever the lagging load average says
    (1.2, 0.0, 1),   # another process keeps a core busy
    (None, 1.6, 1),  # no /proc/stat: the load average decides
    (None, 0.2, 2),
])
def test_auto_threads(two_threads, monkeypatch, busy, load, want):
    monkeypatch.setattr(common, "busy_cores", lambda: busy)
    monkeypatch.setattr(common.os, "getloadavg", lambda: (load, load, load))
    with common.cpu_threads(0, "cpu") as note:
        assert torch.get_num_threads() == want
        assert (note is None) == (want == 2)
        if note:
            assert note.startswith("threads: 1 (") and "--threads N" in note
    assert torch.get_num_threads() == 2  # restored
    with common.cpu_threads(2, "cpu") as note:  # an explicit count wins
        assert torch.get_num_threads() == 2 and note is None


def test_busy_cores_sees_a_spinning_process():
    idle = common.busy_cores(0.3)
    if idle is None:
        pytest.skip("no /proc/stat here")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.3)
        busy = common.busy_cores(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy >= 0.7, (idle, busy)  # one core is taken by the spinner (plus any other load)
