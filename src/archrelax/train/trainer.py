"""``train(config, out_dir)``: one run of a CNN or of its relaxed form, resumable after a kill at any moment.

Resumption is exact because everything the run computes is a function of state saved in
``checkpoints/last.pt``: weights, optimiser buffers, the torch RNG, the step (the lr schedule, the batch
order — ``BatchFeed`` permutations are seeded by ``(seed, epoch)`` — and the evaluation times are pure
functions of it), the running epoch statistics, and the number of metric lines written so far (extra lines
written after the checkpoint are dropped on resume and recomputed, bit for bit).

Optimiser state when continuing a snapshot (``init_from``): ``"reset"`` (default) starts the optimiser
afresh. The CNN's momentum / Adam moments live in the shared-parameter space: they are statistics of each
*shared* weight, whose gradient sums the gradients of every position that uses it. Embedded into the eFCN,
each tied entry would inherit the whole shared statistic, which no eFCN trained from its own gradients would
hold. Resetting makes the relaxed run start the same way as the from-scratch baseline, which is the paper's
protocol. ``"carry"`` maps the buffers through the same embedding (``archrelax.embed.transfer``, keyed by
parameter name) for those who want the continuation to be seamless.
"""
from __future__ import annotations

import contextlib
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archrelax.signals import Interrupted, StopOnSignals, signal_name
from archrelax.store import RunFolder, RunLock, Status, StoreError, failure_state, read_metrics
from archrelax.utils import atomic_torch_save, format_epoch, resolve_device

from .checkpoint import FORMAT, load_checkpoint, resume_point, rng_state, set_rng_state
from .config import RUNTIME_FIELDS, TrainConfig
from .schedule import lr_at, time_steps
from .soft import soft_lambda

__all__ = ["train", "evaluate", "make_optimizer", "read_metrics"]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimiser over ``model.named_parameters()`` in order (checkpoints record that order).

    Fused kernels where torch has them: one pass over memory instead of several, which matters for the
    eFCN's tens of millions of weights (on CPU, SGD ~1.2x and Adam ~5x faster per step).
    """
    params = [p for _, p in model.named_parameters()]
    if cfg.optimizer == "sgd":
        cls, kw = torch.optim.SGD, dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        kw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return cls(params, **kw)


def make_feeds(cfg: TrainConfig, data, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """A run's shuffled training feed (seeded by ``cfg.seed``) and its evaluation feeds ``{"train", "test"}`` over
    ``data`` (a DataSplits; images already on ``device`` are not copied)."""
    from archrelax.data import BatchFeed

    feed_kw = dict(mean=data.mean, std=data.std, device=device)
    feed = BatchFeed(data.train.images, data.train.labels, cfg.batch_size, shuffle=True, seed=cfg.seed,
                     augment=tuple(cfg.augment), **feed_kw)
    eval_bs = max(cfg.batch_size, 500)
    eval_feeds = {split: BatchFeed(s.images, s.labels, eval_bs, shuffle=False, **feed_kw)
                  for split, s in (("train", data.train), ("test", data.test))}
    return feed, eval_feeds


@torch.no_grad()
def evaluate(model: nn.Module, feed, amp: str | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over every batch of ``feed`` (eval mode, restored after)."""
    was_training = model.training
    model.eval()
    loss = correct = None
    n = 0
    for x, y in feed.epoch(0):
        with _autocast(x.device, amp):
            out = model(x)
        batch_loss = F.cross_entropy(out.float(), y, reduction="sum")
        batch_correct = (out.argmax(1) == y).sum()
        loss = batch_loss if loss is None else loss + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
        n += y.shape[0]
    model.train(was_training)
    return loss.item() / n, correct.item() / n


