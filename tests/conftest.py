"""Shared test configuration."""

import os

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
