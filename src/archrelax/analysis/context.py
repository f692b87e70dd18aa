"""What a runner of ``analyse_experiment`` works with: the experiment folder (through the store's
:class:`~archrelax.store.ExperimentView`: each run's kind, state and final figures as the report and the
claims read them), the settings, models loaded from checkpoints and the fixed data subsets (loaded lazily,
only when an analysis must be recomputed).

Models are evaluated in eval mode on fixed subsets drawn with ``settings.seed``: ``sharpness_samples``
training images for the Hessian, ``eval_train_samples``/``eval_test_samples`` for ablation and
interpolation, normalised by the trainer's own BatchFeed (no augmentation).
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from archrelax.store import ExperimentFolder, ExperimentView, Run, RunFolder, StoreError
from archrelax.store.plan import RELAXED_KINDS
from archrelax.store.results import Missing
from archrelax.utils import resolve_device

from .settings import AnalysisSettings

__all__ = ["Context", "RELAXED_KINDS", "weight_files", "final_files", "metrics_files", "cnn_checkpoint"]


class Context:
    def __init__(self, exp: ExperimentFolder, settings: AnalysisSettings, progress: bool = True):
        self.exp, self.s, self.progress = exp, settings, progress
        self.view = ExperimentView(exp)  # plan.json required: FileNotFoundError / StoreError name it
        self.plan: dict[str, Run] = self.view.plan
        self.device = resolve_device(settings.device)
        self._data: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._data_lock = threading.Lock()  # analyses may run side by side in threads (experiment._analyse)
        self._status: dict[str, str] = {}
        self.pool: Any = None  # archrelax.analysis.pool.Pool: where the per-run jobs run (set by analyse_experiment)

    def log(self, msg: str) -> None:
        if self.progress:
            print(f"[analyse] {msg}", file=sys.stderr, flush=True)

    # ---- the runs ----------------------------------------------------------------------------------------
    def folder(self, run: Run) -> RunFolder:
        return self.exp.run(run.id)

    def of_kind(self, *kinds: str) -> list[Run]:
        return self.exp.of_kind(self.plan, *kinds)

    def status(self, run: Run) -> str:
        """The run's state (:class:`~archrelax.store.RunView`); "corrupt" when its status.json cannot be read
        (the run is then skipped)."""
        return self.view.run(run.id).status

    def statuses(self) -> dict[str, str]:
        return {rid: self.status(r) for rid, r in self.plan.items()}

    def done(self, run: Run) -> bool:
        """Done (``RunView.done``: finished, its files readable) with its final weights on disk."""
        return self.view.run(run.id).done and self.folder(run).final_path.is_file()

    def finished(self, runs: Iterable[Run], missing: list[Missing]) -> list[Run]:
        """The runs that are done with their final weights; the others are listed in ``missing`` with why."""
        out = []
        for r in runs:
            if self.done(r):
                out.append(r)
                continue
            v, folder = self.view.run(r.id), self.folder(r)
            why = f"status {v.status!r}"
            if v.problems:
                bad = folder.status_path if v.status == "corrupt" else folder.metrics_path
                why = f"unreadable {bad.relative_to(self.exp.root)}"
            missing.append(Missing(run=r.id, reason=why + ("" if folder.final_path.is_file() else ", no final.pt")))
        return out

    def config(self, run: Run) -> dict[str, Any]:
        """The run folder's resolved config.json, else the plan's config."""
        try:
            return self.folder(run).read_config() or dict(run.config)
        except StoreError:
            return dict(run.config)

    def cnn_of(self, run: Run) -> Run | None:
        return self.exp.cnn_of(self.plan, run)

    def switch_snapshot(self, run: Run) -> Path | None:
        """The snapshot ``run`` started from, if it is on disk (``ExperimentFolder.snapshot_for``)."""
        path = self.exp.snapshot_for(run)
        return path if path is not None and path.is_file() else None

    def snapshots(self, run: Run) -> list[tuple[float, Path]]:
        """The snapshots of ``run`` that the analyses read, as (epoch, path) by increasing epoch: all of them,
        except for a run that snapshots at every evaluation (``snapshot_every_eval``, for an automatic switch
        time), where only the ones a planned run starts from count (all of them if none does): the rest exist
        so that any time a rule picks has a snapshot, and analysing each would cost a sharpness point per
        evaluation (the λ_max along training is in the run's rows already)."""
        snaps = self.folder(run).snapshots()
        if not self.config(run).get("snapshot_every_eval"):
            return snaps
        children = [c for c in self.plan.values() if c.depends_on == run.id]
        if not children:
            return snaps
        keep = {p for c in children if (p := self.switch_snapshot(c)) is not None}
        return [(t, p) for t, p in snaps if p in keep]

    def rel(self, path: Path) -> str:
        """A path relative to the experiment folder when inside it."""
        path = Path(path)
        return str(path.relative_to(self.exp.root)) if path.is_relative_to(self.exp.root) else str(path)

    @staticmethod
    def tag(run: Run) -> dict[str, Any]:
        """The RunTag fields every per-run record carries."""
        return {"run": run.id, "kind": run.kind, "seed": run.seed, "t_w": run.t_w, "t_w2": run.t_w2}

    # ---- models ------------------------------------------------------------------------------------------
    def load(self, path: Path | dict[str, Any]) -> nn.Module:
        """The model of a checkpoint file, or of a checkpoint already loaded (``load_checkpoint``: read once
        when the caller needs its other records too), on the analyses' device."""
        from archrelax.train.checkpoint import model_from_checkpoint

        return model_from_checkpoint(path).to(self.device)

    def embedded(self, path: Path, like: nn.Module, like_arch: dict[str, Any]) -> nn.Module:
        """The checkpoint at ``path`` embedded (exactly) into the relaxed architecture ``like_arch``."""
        from archrelax.embed.relax import relax
        from archrelax.train.checkpoint import load_checkpoint, model_from_checkpoint

        from archrelax.models import relax_steps

        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt)
        src, dst = relax_steps(ckpt["arch"]), relax_steps(like_arch)
        if dst[: len(src)] != src:
            raise ValueError(f"cannot embed {str(path)!r} (relax chain {src}) into relax chain {dst}")
        example = torch.zeros(1, *model.input_shape)
        for step, layers in dst[len(src):]:
            model = relax(model, to=step, example_input=example, layers=layers)
        a, b = model.state_dict(), like.state_dict()
        if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
            raise ValueError(f"{str(path)!r} embedded does not match the relaxed run's parameters")
        return model.to(self.device)

    # ---- data --------------------------------------------------------------------------------------------
    def reference(self) -> Run:
        """The run whose data configuration every analysis uses: the first CNN (else the first run)."""
        ref = next(iter(self.of_kind("cnn") or self.plan.values()), None)
        if ref is None:
            raise ValueError("the plan has no runs, so there is no data configuration to analyse with")
        return ref

    def splits(self, run: Run) -> Any:
        """``load_data`` as configured for ``run`` (the trainer's call)."""
        from archrelax.data import load_data

        c = self.config(run)
        return load_data(c.get("data", "mnist5k"), c.get("data_root"), train_size=c.get("train_size"),
                         test_size=c.get("test_size"), seed=c.get("data_seed", 0), subset=c.get("subset", "stratified"))

    def data(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Normalised fixed subsets: "hessian" (train), "train" and "test", from the first CNN's data config."""
        with self._data_lock:
            if self._data is None:
                self._data = self._load_data()
        return self._data

    def _load_data(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        from archrelax.data import BatchFeed

        ref = self.reference()
        self.log(f"loading data {self.config(ref).get('data', 'mnist5k')!r} (as configured for run {ref.id})")
        splits = self.splits(ref)
        gen = torch.Generator().manual_seed(self.s.seed)

        def subset(split: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.randperm(len(split), generator=gen)[: min(n, len(split))]
            # the trainer's own normalisation path, in order, without augmentation
            feed = BatchFeed(split.images[idx], split.labels[idx], self.s.batch_size, mean=splits.mean,
                             std=splits.std, device=self.device, shuffle=False)
            xs, ys = zip(*feed.epoch(0))
            return torch.cat(xs), torch.cat(ys)

        return {"hessian": subset(splits.train, self.s.sharpness_samples),
                "train": subset(splits.train, self.s.eval_train_samples),
                "test": subset(splits.test, self.s.eval_test_samples)}


def guard(missing: list[Missing], run: Run, what: str, fn: Callable[[], Any]) -> Any:
    """Run one per-run step; a broken file becomes a "missing" entry instead of failing the analysis."""
    try:
        return fn()
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as e:  # StoreError is a ValueError
        missing.append(Missing(run=run.id, reason=f"{what}: {type(e).__name__}: {e}"))
        return None


# ---- inputs (the files an analysis reads: part of its cache key) ---------------------------------------------
def weight_files(ctx: Context) -> list[Path]:
    """Every analysed snapshot (:meth:`Context.snapshots`) and final.pt of every run."""
    out = []
    for r in ctx.plan.values():
        f = ctx.folder(r)
        out += [p for _, p in ctx.snapshots(r)] + ([f.final_path] if f.final_path.is_file() else [])
    return out


def final_files(ctx: Context) -> list[Path]:
    return [ctx.folder(r).final_path for r in ctx.plan.values()]


def metrics_files(ctx: Context) -> list[Path]:
    return [ctx.folder(r).metrics_path for r in ctx.plan.values()]


def cnn_checkpoint(ctx: Context) -> list[Path]:
    """The first CNN's first weights file (its arch record); none before it trained."""
    cnn = next(iter(ctx.of_kind("cnn")), None)
    if cnn is None:
        return []
    f = ctx.folder(cnn)
    return [p for p in (f.final_path, *(p for _, p in f.snapshots())) if p.is_file()][:1]
