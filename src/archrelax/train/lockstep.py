"""``train_lockstep(configs, out_dirs)``: runs of one architecture trained in one process, in lockstep, on stacked
weights, so that small models keep a large GPU busy (all switch times of a CNN, and its seeds).

Each member is an ordinary run, made of the parts ``train`` is made of: its model side from ``setup.set_up``
(fresh, from its snapshot, or resumed), and its own :class:`~archrelax.train.recorder.Recorder`, which writes its
run folder (config, lock, status, metrics log, snapshots, checkpoints, final weights) in the trainer's formats, so
that the run store, ``model_from_checkpoint``, the analyses and a later resume (by ``train`` or by lockstep again)
see a run like any other. What the stack changes is where the numbers are computed:

- one stacked model (:mod:`archrelax.train.stacked`) computes every member's forward and backward on the
  member-major merged batch, each layer batched over the members (CUDA) or member by member (CPU: the same
  ops as separate runs); the members' parameters are views of the stacked ones;
- one optimiser over the stacked parameters replaces the members' optimisers. SGD (momentum, weight decay),
  Adam and AdamW are elementwise, so this is R optimisers at once (tests/test_lockstep.py compares them; the
  fused CPU SGD kernel rounds a few elements by one ulp differently, the others are bitwise equal);
- every member reads its own seed's batches (members of one seed share them); the update is the trainer's
  :class:`~archrelax.train.step.UpdateStep` over the stack (member r's loss the mean cross-entropy of its rows,
  the stacked loss their sum, so each member's gradient is its own; the soft release's penalty gradient into
  each member's slice, with λ(t) from the member's own step);
- evaluations (due at the same steps for all: they share the schedule) run the stacked model on the evaluation
  batches when the layers are batched, each member's loss and accuracy summed exactly as for one model
  (``step.evaluate_splits``); member by member, each member's own model is evaluated;
- dropout draws member by member from each member's own RNG state, saved in its checkpoints as ``rng``;
- a stack writes R checkpoints at once, so while ``checkpoint_every_s`` is set its members checkpoint on the time
  rule only, not at every epoch end (``Recorder.checkpoint_due``).

Signals (SIGTERM, SIGINT, SIGHUP, SIGUSR1; archrelax.signals): after the current step every member still training
writes its checkpoint and is marked ``interrupted`` (each recorder's ``stop_if_signalled``), members set up but
not yet trained (another stack, another wave) are marked ``interrupted`` as they are, and
:class:`~archrelax.signals.Interrupted` is raised; a rerun resumes each at its step.

Members stop independently (until-zero-loss, the cap, divergence: their recorders say so): a finished member is
written as done (or diverged) and dropped from the stack, parameter by parameter, with the optimiser state of the
others kept. Members that are not at the same step (a resume of runs interrupted at different points) or whose
parameters differ in shape are trained as separate stacks, one after another; a model the stacking does not
support (:class:`~archrelax.train.stacked.NotStackable`) is trained member by member by the trainer's own loop
(``trainer.fit``), with a note.

Equality with separate runs: member by member (CPU), each layer computes the member's own numbers bit for bit;
batched (CUDA), to float tolerance (other GEMM/conv kernels). The fused CPU SGD step over the stack rounds a few
elements one ulp differently and the per-member losses are reduced in another order, so metrics agree with
separate runs to float tolerance over a run (tests/test_lockstep.py states the tolerance and runs both modes).
"""
from __future__ import annotations

import dataclasses
import gc
import os
import sys
import traceback
import warnings
from typing import Any, Callable, Sequence

import torch
from torch import nn

from archrelax.signals import Interrupted, StopOnSignals, signal_name
from archrelax.store import RunFolder, RunLock

from .checkpoint import rng_state, set_rng_state
from .config import LOCKSTEP_FREE, RUNTIME_FIELDS, TrainConfig, lockstep_key
from .recorder import Recorder, check_lock, prepare_folder, probe_batch, sharpness_batch
from .setup import determinism, load_run_data, make_feeds, make_optimizer, set_up
from .stacked import NotStackable, check_stacked, stack_models
from .step import Losses, UpdateStep, evaluate_splits, set_lr
from .trainer import fit

__all__ = ["train_lockstep", "lockstep_key", "NotStackable"]


