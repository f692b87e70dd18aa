"""The Slurm path of the protocol, driven through submitit's own LocalExecutor (same code path as Slurm:
AutoExecutor, job arrays via executor.batch(), pickled run_one jobs in fresh processes)."""
from __future__ import annotations

from pathlib import Path

import pytest

from archrelax.protocol import Store, run_experiment, spec_from_dict, submitit_executor

import test_slurm as slurm_tests  # its cluster probe: one skip condition for every test that needs Slurm

pytest.importorskip("submitit")

SPEC = {
    "name": "tiny-submitit",
    "model": "vanilla_cnn",
    "model_kwargs": {"width": 2},
    "data": "synthetic:1x28x28:2:40:20",
    "train": {"batch_size": 20, "lr": 0.05, "eval_times": "every"},
    "cnn": {"epochs": 2, "until_zero_loss": False},
    "relaxed": {"epochs": 1, "until_zero_loss": False},
    "switch_times": [0],
    "targets": ["fc"],
    "baselines": [],
    "executor": "slurm",
    # submitit's local executor kills jobs after its short default time limit: always set it from the spec
    "slurm": {"cluster": "local", "timeout_min": 10, "cpus_per_task": 1, "gpus_per_node": 0},
}


def test_submitit_executor_takes_its_limits_from_the_spec(tmp_path):
    ex = submitit_executor(spec_from_dict(SPEC).slurm, tmp_path / "slurm")
    assert ex.cluster == "local"
    assert ex.parameters["timeout_min"] == 10


@pytest.mark.slurm
@pytest.mark.skipif(slurm_tests.PROBLEM is not None, reason=str(slurm_tests.PROBLEM))
def test_slurm_options_reach_submitit(tmp_path):
    """The warning delay (sbatch --signal=USR2@N), the cap on requeues after a time limit, and a dependency
    (afterok, cancelled when it cannot be met) are what submitit submits with. submitit's Slurm executor
    refuses to start where there is no srun, so this needs the cluster the `slurm` tests use."""
    options = spec_from_dict({**SPEC, "slurm": {"cluster": "slurm", "timeout_min": 10, "signal_delay_s": 40,
                                                "max_num_timeout": 1, "additional": {"exclude": "n1"}}}).slurm
    ex = submitit_executor(options, tmp_path / "slurm", dependency="12_0")
    assert ex.cluster == "slurm" and ex._ex._executor.max_num_timeout == 1
    assert ex.parameters["signal_delay_s"] == 40
    assert ex.parameters["additional_parameters"] == {"exclude": "n1", "dependency": "afterok:12_0",
                                                      "kill-on-invalid-dep": "yes"}
    assert "dependency" not in submitit_executor(options, tmp_path / "slurm").parameters["additional_parameters"]


def test_submitit_local_runs_an_experiment_end_to_end(tmp_path):
    exp = tmp_path / "exp"
    logs: list[str] = []
    run_experiment(spec_from_dict(SPEC), exp, poll_s=0.2, log=logs.append)
    rows = Store(exp).read_summary()
    assert [r["kind"] for r in rows] == ["cnn", "efcn"]
    assert all(r["status"] == "done" for r in rows), rows
    assert [r["epochs"] for r in rows] == ["2", "1"]
    # every run went through a submitit job in its own process, which left its logs
    logs_out = list((exp / "slurm").glob("*_log.out"))
    assert len(logs_out) == 2, sorted(p.name for p in (exp / "slurm").iterdir())
    # rerunning submits nothing
    again: list[str] = []
    run_experiment(spec_from_dict(SPEC), exp, poll_s=0.2, log=again.append)
    assert again == ["2 runs planned: 2 already finished, 0 to run"]
    assert len(list((exp / "slurm").glob("*_log.out"))) == 2


