"""The recorder: one run folder's life while it trains (``archrelax.store.RunFolder`` is its format).

A :class:`Recorder` owns everything a run writes and every decision that is a function of its step: the
status (``running`` at the start and at every checkpoint, then ``interrupted``, ``done``, ``diverged`` or
``failed``), the evaluation and snapshot steps, the metrics rows, the checkpoints, the learning rate and λ(t)
of the next update, an annealed attention's sharpness at the step (the one thing it sets on the model), the
running epoch statistics, divergence and until-zero-loss stopping, the stop on a
signal, the tensorboard log and the progress bar. It never touches the arithmetic: the loop gives it each
update's loss and correct count (:meth:`Recorder.after_update`), and it reads the model side through two
callables given at :meth:`Recorder.attach`, ``losses()`` (the evaluation) and ``weights(with_optimizer)``
(the model side of a checkpoint), so that ``train`` (one model) and ``train_lockstep`` (R members of one
stack, one recorder each) record runs by the same code.

Resumption is exact because everything the run computes is a function of state saved in
``checkpoints/last.pt``: weights, optimiser buffers, the torch RNG, the step (the lr schedule, the batch
order — ``BatchFeed`` permutations are seeded by ``(seed, epoch)`` — and the evaluation times are pure
functions of it), the running epoch statistics, and the number (and digest) of the metric lines written so far:
extra lines written after the checkpoint are dropped on resume and recomputed, bit for bit. A checkpoint is
resumed only when its folder agrees with it (``checkpoint.check_record``, through ``set_up``: the config it was
trained under, the rows it was written after); ``Recorder._resume`` is where it then meets its folder.
"""
from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from archrelax.signals import Interrupted, StopOnSignals, signal_name
from archrelax.store import RunFolder, RunLock, Status, StoreError, failure_state
from archrelax.utils import atomic_torch_save, format_epoch

from .checkpoint import FORMAT, RowsDigest, config_changes
from .config import TrainConfig
from .schedule import lr_at, time_steps
from .setup import RunState, has_relaxed
from .soft import soft_lambda
from .step import Losses

__all__ = ["Recorder", "prepare_folder", "run_result", "check_lock", "probe_batch", "sharpness_batch", "PROBE_SIZE",
           "SHARPNESS_KEYS"]

# the row keys of the sharpness along training (TrainConfig.sharpness_products > 0), in every row of such a run
SHARPNESS_KEYS = ("lambda_max", "lambda_max_residual", "lambda_max_converged")

# images of the fixed probe batch that the attention measures read (the first ones of the test split, as the
# evaluation feed gives them: no shuffle, no augmentation, no RNG drawn); 32 keep the measures at about 0.4 of a
# training step on the lattice preset's shapes, a few % of the evaluation they join (bench_attention_measures.py)
PROBE_SIZE = 32


def probe_batch(eval_feeds: dict[str, Any], n: int = PROBE_SIZE) -> torch.Tensor:
    """``(n, C, H, W)``: the first ``n`` test images, normalised as evaluated (the unshuffled evaluation feed has
    its own generator, so drawing this batch consumes no RNG)."""
    x, _ = next(iter(eval_feeds["test"].epoch(0)))
    return x[:n]