class _Shared:
    """What every member reads: the data (loaded once, moved to the device once), the evaluation feeds, one
    shuffled training feed per seed (``make_feeds``, the trainer's)."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        data = load_run_data(cfg)
        on = lambda s: dataclasses.replace(s, images=s.images.to(device), labels=s.labels.to(device))  # noqa: E731
        self.data = dataclasses.replace(data, train=on(data.train), test=on(data.test))
        self._feeds: dict[int, Any] = {}
        self.eval_feeds = self._make(cfg.seed)[1]

    def _make(self, seed: int) -> tuple[Any, dict[str, Any]]:
        return make_feeds(dataclasses.replace(self.cfg, seed=seed), self.data, self.device)

    def feed(self, seed: int):
        if seed not in self._feeds:
            self._feeds[seed] = self._make(seed)[0]
        return self._feeds[seed]


class _Member:
    """One run of a lockstep group: its recorder, its model side (``set_up``, as a run of its own), its training
    RNG stream. Once stacked, its parameters are views of the stack's, and the stack evaluates it and gives its
    checkpoints their optimiser state; until then (or when its model cannot be stacked) it is an ordinary run."""

    def __init__(self, rec: Recorder, shared: _Shared):
        cfg = rec.cfg
        self.rec, self.shared, self.stack = rec, shared, None
        rec.write_status("running")
        self.feed = shared.feed(cfg.seed)
        rec.schedule(len(self.feed))
        self.run = set_up(cfg, rec.folder, shared.data, shared.device)
        self.rng = rng_state(shared.device)  # this run's training RNG stream, as a run of its own holds it now
        # λ_max along training: on the member's own model (its parameters, views of the stack's, hold its weights),
        # member by member, as a run of its own computes it
        rec.attach(self.run, losses=self.losses, weights=self.weights, probe=probe_batch(shared.eval_feeds),
                   hessian=sharpness_batch(cfg, shared.data, shared.device))

    def losses(self) -> Losses:
        """Batched: from the stack's evaluation of every member; otherwise the member's own model (its parameters
        are views of the stack: the same weights) through ``evaluate_splits``, as a run of its own."""
        if self.stack is not None and self.stack.held.batched:
            return self.stack.losses(self)
        return evaluate_splits(self.run.forward, self.shared.eval_feeds, self.rec.cfg.amp)[0]

    def weights(self, with_optimizer: bool = True) -> dict[str, Any]:
        """The model side of this member's checkpoint (``RunState.weights``); stacked: its slice of the weights
        (cloned), of the stack's optimiser state, and its own RNG stream."""
        if self.stack is None:
            return self.run.weights(with_optimizer)
        w = self.run.weights(with_optimizer=False)
        w["model"] = {k: v.clone() for k, v in w["model"].items()}  # views of the stack: this member only
        w["optimizer"] = self.stack.optimizer_state(self) if with_optimizer else None
        w["rng"] = self.rng
        return w

    def release(self) -> None:
        """Drop the model side (finished): its parameters are views that would keep the stack alive."""
        self.rec.release()
        self.run = None


