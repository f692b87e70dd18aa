"""The table of faults and bad inputs: one test per row, each asserting the outcome.

"before": the code this work started from (71b6fde), run on this machine; "after": what the row asserts.
Rows marked [slurm] are in tests/test_slurm.py (a real one-node cluster; they skip without one); rows
marked [area] call the check that lives beside the code concerned (test_config, test_train, test_relax).

| case | before | after (asserted) |
|---|---|---|
| SIGTERM to `archrelax train` mid-epoch, then rerun | rc -15 (143 in a shell), status left `running`, resumes from the last periodic checkpoint (30 steps lost of 130) | rc 143, `interrupted` at the step reached, checkpoint at that step; rerun starts there (0 steps redone), metrics and weights equal an uninterrupted run |
| SIGINT to `archrelax train` | rc 130, `failed: KeyboardInterrupt`, 30 steps lost | as SIGTERM, rc 130 |
| SIGUSR1 to `archrelax train` | rc -10 (138 in a shell), `running`, 30 steps lost | as SIGTERM, rc 138 |
| a second signal while the state is saved, or after the stop unwound; nested handlers | (CI, 2026-11-30: a second signal after the stop unwound killed `archrelax train` by that signal, rc -15, or raised KeyboardInterrupt) | ignored (the command line keeps them ignored once a clean stop unwound); handlers nest, inherit a stop, are restored for library callers |
| SIGINT to `archrelax run` (in-process) | rc 130, the CNN `failed: KeyboardInterrupt` | rc 130, the CNN `interrupted`, one message line; rerun equals an uninterrupted run |
| SIGTERM to `archrelax run --workers 2` (the whole group) | rc -15; both workers (787 MB, 492 MB) and the resource tracker left under PID 1, the orphan training on | rc 143, runs `interrupted`, no process left; rerun equals an uninterrupted run |
| kill -9 of `archrelax run --workers 2` | workers (745 MB, 456 MB) and tracker (12 MB) left under PID 1, blocked forever | every process gone within seconds; the CNN `interrupted by SIGHUP` with its checkpoint |
| `archrelax run --detach` without a Slurm cluster (local executor, `slurm.cluster: local`) | rc 2: "unrecognized arguments: --detach" | rc 2, one line saying why, nothing created |
| `archrelax run` with a data path that does not exist | rc 1, experiment folder created, every run `failed` | rc 2, one line naming the path, nothing created |
| a data set with one class | trained to 100 % "accuracy", rc 0 | rc 2, one line naming source and class, nothing created; load_data refuses it |
| zip member with a bad CRC (stored) | loaded silently | ValueError naming archive and member |
| corrupt deflated zip member | zlib.error traceback naming no file | ValueError naming archive and member |
| read-only output: train / run / analyse / report | tracebacks of 15 / 15 / 21 / 24 lines | one line naming the path, rc 1, nothing written |
| full disk: train / run / analyse / report | 59 lines (status left `running`) / 80 / 19 / 17 lines, 3 stray figures | one line naming the path, rc 1, no partial file, no file left open |
| `lr: 1e-3` in a spec, `--set train.lr=1e-3` [area] | rc 2: "'train.lr' = '1e-3' has the wrong type; allowed: a number" | read as 0.001 (a float) both ways |
| typo in `archrelax train --model-kwargs` [area] | rc 1, 22-line TypeError traceback, run folder left behind | rc 2, one line naming the key, the closest parameter and the factory's parameters; nothing created |
| typo in a spec's model_kwargs, `archrelax run` [area] | rc 1, folder created, all 4 runs `failed` (TypeError) | rc 2, one line, nothing created |
| memory guard override: `archrelax train --force` [area] | rc 2: "unrecognized arguments: --force" | refused without it, trained with it, also on resume |
| `relax()` of a model taking several tensors [area] | ValueError "only one element tensors can be converted to Python scalars" | relaxed exactly (eLCN and eFCN) from a tuple of tensors |
| `relax()` of a model taking a dict [area] | ValueError "invalid literal for int() with base 10: 'image'" | relaxed exactly from a dict of tensors |
| a run through Slurm, accounting disabled [slurm] | 18 lines of sacct warnings for 4 runs | at most 1 line; summary equals a local run |
| `scancel --signal=TERM` to a job mid-run [slurm] | the scheduler never returned (killed at 100 s), the CNN left `running` | scheduler returns (rc 1), run `interrupted`; rerun resumes at that step, equals a local run |
| `scontrol requeue` of a job mid-run [slurm] | SIGTERM ignored by submitit ("Bypassing signal SIGTERM"): trains on until killed after KillWait, losing the steps since its last checkpoint | the job saves its run and leaves no result; the scheduler waits; the requeued job resumes at that step (one resume line), equals a local run |
| USR2 (Slurm's time-limit warning, `scancel --signal=USR2`) mid-run, with the scheduler [slurm] | CNN `failed: UncompletedJobError: Job not requeued because: timed-out and not checkpointable`, its dependants `failed`, rc 1 | the run checkpoints, the job requeues itself; the scheduler waits; resumes at that step (one resume line), equals a local run |
| USR2 to a job of a detached run [slurm] | (no detached mode) | requeues itself, status says so and `archrelax status` shows `PENDING (BeginTime)`; resumes at that step with no process following; equals a local run |
| `archrelax run --executor slurm --detach`, `archrelax status` while queued [slurm] | rc 2: "unrecognized arguments: --detach" | 4 jobs submitted at once (eFCNs afterok on the CNN's job), job.json per run; status shows `slurm 125_1 PENDING (Dependency)` beside `pending`; finishes like a local run |
| rerun `--detach` with every job queued, then with one cancelled, then finished [slurm] | (no detached mode) | 0 submissions; exactly 1 (afterok on the CNN's live job); 0 |
| one byte flipped in the tensor data of `checkpoints/last.pt` of a stopped `archrelax train`, then the same command (rows from here: before = c424527) | `resuming R at step 49`, rc 0, `done` at train accuracy 0.10 from the damaged weights (the issue's run: `diverged`, a final state that `archrelax run` never retries) | rc 2, one line naming the file and both restarts; status `damaged`; `--restart intact` resumes at the latest intact snapshot (step 40), `--restart scratch` at step 0; both end with the metrics and weights of an uninterrupted run |
| the same in an experiment: `archrelax run`, then `archrelax run` again | the CNN resumed from the damaged weights and ended `done` | the first marks it `damaged` (the log, `archrelax status`, summary.csv; the epoch where it stopped kept) while the others finish; the second restarts it from its latest intact snapshot: summary equals an uninterrupted run's |
| one label byte flipped in the decoded data cache (`imagefolder-*.pt`) | rc 0, no word, that label swapped | one warning naming the cache, decoded again from the source: the labels right, the cache rewritten |
| `archrelax train --relax fc --from SNAP` with one byte of SNAP flipped | rc 0, trained from the damaged weights | rc 2, one line naming the snapshot and what to do; nothing trained, no run folder left |
| `archrelax analyse` with one byte of a run's `final.pt` flipped | analysed from the damaged weights | the run under `missing`, the reason naming the damaged file |
| `relax()` of `fc(relu(self.conv(x) / self.conv.weight.abs().mean()))`, and `archrelax train --relax fc --from SNAP` of it [area] | an eFCN whose outputs differ by up to 536; its first metrics row: train loss 225 (the CNN's snapshot: 3.2), rc 0 | RelaxCheckError naming the likely causes (also for a functional conv); `check=False` skips it; the command: rc 2, one line, nothing trained |
| `pytest` on a machine without Slurm | `1 failed, 636 passed, 9 skipped`: test_slurm_options_reach_submitit, "Could not detect srun" | skipped with the reason ("no sbatch on PATH ..."), asserted with PATH emptied |
| a module that src/ imports but pyproject.toml does not declare (scipy, arriving through mlxtend) | scipy undeclared | every third-party import of src/ is a declared dependency (read from the AST) |
| SIGHUP to `archrelax train` (`kill -HUP`; rows from here: before = fee0118) | rc -1 (129 in a shell), no message, status left `running` at step 48, the steps since its last periodic checkpoint lost | as SIGTERM, rc 129 |
| the terminal of `archrelax train` closes (a pty hung up: SIGHUP, then every write to it fails with EIO) | rc -1 (129 in a shell), no message, status left `running` | rc 129, `interrupted` at the step reached, checkpoint at that step (a hung-up terminal's stdout/stderr are pointed at /dev/null: without that, rc 1 from the progress bar's OSError); rerun equals an uninterrupted run |
| SIGHUP to `archrelax run --workers 2` (the whole group, as a closing terminal's shell sends it) | rc -1 (129), no message; the runs saved only because the scheduler's death sent its workers their death signal | rc 129, one message line, runs `interrupted`, no process left (multiprocessing's resource tracker starts with SIGHUP blocked: killed, its successor printed KeyError tracebacks); rerun equals an uninterrupted run |
| SIGHUP to a lockstep group (`train_lockstep`) | rc -1, members left `running` | rc 129, every member checkpointed and `interrupted` |
| `nohup archrelax train`, then SIGHUP | trains on (SIGHUP was never handled, so it stayed ignored) | trains on to `done`, rc 0, by rule: a process started with SIGHUP ignored keeps ignoring it (so do `archrelax run`'s workers, which inherit it) |
| metrics.jsonl cut to 3 of its 5 rows after `archrelax train` stopped at step 48, then the same command | `resuming R at step 48`, rc 0, a log of steps [0, 10, 20, 50, 60, ...] | rc 2, one line naming the log, last.pt and both restarts; status `damaged`; `--restart intact` resumes at the latest snapshot whose rows the log holds (epoch_2, step 20); both restarts end with the uninterrupted run's metrics and weights |
| one figure of a metrics row edited, then the same command | resumed as it stood, the edited row kept | the same, "the log lost, changed or replaced rows" (every checkpoint holds the digest of the rows it was written after); `--restart scratch` starts at step 0 |
| the same in an experiment (the CNN's last row lost): `archrelax status`, then `archrelax run` twice | the CNN resumed past the lost row, its log short for good | `incomplete` ("interrupted, but metrics.jsonl holds N rows where status.json recorded N+1"); the first run marks it `damaged` while the others finish; the second restarts it from its latest snapshot the log covers: summary equals an uninterrupted run's |
| metrics.jsonl, or final.pt, of a done run deleted, then the same command | rc 0, `done at epoch 10: train acc nan, test acc nan`; rc 0, `done` with no final weights | rc 2, one line: done, but its record is incomplete (what is missing), and the fixes; `--restart intact` trains it again (from scratch: no snapshot's rows are in the empty log; from last.pt at the end: final.pt rewritten), to the uninterrupted run's metrics and weights |
| `archrelax status` of an experiment with one done run's log cut and another's final.pt deleted | both `done`, rc 0 | both `incomplete`, the error column saying what is missing, rc 1 |
| config.json edited (lr 0.1 -> 0.2) and the matching command run (`--lr 0.2`) | the lr-0.1 checkpoint resumed, rc 0, its final.pt recording lr 0.2 | rc 2, one line naming config.json, last.pt and the key (`lr: 0.1 -> 0.2`), with `--restart scratch` too; status `failed`, checkpoint and log untouched |
| an experiment copied (`cp -a A B`), A's runs deleted, then a run of B retrained and `archrelax analyse B --force` (rows from here: before = 03867ac, the tests run on it) | B's config.json files hold `init_from` = absolute paths into A | every recorded path relative to B; the run retrains from B's own snapshot; the analysis gives A's numbers from B's files |
| a file an analysis read replaced by other content of the same size, mtime kept | (the cache key was path, size and mtime: not run, the two runs' files differ in size there) | recomputed: the key is the content digest the file carries |
| `kill -9` of the worker training the CNN, `archrelax run --workers 2`, the FCN baseline training beside it | the CNN `failed: BrokenProcessPool: A process in the process pool was terminated abruptly while the future was running or pending.` (the issue's probe: a finished run reported so too, a healthy one stopped) | the CNN `failed: worker process N was killed by SIGKILL ... while it trained cnn-...`; the baseline trains on to `done`, no error; rc 1 |
| `archrelax run --force OTHER-SPEC EXP` while an `archrelax run` trains in EXP | rc 0, spec and plan replaced while the first process trained on | rc 2, one line: the folder is in use (`archrelax run` pid N on host H), nothing changed; accepted once that run ended |
| `archrelax report` after a writer was killed (a `.report-new-*` folder left; or killed between its renames: report/ gone, `.report-old-*` left) | the debris stays for good | cleared; report/ whole |
| `--set 'seeds=[0,'`, `--set 'train={lr: 0.1'` | a yaml traceback (the issue: 53 lines) | rc 2, one line naming the key, the value and the column; nothing created |
| a spec file that is not YAML | 9 lines of PyYAML's message with carets | one line naming the file, line, column and the key (`in the value of 'seeds' from line 2`) |
| `archrelax run --workers 0` (or `-2`) | rc 2, but spec.yaml, plan.json and summary.csv written first | rc 2, one line by the spec's own check (`'workers' = 0 is out of range`), nothing created |
| a relaxed run whose CNN snapshot was deleted after the CNN wrote it | "was not written: run ... ended with status 'done' at epoch 2 before this switch time" (false) | "is missing: run ... is 'done' at epoch 2, past this switch time 1, so it wrote the file, which has been deleted or moved since", with the fixes |
| `train.tensorboard: true` without the tensorboard package: `archrelax run`, `archrelax train --tensorboard` | validation passed, every run failed at its start, rc 1 | rc 2, one line naming the key, the package and `--set train.tensorboard=false`; nothing created |
| `archrelax run EXP --set train.tensorboard=false` on a folder made with it true (also force_memory, checkpoint_every_s) | refused: "holds a different spec ... train.tensorboard: True -> False" | accepted: a runtime setting changes no run id; nothing retrained (train.lr still refused) |
| `archrelax train --data imagefolder:/missing --out D` | rc 2, D left with config.json, status.json and .lock | rc 2, one line naming the path; no D |
| a run that failed (its error.log written) then succeeded on the next `archrelax run` | the old traceback kept in error.log beside `done` | error.log removed with the failure it recorded |
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import importlib.util
import io
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from archrelax.cli import main as cli_main
from archrelax.data import load_data
from archrelax.protocol import run_experiment, spec_from_dict
from archrelax.signals import STOP_SIGNALS, Interrupted, StopOnSignals
from archrelax.train import load_checkpoint, read_metrics

import test_config as config_tests  # modules, not functions: pytest collects nothing twice
import test_relax as relax_tests
import test_train as train_tests

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CLI = [sys.executable, "-m", "archrelax.cli"]
# `archrelax ARGS` started with SIGHUP as `how` says: "default" (whatever this process inherited: CI may run the suite
# under nohup), "nohup" (ignored, as nohup leaves it), or "tty" (default, and the pty on its stdin made its controlling
# terminal, so closing the pty hangs it up as a closed terminal does; the process must lead a new session)
_LAUNCH = textwrap.dedent("""
    import fcntl, os, signal, sys, termios
    how = sys.argv.pop(1)
    signal.signal(signal.SIGHUP, signal.SIG_IGN if how == "nohup" else signal.SIG_DFL)
    if how == "tty":
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
""")


def launched(how: str, *args: str) -> list[str]:
    return [sys.executable, "-c", _LAUNCH, how, "-m", "archrelax.cli", *args]
VOLATILE = ("wall_time", "peak_mem_bytes")

# `archrelax train`: 10 steps per epoch, 10 epochs; status.json is rewritten at every checkpoint (3 steps)
TRAIN_ARGS = ["vanilla_cnn", "--model-kwargs", '{"width": 8}', "--data", "synthetic:1x28x28:10:200:100",
              "--batch-size", "20", "--epochs", "10", "--eval-times", "every", "--device", "cpu"]
TOTAL_STEPS = 100

# `archrelax run`: a CNN long enough to be caught mid-run (2 steps per epoch), eFCNs and the FCN baseline
SPEC = {
    "name": "faults",
    "model": "vanilla_cnn",
    "model_kwargs": {"width": 2},
    "data": "synthetic:1x28x28:2:40:20",
    "train": {"batch_size": 20, "lr": 0.05, "eval_times": "log:4", "device": "cpu"},
    "cnn": {"epochs": 60, "until_zero_loss": False},
    "relaxed": {"epochs": 1, "until_zero_loss": False},
    "switch_times": [0, 1],
    "targets": ["fc"],
    "baselines": ["fcn"],
}


def _cli(*args: str) -> subprocess.CompletedProcess:
    """``archrelax ARGS`` in this process (same code path, no interpreter start-up): rc, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _threads(1):
        rc = cli_main(list(args))
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def summary(exp: Path) -> list[dict]:
    with open(exp / "summary.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in csv.DictReader(f)]


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def wait_for(predicate, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group, from /proc (zombies excluded)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


# ---- signals: `archrelax train` -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    with _threads(1):  # as in the subprocesses (OMP_NUM_THREADS=1): the same numbers
        assert cli_main(["train", *TRAIN_ARGS, "--out", str(out)]) == 0
    return out


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1], ids=lambda s: s.name)
def test_train_signal_mid_epoch_checkpoints_and_resumes_with_no_step_redone(train_reference, tmp_path, sig, capsys):
    run = tmp_path / "run"
    args = ["train", *TRAIN_ARGS, "--checkpoint-every-steps", "3", "--out", str(run)]
    cmd = launched("default", *args) if sig == signal.SIGHUP else [*CLI, *args]  # SIGHUP may be inherited ignored
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def mid_run() -> bool:
        try:
            return status(run).get("step", 0) >= 13  # inside the second epoch
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    wait_for(lambda: mid_run() or proc.poll() is not None, what="the run's first checkpoints")
    assert proc.poll() is None, f"finished before the signal: {proc.communicate()}"
    proc.send_signal(sig)
    time.sleep(0.005)
    proc.send_signal(sig)  # an impatient second one: noted, not acted on while the state is saved
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, err[-2000:])
    st = status(run)
    stopped = st["step"]
    assert st["status"] == "interrupted" and sig.name in st["error"], st
    assert 13 <= stopped < TOTAL_STEPS
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == stopped  # the very step it stopped at
    assert not (run / "final.pt").exists()
    assert err.strip().splitlines()[-1] == f"archrelax train: {st['error']}"

    # the rerun starts at that step (its progress bar opens there): no step redone
    capsys.readouterr()
    assert cli_main(["train", *TRAIN_ARGS, "--progress", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    first = re.search(rf"(\d+)/{TOTAL_STEPS}", err)
    assert first and int(first.group(1)) == stopped, err[:500]
    assert status(run)["status"] == "done"
    ref = train_reference
    assert stable(read_metrics(run / "metrics.jsonl")) == stable(read_metrics(ref / "metrics.jsonl"))
    a, b = load_checkpoint(run / "final.pt")["model"], load_checkpoint(ref / "final.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _status_step(run: Path) -> int:
    try:
        return status(run).get("step") or 0
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_closed_terminal_stops_train_cleanly_and_rerun_matches(train_reference, tmp_path, capsys):
    """The terminal `archrelax train` runs in closes (a closed window, a dropped ssh session): SIGHUP, and from then
    on every write to the terminal fails (EIO), the progress bar's and the last message's included."""
    run = tmp_path / "run"
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 0 columns: tqdm would draw nothing
    proc = subprocess.Popen(launched("tty", "train", *TRAIN_ARGS, "--checkpoint-every-steps", "3", "--out", str(run)),
                            stdin=slave, stdout=slave, stderr=slave, env=ENV, start_new_session=True)
    os.close(slave)
    shown = bytearray()
    try:
        deadline = time.monotonic() + 120
        while _status_step(run) < 13 and proc.poll() is None:  # drain the terminal meanwhile: a full pty blocks
            assert time.monotonic() < deadline, "timed out waiting for the run's first checkpoints"
            if select.select([master], [], [], 0.05)[0]:
                with contextlib.suppress(OSError):
                    shown += os.read(master, 1 << 16)
        assert proc.poll() is None, f"finished before the terminal closed: {bytes(shown[-2000:])}"
    finally:
        os.close(master)  # the terminal hangs up: SIGHUP to the process it controls
    assert re.search(rb"\d+/100 ", shown), bytes(shown[-2000:])  # the progress bar was on the terminal
    assert proc.wait(timeout=120) == 128 + signal.SIGHUP  # before: -1 (129 in a shell), status left 'running'
    st = status(run)
    assert st["status"] == "interrupted" and st["error"].startswith(f"interrupted by SIGHUP at step {st['step']} "), st
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == st["step"]
    capsys.readouterr()
    assert cli_main(["train", *TRAIN_ARGS, "--out", str(run)]) == 0
    assert f"resuming {run} at step {st['step']} " in capsys.readouterr().err
    _same_run(run, train_reference)


def test_sighup_leaves_a_run_started_under_nohup_training(train_reference, tmp_path):
    """A process started with SIGHUP ignored (nohup) keeps ignoring it: its user asked the run to outlive the terminal."""
    run = tmp_path / "run"
    proc = subprocess.Popen(launched("nohup", "train", *TRAIN_ARGS, "--out", str(run)), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: _status_step(run) >= 13 or proc.poll() is not None, what="the run's first checkpoints")
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    _same_run(run, train_reference)


def test_sighup_stops_a_lockstep_group(tmp_path):
    """train_lockstep takes SIGHUP as a stop like the others: every member checkpointed and 'interrupted', exit 129."""
    code = textwrap.dedent("""
        import sys
        from archrelax.signals import Interrupted
        from archrelax.train.lockstep import train_lockstep
        cfg = dict(model="vanilla_cnn", model_kwargs={"width": 4}, data="synthetic:1x28x28:10:200:100", batch_size=20,
                   epochs=20, eval_times="log:3", device="cpu", progress=False, checkpoint_every_steps=2)
        try:
            train_lockstep([{**cfg, "seed": 0}, {**cfg, "seed": 1}], sys.argv[1:3], log=print)
        except Interrupted as e:
            sys.exit(e.exit_code)
    """)
    runs = [tmp_path / "a", tmp_path / "b"]
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, "default", "-c", code, *map(str, runs)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: min(map(_status_step, runs)) >= 4 or proc.poll() is not None, what="the group's checkpoints")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGHUP, err[-2000:]
    for run in runs:
        st = status(run)
        assert st["status"] == "interrupted" and "SIGHUP" in st["error"], st
        assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == st["step"]


def test_signal_handlers_nest_inherit_and_are_restored():
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with StopOnSignals() as outer:
        os.kill(os.getpid(), signal.SIGUSR1)  # recorded, not fatal (the default action would end pytest)
        wait_for(lambda: outer.signum is not None, timeout=5, what="the handler")
        with StopOnSignals() as inner:  # e.g. the trainer entered after the scheduler got the signal
            assert inner.signum == signal.SIGUSR1
            with pytest.raises(Interrupted) as e:
                inner.check("stopping")
            assert e.value.exit_code == 128 + signal.SIGUSR1 and str(e.value) == "stopping"
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    seen = []  # outside the main thread nothing is installed (signal.signal would raise there)

    def in_thread() -> None:
        with StopOnSignals() as block:
            seen.append(block.signum)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert seen == [None] and {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def test_signal_after_the_stop_unwound_is_ignored_by_the_command_line():
    """A second signal that lands after the trainer's block has exited (an impatient Ctrl-C while the
    process prints its message and exits) must not turn exit status 128 + N into a death by signal or a
    KeyboardInterrupt traceback; a library caller gets its previous handlers back."""
    code = textwrap.dedent("""
        import os, signal, sys, time
        from archrelax.signals import Interrupted, StopOnSignals, exit_after_stop
        # Python's own handler, also where this runs as a background job (which inherits SIGINT ignored)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        exit_after_stop(sys.argv[1] == "cli")
        try:
            with StopOnSignals() as stop:
                stop.signum = signal.SIGINT
                stop.check("stopping")
        except Interrupted as e:
            for s in (signal.SIGINT, signal.SIGTERM) if sys.argv[1] == "cli" else (signal.SIGINT,):
                os.kill(os.getpid(), s)
            time.sleep(0.5)  # a pending Python-level handler runs here at the latest
            sys.exit(e.exit_code)
    """)
    cli = subprocess.run([sys.executable, "-c", code, "cli"], env=ENV, capture_output=True, text=True, timeout=60)
    assert (cli.returncode, cli.stderr) == (130, "")
    lib = subprocess.run([sys.executable, "-c", code, "lib"], env=ENV, capture_output=True, text=True, timeout=60)
    # Python's own SIGINT handler is back: KeyboardInterrupt, uncaught, ends the process by SIGINT
    assert lib.returncode == -signal.SIGINT and "KeyboardInterrupt" in lib.stderr


# ---- signals: `archrelax run` ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "faults.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


@pytest.fixture(scope="module")
def run_reference(tmp_path_factory) -> Path:
    """SPEC trained once, uninterrupted, in this process."""
    exp = tmp_path_factory.mktemp("ref") / "exp"
    with _threads(1):
        run_experiment(spec_from_dict(SPEC), exp, log=lambda s: None)
    return exp


def _start_run(spec_file: Path, exp: Path, *extra: str, hup: str | None = None) -> subprocess.Popen:
    args = ["run", str(spec_file), "--out", str(exp), "--poll", "0.2", *extra]
    return subprocess.Popen(launched(hup, *args) if hup else [*CLI, *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _cnn_mid_run(exp: Path, proc: subprocess.Popen, step: int = 20) -> None:
    def ready() -> bool:
        for st in exp.glob("runs/cnn-*/status.json"):
            try:
                if json.loads(st.read_text()).get("step", 0) >= step:
                    return True
            except json.JSONDecodeError:
                pass
        return proc.poll() is not None

    wait_for(ready, what="the CNN's first checkpoints")
    assert proc.poll() is None, f"finished before the signal: {proc.communicate()}"


def test_run_sigint_in_process_marks_interrupted_and_rerun_matches(spec_file, run_reference, tmp_path):
    exp = tmp_path / "exp"
    proc = _start_run(spec_file, exp)
    _cnn_mid_run(exp, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    states = {r["id"]: r for r in summary(exp)}
    cnn = next(r for r in states.values() if r["kind"] == "cnn")
    assert cnn["status"] == "interrupted" and "SIGINT" in cnn["error"], cnn  # before: 'failed', "KeyboardInterrupt"
    assert "failed" not in {r["status"] for r in states.values()}
    assert err.strip().splitlines()[-1].startswith("archrelax run: stopped by SIGINT: 1 run(s) interrupted")
    assert cli_main(["run", str(exp)]) == 0  # resumes in this process (one thread, like the subprocess)
    assert summary(exp) == summary(run_reference)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_run_workers_sigterm_to_group_stops_all_cleanly_and_rerun_matches(spec_file, run_reference, tmp_path, sig):
    exp = tmp_path / "exp"
    proc = _start_run(spec_file, exp, "--workers", "2", hup="default" if sig == signal.SIGHUP else None)
    _cnn_mid_run(exp, proc)
    os.killpg(proc.pid, sig)  # as a job system, `kill -- -PGID` or a closing terminal's shell does: every process gets it
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    wait_for(lambda: not group_pids(proc.pid), timeout=15, what="the workers to exit")
    states = [r["status"] for r in summary(exp)]
    assert "interrupted" in states and not {"running", "failed"} & set(states), states
    assert cli_main(["run", str(exp)]) == 0
    assert summary(exp) == summary(run_reference)


def test_kill_9_of_run_with_workers_leaves_no_process(spec_file, tmp_path):
    exp = tmp_path / "exp"
    proc = _start_run(spec_file, exp, "--workers", "2")
    _cnn_mid_run(exp, proc)
    before = group_pids(proc.pid)
    assert len(before) >= 3, before  # the scheduler, its resource tracker and at least one worker
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    wait_for(lambda: not group_pids(proc.pid), timeout=20, what=f"processes {group_pids(proc.pid)} to exit")
    gone_after = time.monotonic() - t0
    assert gone_after < 20
    # the worker training the CNN saw its parent die, saved its state and said why
    cnn = next(exp.glob("runs/cnn-*"))
    st = status(cnn)
    assert st["status"] == "interrupted" and "SIGHUP" in st["error"], st
    assert load_checkpoint(cnn / "checkpoints" / "last.pt")["step"] == st["step"]


# ---- bad inputs ------------------------------------------------------------------------------------------


def test_run_with_missing_data_path_fails_before_anything(tmp_path, spec_file):
    spec = {**SPEC, "data": f"imagefolder:{tmp_path / 'no' / 'such.zip'}"}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = _cli("run", str(path), "--out", str(tmp_path / "exp"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"archrelax run: error: data 'imagefolder:{tmp_path}/no/such.zip': {tmp_path}/no/such.zip does not exist "
        "(expected a folder or .zip with train/ and test/)"]
    assert not (tmp_path / "exp").exists()  # before: 5 runs created and failed


def _zip(path: Path, compression: int, classes=("a", "b"), corrupt: str | None = None) -> Path:
    """An ImageFolder zip of tiny generated JPEGs; ``corrupt``: flip a byte in the middle of that member."""
    import warnings

    from torchvision.io import encode_jpeg

    g = torch.Generator().manual_seed(0)
    with zipfile.ZipFile(path, "w", compression=compression) as zf, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        for split in ("train", "test"):
            for c in classes:
                for i in range(3):
                    img = (torch.rand(3, 28, 28, generator=g) * 255).to(torch.uint8)
                    zf.writestr(f"{split}/{c}/{i}.jpg", bytes(encode_jpeg(img, quality=95).numpy()))
    if corrupt is not None:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(corrupt)
        raw = bytearray(path.read_bytes())
        name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:][:2], "little"), \
            int.from_bytes(raw[info.header_offset + 28:][:2], "little")
        start = info.header_offset + 30 + name_len + extra_len
        raw[start + info.compress_size // 2] ^= 0xFF
        path.write_bytes(raw)
    return path


@pytest.mark.parametrize("extra, what", [
    (["--executor", "local"], "executor 'local'"),
    (["--executor", "slurm", "--set", "slurm.cluster=local"], "slurm.cluster 'local'"),
], ids=["local executor", "local submitit cluster"])
def test_detach_without_a_slurm_cluster_is_refused_before_anything(tmp_path, spec_file, extra, what):
    r = _cli("run", str(spec_file), "--out", str(tmp_path / "exp"), "--detach", *extra)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"archrelax run: error: --detach needs a Slurm cluster (--executor slurm, slurm.cluster: slurm), not {what}: "
        "a detached run leaves no process behind to run local jobs"]
    assert not (tmp_path / "exp").exists()


def test_one_class_data_set_is_refused(tmp_path):
    one = _zip(tmp_path / "one.zip", zipfile.ZIP_STORED, classes=("cat",))
    with pytest.raises(ValueError, match=r"only class 'cat' found; classification needs at least 2 classes"):
        load_data(f"imagefolder:{one}", cache_dir=tmp_path / "cache")  # before: trained to 100 % "accuracy"
    with pytest.raises(ValueError, match=r"train_size=1 keeps a single class"):
        load_data("synthetic:1x28x28:2:40:20", train_size=1)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "data": "synthetic:1x28x28:1:40:20"}))
    r = _cli("run", str(path), "--out", str(tmp_path / "exp"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "archrelax run: error: data 'synthetic:1x28x28:1:40:20': only class 'class0' found; classification needs "
        "at least 2 classes"]
    assert not (tmp_path / "exp").exists()


def test_stored_zip_member_with_bad_crc_is_named(tmp_path):
    bad = _zip(tmp_path / "stored.zip", zipfile.ZIP_STORED, corrupt="train/a/1.jpg")
    with pytest.raises(ValueError) as e:  # before: loaded silently (a JPEG decodes around a flipped byte)
        load_data(f"imagefolder:{bad}", cache_dir=tmp_path / "cache")
    assert str(e.value) == f"imagefolder {bad}: member train/a/1.jpg is corrupt (CRC-32 mismatch)"


def test_corrupt_deflated_zip_member_is_named(tmp_path):
    bad = _zip(tmp_path / "deflated.zip", zipfile.ZIP_DEFLATED, corrupt="train/b/2.jpg")
    with pytest.raises(ValueError) as e:  # before: a zlib traceback naming no file
        load_data(f"imagefolder:{bad}", cache_dir=tmp_path / "cache")
    assert str(e.value).startswith(f"imagefolder {bad}: member train/b/2.jpg is corrupt or unreadable (")


# ---- read-only output, full disk -------------------------------------------------------------------------


def _mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount here (needs root and mount permission): {r.stderr.strip()}")


@pytest.fixture
def mounts():
    """mount(...) helper; everything mounted is unmounted afterwards."""
    done: list[Path] = []

    def mount(target: Path, *args: str) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        _mount(*args, str(target))
        done.append(target)
        return target

    yield mount
    busy = []
    for target in reversed(done):
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            busy.append(target)  # a file left open there (a leaked descriptor): unmount lazily, then fail
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
    assert not busy, f"files left open on {busy}"


def _tmpfs(mount, where: Path, size: str, read_only: bool = False) -> Path:
    return mount(where, "-t", "tmpfs", "-o", ("ro," if read_only else "") + f"size={size}", "tmpfs")


def _fill(folder: Path, leave_kb: int) -> None:
    """Fill the file system of ``folder`` up to ``leave_kb`` KiB free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize - leave_kb * 1024
    if free > 0:
        with open(folder / "filler", "wb") as f:
            f.write(b"\0" * free)


@pytest.fixture(scope="module")
def small_experiment(tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("small") / "exp"
    with _threads(1):
        run_experiment(spec_from_dict({**SPEC, "cnn": {"epochs": 2, "until_zero_loss": False}}), exp, log=lambda s: None)
    return exp




def _one_error_line(r: subprocess.CompletedProcess, command: str, what: str, path: Path) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"archrelax {command}: error: {what}: {path}"), r.stderr[-3000:]


def _no_partial_files(root: Path) -> None:
    """Atomic writes leave no temporary files; JSON files parse; append-only logs end with a newline."""
    for p in root.rglob("*"):
        assert not (p.name.endswith(".tmp") or p.name.startswith((".report-new-", ".report-old-"))), p
        if p.suffix == ".json" and p.is_file():
            json.loads(p.read_text())
        if p.suffix == ".jsonl" and p.is_file() and p.stat().st_size:
            assert p.read_text().endswith("\n"), p


ROFS, NOSPACE = "Read-only file system", "No space left on device"


def test_train_to_read_only_folder(tmp_path, mounts):
    ro = _tmpfs(mounts, tmp_path / "ro", "64k", read_only=True)
    r = _cli("train", *TRAIN_ARGS, "--epochs", "1", "--out", str(ro / "run"))  # before: an OSError traceback
    _one_error_line(r, "train", ROFS, ro / "run")
    assert not any(ro.iterdir())


def test_run_to_read_only_folder(tmp_path, mounts, spec_file):
    ro = _tmpfs(mounts, tmp_path / "ro", "64k", read_only=True)
    r = _cli("run", str(spec_file), "--out", str(ro / "exp"))
    _one_error_line(r, "run", ROFS, ro / "exp")


@pytest.mark.parametrize("command", ["analyse", "report"])
def test_analyse_and_report_on_read_only_experiment(tmp_path, mounts, small_experiment, command):
    ro = mounts(tmp_path / "ro", "--bind", str(small_experiment))
    _mount("-o", "remount,bind,ro", str(ro))
    args = ["analyse", str(ro), "--only", "memory", "--quiet"] if command == "analyse" else ["report", str(ro), "--no-analyse"]
    r = _cli(*args)
    _one_error_line(r, command, ROFS, ro / ("analysis" if command == "analyse" else "report"))


def test_train_on_full_disk(tmp_path, mounts):
    full = _tmpfs(mounts, tmp_path / "full", "256k")
    _fill(full, leave_kb=8)
    r = _cli("train", *TRAIN_ARGS, "--epochs", "1", "--out", str(full / "run"))
    _one_error_line(r, "train", NOSPACE, full / "run")  # before: 59 lines of chained tracebacks
    _no_partial_files(full / "run")


def test_run_on_full_disk(tmp_path, mounts, spec_file):
    full = _tmpfs(mounts, tmp_path / "full", "256k")
    _fill(full, leave_kb=48)
    r = _cli("run", str(spec_file), "--out", str(full / "exp"))
    _one_error_line(r, "run", NOSPACE, full / "exp")
    assert "Traceback" not in r.stdout + r.stderr
    _no_partial_files(full / "exp")


@pytest.mark.parametrize("command", ["analyse", "report"])
def test_analyse_and_report_on_full_disk(tmp_path, mounts, small_experiment, command):
    size_kb = sum(p.stat().st_size for p in small_experiment.rglob("*") if p.is_file()) // 1024 + 512
    full = _tmpfs(mounts, tmp_path / "full", f"{size_kb}k")
    shutil.copytree(small_experiment, full / "exp")
    exp = full / "exp"
    before = sorted(p.relative_to(exp) for p in exp.rglob("*"))
    _fill(full, leave_kb=0)
    args = ["analyse", str(exp), "--only", "memory", "--quiet"] if command == "analyse" else ["report", str(exp), "--no-analyse"]
    r = _cli(*args)
    _one_error_line(r, command, NOSPACE, exp / ("analysis" if command == "analyse" else "report"))
    _no_partial_files(exp)
    new = sorted(set(p.relative_to(exp) for p in exp.rglob("*")) - set(before))
    assert all(p.is_dir() for p in (exp / n for n in new)), new  # at most empty folders, no file


# ---- bad inputs of other areas: the check lives beside the code, the row is here ----------------------------


def test_lr_1e_3_in_a_spec_and_in_set(tmp_path):
    config_tests.check_notation(tmp_path, "1e-3", "train.lr", 0.001)


def test_typo_in_train_model_kwargs(tmp_path, capsys):
    config_tests.check_bad_input(
        tmp_path, capsys, ["train", "vanilla_cnn", "--model-kwargs", '{"widht": 32}', *config_tests.D, "--out", "OUT"],
        2, "model 'vanilla_cnn' has no option 'widht'; did you mean 'width'? (vanilla_cnn takes: width, num_classes, "
           "in_channels, input_size)")


def test_typo_in_run_model_kwargs(tmp_path, capsys):
    config_tests.check_bad_input(
        tmp_path, capsys, ["run", "SPEC", "--set", "model_kwargs.widht=2", "--out", "OUT"],
        2, "'model_kwargs' = {\"width\": 2, \"widht\": 2}: model 'vanilla_cnn' has no option 'widht'")


def test_force_overrides_the_memory_guard(tmp_path, capsys, monkeypatch):
    train_tests.check_force_overrides_the_memory_guard(tmp_path, capsys, monkeypatch)


@pytest.mark.parametrize("to", ["lc", "fc"])
def test_relax_a_model_of_several_tensors(to):
    relax_tests.check_several_inputs(to, *relax_tests.SEVERAL_TENSORS)


@pytest.mark.parametrize("to", ["lc", "fc"])
def test_relax_a_model_taking_a_dict(to):
    relax_tests.check_several_inputs(to, *relax_tests.DICT_OF_TENSORS)


# ---- damaged files: every file saved with torch carries its content digest, every load checks it --------------

SNAP_ARGS = [*TRAIN_ARGS, "--snapshots", "0,2,4"]


@pytest.fixture(scope="module")
def snap_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("snapref") / "run"
    with _threads(1):
        assert cli_main(["train", *SNAP_ARGS, "--out", str(out)]) == 0
    return out


def _stopped_train(run: Path, at_step: int = 46) -> int:
    """`archrelax train SNAP_ARGS` stopped (as by SIGTERM) once its status reaches ``at_step``; the step it stopped at."""
    from archrelax.signals import request_stop

    def stopper() -> None:
        wait_for(lambda: run.joinpath("status.json").is_file() and (status(run).get("step") or 0) >= at_step,
                 what="the run's checkpoints")
        request_stop(signal.SIGTERM)

    watch = threading.Thread(target=stopper, daemon=True)
    watch.start()
    r = _cli("train", *SNAP_ARGS, "--checkpoint-every-steps", "3", "--out", str(run))
    watch.join()
    assert r.returncode == 143, r.stderr[-2000:]
    return status(run)["step"]


def _same_run(run: Path, ref: Path) -> None:
    assert status(run)["status"] == "done"
    assert stable(read_metrics(run / "metrics.jsonl")) == stable(read_metrics(ref / "metrics.jsonl"))
    a, b = load_checkpoint(run / "final.pt")["model"], load_checkpoint(ref / "final.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("restart", ["intact", "scratch"])
def test_train_on_a_damaged_checkpoint_is_marked_damaged_and_restarts(snap_reference, tmp_path, restart):
    from damage import flip_byte

    run = tmp_path / "run"
    stopped = _stopped_train(run)
    assert stopped > 40
    last = run / "checkpoints" / "last.pt"
    flip_byte(last)  # before: `resuming R at step 46`, later `diverged`, which `archrelax run` never retries
    r = _cli("train", *SNAP_ARGS, "--out", str(run))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert re.fullmatch(rf"archrelax train: error: checkpoint {re.escape(repr(str(last)))} is damaged: its content does "
                        r"not match the digest written with it \(\w+… expected, \w+… found\); the run cannot resume from "
                        r"it: rerun with `archrelax train --restart intact` \(from its latest intact snapshot\) or "
                        r"`--restart scratch`; `archrelax run` restarts it from its latest intact snapshot", lines[0]), lines
    st = status(run)
    assert st["status"] == "damaged" and "is damaged" in st["error"], st
    assert _cli("train", *SNAP_ARGS, "--out", str(run)).returncode == 2  # the same again: nothing trained on it
    r = _cli("train", *SNAP_ARGS, "--restart", restart, "--out", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    if restart == "intact":
        assert "resuming from its latest intact snapshot epoch_4.pt (step 40) (restart=intact)" in r.stderr
        assert f"resuming {run} at step 40 (epoch 4)" in r.stderr
    else:
        assert "starting again from scratch (restart=scratch)" in r.stderr and "resuming" not in r.stderr
    _same_run(run, snap_reference)


def _stopped_experiment(spec_file: Path, exp: Path) -> Path:
    """`archrelax run SPEC` stopped by SIGINT once its CNN passed step 40; the CNN's run folder."""
    proc = _start_run(spec_file, exp)
    _cnn_mid_run(exp, proc, step=40)
    proc.send_signal(signal.SIGINT)
    assert proc.communicate(timeout=120) and proc.returncode == 130
    return next(exp.glob("runs/cnn-*"))


def test_run_with_a_damaged_checkpoint_marks_it_then_restarts_it(spec_file, run_reference, tmp_path):
    from damage import flip_byte

    exp = tmp_path / "exp"
    cnn = _stopped_experiment(spec_file, exp)
    flip_byte(cnn / "checkpoints" / "last.pt")
    log: list[str] = []
    with _threads(1):
        run_experiment(spec_from_dict(SPEC), exp, log=log.append)
    rows = {r["id"]: r for r in summary(exp)}
    assert rows[cnn.name]["status"] == "damaged" and "last.pt' is damaged" in rows[cnn.name]["error"]
    assert any(line.startswith(f"  {cnn.name}: damaged (DamagedCheckpointError: checkpoint") for line in log), log
    assert {r["status"] for r in rows.values() if r["id"] != cnn.name} == {"done"}  # its snapshots were intact
    row = next(line for line in _cli("status", str(exp)).stdout.splitlines() if line.startswith(cnn.name))
    assert re.match(rf"{cnn.name} +cnn +damaged +{status(cnn)['epoch']:g} .*DamagedCheckpointError: checkpoint", row), row
    assert status(cnn)["step"] >= 40  # where it stood, as recorded when it stopped
    with _threads(1):  # the rerun restarts it from its latest intact snapshot: the uninterrupted run's numbers
        run_experiment(spec_from_dict(SPEC), exp, log=lambda s: None)
    assert summary(exp) == summary(run_reference)


# ---- a record that disagrees with itself: the checkpoint, the metrics log and the config must agree ---------------

_RESTARTS = (r"rerun with `archrelax train --restart intact` \(from the latest snapshot whose rows the log still holds\) "
             r"or `--restart scratch`; `archrelax run` restarts it from that snapshot")


@pytest.mark.parametrize("harm, restart", [("cut", "intact"), ("edited", "scratch")])
def test_train_on_a_log_that_lost_rows_is_marked_damaged_and_restarts(snap_reference, tmp_path, harm, restart):
    run = tmp_path / "run"
    stopped = _stopped_train(run)  # rows at steps 0, 10, 20, 30, 40 (50, ... under load); snapshots at 0, 20, 40
    log, last = run / "metrics.jsonl", run / "checkpoints" / "last.pt"
    lines = log.read_text().splitlines(keepends=True)
    n = load_checkpoint(last)["progress"]["n_metrics"]
    assert stopped > 40 and n == len(lines) == stopped // 10 + 1
    if harm == "cut":  # before: `resuming R at step 48`, rc 0, a log of steps [0, 10, 20, 50, 60, ...]
        log.write_text("".join(lines[:3]))
        detail = (rf"{re.escape(repr(str(log)))} holds 3 rows but {re.escape(repr(str(last)))} \(step {stopped}\) was "
                  rf"written after {n}: the log lost rows")
    else:  # one figure of the row at step 30 changed: before, resumed as it stood
        row = json.loads(lines[3])
        lines[3] = json.dumps({**row, "test_acc": row["test_acc"] + 0.5}) + "\n"
        log.write_text("".join(lines))
        detail = (rf"the first {n} rows of {re.escape(repr(str(log)))} are not those {re.escape(repr(str(last)))} \(step "
                  rf"{stopped}\) was written after: the log lost, changed or replaced rows")
    r = _cli("train", *SNAP_ARGS, "--out", str(run))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert re.fullmatch(rf"archrelax train: error: {detail}; restore the log from a copy, or {_RESTARTS}", lines[0]), lines
    assert status(run)["status"] == "damaged" and load_checkpoint(last)["step"] == stopped  # nothing trained
    r = _cli("train", *SNAP_ARGS, "--restart", restart, "--out", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    if restart == "intact":  # epoch_4 (step 40) was written after 5 rows, epoch_2 (step 20) after the 3 the log kept
        assert "skipping snapshot epoch_4.pt" in r.stderr and f"resuming {run} at step 20 (epoch 2)" in r.stderr
    else:
        assert "starting again from scratch (restart=scratch)" in r.stderr and "resuming" not in r.stderr
    _same_run(run, snap_reference)


@pytest.mark.parametrize("lost, problem", [
    ("metrics.jsonl", "metrics.jsonl holds 0 rows where status.json recorded 11: the log lost rows"),
    ("final.pt", "final.pt is missing"),
])
def test_train_on_a_done_run_that_lost_a_file_is_refused_then_trained_again(train_reference, tmp_path, lost, problem):
    run = tmp_path / "run"
    shutil.copytree(train_reference, run)
    (run / lost).unlink()
    r = _cli("train", *TRAIN_ARGS, "--out", str(run))  # before: rc 0, "done at epoch 10" (train acc nan, no final.pt)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"archrelax train: error: run folder {str(run)!r} is done, but its record is incomplete: {problem}; restore the "
        "files from a copy, or train it again with `archrelax train --restart intact` (from its latest state the "
        "record still holds) or `--restart scratch`"], r.stderr
    assert status(run)["status"] == "done"
    r = _cli("train", *TRAIN_ARGS, "--restart", "intact", "--out", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{run}: done, but {problem}: training it again (restart=intact)" in r.stderr
    # no log: last.pt's rows are gone, and this run keeps no snapshot; no final.pt: last.pt (the end) is whole
    assert ("starting again from scratch" in r.stderr) == (lost == "metrics.jsonl")
    _same_run(run, train_reference)


def test_run_with_a_log_that_lost_rows_marks_it_then_restarts_it(spec_file, run_reference, tmp_path):
    exp = tmp_path / "exp"
    cnn = _stopped_experiment(spec_file, exp)
    log = cnn / "metrics.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:-1]))  # its last row lost
    row = next(line for line in _cli("status", str(exp)).stdout.splitlines() if line.startswith(cnn.name))
    assert re.search(r" incomplete .* interrupted, but metrics.jsonl holds \d+ rows where status.json recorded \d+: "
                     r"the log lost rows$", row), row
    log_lines: list[str] = []
    with _threads(1):  # before: the CNN resumed past the lost row, and its log lacked it for good
        run_experiment(spec_from_dict(SPEC), exp, log=log_lines.append)
    rows = {r["id"]: r for r in summary(exp)}
    assert rows[cnn.name]["status"] == "damaged" and "the log lost rows" in rows[cnn.name]["error"], rows[cnn.name]
    assert any(line.startswith(f"  {cnn.name}: damaged (RecordMismatchError: {str(log)!r} holds ") for line in log_lines)
    assert {r["status"] for r in rows.values() if r["id"] != cnn.name} == {"done"}
    with _threads(1):  # the rerun restarts it from its latest snapshot whose rows the log holds
        run_experiment(spec_from_dict(SPEC), exp, log=lambda s: None)
    assert summary(exp) == summary(run_reference)


def test_status_marks_runs_whose_record_is_incomplete(small_experiment, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(small_experiment, exp)
    cnn, fcn = next(exp.glob("runs/cnn-*")), next(exp.glob("runs/fcn-*"))
    n = len(read_metrics(cnn / "metrics.jsonl"))
    (cnn / "metrics.jsonl").write_text("".join((cnn / "metrics.jsonl").read_text().splitlines(keepends=True)[:2]))
    (fcn / "final.pt").unlink()
    r = _cli("status", str(exp))  # before: both `done`, rc 0
    assert r.returncode == 1, r.stdout
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[2:-1]}
    assert re.search(rf" incomplete +2 .* done, but metrics.jsonl holds 2 rows where status.json recorded {n}: the log "
                     r"lost rows$", rows[cnn.name]), rows[cnn.name]
    assert re.search(r" incomplete +1 .* done, but final.pt is missing$", rows[fcn.name]), rows[fcn.name]
    assert all(" done " in line for rid, line in rows.items() if rid not in (cnn.name, fcn.name))
    assert r.stdout.strip().endswith(f"{len(rows)} runs: {len(rows) - 2} done, 2 incomplete")


def test_train_on_an_edited_config_is_refused(tmp_path):
    run = tmp_path / "run"
    stopped = _stopped_train(run)
    cfg = run / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "lr": 0.2}))
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes(), (run / "metrics.jsonl").read_bytes()
    for restart in ([], ["--restart", "scratch"]):  # no restart mends it: the weights were trained under lr 0.1
        r = _cli("train", *SNAP_ARGS, "--lr", "0.2", *restart, "--out", str(run))  # before: resumed, rc 0, final.pt
        # holding "lr": 0.2 for weights trained at 0.1 to step 50
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            f"archrelax train: error: {str(cfg)!r} differs from the config {str(last)!r} was trained under, in 1 key "
            "(checkpoint -> config.json: lr: 0.1 -> 0.2); the run cannot go on under another config: restore "
            "config.json and rerun with the checkpoint's settings, or train the new config into another folder"], r.stderr
        assert status(run)["status"] == "failed" and status(run)["step"] == stopped
        assert (last.read_bytes(), (run / "metrics.jsonl").read_bytes()) == before


