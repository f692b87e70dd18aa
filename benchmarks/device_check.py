"""One prepared GPU check: kernels against the GPU's matmul limit, training throughput with and without
lockstep, and the wall time of the VanillaCNN/CIFAR-10 protocol, in one run of at most ~8 minutes.

Every figure is a ratio or a time measured in this same run, on the same device, in the trainer's deterministic
mode (``torch.use_deterministic_algorithms``, as ``archrelax.train`` sets it on CUDA):

1. bare matmul throughput: a square GEMM (8192², fp32 and bf16);
2. eFCN (VanillaCNN) training step against the bare matmuls of its own shapes (forward, weight and input
   gradients of every dense layer) and against the square GEMM, fp32 and bf16 autocast;
3. eLCN: layer 2 of VanillaCNN and AlexNet forward+backward against the square GEMM (counting the GEMM of its
   unfolded shapes, as ``bench_lc_layer.py``), the whole eLCN (VanillaCNN) step against the bare batched matmuls
   of its unfolded shapes, and the backward's deterministic gather-sum against ``index_add_`` (atomic adds);
4. training images/s of CNN, eLCN and eFCN of VanillaCNN and AlexNet, one model and R models in lockstep;
5. the per-epoch costs of the protocol's three lockstep groups (CNN x3 seeds, eFCN x24, FCN x3): training steps,
   one evaluation, one checkpoint round;
6. the protocol itself (preset vanilla-cifar10-sgd's data, model and batch with CNN + 8 switch times + FCN, 10k
   stratified images, until zero loss with caps of 100 epochs, seeds 0, 1, 2, ``lockstep: true``), run for real
   with its caps lowered so that it fits the budget (measured wall time, printed as such), and its time at the full
   caps extrapolated from that run and the costs of 5 (an upper bound: every run trains to its cap; printed as an extrapolation). Goal on one H200: < 15 min.

Data: ``--data`` (default ``cifar10``: the usual sources, ``$ARCHRELAX_DATA``; then the CIFAR-10 zip of the
development machines if present). When none loads, ``synthetic:3x32x32:10:10000:10000`` is used and every
line that depends on it says TIMING ONLY (the protocol's caps-based bound does not depend on the data).

``--smoke`` runs the same code paths on CPU at tiny sizes in seconds (tests/test_device_check.py runs it).
Without CUDA and without ``--smoke`` the script says so and exits with status 2. A section that fails prints
its error and the script goes on; the exit status is 1 if any failed.

    python benchmarks/device_check.py [--data cifar10] [--budget-s 420] [--sections 1,2,3,4,5,6] [--tmp DIR] [--smoke]

Section 6 writes the runs' checkpoints (about 25 GB at these sizes: 24 eFCNs keep last.pt and final.pt) under
``--tmp`` (default: the system's temporary folder) and removes them; it is skipped when the disk is too small.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_lc_layer import index_add_backward, lc_flops  # noqa: E402  (the same FLOP count and switch)

from archrelax.embed.locally_connected import LocallyConnected2d, LocallyConnectedNd  # noqa: E402
from archrelax.embed.relax import relax  # noqa: E402
from archrelax.models import create_model  # noqa: E402
from archrelax.train.config import TrainConfig  # noqa: E402
from archrelax.train.stacked import stack_models  # noqa: E402
from archrelax.train.setup import determinism, make_optimizer  # noqa: E402
from archrelax.utils import atomic_torch_save  # noqa: E402

SYNTHETIC = "synthetic:3x32x32:10:10000:10000"
ZIPS = tuple(root / "shared" / "data" / "cifar10-jpeg.zip" for root in (HERE.parent.parent, HERE.parent))
GOAL_S = 15 * 60


class Sizes:
    """What is measured: the real sizes on a GPU; tiny ones with --smoke (same code paths)."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.batch = 8 if smoke else 250  # the preset's batch size
        self.gemm_n = 256 if smoke else 8192
        self.reps = 2 if smoke else 5
        self.width = {"vanilla_cnn": 2, "alexnet": 1} if smoke else {"vanilla_cnn": 64, "alexnet": 64}
        self.shape = (1, 28, 28) if smoke else (3, 32, 32)
        self.lockstep_r = 2 if smoke else 8
        self.groups = {"cnn": 3, "efcn": 24, "fcn": 3}  # the protocol's: 3 seeds, 8 switch times x 3 seeds
        self.train_size = 64 if smoke else 10_000
        self.caps_full = (100.0, 100.0)  # the preset's: cnn.max_epochs, relaxed.max_epochs
        self.caps_run = (2.0, 0.5) if smoke else (2.0, 1.0)  # lowered to fit the budget
        self.evals = 20  # eval_times: log:20


