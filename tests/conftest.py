"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread, restored afterwards.

    CI shares 2 cores among many processes, and these tests use tiny tensors: OpenMP threads spinning
    against each other cost far more than they give, and one thread keeps the numerics of a test the same
    as those of the single-threaded subprocesses some tests start.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