def test_damaged_data_cache_is_decoded_again(tmp_path):
    import test_data as data_tests

    from damage import flip_byte, member_span, tensor_members

    root = data_tests._make_folder(tmp_path / "ds")  # 3 classes x 4 training images: labels 0,0,0,0,1,...
    cache = tmp_path / "cache"
    want = load_data(f"imagefolder:{root}", cache_dir=cache).train.labels.clone()
    path = next(cache.glob("imagefolder-*.pt"))
    labels = next(m for m in tensor_members(path) if member_span(path, m)[1] == 8 * len(want))  # int64, 12 of them
    flip_byte(path, member=labels, at=0.0, mask=0x01)  # the first label: 0 -> 1
    with pytest.warns(UserWarning) as caught:  # before: rc 0, no word, labels swapped
        got = load_data(f"imagefolder:{root}", cache_dir=cache)
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and msgs[0].startswith(f"data cache {str(path)!r} is damaged: its content does not match the "
                                                 "digest written with it") and msgs[0].endswith("; decoding it again "
                                                                                                "from the source"), msgs
    assert torch.equal(got.train.labels, want)
    assert torch.equal(load_data(f"imagefolder:{root}", cache_dir=cache).train.labels, want)  # rewritten, intact


def test_train_from_a_damaged_snapshot_fails_naming_it(snap_reference, tmp_path):
    from damage import flip_byte

    snap = tmp_path / "epoch_2.pt"
    shutil.copy(snap_reference / "snapshots" / "epoch_2.pt", snap)
    flip_byte(snap)
    out = tmp_path / "efcn"
    r = _cli("train", *TRAIN_ARGS, "--epochs", "1", "--relax", "fc", "--from", str(snap), "--out", str(out))
    lines = r.stderr.strip().splitlines()  # before: rc 0, trained from the damaged weights
    assert r.returncode == 2 and lines == [
        f"archrelax train: error: checkpoint {str(snap)!r} is damaged: its content does not match the digest written "
        f"with it ({lines[0].split('(')[1].split(')')[0]}); the file changed after it was written (a disk, memory or "
        "copy error): restore it from a copy, or train the run that wrote it again"], lines
    # a start that fails before anything is trained leaves no folder it created (nothing of the run to keep)
    assert not out.exists()