def say(line: str = "") -> None:
    print(line, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn`` over ``reps`` synchronised calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def model(name: str, kind: str, sz: Sizes, device: torch.device) -> nn.Module:
    """VanillaCNN/AlexNet as CNN ("cnn"), eLCN ("lc") or eFCN ("fc") on ``device``."""
    c, h, _ = sz.shape
    m = create_model(name, width=sz.width[name], in_channels=c, input_size=h).to(device)
    if kind == "cnn":
        return m
    return relax(m, to=kind, example_input=torch.zeros(1, *sz.shape, device=device), force=True)


def make_step(net: nn.Module, members: int, sz: Sizes, device: torch.device, amp: bool) -> Callable[[], None]:
    """The trainer's step on ``net`` (``members`` stacked models: member-major merged batch, each member's mean
    cross-entropy, their sum backward), SGD with momentum as the preset."""
    opt = make_optimizer(TrainConfig(lr=1e-4), net)  # tiny lr: many steps stay finite
    x = torch.randn(members * sz.batch, *sz.shape, device=device)
    y = torch.randint(0, 10, (members * sz.batch,), device=device)

    def step() -> None:
        with autocast(device, amp):
            out = net(x)
            loss = F.cross_entropy(out.float(), y, reduction="none").view(members, -1).mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def stacked(m: nn.Module, r: int) -> nn.Module:
    """``r`` copies of ``m`` stacked, batched (the GPU's lockstep path, also under --smoke on CPU)."""
    return stack_models([copy.deepcopy(m) for _ in range(r)], batched=True)[0]


# ---- sections ---------------------------------------------------------------------------------------------


def gemm_rates(sz: Sizes, device: torch.device) -> dict[str, float]:
    """FLOP/s of a bare square GEMM, fp32 and bf16."""
    n, rates = sz.gemm_n, {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        t = timeit(lambda: a @ b, device, sz.reps, warmup=2)
        rates[label] = 2 * n**3 / t
        say(f"  square GEMM {n}x{n} {label}: {rates[label] / 1e12:8.2f} TFLOP/s ({t * 1e3:.2f} ms)")
        del a, b
    return rates


def section_gemm(sz, device, state) -> None:
    state["gemm"] = gemm_rates(sz, device)
    if device.type == "cuda":
        say(f"  (TF32 for fp32 matmuls: {torch.backends.cuda.matmul.allow_tf32}; the trainer leaves torch's default)")


def dense_shapes(net: nn.Module) -> list[tuple[int, int]]:
    return [tuple(m.weight.shape) for m in net.modules()
            if getattr(m, "weight", None) is not None and m.weight.dim() == 2]


def section_efcn(sz, device, state) -> None:
    efcn = model("vanilla_cnn", "fc", sz, device)
    shapes, B = dense_shapes(efcn), sz.batch
    flops = sum(2 * B * o * n * (3 if i else 2) for i, (o, n) in enumerate(shapes))  # no input gradient for layer 1
    say(f"  eFCN(VanillaCNN) dense shapes {shapes}, batch {B}: {flops / 1e9:.1f} GFLOP per step")
    for amp, label, dtype in ((False, "fp32", torch.float32), (True, "bf16", torch.bfloat16)):
        ops = [tuple(torch.randn(*s, device=device, dtype=dtype) for s in ((o, n), (B, n), (B, o))) + (i > 0,)
               for i, (o, n) in enumerate(shapes)]

        def bare() -> None:
            for w, x, dy, need_dx in ops:
                x @ w.T
                dy.T @ x
                if need_dx:
                    dy @ w

        step = make_step(efcn, 1, sz, device, amp)
        t_bare = timeit(bare, device, sz.reps)
        t_step = timeit(step, device, sz.reps)
        rate = flops / t_step
        line = f"  eFCN step {label}: {t_step * 1e3:8.2f} ms = {rate / 1e12:6.2f} TFLOP/s; " \
               f"ratio to the bare matmuls of its shapes {t_bare / t_step:.3f}"
        if "gemm" in state:
            line += f", to the square GEMM {rate / state['gemm'][label]:.3f}"
        say(line)
        del ops, step
    del efcn


def section_elcn(sz, device, state) -> None:
    B = sz.batch
    for name in ("vanilla_cnn", "alexnet"):  # layer 2: the GEMM-fraction of bench_lc_layer.py
        geom = [m.geometry for m in model(name, "lc", sz, device).modules() if isinstance(m, LocallyConnectedNd)][1]
        layer = LocallyConnected2d(geom).to(device)
        x = torch.randn(B, geom.in_channels, *geom.in_spatial, device=device, requires_grad=True)
        for amp, label in ((False, "fp32"), (True, "bf16")):
            def fwd_bwd() -> None:
                layer.weight.grad = layer.bias.grad = x.grad = None
                with autocast(device, amp):
                    out = layer(x)
                out.float().sum().backward()

            t = timeit(fwd_bwd, device, sz.reps)
            frac = lc_flops(geom, B) / t / state["gemm"][label] if "gemm" in state else float("nan")
            say(f"  eLCN {name} layer 2 ({geom.in_channels}->{geom.out_channels} k{geom.kernel_size[0]}, "
                f"{geom.in_spatial[0]}x{geom.in_spatial[1]}) fwd+bwd {label}: {t * 1e3:8.2f} ms, "
                f"GEMM-fraction {frac:.3f}")
        t_det = timeit(lambda: fwd_bwd_fp32(layer, x), device, sz.reps)  # the trainer's mode: the gather-sum
        with nondeterministic(), index_add_backward():  # CUDA's default outside that mode: atomic adds
            t_atomic = timeit(lambda: fwd_bwd_fp32(layer, x), device, sz.reps)
        say(f"  eLCN {name} layer 2 backward: deterministic gather-sum / index_add_ = {t_det / t_atomic:.3f}")
        del layer, x
    # the whole eLCN(VanillaCNN) step against bare batched matmuls of its unfolded shapes
    elcn = model("vanilla_cnn", "lc", sz, device)
    geoms = [m.geometry for m in elcn.modules() if isinstance(m, LocallyConnectedNd)]
    linear = dense_shapes(elcn)
    flops = sum(lc_flops(g, B) * (3 if i else 2) // 3 for i, g in enumerate(geoms))  # no input gradient in layer 1
    flops += sum(2 * B * o * n * 3 for o, n in linear)
    for amp, label, dtype in ((False, "fp32", torch.float32), (True, "bf16", torch.bfloat16)):
        ops = []
        for i, g in enumerate(geoms):
            gp, k, cog = g.groups * g.P, g.in_channels // g.groups * g.T, g.out_channels // g.groups
            rand = lambda *s: torch.randn(*s, device=device, dtype=dtype)  # noqa: E731
            ops.append((rand(gp, B, k), rand(gp, cog, k), rand(gp, B, cog), i > 0))  # cols, weight, output grad
        mats = [tuple(torch.randn(*s, device=device, dtype=dtype) for s in ((o, n), (B, n), (B, o))) for o, n in linear]

        def bare() -> None:
            for cols, w, go, need_dx in ops:
                torch.bmm(cols, w.mT)
                torch.bmm(go.mT, cols)
                if need_dx:
                    torch.bmm(go, w)
            for w, x, dy in mats:
                x @ w.T
                dy.T @ x
                dy @ w

        step = make_step(elcn, 1, sz, device, amp)
        t_bare, t_step = timeit(bare, device, sz.reps), timeit(step, device, sz.reps)
        line = f"  eLCN(VanillaCNN) step {label}: {t_step * 1e3:8.2f} ms = {flops / t_step / 1e12:6.2f} TFLOP/s " \
               f"(all taps counted); ratio to bare batched matmuls of its unfolded shapes {t_bare / t_step:.3f}"
        if "gemm" in state:
            line += f", to the square GEMM {flops / t_step / state['gemm'][label]:.3f}"
        say(line)
        del ops, mats, step
    del elcn


@contextlib.contextmanager
def nondeterministic():
    """Deterministic algorithms off for a moment (so ``index_add_`` takes its atomic-add kernel), then as before."""
    prev = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])


def fwd_bwd_fp32(layer: nn.Module, x: torch.Tensor) -> None:
    layer.weight.grad = layer.bias.grad = x.grad = None
    layer(x).sum().backward()


def section_images(sz, device, state) -> None:
    R = sz.lockstep_r
    say(f"  training images/s at batch {sz.batch} per model (SGD momentum); lockstep: {R} models stacked, images of "
        "all members counted")
    for name in ("vanilla_cnn", "alexnet"):
        for kind, label in (("cnn", "CNN"), ("lc", "eLCN"), ("fc", "eFCN")):
            m = model(name, kind, sz, device)
            cells = []
            for amp, prec in ((False, "fp32"), (True, "bf16")):
                t1 = timeit(make_step(m, 1, sz, device, amp), device, sz.reps)
                net = stacked(m, R)
                tr = timeit(make_step(net, R, sz, device, amp), device, sz.reps)
                one, many = sz.batch / t1, R * sz.batch / tr
                cells.append(f"{prec} {one:9.0f} | x{R} {many:9.0f} ({many / one:4.2f}x)")
                del net
                free(device)
            n = sum(p.numel() for p in m.parameters())
            say(f"  {name:12s} {label:5s} ({n / 1e6:6.1f}M params): " + "; ".join(cells))
            del m
            free(device)


def checkpoint_seconds(m: nn.Module, device: torch.device, folder: Path, reps: int) -> tuple[float, float, int]:
    """Seconds to write one member's checkpoint (weights + momentum, as the trainer's last.pt) and its final.pt
    (weights), atomically as the trainer does; and the checkpoint's bytes."""
    state = {k: v.detach().clone() for k, v in m.state_dict().items()}
    momentum = {i: {"momentum_buffer": p.detach().clone()} for i, (_, p) in enumerate(m.named_parameters())}
    ck = {"model": state, "optimizer": {"state": momentum, "param_groups": []}}
    t_ck = timeit(lambda: atomic_torch_save(ck, folder / "last.pt"), device, reps)
    t_fin = timeit(lambda: atomic_torch_save({"model": state}, folder / "final.pt"), device, reps)
    size = (folder / "last.pt").stat().st_size
    return t_ck, t_fin, size


def section_groups(sz, device, state) -> None:
    """Per-epoch costs of the protocol's lockstep groups; kept in ``state['groups']`` for the extrapolation."""
    spe = math.ceil(sz.train_size / sz.batch)
    amp = state["amp"]
    costs = {}
    tmp = Path(tempfile.mkdtemp(prefix="device-check-ckpt-", dir=state["tmp"]))
    try:
        for group, kind in (("cnn", "cnn"), ("efcn", "fc"), ("fcn", "fc")):  # the FCN baseline has the eFCN's shapes
            R = sz.groups[group]
            m = model("vanilla_cnn", kind, sz, device)
            net = stacked(m, R)
            t_step = timeit(make_step(net, R, sz, device, amp), device, sz.reps)
            x = torch.randn(R * min(500, sz.train_size), *sz.shape, device=device)

            @torch.no_grad()
            def evaluate() -> None:  # 2 x train_size images (train and test sets), eval batch 500 as the trainer
                for _ in range(2 * math.ceil(sz.train_size / 500)):
                    with autocast(device, amp):
                        net(x)

            net.eval()
            t_eval = timeit(evaluate, device, 1)
            net.train()
            t_ck, t_fin, size = checkpoint_seconds(m, device, tmp, 1)
            costs[group] = dict(R=R, t_step=t_step, t_epoch=spe * t_step, t_eval=t_eval, t_ck=t_ck, t_fin=t_fin,
                                bytes=size)
            say(f"  {group:4s} x{R:2d}: training epoch {spe * t_step:7.2f} s ({spe} steps of {t_step * 1e3:.1f} ms); "
                f"one evaluation {t_eval:6.2f} s; checkpoint round {R * t_ck:6.2f} s ({R} x {size / 1e9:.2f} GB, "
                f"{size / t_ck / 1e9:.2f} GB/s); final weights {R * t_fin:6.2f} s")
            del net, m, x
            free(device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    state["groups"], state["spe"] = costs, spe


def group_seconds(c: dict[str, float], epochs: float, evals: int, ckpt_every_s: float = 60.0) -> float:
    """A lockstep group training ``epochs`` epochs: steps, evaluations, checkpoints on the time rule (every
    ``ckpt_every_s``, plus the one at step 0) and the final weights."""
    train = epochs * c["t_epoch"]
    checkpoints = 1 + math.floor((train + evals * c["t_eval"]) / ckpt_every_s)
    return train + evals * c["t_eval"] + checkpoints * c["R"] * c["t_ck"] + c["R"] * c["t_fin"]


def section_protocol(sz, device, state, budget) -> None:
    from archrelax.protocol import load_spec, run_experiment

    cnn_cap, rel_cap = sz.caps_run
    # The timed protocol is the preset's data, model and batch with the stopping rule this check was sized for:
    # until zero loss under caps, 8 log-spaced switch times, log:20 evaluations (the preset itself now follows
    # the paper's code: 100 fixed epochs and 18 switch times, which the groups above do not describe).
    protocol = ["cnn.epochs=null", "cnn.until_zero_loss=true", "relaxed.epochs=null", "relaxed.until_zero_loss=true",
                "switch_times=log:8", "train.eval_times=log:20", "train.lr=0.01", "train.momentum=0.9",
                "subset=stratified"]
    overrides = [*protocol, "seeds=[0,1,2]", "lockstep=true", f"cnn.max_epochs={cnn_cap}",
                 f"relaxed.max_epochs={rel_cap}",
                 f"switch_min={cnn_cap / 8}", f"train.device={device.type}", "analyses=[]",
                 f"model_kwargs.width={sz.width['vanilla_cnn']}", f"train.batch_size={sz.batch}", *state["data_set"]]
    if state["amp"]:
        overrides.append("train.amp=bf16")
    spec = load_spec(preset="vanilla-cifar10-sgd", overrides=overrides)
    say(f"  preset vanilla-cifar10-sgd, seeds [0, 1, 2], lockstep: true, data {spec.data} "
        f"(train_size {spec.train_size}), caps lowered to cnn {cnn_cap:g} / relaxed {rel_cap:g} epochs "
        f"(switch times {spec.switch_list()})")
    if "groups" in state:
        g = state["groups"]
        predicted = (group_seconds(g["cnn"], cnn_cap, sz.evals) + group_seconds(g["fcn"], rel_cap, sz.evals)
                     + group_seconds(g["efcn"], rel_cap, sz.evals))
        say(f"  predicted from section 5: {predicted:.0f} s; budget left {budget.left():.0f} s")
        if predicted > budget.left() - 20:
            say("  SKIPPED: the capped protocol would not fit the budget (raise --budget-s, or run --sections 6)")
            return
    elif budget.left() < 200 and not sz.smoke:
        say(f"  SKIPPED: no estimate (section 5 did not run) and only {budget.left():.0f} s left")
        return
    out = Path(tempfile.mkdtemp(prefix="device-check-protocol-", dir=state["tmp"]))
    if "groups" in state:  # every run keeps last.pt (weights + momentum) and final.pt (weights): 1.5x a checkpoint
        need = sum(1.5 * c["R"] * c["bytes"] for c in state["groups"].values())
        free_bytes = shutil.disk_usage(out).free
        if free_bytes < 1.2 * need:
            shutil.rmtree(out, ignore_errors=True)
            say(f"  SKIPPED: the runs need about {need / 1e9:.0f} GB and {out.parent} has {free_bytes / 1e9:.0f} GB free "
                "(use --tmp on a larger disk)")
            return
        say(f"  disk: the runs need about {need / 1e9:.1f} GB; {free_bytes / 1e9:.0f} GB free in {out.parent}")
    t0 = time.perf_counter()
    try:
        run_experiment(spec, out, poll_s=0.5, log=lambda s: say(f"    [{time.perf_counter() - t0:7.1f} s] {s}"))
        wall = time.perf_counter() - t0
        from archrelax.store import ExperimentFolder

        rows = ExperimentFolder(out).read_summary()
        done = sum(r["status"] == "done" for r in rows)
        say(f"  MEASURED wall time of the capped protocol: {wall:.1f} s ({done}/{len(rows)} runs done)")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if "groups" not in state:
        say("  no extrapolation: section 5 did not run")
        return
    g, (cnn_full, rel_full) = state["groups"], sz.caps_full
    extra = ((cnn_full - cnn_cap) * g["cnn"]["t_epoch"]
             + (rel_full - rel_cap) * (g["efcn"]["t_epoch"] + g["fcn"]["t_epoch"]))
    full = wall + extra + sum(math.floor((cap * g[k]["t_epoch"]) / 60.0) * g[k]["R"] * g[k]["t_ck"]
                              for k, cap in (("cnn", cnn_full), ("efcn", rel_full), ("fcn", rel_full)))
    model_only = (group_seconds(g["cnn"], cnn_full, sz.evals) + group_seconds(g["efcn"], rel_full, sz.evals)
                  + group_seconds(g["fcn"], rel_full, sz.evals))
    note = " (TIMING ONLY: synthetic data)" if state["synthetic"] else ""
    say(f"  EXTRAPOLATED to the preset's caps ({cnn_full:g}/{rel_full:g} epochs, every run to its cap: an upper "
        f"bound; until-zero-loss stops earlier): {full / 60:.1f} min = measured {wall:.0f} s + "
        f"{extra:.0f} s of further epochs + their checkpoints{note}")
    say(f"  (from section 5's costs alone: {model_only / 60:.1f} min)")
    if device.type != "cuda":
        say(f"  goal < {GOAL_S // 60} min on one H200: no verdict (this is not a GPU run)")
        return
    verdict = "met" if full < GOAL_S else "NOT met"
    say(f"  goal < {GOAL_S // 60} min on one H200 (this device: {torch.cuda.get_device_name(device)}): {verdict} "
        "by the upper bound")


# ---- driver -----------------------------------------------------------------------------------------------


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def resolve_data(arg: str, sz: Sizes) -> tuple[list[str], bool, str]:
    """(spec overrides for the data, synthetic?, description). Loads the set once (and so fills the cache)."""
    from archrelax.data import load_data

    if sz.smoke:
        src = f"synthetic:{'x'.join(map(str, sz.shape))}:10:{sz.train_size}:{sz.train_size}"
        return [f"data={src}", "train_size=null"], True, f"{src} (smoke)"
    tries = [arg]
    if arg == "cifar10":
        tries += [f"imagefolder:{z}" for z in ZIPS if z.is_file()]
    for src in tries:
        try:
            d = load_data(src, train_size=sz.train_size, test_size=None)
        except Exception as e:  # not there (no network on the GPU machine): say so and try the next
            say(f"  could not load {src}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        size = sz.train_size if d.train.images.shape[0] >= sz.train_size else None
        return [f"data={src}", f"train_size={size if size else 'null'}"], src.startswith("synthetic"), \
            f"{src}: {d.train.images.shape[0]} train / {d.test.images.shape[0]} test images"
    say(f"  FALLBACK to {SYNTHETIC}: TIMING ONLY (random images; accuracies and zero-loss times mean nothing)")
    return [f"data={SYNTHETIC}", "train_size=null"], True, f"{SYNTHETIC} (fallback, timing only)"


SECTIONS = {
    1: ("bare matmul throughput", section_gemm),
    2: ("eFCN training step vs matmuls", section_efcn),
    3: ("eLCN vs matmuls", section_elcn),
    4: ("training images/s, with and without lockstep", section_images),
    5: ("per-epoch costs of the protocol's lockstep groups", section_groups),
    6: ("the VanillaCNN/CIFAR-10 protocol", None),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="cifar10", help="data source for the protocol (default: cifar10; falls back to "
                   f"{SYNTHETIC}, timing only)")
    p.add_argument("--device", default=None, help="device (default: cuda; cpu with --smoke)")
    p.add_argument("--budget-s", type=float, default=420.0, help="no section starts after this many seconds, and the "
                   "protocol (6) only if its predicted length fits (default 420: the script stays under 8 minutes)")
    p.add_argument("--sections", default="1,2,3,4,5,6", help="sections to run, comma-separated (default: all)")
    p.add_argument("--amp", choices=("fp32", "bf16"), default="fp32",
                   help="precision of sections 5 and 6 (the preset trains in fp32; sections 2-4 measure both)")
    p.add_argument("--tmp", default=None, help="folder for checkpoints and the protocol's runs (default: the system's)")
    p.add_argument("--smoke", action="store_true", help="the same code paths on CPU at tiny sizes, in seconds")
    args = p.parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts (the trainer's setting)
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        say("device_check: no CUDA device here (torch.cuda.is_available() is False): this script measures a GPU. "
            "Run it with --smoke to check its code paths on CPU.")
        return 2
    sz, budget = Sizes(args.smoke), Budget(args.budget_s)
    if args.smoke:
        torch.set_num_threads(1)  # tiny tensors: threads only contend (and the smoke test shares the CI's cores)
        os.environ["ARCHRELAX_LOCKSTEP_BATCHED"] = "1"  # the protocol's lockstep groups run the GPU's batched layers
    try:
        sections = [int(s) for s in args.sections.split(",") if s.strip()]
        bad = [s for s in sections if s not in SECTIONS]
    except ValueError:
        bad = [args.sections]
    if bad:
        p.error(f"--sections {args.sections!r}: unknown {bad}; valid: {sorted(SECTIONS)}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    mem = f", {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB" if device.type == "cuda" else ""
    say(f"device_check{' SMOKE (tiny sizes on CPU: no figure here is a GPU figure)' if args.smoke else ''}: "
        f"{name}{mem}; torch {torch.__version__}, CUDA {torch.version.cuda}; {torch.get_num_threads()} CPU threads")
    torch.manual_seed(0)
    state: dict[str, Any] = {"amp": args.amp == "bf16", "tmp": args.tmp}
    failed = []
    with determinism(device):  # as the trainer: deterministic kernels on CUDA (a no-op on CPU)
        say(f"deterministic algorithms: {torch.are_deterministic_algorithms_enabled()} (as the trainer on this device)")
        if 6 in sections or 5 in sections:
            say("[data]")
            try:
                state["data_set"], state["synthetic"], desc = resolve_data(args.data, sz)
                say(f"  {desc}")
            except Exception:
                state["data_set"], state["synthetic"] = [f"data={SYNTHETIC}", "train_size=null"], True
                say(f"  FAILED to resolve the data ({traceback.format_exc(limit=1).strip().splitlines()[-1]}); "
                    f"using {SYNTHETIC}, TIMING ONLY")
        for s in sections:
            title, fn = SECTIONS[s]
            say(f"[{s}] {title}  (t = {budget.seconds - budget.left():.0f} s)")
            if budget.left() < 15:
                say("  SKIPPED: budget spent")
                continue
            try:
                if s == 6:
                    section_protocol(sz, device, state, budget)
                else:
                    fn(sz, device, state)
            except Exception as e:
                failed.append(s)
                say(f"  FAILED: {type(e).__name__}: {e}")
                say("  " + "".join(traceback.format_exception(e)[-3:]).replace("\n", "\n  ").rstrip())
            finally:
                free(device)
    say(f"done in {budget.seconds - budget.left():.0f} s" + (f"; sections failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
