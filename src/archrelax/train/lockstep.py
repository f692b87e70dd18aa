"""``train_lockstep(configs, out_dirs)``: runs of one architecture trained in one process, in lockstep, on stacked
weights, so that small models keep a large GPU busy (all switch times of a CNN, and its seeds).

Each member is an ordinary run: a :class:`~archrelax.train.trainer._Run` (``_Member``) with its own config, run
folder, lock, status, metrics log, snapshots, checkpoints and final weights, written by the trainer's own code in
the trainer's formats, so that the run store, ``model_from_checkpoint``, the analyses and a later resume (by
``train`` or by lockstep again) see a run like any other. What lockstep replaces is the arithmetic of the loop:

- one stacked model (:mod:`archrelax.train.stacked`) computes every member's forward and backward on the
  member-major merged batch, each layer batched over the members (CUDA) or member by member (CPU: the same
  ops as separate runs); the members' parameters are views of the stacked ones;
- one optimiser over the stacked parameters replaces the members' optimisers. SGD (momentum, weight decay),
  Adam and AdamW are elementwise, so this is R optimisers at once (tests/test_lockstep.py compares them; the
  fused CPU SGD kernel rounds a few elements by one ulp differently, the others are bitwise equal);
- every member reads its own seed's batches (members of one seed share them); the loss of member r is the mean
  cross-entropy of its rows, and the stacked loss their sum, so each member's gradient is its own;
- evaluations (due at the same steps for all: they share the schedule) run the stacked model on the evaluation
  batches, each member's loss and accuracy summed exactly as ``evaluate`` does;
- dropout draws member by member from each member's own RNG state, saved in its checkpoints as ``rng``;
- the soft release (``soft_lambda > 0``) adds each member's λ(t)·2(θ − Pθ) to its slice of the stacked
  gradient after backward, with the trainer's ``add_penalty_grad_`` on the member's model (λ(t) from the
  member's own step), as a run of its own does.

Signals (SIGTERM, SIGINT, SIGUSR1; archrelax.signals): after the current step every member still training
writes its checkpoint and is marked ``interrupted`` (the trainer's ``_stop_if_signalled``, member by member),
members set up but not yet trained (another stack, another wave) are marked ``interrupted`` as they are, and
:class:`~archrelax.signals.Interrupted` is raised; a rerun resumes each at its step.

Members stop independently (until-zero-loss, the cap, divergence) through the trainer's ``_at_step`` and
``_finish``: a finished member is written as done (or diverged) and dropped from the stack, parameter by
parameter, with the optimiser state of the others kept. Members that are not at the same step (a resume of
runs interrupted at different points) or whose parameters differ in shape are trained as separate stacks, one
after another; a model the stacking does not support (:class:`~archrelax.train.stacked.NotStackable`) is
trained member by member by the ordinary loop, with a note.

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
import time
import traceback
import warnings
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from archrelax.signals import Interrupted, StopOnSignals, signal_name
from archrelax.store import RunFolder, RunLock, failure_state

from .checkpoint import rng_state, set_rng_state
from .config import LOCKSTEP_FREE, RUNTIME_FIELDS, TrainConfig, lockstep_key
from .stacked import NotStackable, check_stacked, stack_models
from .trainer import _autocast, _determinism, _result, _Run, make_feeds, make_optimizer, prepare_folder

__all__ = ["train_lockstep", "lockstep_key", "NotStackable"]


class _Shared:
    """What every member reads: the data (loaded once, moved to the device once), the evaluation feeds, one
    shuffled training feed per seed (``make_feeds``, the trainer's)."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        from archrelax.data import load_data

        self.cfg, self.device = cfg, device
        data = load_data(cfg.data, cfg.data_root, train_size=cfg.train_size, test_size=cfg.test_size,
                         seed=cfg.data_seed)
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


class _Member(_Run):
    """One run of a lockstep group: the trainer's run, reading shared data, evaluated and saved through the stack."""

    def __init__(self, cfg: TrainConfig, folder: RunFolder, shared: _Shared):
        self.shared, self.stack = shared, None
        super().__init__(cfg, folder)
        self.rng = rng_state(self.device)  # this run's training RNG stream, as a run of its own holds it now

    def _setup_data(self) -> None:
        sh = self.shared
        self.data, self.eval_feeds, self.feed = sh.data, sh.eval_feeds, sh.feed(self.cfg.seed)

    def _losses(self) -> tuple[float, float, float, float]:
        return super()._losses() if self.stack is None else self.stack.losses(self)

    def _checkpoint_due(self, now: float, last_ckpt: float) -> bool:
        """The trainer's rule, except that epoch ends alone do not call for a checkpoint while the time rule is on:
        a stack writes R checkpoints at once (24 VanillaCNN eFCNs: 14 GB at every epoch end, for about 80 TFLOP of
        training per epoch of 10k images; benchmarks/device_check.py measures both). Resume is exact from any
        step, so only how much may be redone changes."""
        cfg = self.cfg
        if self.stack is None or cfg.checkpoint_every_s is None:
            return super()._checkpoint_due(now, last_ckpt)
        return (bool(cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0)
                or now - last_ckpt >= cfg.checkpoint_every_s)

    def _state(self, with_optimizer: bool = True) -> dict[str, Any]:
        if self.stack is None:
            return super()._state(with_optimizer)
        state = super()._state(with_optimizer=False)
        state["model"] = {k: v.clone() for k, v in state["model"].items()}  # views of the stack: this member only
        state["optimizer"] = self.stack.optimizer_state(self) if with_optimizer else None
        state["rng"] = self.rng
        return state

    def release(self) -> None:
        """Drop the model and optimiser (finished): its parameters are views that would keep the stack alive."""
        self.model = self.params = self.opt = self.forward = None


def _failure(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _ended(e: BaseException) -> str:
    """The state a run stopped by ``e`` is left in, as the trainer decides (``store.failure_state``)."""
    return failure_state(e)


class _Lockstep:
    """Members at the same step with parameters of one shape, trained on one stack (module docstring)."""

    def __init__(self, members: list[_Member], shared: _Shared, results: dict[int, dict[str, Any]],
                 batched: bool | None, stop: StopOnSignals | None = None):
        self.members, self.shared, self.results = list(members), shared, results
        m0 = members[0]
        self.cfg, self.device = m0.cfg, m0.device
        self.net, self.held = stack_models([m.model for m in members], [m.rng for m in members], batched=batched)
        try:
            c, h, w = shared.data.train.images.shape[1:]
            examples = torch.randn(len(members), 2, c, h, w, generator=torch.Generator().manual_seed(0))
            check_stacked(self.net, [m.model for m in members], examples.to(self.device))
        except NotStackable:
            for m in members:  # back to tensors of their own, for the ordinary loop
                for p in m.model.parameters():
                    p.data = p.data.clone()
            raise
        self.forward = torch.compile(self.net) if self.cfg.compile else self.net
        self.opt = make_optimizer(self.cfg, self.net)
        self._take_optimizer_states()
        self._eval: tuple[int, list] | None = None
        for m in members:
            m.stack, m.signals = self, stop

    # ---- optimiser state: stacked from the members' (resume, carry), sliced back for their checkpoints --------
    def _take_optimizer_states(self) -> None:
        for name, p in self.net.named_parameters():
            per = [m.opt.state.get(m.params[name]) or {} for m in self.members]
            if not any(per):
                continue
            if not all(per) or any(s.keys() != per[0].keys() for s in per):
                raise RuntimeError(f"lockstep: the members' optimiser states for {name!r} differ in their keys "
                                   f"{[sorted(s) for s in per]}; they cannot be stacked")
            self.opt.state[p] = {k: _stacked([s[k] for s in per]) for k in per[0]}
            for m in self.members:  # free each member's buffers as soon as they are stacked
                m.opt.state.pop(m.params[name], None)

    def optimizer_state(self, m: _Member) -> dict[str, Any]:
        """Member ``m``'s optimiser state dict, as its own optimiser would hold it (``Optimizer.state_dict``)."""
        r = self.members.index(m)
        state = {}
        for i, (name, p) in enumerate(self.net.named_parameters()):
            s = self.opt.state.get(p)
            if s:
                state[i] = {k: (v[r].clone() if torch.is_tensor(v) and v.dim() > 0 else
                                v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
        return {"state": state, "param_groups": m.opt.state_dict()["param_groups"]}

    # ---- evaluation ------------------------------------------------------------------------------------------
    def losses(self, m: _Member) -> tuple[float, float, float, float]:
        """Member ``m``'s (train_loss, train_acc, test_loss, test_acc) at the current step. Batched: the whole stack
        is evaluated once per step, when the first member asks; member by member: by the trainer's own
        ``evaluate`` of the member's model (its parameters are views of the stack: the same weights)."""
        if not self.held.batched:
            return _Run._losses(m)
        if self._eval is None or self._eval[0] != m.step:
            self._eval = (m.step, self._evaluate_all())
        return self._eval[1][self.members.index(m)]

    @torch.no_grad()
    def _evaluate_all(self) -> list[tuple[float, float, float, float]]:
        R, amp = len(self.members), self.cfg.amp
        self.net.eval()
        try:
            out_cols = []
            for split in ("train", "test"):
                loss = correct = None
                n = 0
                for x, y in self.shared.eval_feeds[split].epoch(0):
                    B = x.shape[0]
                    with _autocast(self.device, amp):
                        out = self.forward(x.unsqueeze(0).expand(R, *x.shape).reshape(R * B, *x.shape[1:]))
                    out = out.view(R, B, -1)
                    # each member's sums exactly as evaluate() forms them (same ops on the same rows)
                    bl = torch.stack([F.cross_entropy(out[r].float(), y, reduction="sum") for r in range(R)])
                    bc = torch.stack([(out[r].argmax(1) == y).sum() for r in range(R)])
                    loss = bl if loss is None else loss + bl
                    correct = bc if correct is None else correct + bc
                    n += B
                out_cols += [[v / n for v in loss.tolist()], [v / n for v in correct.tolist()]]
        finally:
            self.net.train()
        return list(zip(*out_cols))

    # ---- the loop --------------------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train every member to its end; each ends through the trainer's ``_finish`` (results in ``self.results``)."""
        try:
            for m in self.members:
                m._open_outputs(bar=False)
            done = []
            for m in self.members:
                if m.fresh:  # evaluation, snapshot and checkpoint of the initialisation
                    stop = m._at_step(check=False)
                    if stop:
                        self._end(m, m._finish(stop))
                        done.append(m)
            if done:
                self._drop(done)
            self._stop_if_signalled(saved={id(m) for m in self.members})  # each at its checkpoint's step
            self._loop()
        except Interrupted:
            raise  # every member saved its state and wrote 'interrupted' (_stop_if_signalled)
        except BaseException as e:
            tb = traceback.format_exc()
            for m in self.members:  # the ones still training: recorded as failed, like the trainer does
                try:
                    m.write_status(_ended(e), error=_failure(e))
                finally:
                    self.results[id(m)] = {**_result(m.folder, m.status), "traceback": tb}
            if not isinstance(e, Exception):
                raise
        finally:
            for m in self.members:
                m.close()
            self.members, self.net, self.opt, self.forward = [], None, None, None

    def _loop(self) -> None:
        last = {id(m): time.perf_counter() for m in self.members}
        bar = self._bar()
        try:
            while self.members:
                m0 = self.members[0]
                step, spe = m0.step, m0.spe
                if step >= m0.total:
                    break
                e, b = divmod(step, spe)
                if b == 0:
                    for m in self.members:
                        m.run_stats = m._zero_stats()
                seeds = sorted({m.cfg.seed for m in self.members})
                for batches in zip(*(self.shared.feed(s).epoch(e, start=b) for s in seeds)):
                    dropped = self._step(dict(zip(seeds, batches)), last)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(runs=len(self.members))
                    if dropped or not self.members or self.members[0].step >= self.members[0].total:
                        break  # new iterators (seeds may be gone), or the end
            for m in list(self.members):
                self._end(m, m._finish("max_epochs" if m.cfg.until_zero_loss else "epochs"))
        finally:
            if bar is not None:
                bar.close()

    def _step(self, batches: dict[int, tuple[torch.Tensor, torch.Tensor]], last: dict[int, float]) -> bool:
        """One update of every member; then each member's own bookkeeping. Returns whether members were dropped."""
        ms, cfg = self.members, self.cfg
        R = len(ms)
        lr = ms[0]._lr()  # one schedule: the members share step and settings
        for opt in [self.opt] + [m.opt for m in ms]:  # the members' optimisers only carry lr into their checkpoints
            for g in opt.param_groups:
                g["lr"] = lr
        if len(batches) == 1:
            x, y = next(iter(batches.values()))
            X, Y = x.unsqueeze(0).expand(R, *x.shape).reshape(R * x.shape[0], *x.shape[1:]), y.repeat(R)
        else:
            X = torch.cat([batches[m.cfg.seed][0] for m in ms])
            Y = torch.cat([batches[m.cfg.seed][1] for m in ms])
        B = X.shape[0] // R
        with _autocast(self.device, cfg.amp):
            out = self.forward(X)
            losses = F.cross_entropy(out.float(), Y, reduction="none").view(R, B).mean(1)  # (R,): each member's loss
        self.opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # member r's parameters get the gradient of its own loss only
        self._add_soft_grads()
        self.opt.step()
        correct = (out.argmax(1) == Y).view(R, B).sum(1)
        now = time.perf_counter()
        done, saved = [], set()
        for r, m in enumerate(ms):
            m.rng = self.held.rng[r]
            m._account(losses[r], correct[r], B, lr)
            due = m._checkpoint_due(now, last[id(m)])
            stop = m._at_step(check=due or m.step % 25 == 0)  # the trainer's rule
            if stop:
                self._end(m, m._finish(stop))
                done.append(m)
                continue
            if due:
                m._checkpoint()
                last[id(m)] = now
                saved.add(id(m))
        if done:
            self._drop(done)
        self._stop_if_signalled(saved)
        return bool(done)

    def _add_soft_grads(self) -> None:
        """Soft release: each member's λ(t)·2(θ − Pθ) added to its slice of the stacked gradients, by the trainer's
        ``add_penalty_grad_`` on the member's model, whose ``.grad`` are pointed at those slices for the call."""
        if self.cfg.soft_lambda <= 0:
            return
        from archrelax.embed.penalty import add_penalty_grad_
        from archrelax.embed.relax import relaxed_layers

        stacked = dict(self.net.named_parameters())
        for path, layer in relaxed_layers(self.members[0].model).items():
            for n, _ in layer.named_parameters(recurse=False):
                p = stacked[f"{path}.{n}" if path else n]
                if p.grad is None and p.requires_grad:  # the penalty creates a gradient the loss did not (trainer
                    p.grad = torch.zeros_like(p)        # too); only the relaxed layers' parameters, as there
        for r, m in enumerate(self.members):
            lam = m._soft_lambda()  # λ(t) at the member's own step (the trainer's, before the update)
            if lam <= 0:
                continue
            for name, p in m.params.items():
                p.grad = stacked[name].grad[r]
            try:
                add_penalty_grad_(m.model, m.cfg.soft_toward, lam)  # in place, into the stack's gradients
            finally:
                for p in m.params.values():
                    p.grad = None

    def _stop_if_signalled(self, saved: set[int]) -> None:
        """On a stop signal: every member saves its state at this step (unless ``saved`` says it just did) and is
        marked 'interrupted' (the trainer's own rule, member by member), then Interrupted is raised. At the last
        step the members just finish."""
        first = None
        for m in list(self.members):
            try:
                m._stop_if_signalled(checkpointed=id(m) in saved)
            except Interrupted as e:
                first = first or e
        if first is not None:
            n = len(self.members)
            raise Interrupted(first.signum, f"lockstep: {n} run(s) interrupted by {signal_name(first.signum)} at step "
                                            f"{self.members[0].step}; checkpoints written, rerun to resume")

    def _end(self, m: _Member, result: dict[str, Any]) -> None:
        self.results[id(m)] = result

    def _drop(self, done: list[_Member]) -> None:
        """Remove finished members from the stack, one parameter at a time (peak memory: the stack plus one
        parameter's slice), keeping the others' weights and optimiser state."""
        keep = [i for i, m in enumerate(self.members) if m not in done]
        kept = [self.members[i] for i in keep]
        for m in done:
            m.close()
            m.release()
        self.members = kept
        self._eval = None
        if not kept:
            self.net = self.opt = self.forward = None
            return
        idx = torch.tensor(keep, device=self.device)
        old = self.opt
        params = dict(self.net.named_parameters())
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
            for j, m in enumerate(kept):
                m.params[name].data = new.detach()[j]
            del p, s
        params.clear()
        self.held.R, self.held.rng = len(kept), [self.held.rng[i] for i in keep]
        self.opt = make_optimizer(self.cfg, self.net)
        for name, p in self.net.named_parameters():
            if name in states:
                self.opt.state[p] = states[name]

    def _bar(self):
        m0 = self.members[0] if self.members else None
        if m0 is None:
            return None
        show = sys.stderr.isatty() if m0.cfg.progress is None else m0.cfg.progress
        if not show:
            return None
        from tqdm import tqdm

        return tqdm(total=m0.total, initial=m0.step, unit="step", dynamic_ncols=True,
                    desc=f"lockstep x{len(self.members)}")


def _stacked(values: list[Any]) -> Any:
    """One optimiser-state entry from the members': tensors stacked; scalar tensors (Adam's step) and plain values,
    which agree at one step, taken from the first member."""
    v = values[0]
    if torch.is_tensor(v) and v.dim() > 0:
        return torch.stack(values)
    return v.clone() if torch.is_tensor(v) else v


# ---- the group ------------------------------------------------------------------------------------------------

# The TrainConfig fields whose meaning the lockstep loop implements. A field added later (a new loss term, a new
# schedule) is trained by the ordinary trainer until the loop here learns it: set to anything but its default,
# train_lockstep trains those runs one after another with ``train`` and says so, rather than silently ignore it.
KNOWN_FIELDS = frozenset((
    "model", "model_kwargs", "relax", "relax_layers", "init_from", "optimizer_state", "soft_lambda", "soft_schedule",
    "soft_toward", "data", "data_root",
    "train_size", "test_size", "data_seed", "augment", "optimizer", "lr", "momentum", "weight_decay", "schedule",
    "step_size", "gamma", "warmup_epochs", "batch_size", "epochs", "until_zero_loss", "max_epochs", "loss_threshold",
    "eval_times", "snapshots", "seed", "device", "amp", "compile", "progress", "tensorboard", "checkpoint_every_steps",
    "checkpoint_every_s", "force_memory", "restart"))


def _unknown_settings(cfg: TrainConfig) -> list[str]:
    """Fields set away from their default that the lockstep loop does not implement (see KNOWN_FIELDS)."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in KNOWN_FIELDS:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(cfg, f.name) != default:
            out.append(f.name)
    return out


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
    dev = members[0].device
    if dev.type != "cuda" or len(members) == 1:
        return [members]
    cfg = members[0].cfg
    slots = 2 if cfg.optimizer in ("adam", "adamw") else (1 if cfg.momentum > 0 else 0)
    per = sum(p.numel() * p.element_size() for p in members[0].model.parameters()) * (1 + slots)
    free = torch.cuda.mem_get_info(dev)[0]
    n = max(1, int(0.7 * free // max(per, 1)))
    return [members[i : i + n] for i in range(0, len(members), n)]


def _solo(m: _Member, results: dict[int, dict[str, Any]], stop: StopOnSignals | None) -> None:
    """The ordinary loop for one member (a model the stacking does not support)."""
    set_rng_state(m.rng, m.device)
    try:
        results[id(m)] = m.fit(stop)
    except Interrupted:
        raise  # saved and marked 'interrupted' by the trainer's loop
    except BaseException as e:
        m.write_status(_ended(e), error=_failure(e))
        results[id(m)] = {**_result(m.folder, m.status), "traceback": traceback.format_exc()}
        if not isinstance(e, Exception):
            raise
    finally:
        m.close()
        m.release()


def _train_wave(members: list[_Member], shared: _Shared, results: dict[int, dict[str, Any]],
                log: Callable[[str], None], batched: bool | None, stop: StopOnSignals | None) -> None:
    parts: dict[Any, list[_Member]] = {}
    for m in members:  # same step and parameter shapes: one stack
        sig = (m.step, tuple((n, tuple(p.shape)) for n, p in m.model.named_parameters()))
        parts.setdefault(sig, []).append(m)
    if len(parts) > 1:
        log(f"lockstep: {len(members)} runs are at {len(parts)} different steps or shapes; trained as "
            f"{len(parts)} stacks one after another")
    for part in parts.values():
        for chunk in _memory_chunks(part):
            try:
                stack = _Lockstep(chunk, shared, results, batched, stop)
            except NotStackable as e:
                log(f"lockstep: {e}; training these {len(chunk)} runs one after another instead")
                for m in chunk:
                    _solo(m, results, stop)
                continue
            stack.fit()


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

    SIGTERM, SIGINT or SIGUSR1 (in the main thread) stop the group after the current step, as ``train`` stops
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
        if lock is not None and not (lock.held and lock.path.resolve() == f.lock_path.resolve()):
            raise ValueError(f"train_lockstep(locks=...) needs the held lock of {str(f.lock_path)!r}, got {lock.path} "
                             f"({'held' if lock.held else 'not held'})")
    own: list[RunLock] = []
    held: list[RunLock] = []
    try:
        for f, lock in zip(folders, locks):
            if lock is None:
                lock = f.lock().acquire()
                own.append(lock)
            held.append(lock)
        results: dict[int, dict[str, Any]] = {}
        todo = []
        for i, (cfg, f) in enumerate(zip(cfgs, folders)):
            finished = prepare_folder(cfg, f)
            if finished is not None:
                results[i] = finished
            else:
                todo.append(i)
        unknown = _unknown_settings(cfgs[0]) if todo else []
        with StopOnSignals() as stop:
            if unknown:
                log(f"lockstep: these runs set {unknown}, which the lockstep loop does not implement; trained one "
                    "after another by the ordinary trainer instead")
                for i in todo:
                    stop.check(f"not started: {signal_name(stop.signum or 0)} arrived first")
                    results[i] = _ordinary(cfgs[i], folders[i], held[i])
            elif todo:
                _train_group(cfgs, folders, todo, results, log, batched, stop)
        return [results[i] for i in range(len(cfgs))]
    finally:
        for lock in own:
            lock.release()


def _ordinary(cfg: TrainConfig, folder: RunFolder, lock: RunLock) -> dict[str, Any]:
    """``train`` with the held lock; a failure (recorded in status.json by the trainer) is returned, not raised."""
    from .trainer import train

    try:
        return train(cfg, folder.path, lock=lock)
    except Exception as e:
        return {**_result(folder, folder.read_status()), "error": _failure(e), "traceback": traceback.format_exc()}


def _train_group(cfgs: list[TrainConfig], folders: list[RunFolder], todo: list[int],
                 results: dict[int, dict[str, Any]], log: Callable[[str], None], batched: bool | None,
                 stop: StopOnSignals) -> None:
    from archrelax.utils import resolve_device

    device = resolve_device(cfgs[todo[0]].device)
    with _determinism(device):
        try:
            shared = _Shared(cfgs[todo[0]], device)
        except Exception as e:  # the data: every run fails the same way, each recorded
            tb = traceback.format_exc()
            for i in todo:
                results[i] = {**_result(folders[i], folders[i].write_status(_ended(e), error=_failure(e))),
                              "traceback": tb}
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
                try:
                    wave.append((i, _Member(cfgs[i], folders[i], shared)))
                except BaseException as e:  # this run could not be set up; the others go on
                    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) and wave:
                        log(f"lockstep: {len(pending)} runs do not fit the device's memory together; training "
                            f"{len(wave)} first")
                        break
                    results[i] = {**_result(folders[i], folders[i].write_status(_ended(e), error=_failure(e))),
                                  "traceback": traceback.format_exc()}
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
                    if id(m) not in by_member and m.folder.read_status().status == "running":
                        m.write_status("interrupted", error=f"{e.message or e}: this run's stack had not started; "
                                                            "rerun to resume")
                    m.close()
                raise
            for i, m in wave:
                results[i] = by_member[id(m)]
