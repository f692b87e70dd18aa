"""Fixtures shared by several test files."""
from __future__ import annotations

import contextlib

import pytest
import torch


@contextlib.contextmanager
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """One intra-op thread, restored afterwards.

    CI shares 2 cores among many processes, and these tests use tiny tensors: OpenMP threads spinning
    against each other cost far more than they give, and one thread keeps the numerics of a test the same
    as those of the single-threaded subprocesses some tests start.
    """
    with _single_thread():
        yield


@pytest.fixture(scope="session")
def train_one_thread():
    """``train(config, out)`` on one intra-op thread (see ``one_thread``), for the module-scoped fixtures that
    train the runs their tests share (a function-scoped fixture cannot serve them). Returns ``out``."""
    from archrelax.train import train

    def run(config, out):
        with _single_thread():
            train(config, out)
        return out

    return run
