"""Fixtures shared by several test files."""
from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


@contextlib.contextmanager
def single_thread():
    """One intra-op thread inside the block, the previous count restored after it."""
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
    with single_thread():
        yield


@pytest.fixture(scope="session")
def train_one_thread():
    """``train(config, out)`` on one intra-op thread (see ``one_thread``), for the module-scoped fixtures that
    train the runs their tests share (a function-scoped fixture cannot serve them). Returns ``out``."""
    from archrelax.train import train

    def run(config, out):
        with single_thread():
            train(config, out)
        return out

    return run


# `python -c` body that trains one run on one thread: TrainConfig as JSON in argv[1], the run folder in argv[2]
TRAIN_RUNNER = ("import json, sys, torch; from archrelax.train import TrainConfig, train; torch.set_num_threads(1); "
                "train(TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2])")


def sigkill_at_step(config: dict, run: Path, step: int, timeout: float = 120.0) -> int:
    """Train ``config`` into ``run`` in a subprocess and kill it with SIGKILL (no handler runs) as soon as its
    checkpoints/last.pt holds a step >= ``step``; returns the checkpoint's step when it was killed. The caller
    makes the run checkpoint often (``checkpoint_every_steps``, a runtime field: the same numbers)."""
    from archrelax.train.checkpoint import load_checkpoint

    proc = subprocess.Popen([sys.executable, "-c", TRAIN_RUNNER, json.dumps(config), str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, killed_at = time.time() + timeout, None
    while time.time() < deadline and proc.poll() is None:
        try:
            at = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
        except (FileNotFoundError, ValueError):
            at = -1
        if at >= step:
            proc.send_signal(signal.SIGKILL)
            killed_at = at
            break
        time.sleep(0.005)
    proc.wait()
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    return killed_at
