"""benchmarks/device_check.py must work on the first try on a GPU: its --smoke mode runs every section's code on CPU
at tiny sizes (the protocol included: 30 runs in lockstep groups), and without CUDA it says so and exits 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


def run(*args: str, tmp: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env={**os.environ}, capture_output=True, text=True,
                          timeout=timeout, cwd=tmp)


@pytest.mark.slow
def test_smoke_runs_every_section(tmp_path):
    res = run("--smoke", "--tmp", str(tmp_path), tmp=tmp_path)
    out = res.stdout
    assert res.returncode == 0, out[-4000:] + res.stderr[-4000:]
    assert "FAILED" not in out and "SKIPPED" not in out, out
    for s in range(1, 7):
        assert f"[{s}] " in out
    for line in ("square GEMM", "eFCN step fp32", "eFCN step bf16", "GEMM-fraction", "gather-sum / index_add_",
                 "eLCN(VanillaCNN) step bf16", "alexnet      eFCN", "efcn x24", "lockstep: 24 efcn runs in one process",
                 "MEASURED wall time of the capped protocol", "(30/30 runs done)", "EXTRAPOLATED to the preset's caps"):
        assert line in out, line
    assert list(tmp_path.iterdir()) == []  # checkpoints and the protocol's runs are removed


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_it_says_so_and_exits_2(tmp_path):
    res = run("--sections", "1", tmp=tmp_path, timeout=120)
    assert res.returncode == 2 and "no CUDA device here" in res.stdout and "--smoke" in res.stdout
