"""Shared test configuration."""

import os
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per xdist worker: `-n N` on N cores without oversubscription
    torch.set_num_threads(1)


def pytest_configure(config):
    # FlexAttention warns once per process that eager (uncompiled) use is slow; the CPU tests
    # run it eagerly on purpose (tiny shapes), so the warning is noise here.
    config.addinivalue_line(
        "filterwarnings", "ignore:.*flex_attention called without torch.compile.*:UserWarning"
    )


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so failures reproduce in isolation."""
    torch.manual_seed(0)
    yield


# Directories whose tests train tiny models: one intra-op thread is faster for them (and the
# CI machine runs several jobs at once), whether or not xdist is in use.
ONE_THREAD_DIRS = ("train", "cli")


@pytest.fixture(autouse=True, scope="module")
def _one_thread_for_tiny_training(request):
    if Path(str(request.path)).parent.name not in ONE_THREAD_DIRS:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