def test_analysis_of_a_damaged_final_lists_the_run_as_missing(small_experiment, tmp_path):
    from damage import flip_byte

    exp = tmp_path / "exp"
    shutil.copytree(small_experiment, exp)
    fcn = next(exp.glob("runs/fcn-*"))
    flip_byte(fcn / "final.pt")
    r = _cli("analyse", str(exp), "--only", "templates", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((exp / "analysis" / "templates.json").read_text())
    missing = [m for m in res["missing"] if m["run"] == fcn.name]  # before: analysed from the damaged weights
    assert len(missing) == 1 and f"{fcn / 'final.pt'}' is damaged" in missing[0]["reason"], res["missing"]
    assert fcn.name not in {t["run"] for t in res["runs"]}


def test_relax_of_a_forward_reading_a_conv_weight_is_refused(tmp_path):
    relax_tests.check_relax_refuses_what_it_cannot_follow(relax_tests.WeightReading, relax_tests.DIFFER)
    cnn = tmp_path / "cnn"
    data = ["--data", "synthetic:1x28x28:10:200:100", "--batch-size", "20", "--device", "cpu", "--eval-times", "every"]
    assert _cli("train", "test_relax:weight_reading_cnn", *data, "--epochs", "1", "--snapshots", "1",
                "--out", str(cnn)).returncode == 0
    r = _cli("train", "test_relax:weight_reading_cnn", *data, "--epochs", "1", "--relax", "fc",
             "--from", str(cnn / "snapshots" / "epoch_1.pt"), "--out", str(tmp_path / "efcn"))
    lines = r.stderr.strip().splitlines()  # before: rc 0, first row train loss 225 where the CNN's was 3.2
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("archrelax train: error: relax(to='fc') of WeightReading: the relaxed model does not "
                               "compute the source's function: outputs differ by up to "), lines
    assert not read_metrics(tmp_path / "efcn" / "metrics.jsonl") if (tmp_path / "efcn" / "metrics.jsonl").exists() else True


# ---- the suite itself, and what it needs ------------------------------------------------------------------------


def test_a_test_needing_slurm_skips_without_it_and_says_why(tmp_path):
    """Every test that needs a cluster skips, with the reason, where there is none: with PATH emptied (no sbatch,
    srun, sinfo), the one test of test_executors.py that builds submitit's Slurm executor skips."""
    tests = Path(__file__).parent
    env = {**ENV, "PATH": str(tmp_path), "PYTHONPATH": os.pathsep.join([str(tests.parent / "src"), str(tests)])}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--rootdir", str(tests.parent),
                        f"{tests / 'test_executors.py'}::test_slurm_options_reach_submitit"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]  # before: 1 failed ("Could not detect srun, are you indeed on a slurm cluster?")
    assert re.search(r"SKIPPED \[1\] .*test_executors.py:\d+: no sbatch on PATH \(start a one-node cluster with "
                     r"\.ci/slurm-up\)", out) and "1 skipped" in out, out[-3000:]