def test_submitit_local_trains_a_lockstep_group_as_one_job(tmp_path):
    exp = tmp_path / "exp"
    logs: list[str] = []
    run_experiment(spec_from_dict({**SPEC, "switch_times": [0, 1], "lockstep": True}), exp, poll_s=0.2, log=logs.append)
    rows = Store(exp).read_summary()
    assert [r["kind"] for r in rows] == ["cnn", "efcn", "efcn"]
    assert all(r["status"] == "done" for r in rows), rows
    assert any(ln.startswith("  lockstep: 2 efcn runs in one process") for ln in logs), logs
    # the CNN's job and one job for both eFCNs (a pickled run_group in its own process)
    assert len(list((exp / "slurm").glob("*_log.out"))) == 2, sorted(p.name for p in (exp / "slurm").iterdir())


# ---- lockstep groups in the scheduler: one job, every member's record, adoption, signals ----------------------


class _Job:
    """A job of a fake executor: ``done`` when told, its result a run_group-style list."""

    def __init__(self, job_id: str, result=None, done: bool = True):
        self.job_id, self._result, self._done = job_id, result, done

    def done(self) -> bool:
        return self._done

    def result(self):
        return self._result


class _Executor:
    """The executor interface the scheduler uses (submit, batch, record, adopt, interrupt), recording calls."""

    def __init__(self, exp, adopted=None):
        import contextlib

        self.exp, self.adopted, self.submitted, self.interrupts = exp, adopted or {}, [], []
        self.batch = contextlib.nullcontext

    def submit(self, fn):
        self.submitted.append(fn)
        return _Job(str(90 + len(self.submitted)), done=False)

    def record(self, job):
        from archrelax.store import JobRecord

        return JobRecord.now(job.job_id, folder=str(self.exp.root / "slurm"))

    def adopt(self, records):
        return {rid: job for rid, job in self.adopted.items() if records.get(rid) is not None}

    def interrupt(self, signum, jobs):
        self.interrupts.append((signum, jobs))
        for job in jobs:  # as run_group does on a signal: every member checkpointed and 'interrupted'
            for rid in job.fn.run_ids:
                self.exp.run(rid).write_status("interrupted", error="interrupted by SIGTERM at step 3")
            job._result = [{"id": rid, "status": "interrupted", "error": "x", "signal": signum} for rid in job.fn.run_ids]
            job._done = True


def _group_experiment(tmp_path, n_switch: int = 3):
    """A planned lockstep experiment whose CNN is done and whose snapshots exist (files, never read here)."""
    from archrelax.protocol import make_plan

    exp = Store(tmp_path / "exp")
    plan = make_plan(spec_from_dict({**SPEC, "switch_times": list(range(n_switch)), "lockstep": True}))
    exp.root.mkdir(parents=True)
    exp.write_plan(plan)
    cnn = next(rid for rid, r in plan.items() if r.kind == "cnn")
    exp.run(cnn).write_status("done", epoch=2, step=4)  # 2 steps per epoch (40 images, batch 20)
    for r in plan.values():
        if r.depends_on is not None:
            snap = exp.snapshot_for(r)
            snap.parent.mkdir(parents=True, exist_ok=True)
            snap.write_bytes(b"")
    return exp, plan, cnn, [rid for rid, r in plan.items() if r.kind == "efcn"]


def test_group_job_is_checkpointable_and_pickles(tmp_path):
    import pickle

    from submitit.helpers import DelayedSubmission

    from archrelax.protocol import GroupJob, RunJob
    from archrelax.protocol.executors import make_job

    job = make_job(str(tmp_path), ["a", "b"])
    assert isinstance(job, GroupJob) and job.run_ids == ["a", "b"]
    assert isinstance(make_job(str(tmp_path), ["a"]), RunJob) and not isinstance(make_job(str(tmp_path), ["a"]), GroupJob)
    again = pickle.loads(pickle.dumps(job))
    assert repr(again) == repr(job) == f"GroupJob({str(tmp_path)!r}, ['a', 'b'])"
    delayed = job.checkpoint()  # what submitit's handler requeues on Slurm's warning: this very group
    assert isinstance(delayed, DelayedSubmission) and delayed.function is job


