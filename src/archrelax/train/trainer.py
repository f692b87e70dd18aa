"""``train(config, out_dir)``: one run of a CNN or of its relaxed form, resumable after a kill at any moment.

The whole loop is :func:`fit`: set-up (``setup.py``: fresh, from a snapshot, or resumed) gives the model side,
a :class:`~archrelax.train.recorder.Recorder` writes the run folder and says what is due at each step, and
:class:`~archrelax.train.step.UpdateStep` does the arithmetic of one update. ``train_lockstep`` drives R
recorders over one stacked model with the same three parts.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any

from archrelax.signals import Interrupted, StopOnSignals
from archrelax.store import RunFolder, RunLock, read_metrics
from archrelax.utils import resolve_device

from .config import TrainConfig
from .recorder import Recorder, check_lock, prepare_folder, probe_batch, sharpness_batch
from .setup import RunState, determinism, load_run_data, make_feeds, set_up
from .step import UpdateStep, evaluate_splits

__all__ = ["train", "fit", "read_metrics"]


def train(config: TrainConfig | dict, out_dir: str | os.PathLike, *, lock: RunLock | None = None) -> dict[str, Any]:
    """Train as ``config`` says, writing the run folder of docs/architecture.md into ``out_dir``.

    Takes the folder's lock first: a second trainer on the same folder raises RunBusyError naming the
    holder's pid and host (``lock``: the caller already holds it, e.g. the protocol's ``run_one``).
    Resumes from ``out_dir/checkpoints/last.pt`` when present (the saved config must match, apart from
    ``RUNTIME_FIELDS``); a finished or diverged run is not redone; a folder with no training state (a start
    that failed while loading data or building the model) takes the new config. Returns ``{"status",
    "error", "stop_reason", "epoch", "global_epoch", "step", "metrics", "out_dir"}``, the last evaluation as
    ``metrics``.

    SIGTERM, SIGINT, SIGHUP or SIGUSR1 (in the main thread) stop the run after the current step: checkpoint written,
    status ``interrupted``, then :class:`archrelax.signals.Interrupted` is raised (``exit_code`` 128 + the
    signal number). Rerunning resumes at that very step.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    folder = RunFolder(out_dir)
    folder.path.mkdir(parents=True, exist_ok=True)
    check_lock(folder, lock, "train(lock=...)")
    own = folder.lock().acquire() if lock is None else None
    try:
        finished = prepare_folder(cfg, folder)
        return finished if finished is not None else _train(cfg, folder)
    finally:
        if own is not None:
            own.release()


def _train(cfg: TrainConfig, folder: RunFolder) -> dict[str, Any]:
    rec = Recorder(cfg, folder)
    try:
        device = resolve_device(cfg.device)
        with determinism(device), StopOnSignals() as stop:
            rec.write_status("running")
            data = load_run_data(cfg)
            feed, eval_feeds = make_feeds(cfg, data, device)
            rec.schedule(len(feed))
            run = set_up(cfg, folder, data, device)
            rec.attach(run, losses=lambda: evaluate_splits(run.forward, eval_feeds, cfg.amp)[0],
                       probe=probe_batch(eval_feeds), hessian=sharpness_batch(cfg, data, device))
            return fit(rec, run, feed, stop)
    except Interrupted:
        raise  # the run saved its state and wrote status 'interrupted' itself
    except BaseException as e:  # record why, then let it propagate
        # OSError: e.g. the disk is full; the error being raised says so, status.json keeps its last good state
        with contextlib.suppress(OSError):
            rec.fail(e)
        raise
    finally:
        rec.close()


def fit(rec: Recorder, run: RunState, feed, signals: StopOnSignals | None = None) -> dict[str, Any]:
    """The loop of one run: ``run`` (set up, attached to ``rec``) trained on ``feed`` until ``rec`` says it ends.
    Returns ``train``'s result; a stop signal raises Interrupted after ``rec`` saved the step."""
    cfg = rec.cfg
    update = UpdateStep(cfg, run.forward, run.opt, [run.model])
    stop = rec.start(signals)
    if stop:
        return rec.finish(stop)
    rec.stop_if_signalled()
    while not rec.at_end:
        epoch, batch = divmod(rec.step, rec.spe)
        for x, y in feed.epoch(epoch, start=batch):
            lr = rec.lr()
            loss, correct = update(x, y, lr, [rec.soft_lambda()])
            stop = rec.after_update(loss, correct, y.shape[0], lr)
            if stop:
                return rec.finish(stop)
            rec.stop_if_signalled()
            if rec.at_end:
                break
    return rec.finish("max_epochs" if cfg.until_zero_loss else "epochs")
