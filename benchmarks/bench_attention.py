"""The attention layer (AttentionConv2d) against the eLCN of the same conv: forward+backward time and peak memory.

Layer shapes come from running VanillaCNN and AlexNet (CIFAR, 3x32x32) once (``bench_lc_layer.conv_layers``).
One step is a forward+backward of the layer (input and every parameter gradient, gradients set to None between
steps, as in training), at the embedding of a random conv. Kinds, timed back to back in every round (medians):

- ``attn``: the default attention (content on: d_k = min(C_in, 8));
- ``attn:dk=0``: positional attention only (batch-independent attention, one GEMM for the whole batch);
- ``lc``: the eLCN (``LocallyConnected2d``), the reference of the ratio; ``conv``: the ``nn.Conv2d``.

Lines: ``attn/lc fwd+bwd`` (the ratio the default protocol's choice of layers rests on) and ``attn:dk=0/lc``;
with the (batch, heads, queries, keys) size of the layer's attention, its number of chunks and the chunk's
planned workspace (``archrelax.embed.attention.workspace_bytes``). Unless ``--no-memory``: the peak resident
memory of one forward+backward of each kind in a fresh subprocess (``bench_lc_layer.peak_memory``'s method:
VmHWM after resetting it, minus the resident size before the layer and input exist; the per-thread workspaces are
released after the warm-up, so the chunk buffers count), beside the full attention (4 bytes x batch x heads x
queries x (keys + 1)) the chunking avoids.

    python benchmarks/bench_attention.py [--batch 250] [--rounds 3] [--threads N] [--models vanilla alexnet]
                                         [--layers features.3 features.6] [--no-memory] [--clock cpu]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import torch
from torch import nn

from archrelax.embed.attention import AttentionConv2d
from archrelax.embed.attention_chunks import chunk_plan, workspace_bytes
from archrelax.embed.connectivity import ConvGeometry
from archrelax.embed.locally_connected import LocallyConnected2d, release_workspaces
from bench_lc_layer import conv_layers, interleaved_medians, status_bytes, step

KINDS = ("attn", "attn:dk=0", "lc", "conv")
# the layers timed by default: VanillaCNN's three and AlexNet's second (its first is VanillaCNN's first)
DEFAULT = {"vanilla": ("features.0", "features.3", "features.6"), "alexnet": ("features.3",)}


def make(kind: str, geom: ConvGeometry) -> nn.Module:
    """A layer of ``kind`` at the embedding of one random conv (seeded: every kind embeds the same conv)."""
    torch.manual_seed(0)
    conv = geom.make_conv()
    if kind == "conv":
        return conv
    if kind == "lc":
        return LocallyConnected2d.from_conv(conv, geom.in_spatial)
    return AttentionConv2d.from_conv(conv, geom.in_spatial, key_dim=0 if kind == "attn:dk=0" else None)


def child(geom_json: str, kind: str, batch: int, threads: int | None) -> None:
    """Runs in a fresh process: prints {"peak": bytes} for one forward+backward."""
    if threads:
        torch.set_num_threads(threads)
    geom = ConvGeometry.from_dict(json.loads(geom_json))
    step(make(kind, geom), torch.randn(1, geom.in_channels, *geom.in_spatial, requires_grad=True))  # warm-up
    release_workspaces()  # the attention's chunk buffers may not depend on the batch: count them in the step
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the resident high-water mark (VmHWM) to the current resident size
    base = status_bytes("VmRSS")
    layer = make(kind, geom)
    step(layer, torch.randn(batch, geom.in_channels, *geom.in_spatial, requires_grad=True))
    print(json.dumps({"peak": status_bytes("VmHWM") - base}))


def peak_memory(geom: ConvGeometry, kind: str, batch: int, threads: int | None) -> int:
    cmd = [sys.executable, __file__, "--_child", json.dumps(geom.to_dict()), kind, "--batch", str(batch)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak"]


def time_layer(geom: ConvGeometry, batch: int, rounds: int, clock) -> dict[str, float]:
    """Median seconds per fwd+bwd step of each kind, rounds interleaved."""
    x = torch.randn(batch, geom.in_channels, *geom.in_spatial, requires_grad=True)
    layers = {k: make(k, geom) for k in KINDS}
    return interleaved_medians({k: functools.partial(step, layer, x) for k, layer in layers.items()}, rounds, clock)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=250, help="batch size (default: 250)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds, median reported (default: 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--models", nargs="+", default=list(DEFAULT), choices=list(DEFAULT))
    ap.add_argument("--layers", nargs="+", default=None,
                    help="only these conv paths (default: VanillaCNN's three, AlexNet's features.3)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time (default); cpu: this process's CPU time (with --threads 1 on a loaded "
                         "machine it leaves out the time other processes held the core)")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return child(args._child[0], args._child[1], args.batch, args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, median of "
          f"{args.rounds} interleaved rounds, {args.clock} clock, load average {os.getloadavg()[0]:.2f} at start")
    mb = 1 / 2**20
    for model_name in args.models:
        for path, geom in conv_layers(model_name):
            if path not in (args.layers or DEFAULT[model_name]):
                continue
            name = f"{model_name}.{path}"
            B, H, P, K = args.batch, geom.T, geom.P, geom.Q + 1
            dk = AttentionConv2d(geom, _init=False).key_dim
            rows, queries = chunk_plan(geom, dk, B, 4)
            n_chunks = -(-B // rows) * -(-P // queries)
            shape = (f"{geom.in_channels}->{geom.out_channels} k{geom.kernel_size[0]} s{geom.stride[0]} "
                     f"p{geom.padding[0][0]} on {geom.in_spatial[0]}x{geom.in_spatial[1]}; attention {B}x{H}x{P}x{K}, "
                     f"{n_chunks} chunks of {workspace_bytes(geom, dk, 4, B) * mb:.0f} MiB")
            t = time_layer(geom, B, args.rounds, clock)
            print(f"attn/lc fwd+bwd      {name:<20} B={B}: {t['attn'] / t['lc']:7.2f}x  (attn {t['attn'] * 1e3:.1f} ms, "
                  f"lc {t['lc'] * 1e3:.1f} ms, conv {t['conv'] * 1e3:.1f} ms; d_k={dk}; {shape})")
            print(f"attn:dk=0/lc fwd+bwd {name:<20} B={B}: {t['attn:dk=0'] / t['lc']:7.2f}x  "
                  f"(attn:dk=0 {t['attn:dk=0'] * 1e3:.1f} ms)")
            if args.no_memory:
                continue
            peaks = {k: peak_memory(geom, k, B, args.threads) for k in ("attn", "attn:dk=0", "lc")}
            full = 4 * B * H * P * K
            print(f"peak mem fwd+bwd     {name:<20} B={B}: attn {peaks['attn'] * mb:.0f} MiB, attn:dk=0 "
                  f"{peaks['attn:dk=0'] * mb:.0f} MiB, lc {peaks['lc'] * mb:.0f} MiB (the whole attention would be "
                  f"{full * mb:.0f} MiB)")


if __name__ == "__main__":
    main()