def test_scheduler_submits_a_group_as_one_job_recorded_in_every_member(tmp_path):
    from archrelax.protocol import GroupJob
    from archrelax.protocol.executors import execute

    exp, plan, cnn, efcn = _group_experiment(tmp_path)
    ex = _Executor(exp)
    orig = ex.submit

    def submit(fn):  # finishes at once, as run_group reports
        job = orig(fn)
        job._done, job._result = True, [{"id": rid, "status": "done", "error": None} for rid in fn.run_ids]
        return job

    ex.submit = submit
    logs: list[str] = []
    result = execute(exp, plan, ex, poll_s=0.01, log=logs.append, lockstep=True)
    assert len(ex.submitted) == 1 and isinstance(ex.submitted[0], GroupJob) and ex.submitted[0].run_ids == efcn
    assert {rid: exp.run(rid).read_job().job_id for rid in efcn} == {rid: "91" for rid in efcn}  # every member's
    assert exp.run(cnn).read_job() is None
    assert result == {cnn: "done", **{rid: "done" for rid in efcn}}


def test_rerun_follows_a_live_group_job_for_its_unfinished_members(tmp_path):
    """A rerun adopts the live job of a group (job.json in each member) once, for the members not finished,
    and reads each member's outcome by its id from the job's result, which lists the whole group."""
    from archrelax.protocol.executors import execute
    from archrelax.store import JobRecord

    exp, plan, cnn, efcn = _group_experiment(tmp_path)
    for rid in efcn:
        exp.run(rid).write_job(JobRecord.now("77_0", folder=str(exp.root / "slurm")))
    exp.run(efcn[0]).write_status("done")  # finished before the rerun
    group = [{"id": efcn[0], "status": "done", "error": None}, {"id": efcn[1], "status": "done", "error": None},
             {"id": efcn[2], "status": "failed", "error": "RuntimeError: boom"}]
    job = _Job("77_0", group)
    ex = _Executor(exp, adopted={rid: job for rid in efcn[1:]})  # adopt() is asked about unfinished runs only
    logs: list[str] = []
    result = execute(exp, plan, ex, poll_s=0.01, log=logs.append, lockstep=True)
    assert ex.submitted == []  # nothing submitted again
    assert f"  {efcn[1]}, {efcn[2]}: following their live job 77_0 (submitted earlier)" in logs, logs
    assert result == {cnn: "done", efcn[0]: "done", efcn[1]: "done", efcn[2]: "failed"}
    assert f"  {efcn[2]}: failed (RuntimeError: boom)" in logs, logs


def test_a_signal_to_the_scheduler_goes_once_to_a_group_job(tmp_path):
    import os
    import signal

    from archrelax.protocol.executors import execute
    from archrelax.signals import Interrupted

    exp, plan, cnn, efcn = _group_experiment(tmp_path, n_switch=2)
    ex = _Executor(exp)
    orig = ex.submit

    def submit(fn):
        job = orig(fn)
        job.fn = fn
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, while the group's job is in flight
        return job

    ex.submit = submit
    logs: list[str] = []
    with pytest.raises(Interrupted) as e:
        execute(exp, plan, ex, poll_s=0.01, log=logs.append, lockstep=True)
    assert e.value.exit_code == 143
    assert len(ex.interrupts) == 1 and ex.interrupts[0][0] == signal.SIGTERM and len(ex.interrupts[0][1]) == 1
    assert "SIGTERM: stopping; 2 run(s) in flight stop after their current step, nothing more starts" in logs, logs
    assert all(f"  {rid}: interrupted" in logs for rid in efcn), logs
    assert [exp.run(rid).read_status().status for rid in efcn] == ["interrupted"] * 2
    assert "2 run(s) interrupted" in str(e.value)
