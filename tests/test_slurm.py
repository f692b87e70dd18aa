"""The Slurm path on a real cluster (`.ci/slurm-up` brings a one-node one up).

Through the scheduler process (`archrelax run --executor slurm`): a run equals a local one and says little
about sacct; `scancel --signal=TERM` mid-run interrupts and the rerun resumes; `scontrol requeue` and
Slurm's warning signal (USR2, as `--signal=USR2@N` sends before a time limit) mid-run requeue the job,
which resumes the run where it stopped, the scheduler waiting for it. Detached (`--detach`): the whole
graph submitted at once with dependencies, `archrelax status` showing the jobs, a rerun submitting only
what is missing, and a warned job requeuing itself with no scheduler process at all.

Skipped, with the reason, where `sbatch` is absent or the cluster does not answer. Jobs run as root from
this filesystem; the spec's `setup` lines give them this checkout's sources and one thread (so their
numbers equal an in-process run's).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from archrelax.cli import main as cli_main
from archrelax.protocol import run_experiment, spec_from_dict
from conftest import single_thread

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
# a CNN long enough (160 steps) to be caught mid-run, and its eFCN at t_w = 60, which needs a later snapshot
LONG = {**SPEC, "name": "slurm-long", "cnn": {"epochs": 80, "until_zero_loss": False}, "switch_times": [60],
        "baselines": [], "train": {**SPEC["train"], "eval_times": "log:4"}}


def summary(exp: Path) -> list[dict]:
    with open(exp / "summary.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in csv.DictReader(f)]


def _local(spec: dict, out: Path) -> Path:
    """The same spec on the in-process executor, one thread like the jobs."""
    with single_thread():
        run_experiment(spec_from_dict({**spec, "executor": "local"}), out, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory) -> Path:
    return _local(SPEC, tmp_path_factory.mktemp("local") / "tiny")


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory) -> Path:
    return _local(LONG, tmp_path_factory.mktemp("local") / "long")


def write_spec(spec: dict, where: Path) -> Path:
    path = where / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(*args: str) -> tuple[int, str]:
    """``archrelax ARGS`` in this process: exit status and stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), single_thread():
        rc = cli_main(list(args))
    return rc, out.getvalue()


def _squeue(job: str) -> tuple[str, str]:
    """(state, reason) of a job ('' when squeue no longer lists it)."""
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T|%r"], capture_output=True, text=True).stdout.strip()
    return tuple(out.split("|")) if out else ("", "")  # type: ignore[return-value]


def _squeue_count() -> int:
    """How many jobs (array tasks one by one) the cluster holds."""
    return len(subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split())


def _wait(predicate, timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def _status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _wait_mid_run(exp: Path, proc: subprocess.Popen | None = None) -> Path:
    """The CNN's run folder, once its job has trained 20 steps."""
    def mid_run() -> bool:
        cnn = next(iter(exp.glob("runs/cnn-*")), None)
        return (cnn is not None and _status(cnn).get("step", 0) >= 20) or (proc is not None and proc.poll() is not None)

    _wait(mid_run, 300, "the CNN to get going", poll=0.05)
    assert proc is None or proc.poll() is None, proc.communicate()
    return next(exp.glob("runs/cnn-*"))


def _job_of(run_dir: Path) -> str:
    """The Slurm job training a run: its job.json (written at submission) names it."""
    return json.loads((run_dir / "job.json").read_text())["job_id"]


def _release_when_requeued(job: str) -> None:
    """Once the requeued job is PENDING again, release it (Slurm holds a requeued job for 2 minutes:
    Reason=BeginTime; `StartTime=now` is refused while it is still COMPLETING)."""
    _wait(lambda: _squeue(job)[0] == "PENDING", 120, f"job {job} to be pending again")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=60)


def _resume_lines(exp: Path, run_dir: Path) -> list[str]:
    return [line for p in (exp / "slurm").glob("*_log.err") for line in p.read_text().splitlines()
            if line.startswith(f"resuming {run_dir} at step ")]


# the same experiment relaxing the CNN into positional self-attention (width 8: the attention layers' default
# cost rule picks features.3 and features.6 there) at t_w = 0 and 1
ATTN = {**SPEC, "name": "slurm-attn", "model_kwargs": {"width": 8}, "targets": ["attn"], "baselines": []}


# ---- through the scheduler process -------------------------------------------------------------------------


