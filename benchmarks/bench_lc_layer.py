"""eLCN layer (LocallyConnected2d) against the machine's GEMM limit, and against the same nn.Conv2d.

Layer shapes come from running VanillaCNN and AlexNet (CIFAR, 3x32x32) once, so they stay those of the
models. One forward+backward step computes the input and the weight gradients (weight gradients set to None
between steps, as in training).

GEMM-fraction (the figure with a target): a locally-connected layer is a batched GEMM of its unfolded shapes,
2·B·P·C_out·(C_in/g)·T FLOPs forward and twice that backward (input and weight gradients), so its fwd+bwd
rate of those FLOPs divided by the FLOP rate of a bare fp32 2048x2048 matmul in the same process and threads
is how close it runs to the machine's limit. Target >= 0.8 on VanillaCNN and AlexNet layer 2
(``features.3``) at batch 250. archrelax's kernel skips the taps that read zero padding (28% of those FLOPs
on layer 2), so the same line also gives the fraction counting only the multiply-adds it does ("live taps
only"): how close its GEMMs and gathers run to the limit. Every round times a bare GEMM, the conv, the eLCN (and, unless
``--no-deterministic``, the eLCN with its backward's gather-sum replaced by ``index_add_``) back to back, so
load changes hit all alike; medians are reported.

Deterministic backward: the eLCN sends the unfolded input gradient back by a gather-sum, deterministic on
every device; on CUDA it uses ``index_add_`` (atomic adds) unless deterministic algorithms are on. On CPU
the gather-sum is always used, so ``lc gather-sum/index_add_`` is the speed cost of the deterministic path
measured here on CPU (below 1: it is the faster one). Its cost on CUDA is not measured by this script.

The lc/conv ratio is secondary: oneDNN's conv does fewer multiply-adds than a GEMM (it runs above the GEMM
limit here), so it is no target.

Peak memory: each (layer, kind) step runs once in a fresh subprocess that resets the kernel's resident
high-water mark (``/proc/self/clear_refs`` = 5) after a small warm-up step (so library buffers already
exist), then allocates the layer and its input and runs one forward+backward; reported is ``VmHWM`` minus the
resident size before that allocation. It is compared with weights + activations (input + output) + one
unfolded input (B x C_in x T x P floats). Linux only.

    python benchmarks/bench_lc_layer.py [--batch 250] [--rounds 7] [--threads N] [--models vanilla alexnet]
                                        [--layers features.3] [--no-memory] [--no-deterministic] [--clock cpu]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch
from torch import nn

from archrelax.embed.connectivity import ConvGeometry, index_map
from archrelax.embed import locally_connected as lcmod
from archrelax.embed.locally_connected import LocallyConnected2d
from archrelax.models import create_model

MODELS = {"vanilla": "vanilla_cnn", "alexnet": "alexnet"}
TARGETS = {"vanilla.features.3": 0.8, "alexnet.features.3": 0.8}  # GEMM-fraction targets
GEMM_N = 2048


def conv_layers(model_name: str) -> list[tuple[str, ConvGeometry]]:
    """(path, geometry) of every Conv2d of the model, in forward order."""
    model = create_model(MODELS[model_name])
    found: list[tuple[str, ConvGeometry]] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: found.append((n, ConvGeometry.from_conv(m, i[0].shape[2:]))))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, *model.input_shape))
    for h in hooks:
        h.remove()
    return found


def make(kind: str, geom: ConvGeometry) -> nn.Module:
    return geom.make_conv() if kind == "conv" else LocallyConnected2d(geom)  # random init: no temporaries


def step(layer: nn.Module, x: torch.Tensor) -> None:
    for p in layer.parameters():
        p.grad = None
    x.grad = None
    layer(x).sum().backward()


@contextlib.contextmanager
def index_add_backward():
    """The eLCN backward with ``index_add_`` (CUDA's default, atomic adds there) instead of the gather-sum."""
    orig = lcmod._use_gather_sum
    lcmod._use_gather_sum = lambda device: False
    try:
        yield
    finally:
        lcmod._use_gather_sum = orig


def lc_flops(geom: ConvGeometry, batch: int, live_only: bool = False) -> int:
    """Multiply-adds x 2 of one forward+backward (input and weight gradients): 3 GEMMs of the unfolded shapes,
    all P·T (position, tap) pairs counted (the definition of the target), or only the live ones (taps that read
    the input, the multiply-adds the kernel does: it skips taps that read zero padding)."""
    pairs = int((index_map(geom) >= 0).sum()) if live_only else geom.P * geom.T
    return 3 * 2 * batch * pairs * geom.out_channels * (geom.in_channels // geom.groups)


def status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(geom_json: str, kind: str, batch: int, threads: int | None) -> None:
    """Runs in a fresh process: prints {"peak": bytes} for one forward+backward."""
    if threads:
        torch.set_num_threads(threads)
    geom = ConvGeometry.from_dict(json.loads(geom_json))
    tiny = make(kind, geom)  # warm-up at batch 1: libraries allocate their own buffers now, not in the step
    step(tiny, torch.randn(1, geom.in_channels, *geom.in_spatial, requires_grad=True))
    del tiny
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the resident high-water mark (VmHWM) to the current resident size
    base = status_bytes("VmRSS")
    layer = make(kind, geom)
    x = torch.randn(batch, geom.in_channels, *geom.in_spatial, requires_grad=True)
    step(layer, x)
    print(json.dumps({"peak": status_bytes("VmHWM") - base}))


def peak_memory(geom: ConvGeometry, kind: str, batch: int, threads: int | None) -> int:
    cmd = [sys.executable, __file__, "--_child", json.dumps(geom.to_dict()), kind, "--batch", str(batch)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak"]


def time_layer(geom: ConvGeometry, batch: int, rounds: int, det: bool, clock=time.perf_counter) -> dict[str, float]:
    """Median seconds per fwd+bwd step of each kind, rounds interleaved with a bare 2048² GEMM."""
    a, b, c = (torch.randn(GEMM_N, GEMM_N) for _ in range(3))
    x = torch.randn(batch, geom.in_channels, *geom.in_spatial, requires_grad=True)
    conv, lc = make("conv", geom), make("lc", geom)
    fns = {"gemm": lambda: torch.mm(a, b, out=c), "conv": lambda: step(conv, x), "lc": lambda: step(lc, x)}
    if det:
        def lc_index_add() -> None:
            with index_add_backward():
                step(lc, x)
        fns["lc_index_add"] = lc_index_add
    return interleaved_medians(fns, rounds, clock)


def interleaved_medians(fns: dict[str, Callable[[], object]], rounds: int, clock=time.perf_counter) -> dict[str, float]:
    """Median seconds of each call in ``fns``: one warm-up call each, then ``rounds`` rounds that call each in turn
    (interleaved, so that a change of the machine's load falls on all of them alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for k, fn in fns.items():
            t = clock()
            fn()
            times[k].append(clock() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=250, help="batch size (default: 250)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timed rounds, median reported (default: 7)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--layers", nargs="+", default=None, help="only these conv paths, e.g. features.3 (default: all)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time (default); cpu: this process's CPU time, which leaves out the time other "
                         "processes held the cores: on a loaded machine, use it with --threads 1")
    ap.add_argument("--no-deterministic", action="store_true", help="skip timing the index_add_ backward")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return child(args._child[0], args._child[1], args.batch, args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, median of "
          f"{args.rounds} interleaved rounds, {args.clock} clock, load average {os.getloadavg()[0]:.2f} at start")
    mb = 1 / 2**20
    gemm_flops = 2 * GEMM_N**3
    for model_name in args.models:
        for path, geom in conv_layers(model_name):
            if args.layers and path not in args.layers:
                continue
            name = f"{model_name}.{path}"
            shape = (f"{geom.in_channels}->{geom.out_channels} k{geom.kernel_size[0]} s{geom.stride[0]} "
                     f"p{geom.padding[0][0]} on {geom.in_spatial[0]}x{geom.in_spatial[1]}")
            t = time_layer(geom, args.batch, args.rounds, not args.no_deterministic, clock)
            gemm_rate, lc_rate = gemm_flops / t["gemm"], lc_flops(geom, args.batch) / t["lc"]
            live_rate = lc_flops(geom, args.batch, live_only=True) / t["lc"]
            target = f"target >= {TARGETS[name]}" if name in TARGETS else "no target"
            print(f"gemm-fraction fwd+bwd {name:<20} B={args.batch}: {lc_rate / gemm_rate:.2f} ({target}; "
                  f"live taps only: {live_rate / gemm_rate:.2f})  [lc {t['lc'] * 1e3:.1f} ms = {lc_rate / 1e9:.0f} "
                  f"GFLOP/s; bare {GEMM_N}² GEMM {gemm_rate / 1e9:.0f} GFLOP/s; {shape}]")
            print(f"lc/conv fwd+bwd       {name:<20} B={args.batch}: {t['lc'] / t['conv']:.2f}x "
                  f"(lc {t['lc'] * 1e3:.1f} ms, conv {t['conv'] * 1e3:.1f} ms)")
            if "lc_index_add" in t:
                print(f"lc gather-sum/index_add_ {name:<17} B={args.batch}: {t['lc'] / t['lc_index_add']:.2f}x "
                      f"(gather-sum, deterministic: {t['lc'] * 1e3:.1f} ms; index_add_: {t['lc_index_add'] * 1e3:.1f} ms)")
            if args.no_memory:
                continue
            isz = 4
            weights = (geom.groups * geom.P * (geom.out_channels // geom.groups) * geom.T
                       * (geom.in_channels // geom.groups) + geom.out_channels * geom.P) * isz
            acts = args.batch * (geom.in_channels * geom.Q + geom.out_channels * geom.P) * isz
            unfolded = args.batch * geom.in_channels * geom.T * geom.P * isz
            ref = weights + acts + unfolded
            peak_lc = peak_memory(geom, "lc", args.batch, args.threads)
            peak_conv = peak_memory(geom, "conv", args.batch, args.threads)
            print(f"lc peak mem fwd+bwd   {name:<20} B={args.batch}: {peak_lc / ref:.2f}x of weights+activations+"
                  f"unfolded (lc peak {peak_lc * mb:.0f} MB; ref {ref * mb:.0f} MB = {weights * mb:.0f} + "
                  f"{acts * mb:.0f} + {unfolded * mb:.0f}; conv peak {peak_conv * mb:.0f} MB) [VmHWM, fresh subprocess]")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
