"""eLCN layer (LocallyConnected2d) against the same nn.Conv2d: forward+backward time and peak memory.

Layer shapes come from running VanillaCNN and AlexNet (CIFAR, 3x32x32) once, so they stay those of the
models. Time: rounds alternate conv and eLCN steps (input and weight gradients both computed, weight
gradients set to None between steps as in training); the median per step is reported.

Peak memory: each (layer, kind) step runs once in a fresh subprocess that resets the kernel's resident
high-water mark (``/proc/self/clear_refs`` = 5) after a small warm-up step (so library buffers already
exist), then allocates the layer and its input and runs one forward+backward; reported is ``VmHWM`` minus the
resident size before that allocation. It is compared with weights + activations (input + output) + one
unfolded input (B x C_in x T x P floats). Linux only.

    python benchmarks/bench_lc_layer.py [--batch 250] [--rounds 5] [--threads N] [--no-memory]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from archrelax.embed.connectivity import ConvGeometry
from archrelax.embed.locally_connected import LocallyConnected2d
from archrelax.models import create_model

MODELS = {"vanilla": "vanilla_cnn", "alexnet": "alexnet"}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return child(args._child[0], args._child[1], args.batch, args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"median of {args.rounds} alternating rounds")
    mb = 1 / 2**20
    for model_name in args.models:
        for path, geom in conv_layers(model_name):
            name = f"{model_name}.{path}"
            shape = (f"{geom.in_channels}->{geom.out_channels} k{geom.kernel_size[0]} s{geom.stride[0]} "
                     f"p{geom.padding[0][0]} on {geom.in_spatial[0]}x{geom.in_spatial[1]}")
            x = torch.randn(args.batch, geom.in_channels, *geom.in_spatial, requires_grad=True)
            layers = {k: make(k, geom) for k in ("conv", "lc")}
            times: dict[str, list[float]] = {"conv": [], "lc": []}
            for k in layers:
                step(layers[k], x)  # warm-up
            for _ in range(args.rounds):
                for k, layer in layers.items():
                    t = time.perf_counter()
                    step(layer, x)
                    times[k].append(time.perf_counter() - t)
            tc, tl = (statistics.median(times[k]) * 1e3 for k in ("conv", "lc"))
            print(f"lc/conv fwd+bwd  {name:<22} B={args.batch}: {tl / tc:.2f}x (lc {tl:.1f} ms, conv {tc:.1f} ms)  [{shape}]")
            del layers, x
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
            print(f"lc peak mem fwd+bwd {name:<22} B={args.batch}: {peak_lc / ref:.2f}x of weights+activations+unfolded "
                  f"(lc peak {peak_lc * mb:.0f} MB; ref {ref * mb:.0f} MB = {weights * mb:.0f} + {acts * mb:.0f} + "
                  f"{unfolded * mb:.0f}; conv peak {peak_conv * mb:.0f} MB) [VmHWM, fresh subprocess]")


if __name__ == "__main__":
    main()