def sharpness_batch(cfg: TrainConfig, data: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(x (n, C, H, W), y (n,))``: the fixed subset whose mean loss's λ_max every evaluation measures (None when
    ``cfg.sharpness_products`` is 0): ``cfg.sharpness_samples`` training images drawn by a generator seeded with
    ``cfg.data_seed`` (so the CNN, its relaxed runs and every member of a lockstep group read the same subset),
    normalised as evaluated (no augmentation). Draws no global RNG."""
    if cfg.sharpness_products == 0:
        return None
    from archrelax.data import BatchFeed

    images, labels = data.train.images, data.train.labels
    n = min(cfg.sharpness_samples, len(images))
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.data_seed))[:n].to(images.device)
    feed = BatchFeed(images[idx], labels[idx], n, mean=data.mean, std=data.std, device=device, shuffle=False)
    return next(iter(feed.epoch(0)))


class Recorder:
    """One run folder's life (module docstring). The driver's calls, in order:

    ``write_status("running")`` (the attempt starts), ``schedule(steps_per_epoch)`` (the evaluation, snapshot
    and end steps), ``attach(run, losses, weights)`` (the model side, set up; a resumed checkpoint's progress),
    ``start(signals)`` (a fresh run's step-0 evaluation, snapshot and checkpoint), then per update ``lr()`` and
    ``soft_lambda()`` for it, ``after_update(loss, correct, n, lr)`` and ``stop_if_signalled()``, and at the
    end ``finish(reason)``; ``fail(e)`` records an error instead; ``close()`` always.
    """

    def __init__(self, cfg: TrainConfig, folder: RunFolder):
        self.cfg, self.folder = cfg, folder
        self.step, self.n_metrics, self.elapsed, self.global_offset = 0, 0, 0.0, 0.0
        self.rows = RowsDigest()  # of the metrics rows this run's log holds, in order
        self.spe: int | None = None  # steps per epoch, once scheduled
        self.status: Status | None = None
        self.signals: StopOnSignals | None = None
        self.run: RunState | None = None
        self.losses: Callable[[], Losses] | None = None
        self.weights: Callable[[bool], dict[str, Any]] | None = None
        self.writer = self.bar = None
        self.epoch_end_checkpoints, self.attached = True, False
        self.probe: torch.Tensor | None = None
        self.attention = False
        self.hessian: tuple[torch.Tensor, torch.Tensor] | None = None  # sharpness_batch
        self.sharpness_vector: torch.Tensor | None = None  # the last λ_max's eigenvector (n,): the next warm start

    # ---- status ------------------------------------------------------------------------------------------
    def write_status(self, status: str, error: str | None = None, reason: str | None = None) -> None:
        if not self.attached:  # still setting up: the progress recorded so far stays (a failed resume says where)
            self.status = self.folder.write_status(status, error=error, stop_reason=reason, **self.folder.progress())
            return
        epoch = self.step / self.spe if self.spe else 0.0
        self.status = self.folder.write_status(status, error=error, stop_reason=reason, epoch=epoch,
                                               global_epoch=self.global_offset + epoch, step=self.step,
                                               n_metrics=self.n_metrics)

    def fail(self, e: BaseException) -> Status:
        """Record why the attempt ended, in the state ``store.failure_state`` gives: 'interrupted' for a
        KeyboardInterrupt that bypassed the signal handling (another thread's run: resumable from its last
        checkpoint), 'damaged' when its checkpoint is, else 'failed'. Before the model side is attached the
        progress of an earlier attempt is kept."""
        self.write_status(failure_state(e), error=_describe(e))
        return self.status

    def result(self) -> dict[str, Any]:
        """``train``'s result for this run as its status now stands."""
        return run_result(self.folder, self.status)

    # ---- set-up ------------------------------------------------------------------------------------------
    def schedule(self, steps_per_epoch: int) -> None:
        """The run's length and the steps at which it evaluates and snapshots (pure functions of the config)."""
        cfg = self.cfg
        self.spe = steps_per_epoch
        self.total = int(round(cfg.horizon * self.spe))
        self.snap_steps = set(time_steps(cfg.snapshots, self.spe, self.total, name="snapshots"))
        # also at the start, the end and every snapshot: a relaxed run's first evaluation is then compared with
        # its parent's at the very same weights (the claims' "no jump at the switch"); evaluation consumes no
        # RNG and changes no weight, so the trajectory is the same
        self.eval_steps = set(time_steps(cfg.eval_times, self.spe, self.total, name="eval_times")) | \
            {0, self.total} | self.snap_steps
        if cfg.snapshot_every_eval:  # whatever evaluation a switch rule picks has its snapshot
            self.snap_steps |= self.eval_steps

    def attach(self, run: RunState, losses: Callable[[], Losses],
               weights: Callable[[bool], dict[str, Any]] | None = None, probe: torch.Tensor | None = None,
               hessian: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """The model side, set up (``setup.set_up``): ``losses()`` evaluates it, ``weights(with_optimizer)`` gives
        its part of a checkpoint (default ``run.weights``), ``probe`` (:func:`probe_batch`) is the input batch the
        attention measures read (None: positional attention only), ``hessian`` (:func:`sharpness_batch`) the examples
        of the λ_max along training (needed when ``sharpness_products`` > 0). A fresh run starts its metrics log
        empty, a resumed one goes on from its checkpoint (``_resume``). The status says so before the log is cut
        back to the rows kept: status.json never records more rows than the log holds."""
        from archrelax.embed.attention import AttentionConvNd

        self.run, self.losses, self.weights, self.attached = run, losses, weights or run.weights, True
        self.device, self.relaxed, self.global_offset = run.device, has_relaxed(run.model), run.global_offset
        self.attention = any(isinstance(m, AttentionConvNd) for m in run.model.modules())
        self.probe = probe if self.attention else None
        if self.cfg.sharpness_products and hessian is None:
            raise ValueError(f"sharpness_products={self.cfg.sharpness_products} needs the examples it measures on "
                             "(attach(hessian=sharpness_batch(...)))")
        self.hessian = hessian if self.cfg.sharpness_products else None
        if run.checkpoint is None:
            self.run_stats, self.rows = self._zero_stats(), RowsDigest()
            self.write_status("running")
            self.folder.truncate_metrics(0)
        else:
            self._resume(run.checkpoint)
        self._anneal()
        self.t0 = time.perf_counter()

    def _anneal(self) -> None:
        """The annealed attention layers' sharpness at this step (``anneal_attention_``): a pure function of the
        step, set whenever it changes, so the update and the evaluation at a step see the same function."""
        if self.attention:
            from archrelax.embed.attention import anneal_attention_

            anneal_attention_(self.run.model, self.step)

    def _resume(self, ck: dict[str, Any]) -> None:
        """Where a resumed checkpoint meets its folder (which agrees with it: ``checkpoint.check_record``): the run
        goes on at the checkpoint's step, with its clocks and epoch statistics, and the metrics log keeps the rows
        the checkpoint had seen (later ones are redone)."""
        p = ck["progress"]
        self.step, self.n_metrics, self.elapsed = ck["step"], p["n_metrics"], p["elapsed"]
        self.run_stats = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in p["run_stats"].items()}
        v = p.get("sharpness_vector")  # the warm start of the next λ_max: the rows then go on bit for bit
        self.sharpness_vector = v.to(self.device) if v is not None else None
        self.rows = RowsDigest(self.folder.read_metrics()[: self.n_metrics])
        self.write_status("running")
        self.folder.truncate_metrics(self.n_metrics)
        # one line in the log (a Slurm job's stderr, the terminal) saying where the run picked up
        print(f"resuming {self.folder.path} at step {self.step} (epoch {self.step / self.spe:g})", file=sys.stderr)

    def start(self, signals: StopOnSignals | None = None, *, bar: bool = True,
              epoch_end_checkpoints: bool = True) -> str | None:
        """Before the first update: the outputs opened, and for a fresh run the evaluation, snapshot and checkpoint
        of the initialisation. Returns a stop reason (a diverged initialisation) or None. ``bar``: this run's
        own progress bar (a lockstep group shows one for all). ``epoch_end_checkpoints``: False for a member of a
        stack under the time rule (``checkpoint_due``)."""
        self.signals, self.epoch_end_checkpoints = signals, epoch_end_checkpoints
        self._open_outputs(bar)
        self.saved_at = self.step  # a resumed run's checkpoint is at this very step
        stop = self._at_step(check=False) if self.run.checkpoint is None else None
        self.last_ckpt = time.perf_counter()
        return stop

    # ---- the schedule --------------------------------------------------------------------------------------
    @property
    def at_end(self) -> bool:
        return self.step >= self.total

    def lr(self) -> float:
        """The learning rate of the next update (a pure function of the step)."""
        c = self.cfg
        return lr_at(self.step, self.spe, lr=c.lr, schedule=c.schedule, warmup_epochs=c.warmup_epochs,
                     step_size=c.step_size, gamma=c.gamma, total_epochs=c.horizon)

    def soft_lambda(self) -> float:
        """λ(t) of the soft release for the next update: a pure function of the step (resume needs no state)."""
        c = self.cfg
        return soft_lambda(c.soft_schedule, self.step / self.spe, lam=c.soft_lambda) if c.soft_lambda > 0 else 0.0

    def checkpoint_due(self, now: float) -> bool:
        """At every epoch end (unless ``epoch_end_checkpoints`` is off: a stack writes R checkpoints at once, 24
        VanillaCNN eFCNs: 14 GB at every epoch end, and resume is exact from any step, so only how much may be
        redone changes), every ``checkpoint_every_steps`` steps, and ``checkpoint_every_s`` seconds after the last."""
        cfg = self.cfg
        return ((self.epoch_end_checkpoints and self.step % self.spe == 0)
                or bool(cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0)
                or (cfg.checkpoint_every_s is not None and now - self.last_ckpt >= cfg.checkpoint_every_s))

    # ---- after each update ---------------------------------------------------------------------------------
    def after_update(self, loss: torch.Tensor, correct: torch.Tensor, n: int, lr: float) -> str | None:
        """One update done (``loss``, ``correct``: its mean loss and correct count over ``n`` examples, on the
        device): the epoch statistics (no sync), the step, the progress bar; then whatever is due at the new step
        (divergence check, evaluation, snapshot, checkpoint). Returns a stop reason or None."""
        if self.step % self.spe == 0:  # the epoch's first update
            self.run_stats = self._zero_stats()
        s = self.run_stats
        s["loss"] += loss.detach() * n
        s["correct"] += correct
        s["n"] += n
        self.step += 1
        self._anneal()
        self._tick(lr)
        now = time.perf_counter()
        due = self.checkpoint_due(now)
        # the divergence check syncs with the device, so not every step; always before a checkpoint
        stop = self._at_step(check=due or self.step % 25 == 0)
        if stop:
            return stop
        if due:
            self.checkpoint()
            self.last_ckpt = now
        return None

    def stop_if_signalled(self) -> None:
        """Between two steps: on a stop signal (see archrelax.signals), save the state of this very step, mark the
        run 'interrupted' and raise Interrupted; a rerun resumes here, redoing no step. At the last step the run
        just finishes."""
        signum = self.signals.signum if self.signals is not None else None
        if signum is None or self.at_end:
            return
        if self.saved_at != self.step:
            self._save(self.folder.checkpoint_path)
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
        metrics = self.evaluate() if self.step in self.eval_steps else None
        if metrics is not None and not math.isfinite(metrics["train_loss"]):
            return "diverged"
        epoch_end = self.step > 0 and self.step % self.spe == 0
        if cfg.until_zero_loss and epoch_end and self._close_to_zero():
            m = metrics or self.evaluate(record=False)
            if m["train_acc"] == 1.0 or (cfg.loss_threshold is not None and m["train_loss"] < cfg.loss_threshold):
                if metrics is None:
                    self._record(m)
                # the row just recorded is an evaluation like the others (snapshot_every_eval), and a planned
                # snapshot at this very step is still written: a relaxed run switches from it
                if cfg.snapshot_every_eval or self.step in self.snap_steps:
                    self._save(self.folder.snapshot_path(self.step / self.spe))
                return "zero_loss"
        if self.step in self.snap_steps:
            self._save(self.folder.snapshot_path(self.step / self.spe))
        if self.step == 0:
            self.checkpoint()
        return None

    def _close_to_zero(self) -> bool:
        """Cheap gate from the epoch's running statistics, so the full train-set check runs only near the end."""
        s, thr = self.run_stats, self.cfg.loss_threshold
        return s["correct"].item() >= 0.99 * s["n"] or (thr is not None and s["loss"].item() / s["n"] < 10 * thr)

    def _zero_stats(self) -> dict[str, Any]:
        z = torch.zeros((), device=self.device)
        return {"loss": z.clone(), "correct": z.clone(), "n": 0}

    # ---- metrics -------------------------------------------------------------------------------------------
    def evaluate(self, record: bool = True) -> dict[str, Any]:
        """The metrics row of this step (appended to metrics.jsonl when ``record``)."""
        train_loss, train_acc, test_loss, test_acc = self.losses()
        epoch = self.step / self.spe
        m = {"epoch": epoch, "global_epoch": self.global_offset + epoch, "step": self.step,
             "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
        m.update(self.measures())
        if self.hessian is not None:  # after the losses: a diverged model's Hessian has no top eigenvalue to find
            m.update(self._sharpness() if math.isfinite(train_loss) else
                     {"lambda_max": math.nan, "lambda_max_residual": math.nan, "lambda_max_converged": False})
        if record:
            self._record(m)
        return m

    def measures(self) -> dict[str, Any]:
        """What a metrics row holds beside the losses, measured on the run's model at this step: δ and the other
        subspace distances (relaxed models), for models with attention layers their distance from the conv
        (``attention_measures`` on the probe batch, eval mode: mean distance, content share, off-target share,
        output distance, α and offset statistics), the lr of the next update, and for soft runs λ(t) of the next
        update and the ‖θ − Pθ‖² it multiplies. A per-evaluation measure of the model belongs here (λ_max, which
        needs the losses' verdict on divergence first, is :meth:`_sharpness`, called by :meth:`evaluate`)."""
        model, cfg, m = self.run.model, self.cfg, {}
        if self.relaxed:
            from archrelax.embed.subspace import subspace_distances

            d = subspace_distances(model)  # one pass: δ, off-sharing and CNN distance
            m.update(offlocal_ratio=d.offlocal_ratio, offsharing_ratio=d.offsharing_ratio, cnn_distance=d.cnn_distance)
        if self.attention:
            m.update(_attention_measures(model, self.probe))
        m["lr"] = self.lr()
        if cfg.soft_lambda > 0:
            from archrelax.embed.penalty import constraint_penalty

            m["soft_lambda"] = self.soft_lambda()
            with torch.no_grad():
                m["soft_penalty"] = float(constraint_penalty(model, cfg.soft_toward))
        return m

    def _sharpness(self) -> dict[str, Any]:
        """λ_max of the mean loss over the fixed subset (``sharpness_batch``) from ``sharpness_products``
        Hessian-vector products warm-started from the last evaluation's eigenvector (an until-zero-loss check's
        unrecorded evaluation included; the first: ``HessianOperator.start_vector`` of the run's seed), with its
        residual bound ‖Hv − λv‖ and whether it met the analyses' tolerance (residual ≤
        √tol·|λ|, ``AnalysisSettings.sharpness_tol``). Pure: eval mode inside, the mode restored, parameters and
        their ``.grad`` untouched, no global RNG drawn (``analysis.sharpness``), so the trajectory is the same
        with it or without it."""
        # imported here: analysis imports train (checkpoints) inside its functions, and train imports analysis only
        # here, so neither package's import pulls in the other
        from archrelax.analysis.settings import AnalysisSettings
        from archrelax.analysis.sharpness import top_eigenvalue

        x, y = self.hessian
        top = top_eigenvalue(self.run.model, x, y, v0=self.sharpness_vector, products=self.cfg.sharpness_products,
                             tol=AnalysisSettings.sharpness_tol, seed=self.cfg.seed)
        self.sharpness_vector = top.vector
        return {"lambda_max": top.value, "lambda_max_residual": top.residual, "lambda_max_converged": top.converged}

    def _record(self, m: dict[str, Any]) -> None:
        m = {**m, "wall_time": self._wall(), "peak_mem_bytes": _peak_memory(self.device)}
        self.folder.append_metrics(m)
        self.rows.add(m)
        self.n_metrics += 1
        if self.writer is not None:
            for k, v in m.items():
                if k not in ("epoch", "step", "global_epoch"):
                    self.writer.add_scalar(k, v, self.step)
            self.writer.flush()
        if self.bar is not None:
            self.bar.write(f"epoch {format_epoch(m['epoch'])}: train {m['train_loss']:.4f}/{m['train_acc']:.2%} "
                           f"test {m['test_loss']:.4f}/{m['test_acc']:.2%}")

    # ---- checkpoints and the end -------------------------------------------------------------------------
    def state(self, with_optimizer: bool = True) -> dict[str, Any]:
        """A checkpoint of this step (docs/architecture.md): the model side's ``weights`` and the run's progress."""
        w, epoch = self.weights(with_optimizer), self.step / self.spe
        progress = {"n_metrics": self.n_metrics, "metrics_digest": self.rows.hexdigest(), "elapsed": self._wall(),
                    "run_stats": dict(self.run_stats)}
        if self.sharpness_vector is not None:
            progress["sharpness_vector"] = self.sharpness_vector
        return {"format": FORMAT, "model": w["model"], "optimizer": w["optimizer"], "param_names": w["param_names"],
                "config": self.cfg.to_dict(), "arch": w["arch"], "epoch": epoch,
                "global_epoch": self.global_offset + epoch, "step": self.step, "rng": w["rng"],
                "progress": progress}

    def _save(self, path: Path, with_optimizer: bool = True) -> None:
        atomic_torch_save(self.state(with_optimizer), path)

    def checkpoint(self) -> None:
        """``checkpoints/last.pt`` at this step, and the status's progress with it."""
        self._save(self.folder.checkpoint_path)
        self.saved_at = self.step
        self.write_status("running")

    def finish(self, reason: str) -> dict[str, Any]:
        """``reason``: "epochs" (planned length), "zero_loss", "max_epochs" (cap hit) or "diverged"."""
        if reason == "diverged":
            self.write_status("diverged", error=f"training loss became NaN or infinite by step {self.step} "
                              f"(epoch {self.step / self.spe:g}); checkpoints/last.pt is the last good state")
        else:
            self._save(self.folder.final_path, with_optimizer=False)
            self.write_status("done", reason=reason)
        return self.result()

    def close(self) -> None:
        """Close the tensorboard log and the progress bar."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self.bar = self.writer = None

    def release(self) -> None:
        """Let go of the model side (a finished member of a stack: its parameters are views that would keep the
        stack alive); status writes, ``fail`` and ``result`` still work."""
        self.run = self.losses = self.weights = None

    # ---- outputs -------------------------------------------------------------------------------------------
    def _open_outputs(self, bar: bool) -> None:
        cfg = self.cfg
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("tensorboard=True needs the tensorboard package: "
                                   "pip install 'archrelax[tensorboard]'") from e
            self.writer = SummaryWriter(str(self.folder.path / "tensorboard"))
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


# ---- the folder around a run -------------------------------------------------------------------------------
def check_lock(folder: RunFolder, lock: RunLock | None, where: str) -> None:
    """A lock handed over (``where``: the argument, for the message) must be the held lock of ``folder``."""
    if lock is not None and not (lock.held and lock.path.resolve() == folder.lock_path.resolve()):
        raise ValueError(f"{where} needs the held lock of {str(folder.lock_path)!r}, got {lock.path} "
                         f"({'held' if lock.held else 'not held'})")


def prepare_folder(cfg: TrainConfig, folder: RunFolder) -> dict[str, Any] | None:
    """Before training into ``folder`` (whose lock the caller holds): refuse a different config in a folder that
    trained, return the result of a finished run (not redone), else write config.json and return None. A finished
    run whose record is incomplete (``RunFolder.record_problems``: its log or final.pt lost) is refused naming what
    is missing, unless ``cfg.restart`` asks for it to be trained again (``scratch``: from step 0; ``intact``: from
    its checkpoint or latest snapshot that the folder agrees with)."""
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
            problems = folder.record_problems()
            if not problems:
                return run_result(folder, status)
            if cfg.restart is None:
                raise StoreError(folder.path, f"run folder {str(folder.path)!r} is {status.status}, but its record is "
                                 f"incomplete: {'; '.join(problems)}; restore the files from a copy, or train it again "
                                 "with `archrelax train --restart intact` (from its latest state the record still "
                                 "holds) or `--restart scratch`")
            if cfg.restart == "scratch":
                folder.checkpoint_path.unlink(missing_ok=True)
            print(f"{folder.path}: {status.status}, but {'; '.join(problems)}: training it again "
                  f"(restart={cfg.restart})", file=sys.stderr)
    folder.write_config(cfg.to_dict())
    return None


def run_result(folder: RunFolder, status: Status) -> dict[str, Any]:
    """``train``'s result: ``{"status", "error", "stop_reason", "epoch", "global_epoch", "step", "metrics" (the
    last metrics row), "out_dir"}``."""
    rows = folder.read_metrics()
    return {"status": status.status, "error": status.error, "stop_reason": status.stop_reason,
            "epoch": status.epoch, "global_epoch": status.global_epoch, "step": status.step,
            "metrics": rows[-1] if rows else None, "out_dir": str(folder.path)}


def _attention_measures(model: torch.nn.Module, probe: torch.Tensor | None) -> dict[str, float]:
    """``attention_measures`` of ``model`` on ``probe`` in eval mode (no dropout; the mode restored after): pure,
    so the trajectory is the same with or without them (the measures restore buffers and RNG themselves)."""
    from archrelax.embed.attention_measures import attention_measures

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return attention_measures(model, probe)
    finally:
        model.train(was)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    # ru_maxrss is in KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _check_same_config(saved: TrainConfig, new: TrainConfig, path: Path) -> None:
    diff = config_changes(saved.to_dict(), new.to_dict())
    if diff:
        raise ValueError(f"{str(path)!r} holds a run with a different config {{key: (saved, new)}} = {diff}; "
                         "use another output folder or delete this one")