class _Lockstep:
    """Members at the same step with parameters of one shape, trained on one stack (module docstring)."""

    def __init__(self, members: list[_Member], shared: _Shared, results: dict[int, dict[str, Any]],
                 batched: bool | None):
        self.members, self.shared, self.results = list(members), shared, results
        self.cfg, self.device = members[0].rec.cfg, shared.device
        models = [m.run.model for m in members]
        self.net, self.held = stack_models(models, [m.rng for m in members], batched=batched)
        try:
            c, h, w = shared.data.train.images.shape[1:]
            examples = torch.randn(len(members), 2, c, h, w, generator=torch.Generator().manual_seed(0))
            check_stacked(self.net, models, examples.to(self.device))
        except NotStackable:
            for m in models:  # back to tensors of their own, for the ordinary loop
                for p in m.parameters():
                    p.data = p.data.clone()
            raise
        self.forward = torch.compile(self.net) if self.cfg.compile else self.net
        self.opt = make_optimizer(self.cfg, self.net)
        self._take_optimizer_states()
        self._update = UpdateStep(self.cfg, self.forward, self.opt, models, net=self.net)
        self._eval: tuple[int, list[Losses]] | None = None
        for m in members:
            m.stack = self

    # ---- optimiser state: stacked from the members' (resume, carry), sliced back for their checkpoints --------
    def _take_optimizer_states(self) -> None:
        params = [dict(m.run.model.named_parameters()) for m in self.members]
        for name, p in self.net.named_parameters():
            per = [m.run.opt.state.get(ps[name]) or {} for m, ps in zip(self.members, params)]
            if not any(per):
                continue
            if not all(per) or any(s.keys() != per[0].keys() for s in per):
                raise RuntimeError(f"lockstep: the members' optimiser states for {name!r} differ in their keys "
                                   f"{[sorted(s) for s in per]}; they cannot be stacked")
            self.opt.state[p] = {k: _stacked([s[k] for s in per]) for k in per[0]}
            for m, ps in zip(self.members, params):  # free each member's buffers as soon as they are stacked
                m.run.opt.state.pop(ps[name], None)

    def optimizer_state(self, m: _Member) -> dict[str, Any]:
        """Member ``m``'s optimiser state dict, as its own optimiser would hold it (``Optimizer.state_dict``)."""
        r = self.members.index(m)
        state = {}
        for i, (name, p) in enumerate(self.net.named_parameters()):
            s = self.opt.state.get(p)
            if s:
                state[i] = {k: (v[r].clone() if torch.is_tensor(v) and v.dim() > 0 else
                                v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
        return {"state": state, "param_groups": m.run.opt.state_dict()["param_groups"]}

    # ---- evaluation ------------------------------------------------------------------------------------------
    def losses(self, m: _Member) -> Losses:
        """Member ``m``'s losses at the current step, the whole stack evaluated once per step (batched layers),
        when the first member asks."""
        step = m.rec.step
        if self._eval is None or self._eval[0] != step:
            self._eval = (step, evaluate_splits(self.forward, self.shared.eval_feeds, self.cfg.amp,
                                                members=len(self.members)))
        return self._eval[1][self.members.index(m)]

    # ---- the loop --------------------------------------------------------------------------------------------
    def fit(self, signals: StopOnSignals | None) -> None:
        """Train every member to its end; each ends through its recorder's ``finish`` (results in ``self.results``)."""
        try:
            done = []
            epoch_ends = self.cfg.checkpoint_every_s is None  # else the time rule alone (Recorder.checkpoint_due)
            for m in self.members:
                stop = m.rec.start(signals, bar=False, epoch_end_checkpoints=epoch_ends)
                if stop:
                    self.results[id(m)] = m.rec.finish(stop)
                    done.append(m)
            if done:
                self._drop(done)
            self._stop_if_signalled()  # each at its checkpoint's step
            self._loop()
        except Interrupted:
            raise  # every member saved its state and wrote 'interrupted' (_stop_if_signalled)
        except BaseException as e:
            tb = traceback.format_exc()
            for m in self.members:  # the ones still training: recorded as failed, like the trainer does
                try:
                    m.rec.fail(e)
                finally:
                    self.results[id(m)] = {**m.rec.result(), "traceback": tb}
            if not isinstance(e, Exception):
                raise
        finally:
            for m in self.members:
                m.rec.close()
            self.members, self.net, self.opt, self.forward, self._update = [], None, None, None, None

    def _loop(self) -> None:
        bar = self._bar()
        try:
            while self.members:
                lead = self.members[0].rec
                if lead.at_end:
                    break
                epoch, batch = divmod(lead.step, lead.spe)
                seeds = sorted({m.rec.cfg.seed for m in self.members})
                for batches in zip(*(self.shared.feed(s).epoch(epoch, start=batch) for s in seeds)):
                    dropped = self._step(dict(zip(seeds, batches)))
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(runs=len(self.members))
                    if dropped or not self.members or self.members[0].rec.at_end:
                        break  # new iterators (seeds may be gone), or the end
            for m in list(self.members):
                self.results[id(m)] = m.rec.finish("max_epochs" if m.rec.cfg.until_zero_loss else "epochs")
        finally:
            if bar is not None:
                bar.close()

    def _step(self, batches: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> bool:
        """One update of every member; then each member's recorder. Returns whether members were dropped."""
        ms = self.members
        R = len(ms)
        lr = ms[0].rec.lr()  # one schedule: the members share step and settings
        for m in ms:  # the members' optimisers only carry lr into their checkpoints
            set_lr(m.run.opt, lr)
        if len(batches) == 1:
            x, y = next(iter(batches.values()))
            X, Y = x.unsqueeze(0).expand(R, *x.shape).reshape(R * x.shape[0], *x.shape[1:]), y.repeat(R)
        else:
            X = torch.cat([batches[m.rec.cfg.seed][0] for m in ms])
            Y = torch.cat([batches[m.rec.cfg.seed][1] for m in ms])
        losses, correct = self._update(X, Y, lr, [m.rec.soft_lambda() for m in ms])  # (R,) each
        B = X.shape[0] // R
        done = []
        for r, m in enumerate(ms):
            m.rng = self.held.rng[r]
            stop = m.rec.after_update(losses[r], correct[r], B, lr)
            if stop:
                self.results[id(m)] = m.rec.finish(stop)
                done.append(m)
        if done:
            self._drop(done)
        self._stop_if_signalled()
        return bool(done)

    def _stop_if_signalled(self) -> None:
        """On a stop signal: every member saves its state at this step (unless it just did) and is marked
        'interrupted' (its recorder's rule), then Interrupted is raised. At the last step the members just finish."""
        first = None
        for m in list(self.members):
            try:
                m.rec.stop_if_signalled()
            except Interrupted as e:
                first = first or e
        if first is not None:
            n = len(self.members)
            raise Interrupted(first.signum, f"lockstep: {n} run(s) interrupted by {signal_name(first.signum)} at step "
                                            f"{self.members[0].rec.step}; checkpoints written, rerun to resume")

    def _drop(self, done: list[_Member]) -> None:
        """Remove finished members from the stack, one parameter at a time (peak memory: the stack plus one
        parameter's slice), keeping the others' weights and optimiser state."""
        keep = [i for i, m in enumerate(self.members) if m not in done]
        kept = [self.members[i] for i in keep]
        for m in done:
            m.rec.close()
            m.release()
        self.members = kept
        self._eval = None
        if not kept:
            self.net = self.opt = self.forward = self._update = None
            return
        idx = torch.tensor(keep, device=self.device)
        old = self.opt
        params = dict(self.net.named_parameters())
        member_params = [dict(m.run.model.named_parameters()) for m in kept]
        for g in old.param_groups:  # the optimiser must not keep the old stacked tensors alive
            g["params"] = []
        states: dict[str, dict[str, Any]] = {}
        for name, p in params.items():
            path, _, attr = name.rpartition(".")
            new = nn.Parameter(p.detach().index_select(0, idx))
            s = old.state.pop(p, None)
            if s:
                states[name] = {k: (v.index_select(0, idx) if torch.is_tensor(v) and v.dim() > 0 else v)
                                for k, v in s.items()}
            setattr(self.net.get_submodule(path), attr, new)
            for j, mp in enumerate(member_params):
                mp[name].data = new.detach()[j]
            del p, s
        params.clear()
        self.held.R, self.held.rng = len(kept), [self.held.rng[i] for i in keep]
        self.opt = make_optimizer(self.cfg, self.net)
        for name, p in self.net.named_parameters():
            if name in states:
                self.opt.state[p] = states[name]
        self._update = UpdateStep(self.cfg, self.forward, self.opt, [m.run.model for m in kept], net=self.net)

    def _bar(self):
        lead = self.members[0].rec if self.members else None
        if lead is None:
            return None
        show = sys.stderr.isatty() if lead.cfg.progress is None else lead.cfg.progress
        if not show:
            return None
        from tqdm import tqdm

        return tqdm(total=lead.total, initial=lead.step, unit="step", dynamic_ncols=True,
                    desc=f"lockstep x{len(self.members)}")


def _stacked(values: list[Any]) -> Any:
    """One optimiser-state entry from the members': tensors stacked; scalar tensors (Adam's step) and plain values,
    which agree at one step, taken from the first member."""
    v = values[0]
    if torch.is_tensor(v) and v.dim() > 0:
        return torch.stack(values)
    return v.clone() if torch.is_tensor(v) else v


# ---- the group ------------------------------------------------------------------------------------------------
def _check_group(cfgs: list[TrainConfig]) -> None:
    keys = {lockstep_key(c) for c in cfgs}
    if len(keys) > 1:
        dicts = [c.to_dict() for c in cfgs]
        differ = sorted(k for k in dicts[0] if k not in LOCKSTEP_FREE and k not in RUNTIME_FIELDS
                        and len({repr(d[k]) for d in dicts}) > 1)
        raise ValueError(f"train_lockstep: the configs differ in {differ}; runs trained in lockstep may differ only in "
                         f"{list(LOCKSTEP_FREE)} and the runtime fields {list(RUNTIME_FIELDS)}")


def _memory_chunks(members: list[_Member]) -> list[list[_Member]]:
    """On CUDA, split a stack so that its gradients and optimiser state fit the free memory (the members' weights are
    resident already); elsewhere one stack."""
    dev = members[0].shared.device
    if dev.type != "cuda" or len(members) == 1:
        return [members]
    cfg = members[0].rec.cfg
    slots = 2 if cfg.optimizer in ("adam", "adamw") else (1 if cfg.momentum > 0 else 0)
    per = sum(p.numel() * p.element_size() for p in members[0].run.model.parameters()) * (1 + slots)
    free = torch.cuda.mem_get_info(dev)[0]
    n = max(1, int(0.7 * free // max(per, 1)))
    return [members[i : i + n] for i in range(0, len(members), n)]


def _solo(m: _Member, results: dict[int, dict[str, Any]], stop: StopOnSignals | None) -> None:
    """The ordinary loop (the trainer's ``fit``) for one member (a model the stacking does not support)."""
    set_rng_state(m.rng, m.shared.device)
    try:
        results[id(m)] = fit(m.rec, m.run, m.feed, stop)
    except Interrupted:
        raise  # saved and marked 'interrupted' by the loop
    except BaseException as e:
        m.rec.fail(e)
        results[id(m)] = {**m.rec.result(), "traceback": traceback.format_exc()}
        if not isinstance(e, Exception):
            raise
    finally:
        m.rec.close()
        m.release()


def _train_wave(members: list[_Member], shared: _Shared, results: dict[int, dict[str, Any]],
                log: Callable[[str], None], batched: bool | None, stop: StopOnSignals | None) -> None:
    parts: dict[Any, list[_Member]] = {}
    for m in members:  # same step and parameter shapes: one stack
        sig = (m.rec.step, tuple((n, tuple(p.shape)) for n, p in m.run.model.named_parameters()))
        parts.setdefault(sig, []).append(m)
    if len(parts) > 1:
        log(f"lockstep: {len(members)} runs are at {len(parts)} different steps or shapes; trained as "
            f"{len(parts)} stacks one after another")
    for part in parts.values():
        for chunk in _memory_chunks(part):
            try:
                stack = _Lockstep(chunk, shared, results, batched)
            except NotStackable as e:
                log(f"lockstep: {e}; training these {len(chunk)} runs one after another instead")
                for m in chunk:
                    _solo(m, results, stop)
                continue
            stack.fit(stop)


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)


def train_lockstep(configs: Sequence[TrainConfig | dict], out_dirs: Sequence[Any], *,
                   locks: Sequence[RunLock | None] | None = None, log: Callable[[str], None] | None = None,
                   batched: bool | None = None) -> list[dict[str, Any]]:
    """Train runs that differ only in ``init_from``, ``seed``, ``snapshots`` and runtime fields in one process, in
    lockstep (module docstring), each into its own run folder exactly as ``train(config, out_dir)`` would.

    ``locks``: per run, None (taken here; a busy folder raises RunBusyError naming its holder before anything is
    trained) or the held lock of its folder (handed over, e.g. by the protocol). Finished runs are returned as
    they are; a folder that trained with another config is refused (ValueError), as by ``train``. Returns one
    ``train``-style result per run, in order. A run that fails (while being set up or trained) is recorded as
    ``failed`` in its status.json and returned with ``"status": "failed"``, its ``"error"`` and ``"traceback"``;
    the others go on. ``log``: where notes go (default: ``warnings.warn``). ``batched``: the stacked layers run
    batched (one call for all members) or member by member (``archrelax.train.stacked``); default: the
    environment's ``ARCHRELAX_LOCKSTEP_BATCHED`` (1 or 0) if set, else batched on CUDA only.

    SIGTERM, SIGINT, SIGHUP or SIGUSR1 (in the main thread) stop the group after the current step, as ``train`` stops
    a run: every member in training writes its checkpoint and is marked ``interrupted``, members not yet
    trained are marked ``interrupted`` as they are, then :class:`archrelax.signals.Interrupted` is raised
    (``exit_code`` 128 + the signal number). Rerunning (by lockstep or by ``train``) resumes each at its step.
    """
    log = log or _warn
    if batched is None and os.environ.get("ARCHRELAX_LOCKSTEP_BATCHED", "") in ("0", "1"):
        batched = os.environ["ARCHRELAX_LOCKSTEP_BATCHED"] == "1"
    cfgs = [c if isinstance(c, TrainConfig) else TrainConfig.from_dict(dict(c)) for c in configs]
    folders = [RunFolder(d) for d in out_dirs]
    if len(cfgs) != len(folders) or not cfgs:
        raise ValueError(f"train_lockstep needs one out_dir per config (at least one), got {len(cfgs)} configs and "
                         f"{len(folders)} folders")
    if len({f.path.resolve() for f in folders}) != len(folders):
        raise ValueError(f"train_lockstep: out_dirs repeat a folder: {[str(f.path) for f in folders]}")
    _check_group(cfgs)
    locks = list(locks) if locks is not None else [None] * len(cfgs)
    for f, lock in zip(folders, locks):
        f.path.mkdir(parents=True, exist_ok=True)
        check_lock(f, lock, "train_lockstep(locks=...)")
    own: list[RunLock] = []
    try:
        for f, lock in zip(folders, locks):
            if lock is None:
                own.append(f.lock().acquire())
        results: dict[int, dict[str, Any]] = {}
        todo = []
        for i, (cfg, f) in enumerate(zip(cfgs, folders)):
            finished = prepare_folder(cfg, f)
            if finished is not None:
                results[i] = finished
            else:
                todo.append(i)
        with StopOnSignals() as stop:
            if todo:
                _train_group(cfgs, folders, todo, results, log, batched, stop)
        return [results[i] for i in range(len(cfgs))]
    finally:
        for lock in own:
            lock.release()


def _train_group(cfgs: list[TrainConfig], folders: list[RunFolder], todo: list[int],
                 results: dict[int, dict[str, Any]], log: Callable[[str], None], batched: bool | None,
                 stop: StopOnSignals) -> None:
    from archrelax.utils import resolve_device

    device = resolve_device(cfgs[todo[0]].device)
    with determinism(device):
        try:
            shared = _Shared(cfgs[todo[0]], device)
        except Exception as e:  # the data: every run fails the same way, each recorded
            tb = traceback.format_exc()
            for i in todo:
                rec = Recorder(cfgs[i], folders[i])
                rec.fail(e)
                results[i] = {**rec.result(), "traceback": tb}
            return
        pending, first = list(todo), True
        while pending:  # waves: members are built until one no longer fits the device's memory
            if not first:  # the last wave's memory back to the device (the relax guard reads free memory)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            first = False
            wave: list[tuple[int, _Member]] = []
            for i in list(pending):
                rec = Recorder(cfgs[i], folders[i])
                try:
                    wave.append((i, _Member(rec, shared)))
                except BaseException as e:  # this run could not be set up; the others go on
                    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) and wave:
                        log(f"lockstep: {len(pending)} runs do not fit the device's memory together; training "
                            f"{len(wave)} first")
                        break
                    rec.fail(e)
                    results[i] = {**rec.result(), "traceback": traceback.format_exc()}
                    pending.remove(i)
                    if not isinstance(e, Exception):
                        raise
                    continue
                pending.remove(i)
            by_member: dict[int, dict[str, Any]] = {}
            try:
                _train_wave([m for _, m in wave], shared, by_member, log, batched, stop)
            except Interrupted as e:
                for _, m in wave:  # set up (status 'running') but not trained yet: resumable as they are
                    if id(m) not in by_member and m.rec.folder.read_status().status == "running":
                        m.rec.write_status("interrupted", error=f"{e.message or e}: this run's stack had not "
                                                                "started; rerun to resume")
                    m.rec.close()
                raise
            for i, m in wave:
                results[i] = by_member[id(m)]