def test_every_third_party_import_is_declared():
    """Each distribution whose modules src/ imports is a dependency in pyproject.toml (scipy came through mlxtend)."""
    import ast
    import importlib.metadata as md
    import tomllib

    src = Path(__file__).resolve().parents[1] / "src" / "archrelax"
    imported = set()
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third = sorted(m for m in imported if m not in sys.stdlib_module_names and m not in ("archrelax", "__future__"))
    dists = md.packages_distributions()
    project = tomllib.loads((src.parents[1] / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower()
                for d in project["dependencies"] + sum(project["optional-dependencies"].values(), [])}
    undeclared = {m: dists.get(m) for m in third if not {d.lower() for d in dists.get(m, [m])} & declared}
    assert not undeclared, f"imported by src/ but not declared in pyproject.toml: {undeclared}"


# ---- an experiment as a whole: its copies, its workers, its sessions, its messages ----------------------------


def test_copied_experiment_trains_and_analyses_from_its_own_files(small_experiment, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(small_experiment, a)  # copy2: contents and mtimes, as `cp -a`
    ref = _cli("analyse", str(a), "--only", "distance", "--quiet")
    assert ref.returncode == 0, ref.stderr[-2000:]
    shutil.copytree(a, b)
    shutil.rmtree(a / "runs")  # the original changed (here: gone): the copy must not notice
    for cfg in b.glob("runs/*/config.json"):  # before: init_from pointed into the original folder
        init = json.loads(cfg.read_text())["init_from"]
        assert init is None or (not Path(init).is_absolute() and (cfg.parent / init).resolve().is_relative_to(b)), init
    efcn = next(b.glob("runs/efcn-tw1-*"))
    shutil.rmtree(efcn)  # trained again, from the copy's own snapshot
    r = _cli("run", str(b))
    assert r.returncode == 0, r.stderr[-2000:]
    assert status(efcn)["status"] == "done"
    r = _cli("analyse", str(b), "--only", "distance", "--force", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    got, want = (json.loads((e / "analysis" / "distance.json").read_text()) for e in (b, a))
    assert not got["missing"] and [c["run"] for c in got["curves"]] == [c["run"] for c in want["curves"]]
    # the same numbers: the copy's own files, of the same content (the retrained run is deterministic)
    assert (got["curves"], got["gain"]) == (want["curves"], want["gain"])


def test_analysis_cache_follows_content_not_size_and_mtime(small_experiment, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(small_experiment, exp)
    assert _cli("analyse", str(exp), "--only", "templates", "--quiet").returncode == 0
    # other weights in a run's final.pt (another run's: intact, of the same size, so the same architecture), with
    # its old mtime: what a size+mtime key cannot see
    finals = sorted(exp.glob("runs/*/final.pt"))
    fcn, other = next((a, b) for a in finals for b in finals
                      if a != b and a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes())
    st = fcn.stat()
    shutil.copyfile(other, fcn)
    os.utime(fcn, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = _cli("analyse", str(exp), "--only", "templates")
    assert r.returncode == 0 and "templates: computing" in r.stderr, r.stderr  # before: "templates: up to date"
    assert "up to date" not in r.stderr


def _running(exp: Path, pattern: str, step: int = 2) -> dict:
    """The status.json of the run folder ``pattern`` once it trains at ``step`` or later."""
    def ready() -> dict | None:
        for st in exp.glob(f"runs/{pattern}/status.json"):
            with contextlib.suppress(json.JSONDecodeError, OSError):
                d = json.loads(st.read_text())
                if d.get("status") == "running" and (d.get("step") or 0) >= step:
                    return d
        return None

    wait_for(ready, what=f"run {pattern} to train")
    return ready()


def test_kill_9_of_one_worker_fails_its_run_only(tmp_path):
    # the CNN (1,200 steps: long enough that it is still training when its worker is killed, however fast the
    # machine) and the FCN baseline (40 steps) train side by side; the CNN's worker is killed
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "cnn": {"epochs": 600, "until_zero_loss": False},
                                    "relaxed": {"epochs": 20, "until_zero_loss": False}}))
    exp = tmp_path / "exp"
    proc = _start_run(spec, exp, "--workers", "2")
    try:
        cnn = _running(exp, "cnn-*")
        _running(exp, "fcn-*")
        os.kill(cnn["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err[-3000:]  # runs did not finish: the CNN and its dependants
    rows = {r["kind"]: r for r in summary(exp)}
    assert rows["cnn"]["status"] == "failed", rows["cnn"]
    assert f"worker process {cnn['pid']} was killed by SIGKILL" in rows["cnn"]["error"], rows["cnn"]
    # before: the healthy run was stopped, and a finished one reported "A process in the process pool was
    # terminated abruptly"
    assert rows["fcn"]["status"] == "done" and not rows["fcn"]["error"], rows["fcn"]
    assert "terminated abruptly" not in out + err


def test_force_with_another_spec_is_refused_while_a_run_trains(spec_file, tmp_path):
    exp = tmp_path / "exp"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**SPEC, "train": {**SPEC["train"], "lr": 0.1}}))
    proc = _start_run(spec_file, exp)
    try:
        _cnn_mid_run(exp, proc, step=4)
        saved = {p: p.read_bytes() for p in (exp / "spec.yaml", exp / "plan.json")}
        r = _cli("run", str(other), "--out", str(exp), "--force")  # before: accepted, the old process trained on
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
        assert lines[0].startswith(f"archrelax run: error: experiment folder {str(exp)!r} is in use (`archrelax run` "
                                   f"pid {proc.pid} on host "), lines
        assert {p: p.read_bytes() for p in saved} == saved
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert _cli("run", str(other), "--out", str(exp), "--force", "--dry-run").returncode == 0  # free again


def test_report_clears_what_a_killed_writer_left(small_experiment, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(small_experiment, exp)
    assert _cli("report", str(exp), "--no-analyse").returncode == 0
    # what kill -9 leaves at each point of a report's write: a half-built new folder; and, between the two
    # renames, the previous report moved aside with report/ gone
    (exp / ".report-new-k1llme" / "fig").mkdir(parents=True)
    (exp / ".report-new-k1llme" / "fig" / "half.png").write_bytes(b"\x89PNG")
    (exp / "report").rename(exp / ".report-old-k1llme")
    (exp / ".report-new-k2llme").mkdir()
    r = _cli("report", str(exp), "--no-analyse")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in exp.glob(".report-*")) == []  # before: both .report-new-* left for good
    assert (exp / "report" / "index.html").is_file()


@pytest.mark.parametrize("args, where", [
    (["--set", "seeds=[0,"], ("(--set): 'seeds' = '[0,' is not valid YAML: expected the node content, but found "
                              "'<stream end>' (column 4)")),
    (["--set", "train={lr: 0.1"], "(--set): 'train' = '{lr: 0.1' is not valid YAML: "),
], ids=["list", "mapping"])
def test_set_value_that_is_not_yaml_is_one_line(tmp_path, spec_file, args, where):
    r = _cli("run", str(spec_file), *args, "--out", str(tmp_path / "exp"))
    lines = r.stderr.strip().splitlines()  # before: a 53-line yaml traceback
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(
        f"archrelax run: error: invalid experiment spec {where}"), lines
    assert not (tmp_path / "exp").exists()


def test_spec_file_that_is_not_yaml_is_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: a\nseeds: [0,\ntargets: [fc]\n")
    r = _cli("run", str(bad), "--out", str(tmp_path / "exp"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"archrelax run: error: invalid experiment spec ({bad}): not valid YAML: expected ',' or ']', but got "
        "'<stream end>' (line 4, column 1, in the value of 'seeds' from line 2)"], r.stderr
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("args, problem", [
    (["--workers", "0"], "(--workers 0): 'workers' = 0 is out of range; allowed: an integer >= 1"),
    (["--workers", "-2", "--executor", "local"], "(--executor local --workers -2): 'workers' = -2 is out of range"),
])
def test_bad_workers_is_refused_before_anything_is_written(tmp_path, spec_file, args, problem):
    r = _cli("run", str(spec_file), *args, "--out", str(tmp_path / "exp"))
    assert not (tmp_path / "exp").exists()  # before: spec.yaml, plan.json and summary.csv written, then rc 2
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(
        f"archrelax run: error: invalid experiment spec {problem}"), lines


def test_missing_snapshot_message_says_the_file_went_away(small_experiment, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(small_experiment, exp)
    efcn = next(exp.glob("runs/efcn-tw1-*"))
    shutil.rmtree(efcn)
    cnn = next(exp.glob("runs/cnn-*"))
    (cnn / "snapshots" / "epoch_1.pt").unlink()
    r = _cli("run", str(exp))
    assert r.returncode == 1
    err = status(efcn)["error"]  # before: "ended with status 'done' at epoch 2 before this switch time" (false)
    assert err.startswith(f"snapshot runs/{cnn.name}/snapshots/epoch_1.pt is missing: run {cnn.name} is 'done' at "
                          "epoch 2, past this switch time 1, so it wrote the file, which has been deleted or moved "
                          "since"), err
    assert "before this switch time" not in err


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed here")
def test_tensorboard_without_the_package_is_refused_before_anything(tmp_path, spec_file):
    r = _cli("run", str(spec_file), "--set", "train.tensorboard=true", "--out", str(tmp_path / "exp"))
    # before: validation passed, every run failed at its start (6 dependants failed), the analyses ran anyway
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "archrelax run: error: 'train.tensorboard' = true needs the tensorboard package, which is not installed here: "
        "pip install 'archrelax[tensorboard]', or --set train.tensorboard=false (it changes no run)"], r.stderr
    assert not (tmp_path / "exp").exists()
    r = _cli("train", *TRAIN_ARGS, "--tensorboard", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "--tensorboard needs the tensorboard package" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_a_runtime_training_setting_is_not_a_spec_change(small_experiment, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(small_experiment, exp)
    saved = yaml.safe_load((exp / "spec.yaml").read_text())
    saved["train"]["tensorboard"] = True  # the folder: made with tensorboard on
    (exp / "spec.yaml").write_text(yaml.safe_dump(saved))
    before = summary(exp)
    for kv in ("train.tensorboard=false", "train.force_memory=true", "train.checkpoint_every_s=5"):
        r = _cli("run", str(exp), "--set", kv)  # before: refused as "a different spec" (it changes no run id)
        assert r.returncode == 0 and "4 already finished, 0 to run" in r.stdout, r.stderr[-2000:]
    assert summary(exp) == before
    r = _cli("run", str(exp), "--set", "train.lr=0.2")
    assert r.returncode == 2 and "train.lr: 0.05 -> 0.2" in r.stderr  # a key that changes runs still is


def test_train_with_a_missing_data_path_leaves_no_folder(tmp_path):
    out = tmp_path / "D"
    r = _cli("train", "vanilla_cnn", "--data", "imagefolder:/no/such/folder", "--out", str(out))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "archrelax train: error: data 'imagefolder:/no/such/folder': /no/such/folder does not exist (expected a "
        "folder or .zip with train/ and test/)"], r.stderr
    assert not out.exists()  # before: config.json, status.json and .lock in D


def test_error_log_goes_when_the_run_succeeds(small_experiment, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(small_experiment, exp)
    efcn = next(exp.glob("runs/efcn-tw1-*"))
    shutil.rmtree(efcn)
    snap = next(exp.glob("runs/cnn-*")) / "snapshots" / "epoch_1.pt"
    intact = snap.read_bytes()
    snap.write_bytes(intact[:100])
    assert _cli("run", str(exp)).returncode == 1
    assert status(efcn)["status"] == "failed" and (efcn / "error.log").is_file()
    snap.write_bytes(intact)
    assert _cli("run", str(exp)).returncode == 0
    assert status(efcn)["status"] == "done"
    assert not (efcn / "error.log").exists()  # before: the old traceback kept beside a run that succeeded
