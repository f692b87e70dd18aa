"""The Slurm path of the protocol, driven through submitit's own LocalExecutor (same code path as Slurm:
AutoExecutor, job arrays via executor.batch(), pickled run_one jobs in fresh processes)."""
from __future__ import annotations

from pathlib import Path

import pytest

from archrelax.protocol import Store, run_experiment, spec_from_dict, submitit_executor

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


def test_slurm_options_reach_submitit(tmp_path):
    """The warning delay (sbatch --signal=USR2@N), the cap on requeues after a time limit, and a dependency
    (afterok, cancelled when it cannot be met) are what submitit submits with."""
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
