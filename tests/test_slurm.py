"""The Slurm path on a real cluster (`.ci/slurm-up` brings a one-node one up): `archrelax run --executor slurm`
through the scheduler process, end to end, and a job stopped mid-run with `scancel --signal=TERM`.

Skipped, with the reason, where `sbatch` is absent or the cluster does not answer. Jobs run as root from
this filesystem; the spec's `setup` lines give them this checkout's sources and one thread (so their
numbers equal an in-process run's).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from archrelax.cli import main as cli_main
from archrelax.protocol import run_experiment, spec_from_dict

SRC = Path(__file__).resolve().parents[1] / "src"


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH (start a one-node cluster with .ci/slurm-up)"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the Slurm cluster does not answer (sinfo: {e})"
    if r.returncode != 0:
        return f"the Slurm cluster does not answer (sinfo: {r.stderr.strip() or r.returncode})"
    if not {"idle", "mixed", "allocated", "completing"} & set(r.stdout.split()):
        return f"no Slurm node can take jobs (sinfo says: {r.stdout.split() or 'nothing'})"
    return None


PROBLEM = _cluster_problem()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))]

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
CLI = [sys.executable, "-m", "archrelax.cli"]

# 2 steps per epoch; CNN, eFCN at t_w = 0 and 1, FCN baseline
SPEC = {
    "name": "slurm-tiny",
    "model": "vanilla_cnn",
    "model_kwargs": {"width": 2},
    "data": "synthetic:1x28x28:2:40:20",
    "train": {"batch_size": 20, "lr": 0.05, "eval_times": "every", "device": "cpu"},
    "cnn": {"epochs": 2, "until_zero_loss": False},
    "relaxed": {"epochs": 1, "until_zero_loss": False},
    "switch_times": [0, 1],
    "targets": ["fc"],
    "baselines": ["fcn"],
    "executor": "slurm",
    "slurm": {"cluster": "slurm", "timeout_min": 10, "cpus_per_task": 1, "mem_gb": 1, "gpus_per_node": 0,
              "setup": [f"export PYTHONPATH={SRC}", "export OMP_NUM_THREADS=1"]},
}
LONG = {**SPEC, "name": "slurm-long", "cnn": {"epochs": 150, "until_zero_loss": False}, "switch_times": [0, 100],
        "train": {**SPEC["train"], "eval_times": "log:4"}}


def summary(exp: Path) -> list[dict]:
    with open(exp / "summary.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in csv.DictReader(f)]


def local_reference(spec: dict, out: Path) -> Path:
    """The same spec on the in-process executor, one thread like the jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_experiment(spec_from_dict({**spec, "executor": "local"}), out, log=lambda s: None)
    finally:
        torch.set_num_threads(n)
    return out


def write_spec(spec: dict, where: Path) -> Path:
    path = where / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_run_on_slurm_equals_local_run_and_says_little(tmp_path):
    ref = local_reference(SPEC, tmp_path / "local")
    exp = tmp_path / "slurm"
    r = subprocess.run([*CLI, "run", str(write_spec(SPEC, tmp_path)), "--executor", "slurm", "--out", str(exp),
                        "--poll", "0.2"], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert summary(exp) == summary(ref)
    # every run went through a Slurm job (submitit's logs name the job environment)
    logs = sorted((exp / "slurm").glob("*_log.out"))
    assert len(logs) == 4, [p.name for p in logs]
    assert all("JobEnvironment(job_id=" in p.read_text() for p in logs)
    # accounting is off here: submitit alone printed 3 lines ("Bypassing sacct error", twice, and sacct's
    # own complaint) at every poll, 18 lines for this experiment; now one line says where states come from
    out = r.stdout + r.stderr
    assert "Bypassing" not in out
    assert sum("sacct" in line for line in out.splitlines()) <= 1, out


def _wait_mid_run(exp: Path, proc: subprocess.Popen) -> Path:
    """The CNN's status.json, once its job has trained 20 steps."""
    deadline = time.monotonic() + 300
    cnn = None
    while time.monotonic() < deadline and proc.poll() is None:
        cnn = next(iter(exp.glob("runs/cnn-*/status.json")), None)
        try:
            if cnn is not None and json.loads(cnn.read_text()).get("step", 0) >= 20:
                return cnn
        except json.JSONDecodeError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the CNN did not get going: {proc.poll()} {cnn}")


def _job_of(run_dir: Path) -> str:
    """The Slurm job id of the process training a run (its lock names the pid; its environment the job)."""
    pid = json.loads((run_dir / ".lock").read_text())["pid"]
    env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
    return env["SLURM_JOB_ID"]


def test_scancel_signal_mid_run_interrupts_and_rerun_resumes_exactly(tmp_path, capfd):
    ref = local_reference(LONG, tmp_path / "local")
    spec = write_spec(LONG, tmp_path)
    exp = tmp_path / "slurm"
    proc = subprocess.Popen([*CLI, "run", str(spec), "--executor", "slurm", "--out", str(exp), "--poll", "0.2"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cnn = _wait_mid_run(exp, proc)
    job = _job_of(cnn.parent)
    subprocess.run(["scancel", "--signal=TERM", job], check=True, timeout=60)  # as Slurm warns a job
    out, err = proc.communicate(timeout=300)  # before: waited forever for a job that had ended
    assert proc.returncode == 1, out + err  # not every run finished
    st = json.loads(cnn.read_text())
    assert st["status"] == "interrupted" and "SIGTERM" in st["error"], st
    assert "not started: its parent" in out  # the eFCN at t_w = 100 needs a snapshot the CNN has not written
    stopped = st["step"]

    # resumed here (resuming on Slurm is the requeue test's): at the step where the job stopped
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(["run", str(exp), "--executor", "local"]) == 0
    finally:
        torch.set_num_threads(n)
    assert f"resuming {cnn.parent} at step {stopped} " in capfd.readouterr().err
    assert summary(exp) == summary(ref)


def test_scontrol_requeue_mid_run_resumes_in_the_requeued_job(tmp_path):
    """Slurm requeues the job (as at preemption): SIGTERM, then the job is pending again. The run saves its
    state and leaves no result, so the scheduler waits for the requeued job, which resumes the run at the
    saved step; the experiment ends as an uninterrupted one."""
    ref = local_reference(LONG, tmp_path / "local")
    exp = tmp_path / "slurm"
    proc = subprocess.Popen([*CLI, "run", str(write_spec(LONG, tmp_path)), "--executor", "slurm", "--out", str(exp),
                             "--poll", "0.2"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cnn = _wait_mid_run(exp, proc)
    job = _job_of(cnn.parent)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
    deadline = time.monotonic() + 120
    while _squeue_state(job) != "PENDING":  # Slurm holds a requeued job for 2 minutes: release it now
        assert time.monotonic() < deadline, _squeue_state(job)
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=60)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert summary(exp) == summary(ref)
    stopped = [line for p in (exp / "slurm").glob("*_log.err") for line in p.read_text().splitlines()
               if line.startswith(f"resuming {cnn.parent} at step ")]
    assert len(stopped) == 1, stopped  # the requeued job picked up where the first stopped


def _squeue_state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