def train(config: TrainConfig | dict, out_dir: str | os.PathLike, *, lock: RunLock | None = None) -> dict[str, Any]:
    """Train as ``config`` says, writing the run folder of docs/architecture.md into ``out_dir``.

    Takes the folder's lock first: a second trainer on the same folder raises RunBusyError naming the
    holder's pid and host (``lock``: the caller already holds it, e.g. the protocol's ``run_one``).
    Resumes from ``out_dir/checkpoints/last.pt`` when present (the saved config must match, apart from
    ``RUNTIME_FIELDS``); a finished or diverged run is not redone; a folder with no training state (a start
    that failed while loading data or building the model) takes the new config. Returns ``{"status",
    "error", "stop_reason", "epoch", "global_epoch", "step", "metrics", "out_dir"}``, the last evaluation as
    ``metrics``.

    SIGTERM, SIGINT or SIGUSR1 (in the main thread) stop the run after the current step: checkpoint written,
    status ``interrupted``, then :class:`archrelax.signals.Interrupted` is raised (``exit_code`` 128 + the
    signal number). Rerunning resumes at that very step.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    folder = RunFolder(out_dir)
    folder.path.mkdir(parents=True, exist_ok=True)
    if lock is not None and not (lock.held and lock.path.resolve() == folder.lock_path.resolve()):
        raise ValueError(f"train(lock=...) needs the held lock of {str(folder.lock_path)!r}, got {lock.path} "
                         f"({'held' if lock.held else 'not held'})")
    own = folder.lock().acquire() if lock is None else None
    try:
        finished = prepare_folder(cfg, folder)
        return finished if finished is not None else _train(cfg, folder)
    finally:
        if own is not None:
            own.release()


def prepare_folder(cfg: TrainConfig, folder: RunFolder) -> dict[str, Any] | None:
    """Before training into ``folder`` (whose lock the caller holds): refuse a different config in a folder that
    trained, return the result of a finished run (not redone), else write config.json and return None."""
    try:
        saved = folder.read_config()
    except StoreError:  # unreadable: harmless to replace when nothing was trained here
        if folder.has_training_state():
            raise
        saved = None
    if saved is not None and folder.has_training_state():
        _check_same_config(TrainConfig.from_dict(saved), cfg, folder.config_path)
        status = folder.read_status()
        if status.finished:
            return _result(folder, status)
    folder.write_config(cfg.to_dict())
    return None


def _train(cfg: TrainConfig, folder: RunFolder) -> dict[str, Any]:
    run = None
    try:
        with _determinism(resolve_device(cfg.device)), StopOnSignals() as stop:
            run = _Run(cfg, folder)
            return run.fit(stop)
    except Interrupted:
        raise  # the run saved its state and wrote status 'interrupted' itself
    except BaseException as e:  # record why, then let it propagate
        error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        status = failure_state(e)  # failed; interrupted (a stray KeyboardInterrupt); damaged (its checkpoint)
        try:
            if run is not None:
                run.write_status(status, error=error)
            else:  # failed while setting up: the progress of an earlier attempt is kept
                folder.write_status(status, error=error)
        except OSError:
            pass  # e.g. the disk is full: the error being raised says so; status.json keeps its last good state
        raise
    finally:
        if run is not None:
            run.close()


class _Run:
    """State of one run; ``fit`` is the loop. Split from ``train`` so that setup and resume stay readable."""

    def __init__(self, cfg: TrainConfig, folder: RunFolder) -> None:
        self.cfg, self.folder, self.out = cfg, folder, folder.path
        self.device = resolve_device(cfg.device)
        self.global_offset = 0.0
        self.step, self.n_metrics, self.elapsed = 0, 0, 0.0
        self.writer = self.bar = None
        self.write_status("running")
        self._setup_data()
        self.spe = len(self.feed)  # steps per epoch
        self.total = int(round(cfg.horizon * self.spe))
        self.snap_steps = set(time_steps(cfg.snapshots, self.spe, self.total, name="snapshots"))
        # also at the start, the end and every snapshot: a relaxed run's first evaluation is then compared with
        # its parent's at the very same weights (the claims' "no jump at the switch"); evaluation consumes no
        # RNG and changes no weight, so the trajectory is the same
        self.eval_steps = set(time_steps(cfg.eval_times, self.spe, self.total, name="eval_times")) | \
            {0, self.total} | self.snap_steps
        self.ckpt_path = folder.checkpoint_path
        ck = resume_point(folder, cfg.restart)  # last.pt verified (on the CPU: RNG states must stay there)
        self.fresh = ck is None
        if not self.fresh:
            self._resume(ck)
        else:
            self._fresh()
        self.params = dict(self.model.named_parameters())
        self.relaxed = _has_relaxed(self.model)
        self.forward = torch.compile(self.model) if cfg.compile else self.model

    # ---- setup -------------------------------------------------------------------------------------------
    def _setup_data(self) -> None:
        """``self.data``, the shuffled training feed ``self.feed`` and the evaluation feeds (train, test)."""
        from archrelax.data import load_data

        cfg = self.cfg
        self.data = load_data(cfg.data, cfg.data_root, train_size=cfg.train_size, test_size=cfg.test_size,
                              seed=cfg.data_seed)
        self.feed, self.eval_feeds = make_feeds(cfg, self.data, self.device)

    def _fresh(self) -> None:
        from archrelax.models import create_model

        cfg, (c, h, w) = self.cfg, self.data.train.images.shape[1:]
        kw = {**cfg.model_kwargs, "num_classes": len(self.data.classes), "in_channels": int(c),
              "input_size": int(h) if h == w else [int(h), int(w)]}
        torch.manual_seed(cfg.seed)
        snap = None
        if cfg.init_from is not None:
            snap = load_checkpoint(cfg.init_from)
            src, self.arch = self._source_from_snapshot(snap, kw)
            self.global_offset = float(snap.get("global_epoch", snap["epoch"]))
        else:
            src = create_model(cfg.model, **kw)
            self.arch = {"model": cfg.model, "model_kwargs": kw, "relax_chain": [], "relax_layers": None}
        src = src.to(self.device)
        if cfg.relax is not None:
            from archrelax.embed.relax import relax
            from archrelax.models import add_relax_step

            self.model = relax(src, to=cfg.relax, example_input=torch.zeros(1, *src.input_shape, device=self.device),
                               layers=cfg.relax_layers, force=cfg.force_memory)
            self.arch = add_relax_step(self.arch, cfg.relax, cfg.relax_layers)
        else:
            self.model = src
        if cfg.soft_lambda > 0 and not _has_relaxed(self.model):
            raise ValueError(f"soft_lambda={cfg.soft_lambda:g} but the model has no relaxed layer for the penalty to act "
                             "on; set relax (e.g. 'fc'), or start from a relaxed snapshot")
        self.model.train()
        self.opt = make_optimizer(cfg, self.model)
        if snap is not None and cfg.optimizer_state == "carry":
            self.opt.load_state_dict(self._carried_state(snap, src))
        del src
        torch.manual_seed(cfg.seed)  # the training RNG stream starts the same however the model was made
        self.run_stats = self._zero_stats()
        self.folder.truncate_metrics(0)
        self.t0 = time.perf_counter()

    def _source_from_snapshot(self, snap: dict, kw: dict) -> tuple[nn.Module, dict]:
        from archrelax.models import build_architecture

        arch, cfg = dict(snap["arch"]), self.cfg
        if arch["model"] != cfg.model:
            raise ValueError(f"init_from {cfg.init_from!r} holds model {arch['model']!r} but the config says "
                             f"model={cfg.model!r}; use the snapshot's model name")
        bad = {k: (v, arch["model_kwargs"].get(k)) for k, v in kw.items() if arch["model_kwargs"].get(k) != v}
        if bad:
            raise ValueError(f"init_from {cfg.init_from!r} was built with other model/data settings "
                             f"{{key: (this run, snapshot)}} = {bad}")
        # a relaxation may select other layers than the snapshot's chain did (a path: features.0 at t1,
        # features.3 at t2): the arch record keeps one selection per step (models.relax_steps)
        src = build_architecture(arch, force=cfg.force_memory)
        src.load_state_dict(snap["model"])
        return src, arch

    def _carried_state(self, snap: dict, source: nn.Module) -> dict:
        """The snapshot's optimiser state re-keyed by parameter name and embedded into this model's shapes
        (through the same move up the lattice that ``relax`` made from ``source``, the snapshot's model)."""
        from archrelax.embed.relax import transfer

        cfg, snap_opt = self.cfg, snap.get("optimizer")
        if snap_opt is None:
            raise ValueError(f"optimizer_state='carry' but {cfg.init_from!r} holds no optimiser state")
        if snap["config"].get("optimizer") != cfg.optimizer:
            raise ValueError(f"optimizer_state='carry': the snapshot used optimizer={snap['config'].get('optimizer')!r}, "
                             f"this run optimizer={cfg.optimizer!r}; buffers of one cannot drive the other")
        names = snap["param_names"]
        by_name = {names[i]: s for i, s in snap_opt["state"].items()}
        keys = {k for s in by_name.values() for k, v in s.items() if torch.is_tensor(v) and v.dim() > 0}
        mapped = {k: {n: s[k].to(self.device) for n, s in by_name.items() if k in s} for k in keys}
        if cfg.relax is not None:
            mapped = {k: transfer(tensors, self.model, source=source) for k, tensors in mapped.items()}
        state = {}
        for i, (name, _) in enumerate(self.model.named_parameters()):
            if name in by_name:
                state[i] = {k: (mapped[k][name] if k in mapped else v) for k, v in by_name[name].items()}
        return {"state": state, "param_groups": self.opt.state_dict()["param_groups"]}

    def _resume(self, ck: dict) -> None:
        from archrelax.models import build_architecture

        self.arch = ck["arch"]
        self.model = build_architecture(self.arch, force=self.cfg.force_memory).to(self.device)
        self.model.load_state_dict(ck["model"])
        self.model.train()
        self.opt = make_optimizer(self.cfg, self.model)
        self.opt.load_state_dict(ck["optimizer"])
        set_rng_state(ck["rng"], self.device)
        p = ck["progress"]
        self.step, self.n_metrics, self.elapsed = ck["step"], p["n_metrics"], p["elapsed"]
        self.global_offset = ck["global_epoch"] - ck["epoch"]
        self.run_stats = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in p["run_stats"].items()}
        self.folder.truncate_metrics(self.n_metrics)
        self.t0 = time.perf_counter()
        # one line in the log (a Slurm job's stderr, the terminal) saying where the run picked up
        print(f"resuming {self.out} at step {self.step} (epoch {self.step / len(self.feed):g})", file=sys.stderr)

    def _zero_stats(self) -> dict:
        z = torch.zeros((), device=self.device)
        return {"loss": z.clone(), "correct": z.clone(), "n": 0}

    # ---- the loop ----------------------------------------------------------------------------------------
    def fit(self, signals: StopOnSignals | None = None) -> dict[str, Any]:
        cfg = self.cfg
        self.signals = signals
        self._open_outputs()
        if self.fresh:  # evaluation, snapshot and checkpoint of the initialisation
            stop = self._at_step(check=False)
            if stop:
                return self._finish(stop)
        self._stop_if_signalled(checkpointed=True)  # a resumed run's checkpoint is at this very step
        last_ckpt = time.perf_counter()
        while self.step < self.total:
            e, b = divmod(self.step, self.spe)
            if b == 0:
                self.run_stats = self._zero_stats()
            for x, y in self.feed.epoch(e, start=b):
                lr = self._lr()
                for g in self.opt.param_groups:
                    g["lr"] = lr
                with _autocast(self.device, cfg.amp):
                    out = self.forward(x)
                    loss = F.cross_entropy(out.float(), y)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self._add_soft_grad()
                self.opt.step()
                self._account(loss, (out.argmax(1) == y).sum(), y.shape[0], lr)
                now = time.perf_counter()
                due = self._checkpoint_due(now, last_ckpt)
                # the divergence check syncs with the device, so not every step; always before a checkpoint
                stop = self._at_step(check=due or self.step % 25 == 0)
                if stop:
                    return self._finish(stop)
                if due:
                    self._checkpoint()
                    last_ckpt = now
                self._stop_if_signalled(checkpointed=due)
                if self.step >= self.total:
                    break
        return self._finish("max_epochs" if cfg.until_zero_loss else "epochs")

    def _account(self, loss: torch.Tensor, correct: torch.Tensor, n: int, lr: float) -> None:
        """One update done: running epoch statistics (kept on the device: no sync per step), step, progress."""
        s = self.run_stats
        s["loss"] += loss.detach() * n
        s["correct"] += correct
        s["n"] += n
        self.step += 1
        self._tick(lr)

    def _checkpoint_due(self, now: float, last_ckpt: float) -> bool:
        cfg = self.cfg
        return (self.step % self.spe == 0
                or bool(cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0)
                or (cfg.checkpoint_every_s is not None and now - last_ckpt >= cfg.checkpoint_every_s))

    def _stop_if_signalled(self, checkpointed: bool) -> None:
        """Between two steps: on a stop signal (see archrelax.signals), save the state of this very step,
        mark the run 'interrupted' and raise Interrupted; a rerun resumes here, redoing no step. At the last
        step the run just finishes."""
        signum = self.signals.signum if self.signals is not None else None
        if signum is None or self.step >= self.total:
            return
        if not checkpointed:
            self._save(self.ckpt_path)
        msg = (f"interrupted by {signal_name(signum)} at step {self.step} (epoch {self.step / self.spe:g}); "
               "checkpoint written, rerun to resume")
        self.write_status("interrupted", error=msg)
        raise Interrupted(signum, msg)

    def _at_step(self, check: bool) -> str | None:
        """Divergence check, scheduled evaluation, until-zero-loss test, snapshot. Returns a stop reason."""
        cfg, s = self.cfg, self.run_stats
        writes = self.step in self.eval_steps or self.step in self.snap_steps or self.step % self.spe == 0
        if (check or writes) and s["n"] and not math.isfinite(s["loss"].item()):
            return "diverged"
        metrics = self._evaluate() if self.step in self.eval_steps else None
        if metrics is not None and not math.isfinite(metrics["train_loss"]):
            return "diverged"
        epoch_end = self.step > 0 and self.step % self.spe == 0
        if cfg.until_zero_loss and epoch_end and self._close_to_zero():
            m = metrics or self._evaluate(record=False)
            if m["train_acc"] == 1.0 or (cfg.loss_threshold is not None and m["train_loss"] < cfg.loss_threshold):
                if metrics is None:
                    self._record(m)
                return "zero_loss"
        if self.step in self.snap_steps:
            self._save(self.folder.snapshot_path(self.step / self.spe))
        if self.step == 0:
            self._checkpoint()
        return None

    def _soft_lambda(self) -> float:
        """λ(t) of the soft release at this step: a pure function of the step (resume needs no state)."""
        c = self.cfg
        return soft_lambda(c.soft_schedule, self.step / self.spe, lam=c.soft_lambda) if c.soft_lambda > 0 else 0.0

    def _add_soft_grad(self) -> None:
        """Soft release: λ(t)·2(θ − Pθ) added to the relaxed layers' gradients in place (the fused form of
        λ(t)·‖θ − Pθ‖², one pass over the weights). λ(t) = 0 adds nothing, so λ = 0 is the hard relaxation."""
        lam = self._soft_lambda()
        if lam > 0:
            from archrelax.embed.penalty import add_penalty_grad_

            add_penalty_grad_(self.model, self.cfg.soft_toward, lam)

    def _soft_metrics(self, m: dict[str, Any]) -> None:
        """Soft runs' rows also hold λ(t) of the next update and the ‖θ − Pθ‖² it multiplies."""
        if self.cfg.soft_lambda > 0:
            from archrelax.embed.penalty import constraint_penalty

            m["soft_lambda"] = self._soft_lambda()
            with torch.no_grad():
                m["soft_penalty"] = float(constraint_penalty(self.model, self.cfg.soft_toward))

    def _lr(self) -> float:
        c = self.cfg
        return lr_at(self.step, self.spe, lr=c.lr, schedule=c.schedule, warmup_epochs=c.warmup_epochs,
                     step_size=c.step_size, gamma=c.gamma, total_epochs=c.horizon)

    def _close_to_zero(self) -> bool:
        """Cheap gate from the epoch's running statistics, so the full train-set check runs only near the end."""
        s, thr = self.run_stats, self.cfg.loss_threshold
        return s["correct"].item() >= 0.99 * s["n"] or (thr is not None and s["loss"].item() / s["n"] < 10 * thr)

    def _losses(self) -> tuple[float, float, float, float]:
        """Loss and accuracy on the full train and test sets: (train_loss, train_acc, test_loss, test_acc)."""
        amp = self.cfg.amp
        train_loss, train_acc = evaluate(self.forward, self.eval_feeds["train"], amp)
        test_loss, test_acc = evaluate(self.forward, self.eval_feeds["test"], amp)
        return train_loss, train_acc, test_loss, test_acc

    def _evaluate(self, record: bool = True) -> dict[str, Any]:
        train_loss, train_acc, test_loss, test_acc = self._losses()
        epoch = self.step / self.spe
        m = {"epoch": epoch, "global_epoch": self.global_offset + epoch, "step": self.step,
             "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
        if self.relaxed:
            from archrelax.embed.subspace import subspace_distances

            d = subspace_distances(self.model)  # one pass: δ, off-sharing and CNN distance
            m.update(offlocal_ratio=d.offlocal_ratio, offsharing_ratio=d.offsharing_ratio, cnn_distance=d.cnn_distance)
        m["lr"] = self._lr()  # the rate of the next update
        self._soft_metrics(m)
        if record:
            self._record(m)
        return m

    def _record(self, m: dict[str, Any]) -> None:
        m = {**m, "wall_time": self._wall(), "peak_mem_bytes": _peak_memory(self.device)}
        self.folder.append_metrics(m)
        self.n_metrics += 1
        if self.writer is not None:
            for k, v in m.items():
                if k not in ("epoch", "step", "global_epoch"):
                    self.writer.add_scalar(k, v, self.step)
            self.writer.flush()
        if self.bar is not None:
            self.bar.write(f"epoch {format_epoch(m['epoch'])}: train {m['train_loss']:.4f}/{m['train_acc']:.2%} "
                           f"test {m['test_loss']:.4f}/{m['test_acc']:.2%}")

    # ---- files ---------------------------------------------------------------------------------------------
    def _state(self, with_optimizer: bool = True) -> dict[str, Any]:
        epoch = self.step / self.spe
        return {"format": FORMAT, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict() if with_optimizer else None,
                "param_names": list(self.params), "config": self.cfg.to_dict(), "arch": self.arch,
                "epoch": epoch, "global_epoch": self.global_offset + epoch, "step": self.step,
                "rng": rng_state(self.device),
                "progress": {"n_metrics": self.n_metrics, "elapsed": self._wall(), "run_stats": dict(self.run_stats)}}

    def _save(self, path: Path, with_optimizer: bool = True) -> None:
        atomic_torch_save(self._state(with_optimizer), path)

    def _checkpoint(self) -> None:
        self._save(self.ckpt_path)
        self.write_status("running")

    def _finish(self, reason: str) -> dict[str, Any]:
        """``reason``: "epochs" (planned length), "zero_loss", "max_epochs" (cap hit) or "diverged"."""
        if reason == "diverged":
            self.write_status("diverged", error=f"training loss became NaN or infinite by step {self.step} "
                              f"(epoch {self.step / self.spe:g}); checkpoints/last.pt is the last good state")
        else:
            self._save(self.folder.final_path, with_optimizer=False)
            self.write_status("done", reason=reason)
        return _result(self.folder, self.status)

    def write_status(self, status: str, error: str | None = None, reason: str | None = None) -> None:
        if not hasattr(self, "spe"):  # still setting up: the progress recorded so far stays (a failed resume says where)
            self.status = self.folder.write_status(status, error=error, stop_reason=reason, **self.folder.progress())
            return
        epoch = self.step / self.spe
        self.status = self.folder.write_status(status, error=error, stop_reason=reason, epoch=epoch,
                                               global_epoch=self.global_offset + epoch, step=self.step)

    def _open_outputs(self, bar: bool = True) -> None:
        cfg = self.cfg
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("tensorboard=True needs the tensorboard package: "
                                   "pip install 'archrelax[tensorboard]'") from e
            self.writer = SummaryWriter(str(self.out / "tensorboard"))
        show = sys.stderr.isatty() if cfg.progress is None else cfg.progress
        if show and bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.step, unit="step", dynamic_ncols=True)
        self.bar_t, self.bar_step = time.perf_counter(), self.step

    def _tick(self, lr: float) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if self.step % 10 == 0 or self.step == self.total:
            s, now = self.run_stats, time.perf_counter()
            ips = (self.step - self.bar_step) * self.cfg.batch_size / max(now - self.bar_t, 1e-9)
            self.bar.set_postfix(loss=f"{s['loss'].item() / s['n']:.4f}", acc=f"{s['correct'].item() / s['n']:.2%}",
                                 img_s=f"{ips:.0f}", lr=f"{lr:.3g}")
            self.bar_t, self.bar_step = now, self.step

    def _wall(self) -> float:
        return self.elapsed + time.perf_counter() - self.t0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


# ---- helpers ----------------------------------------------------------------------------------------------
def _has_relaxed(model: nn.Module) -> bool:
    from archrelax.embed import RelaxedConv

    return any(isinstance(m, RelaxedConv) for m in model.modules())


def _autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def _determinism(device: torch.device):
    """Deterministic kernels where they are not already (CUDA); restored afterwards (it is process-global)."""
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark = prev[2]


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    # ru_maxrss is in KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _check_same_config(saved: TrainConfig, new: TrainConfig, path: Path) -> None:
    a, b = saved.to_dict(), new.to_dict()
    diff = {k: (a[k], b[k]) for k in a if k not in RUNTIME_FIELDS and a[k] != b[k]}
    if diff:
        raise ValueError(f"{str(path)!r} holds a run with a different config {{key: (saved, new)}} = {diff}; "
                         "use another output folder or delete this one")


def _result(folder: RunFolder, status: Status) -> dict[str, Any]:
    rows = folder.read_metrics()
    return {"status": status.status, "error": status.error, "stop_reason": status.stop_reason,
            "epoch": status.epoch, "global_epoch": status.global_epoch, "step": status.step,
            "metrics": rows[-1] if rows else None, "out_dir": str(folder.path)}