def test_run_on_slurm_equals_local_run_and_says_little(tmp_path, tiny_reference):
    exp = tmp_path / "slurm"
    r = subprocess.run([*CLI, "run", str(write_spec(SPEC, tmp_path)), "--executor", "slurm", "--out", str(exp),
                        "--poll", "0.2"], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert summary(exp) == summary(tiny_reference)
    # every run went through a Slurm job (submitit's logs name the job environment), recorded in job.json
    logs = sorted((exp / "slurm").glob("*_log.out"))
    assert len(logs) == 4, [p.name for p in logs]
    assert all("JobEnvironment(job_id=" in p.read_text() for p in logs)
    jobs = {_job_of(d) for d in exp.glob("runs/*")}
    assert {f"{j}_0_log.out" for j in jobs} == {p.name for p in logs}
    # Slurm warns each job 90 s before its time limit, with the signal the jobs requeue themselves on
    assert all("#SBATCH --signal=USR2@90" in p.read_text() for p in (exp / "slurm").glob("*.sh"))
    # accounting is off here: submitit alone printed 3 lines ("Bypassing sacct error", twice, and sacct's
    # own complaint) at every poll, 18 lines for this experiment; now one line says where states come from
    out = r.stdout + r.stderr
    assert "Bypassing" not in out
    assert sum("sacct" in line for line in out.splitlines()) <= 1, out


def test_attention_runs_on_slurm_equal_the_local_run(tmp_path):
    """Attention runs are ordinary run folders to the executors: through Slurm jobs they compute what the local
    executor computes, figure for figure, their attention measures included."""
    exp = tmp_path / "slurm"
    r = subprocess.run([*CLI, "run", str(write_spec(ATTN, tmp_path)), "--executor", "slurm", "--out", str(exp),
                        "--poll", "0.2"], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    local = _local(ATTN, tmp_path / "local")
    got = summary(exp)
    assert [row["kind"] for row in got] == ["cnn", "attn", "attn"] and got == summary(local)
    for run in (p.name for p in (exp / "runs").glob("attn-*")):
        rows = [json.loads(x) for x in (exp / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        want = [json.loads(x) for x in (local / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        keys = [k for k in rows[-1] if k.startswith("attn_")]
        assert keys and [[row[k] for k in keys] for row in rows] == [[row[k] for k in keys] for row in want]


def test_scancel_signal_mid_run_interrupts_and_rerun_resumes_exactly(tmp_path, long_reference, capfd):
    spec = write_spec(LONG, tmp_path)
    exp = tmp_path / "slurm"
    proc = subprocess.Popen([*CLI, "run", str(spec), "--executor", "slurm", "--out", str(exp), "--poll", "0.2"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cnn = _wait_mid_run(exp, proc)
    subprocess.run(["scancel", "--signal=TERM", _job_of(cnn)], check=True, timeout=60)  # as Slurm warns a job
    out, err = proc.communicate(timeout=300)  # before: waited forever for a job that had ended
    assert proc.returncode == 1, out + err  # not every run finished
    st = _status(cnn)
    assert st["status"] == "interrupted" and "SIGTERM" in st["error"], st
    assert "not started: its parent" in out  # the eFCN at t_w = 60 needs a snapshot the CNN has not written
    stopped = st["step"]

    # resumed here (resuming on Slurm is the requeue tests'): at the step where the job stopped
    with single_thread():
        assert cli_main(["run", str(exp), "--executor", "local"]) == 0
    assert f"resuming {cnn} at step {stopped} " in capfd.readouterr().err
    assert summary(exp) == summary(long_reference)


@pytest.mark.parametrize("how", ["scontrol requeue", "USR2"])
def test_requeued_job_resumes_and_the_scheduler_waits_for_it(tmp_path, long_reference, how):
    """Slurm requeues the job (`scontrol requeue`: SIGTERM to the job, then pending again, as at a
    preemption), or warns it (USR2, as before a time limit: the job checkpoints and requeues itself through
    submitit). Either way the run saves its state and leaves no result, the scheduler waits for the requeued
    job instead of taking the run for ended, and that job resumes the run at the saved step."""
    exp = tmp_path / "slurm"
    proc = subprocess.Popen([*CLI, "run", str(write_spec(LONG, tmp_path)), "--executor", "slurm", "--out", str(exp),
                             "--poll", "0.2"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cnn = _wait_mid_run(exp, proc)
    job = _job_of(cnn)
    cmd = ["scontrol", "requeue", job] if how == "scontrol requeue" else ["scancel", "--signal=USR2", job]
    subprocess.run(cmd, check=True, timeout=60)
    _release_when_requeued(job)
    stopped = _status(cnn)["step"]
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert summary(exp) == summary(long_reference)
    assert _resume_lines(exp, cnn) == [f"resuming {cnn} at step {stopped} (epoch {stopped / 2:g})"]  # 0 steps redone
    assert _job_of(cnn) == job  # the same job, requeued: no second submission


# ---- detached ----------------------------------------------------------------------------------------------


@pytest.fixture
def blocked_node():
    """A job taking every CPU of the node, so that submitted jobs stay queued until ``release()``."""
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()[0]
    r = subprocess.run(["sbatch", "--parsable", "-c", cpus.rstrip("+"), "--mem=100M", "-J", "archrelax-blocker",
                        "-o", "/dev/null", "--wrap", "sleep 600"], capture_output=True, text=True, check=True)
    blocker = r.stdout.strip().split(";")[0]
    _wait(lambda: _squeue(blocker)[0] == "RUNNING", 60, "the blocker to start")
    yield lambda: subprocess.run(["scancel", blocker], check=True)
    subprocess.run(["scancel", blocker])


def _table(exp: Path) -> dict[str, list[str]]:
    """`archrelax status` as run id -> cells (job column included)."""
    rc, out = _cli("status", str(exp))
    assert rc == 0, out
    lines = out.splitlines()
    starts = [i for i, c in enumerate(lines[1]) if c == "-" and (i == 0 or lines[1][i - 1] == " ")]
    cells = lambda line: [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
    header = cells(lines[0])
    return {c[0]: dict(zip(header, c)) for c in map(cells, lines[2:-1])}


def _wait_done(exp: Path, timeout: float = 300) -> None:
    """Poll the store (no process follows a detached run) until summary.csv, which each job rewrites as it
    ends, shows every run finished."""
    def done() -> bool:
        try:
            return all(r["status"] in ("done", "diverged") for r in summary(exp))
        except FileNotFoundError:
            return False

    _wait(done, timeout, "every run to finish", poll=0.2)


def test_detached_run_status_and_rerun_submit_only_what_is_missing(tmp_path, tiny_reference, blocked_node):
    spec = write_spec(SPEC, tmp_path)
    exp = tmp_path / "slurm"
    rc, out = _cli("run", str(spec), "--out", str(exp), "--detach")
    assert rc == 0, out
    jobs = {d.name: _job_of(d) for d in exp.glob("runs/*")}
    assert len(jobs) == 4 and out.count("submitted: slurm ") == 4, out

    # queued: the CNN and the FCN wait for the node, the eFCNs for the CNN's job (afterok)
    _wait(lambda: all(_squeue(j)[1] not in ("", "None") for j in jobs.values()), 30, "Slurm to say why jobs wait")
    table = _table(exp)
    cnn = next(r for r in table if r.startswith("cnn-"))
    for rid, row in table.items():
        why = "Dependency" if rid.startswith("efcn-") else "Resources|Priority"
        assert row["status"] == "pending" and re.fullmatch(rf"slurm {jobs[rid]} PENDING \(({why})\)", row["job"]), row
    assert all(json.loads((exp / "runs" / r / "job.json").read_text())["dependency"] == f"afterok:{jobs[cnn]}"
               for r in table if r.startswith("efcn-"))

    # a rerun while everything is queued submits nothing: every run has a live job
    rc, out = _cli("run", str(exp), "--executor", "slurm", "--detach")
    assert rc == 0 and "submitted: slurm" not in out and out.count("has its job: slurm ") == 4, out

    # one job lost (cancelled): the rerun submits exactly that run again, still waiting for the CNN's job
    lost = next(r for r in table if r.startswith("efcn-"))
    subprocess.run(["scancel", jobs[lost]], check=True)
    _wait(lambda: not _squeue(jobs[lost])[0] or _squeue(jobs[lost])[0] == "CANCELLED", 30, "the cancellation")
    rc, out = _cli("run", str(exp), "--executor", "slurm", "--detach")
    assert rc == 0 and out.count("submitted: slurm ") == 1 and out.count("has its job: slurm ") == 3, out
    new = _job_of(exp / "runs" / lost)
    assert new != jobs[lost] and f"  {lost}: submitted: slurm {new} (afterok:{jobs[cnn]})" in out

    # a scheduler started on the folder now follows the live jobs instead of submitting a second one each
    proc = subprocess.Popen([*CLI, "run", str(exp), "--executor", "slurm", "--poll", "0.2"],
                            env={**ENV, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    _wait(lambda: sum("following its live job" in ln for ln in lines) == 4 or proc.poll() is not None, 120,
          "the scheduler to take up the jobs")
    blocked_node()  # the node frees up
    assert proc.wait(timeout=300) == 0
    reader.join(10)
    assert sum("following its live job" in ln for ln in lines) == 4, lines
    assert {d.name: _job_of(d) for d in exp.glob("runs/*")} == {**jobs, lost: new}  # no job submitted
    assert summary(exp) == summary(tiny_reference)
    rc, out = _cli("run", str(exp), "--executor", "slurm", "--detach")  # finished runs get no job
    assert rc == 0 and "submitted" not in out.replace("submitted;", ""), out
    assert "job" not in _table(exp)[cnn]  # finished: the job column goes


def test_detached_job_warned_by_slurm_requeues_itself_and_resumes(tmp_path, long_reference):
    """USR2 (what `--signal=USR2@signal_delay_s` sends before the time limit) to the CNN's job of a detached
    run: the run checkpoints at the step it is at, the job requeues itself (submitit's checkpoint/requeue
    protocol) and, released, resumes the run there: no scheduler process takes part."""
    exp = tmp_path / "slurm"
    rc, out = _cli("run", str(write_spec(LONG, tmp_path)), "--out", str(exp), "--detach")
    assert rc == 0, out
    cnn = _wait_mid_run(exp)
    job = _job_of(cnn)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)
    _wait(lambda: _squeue(job)[0] == "PENDING", 120, f"job {job} to be pending again")
    st = _status(cnn)
    assert st["status"] == "interrupted", st
    assert st["error"] == (f"interrupted by SIGUSR2 at step {st['step']} (epoch {st['epoch']:g}); checkpoint written; "
                           f"Slurm job {job} requeued itself and resumes here")
    assert _table(exp)[cnn.name]["job"] == f"slurm {job} PENDING (BeginTime)"
    _release_when_requeued(job)
    _wait_done(exp)
    assert summary(exp) == summary(long_reference)
    assert _resume_lines(exp, cnn) == [f"resuming {cnn} at step {st['step']} (epoch {st['step'] / 2:g})"]
    assert _job_of(cnn) == job


# ---- a lockstep group as one Slurm job -----------------------------------------------------------------------

# the CNN, then its two eFCNs (t_w = 0, 1; 160 steps each) as one lockstep group: one job, both members' job.json
GROUP = {**SPEC, "name": "slurm-group", "relaxed": {"epochs": 80, "until_zero_loss": False}, "baselines": [],
         "lockstep": True, "train": {**SPEC["train"], "eval_times": "log:4", "checkpoint_every_steps": 5}}


@pytest.fixture(scope="module")
def group_reference(tmp_path_factory) -> Path:
    return _local({**GROUP, "lockstep": False}, tmp_path_factory.mktemp("local") / "group")


def test_detached_lockstep_group_warned_by_slurm_requeues_itself_and_resumes_every_member(tmp_path, group_reference):
    """A detached lockstep group is one job (GroupJob) recorded in each member's job.json. USR2 to it mid-run:
    every member checkpoints at its step and is 'interrupted', the job requeues itself, and, released, resumes
    every member there (one resume line each); the runs end as runs trained without lockstep (to 1e-5)."""
    exp = tmp_path / "slurm"
    rc, out = _cli("run", str(write_spec(GROUP, tmp_path)), "--out", str(exp), "--detach")
    assert rc == 0, out
    members = sorted(exp.glob("runs/efcn-*"))
    assert len(members) == 2 and out.count("lockstep with 1 other run(s)") == 2, out
    job = _job_of(members[0])
    assert _job_of(members[1]) == job  # one job for the group
    _wait(lambda: all(_status(m).get("status") == "running" and _status(m).get("step", 0) >= 20 for m in members),
          300, "the group to get going", poll=0.05)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)
    _wait(lambda: _squeue(job)[0] == "PENDING", 120, f"job {job} to be pending again")
    stopped = {}
    for m in members:
        st = _status(m)
        assert st["status"] == "interrupted", st
        assert st["error"] == (f"interrupted by SIGUSR2 at step {st['step']} (epoch {st['epoch']:g}); checkpoint "
                               f"written; Slurm job {job} requeued itself and resumes here")
        stopped[m] = st["step"]
    _release_when_requeued(job)
    _wait_done(exp)
    for m, step in stopped.items():  # 0 steps redone
        assert _resume_lines(exp, m) == [f"resuming {m} at step {step} (epoch {step / 2:g})"]
        assert _job_of(m) == job  # the same job, requeued
    got, want = summary(exp), summary(group_reference)
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for g, w in zip(got, want):  # lockstep computes each run's own numbers, to float tolerance
        for k in w:
            if k.startswith(("final_", "best_")) and w[k]:
                assert float(g[k]) == pytest.approx(float(w[k]), rel=1e-5), (g["id"], k)
            else:
                assert g[k] == w[k], (g["id"], k)
