"""The lattice's layers against the conv they replace, and the soft-release penalty against a training step.

1. Forward+backward time of each new layer over that of the same ``nn.Conv2d`` (input and weight gradients),
   on the second conv of VanillaCNN and of AlexNet (CIFAR, 3x32x32) at batch 250: tiled convs (both forward
   paths of TiledConv2d, strided convs and the eLCN kernel, so the choice of ``tiled._use_strided`` can be
   checked; the path the layer uses is marked)
   and wide convs (``wide:K`` with K = extent + 4, and ``wide:full``). A wide conv does K²/k² times the
   conv's arithmetic, so its ratio is reported beside that factor.
2. The penalty's cost on the VanillaCNN eFCN: one SGD training step (as bench_train_step.py: forward,
   cross-entropy, zero_grad, backward, step) with the penalty against the plain step, rounds interleaved;
   ``penalty / step`` = (with − plain) / plain. Target: <= 0.10. Two forms, same gradient: ``autograd``
   (``loss + λ · constraint_penalty(model, toward)``) and ``fused`` (``add_penalty_grad_(model, toward, λ)``
   after ``loss.backward()``: one pass adding λ·2(θ − Pθ) into each ``.grad``).

    python benchmarks/bench_lattice.py [--batch 250] [--rounds 5] [--threads N] [--skip-layers] [--skip-penalty]
                                       [--clock wall|cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from archrelax.embed import TiledConv2d, WideConv2d, relax
from archrelax.embed.connectivity import ConvGeometry
from archrelax.embed.penalty import add_penalty_grad_, constraint_penalty
from archrelax.embed.tiled import _use_strided
from archrelax.models import create_model

MODELS = {"vanilla": "vanilla_cnn", "alexnet": "alexnet"}


def second_conv(model_name: str) -> ConvGeometry:
    model = create_model(MODELS[model_name])
    found: list[ConvGeometry] = []
    hooks = [m.register_forward_hook(lambda m, i, o: found.append(ConvGeometry.from_conv(m, i[0].shape[2:])))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, *model.input_shape))
    for h in hooks:
        h.remove()
    return found[1]


def fwd_bwd(fn, params, x: torch.Tensor) -> None:
    for p in params:
        p.grad = None
    x.grad = None
    fn(x).sum().backward()


def layer_ratios(batch: int, rounds: int) -> None:
    for model_name in MODELS:
        geom = second_conv(model_name)
        conv = geom.make_conv()
        ext = geom.dilation[0] * (geom.kernel_size[0] - 1) + 1
        shape = (f"{geom.in_channels}->{geom.out_channels} k{geom.kernel_size[0]} s{geom.stride[0]} "
                 f"p{geom.padding[0][0]} on {geom.in_spatial[0]}x{geom.in_spatial[1]}")
        cases: dict[str, tuple] = {"conv": (conv, conv)}
        for t in (2, 4, geom.out_spatial[0]):
            tiled = TiledConv2d(geom, tile=t)
            strided = _use_strided(geom, tiled.n_tiles)
            cases[f"tiled:{t} strided{'*' if strided else ''}"] = (tiled._forward_strided, tiled)
            cases[f"tiled:{t} lc-kernel{'' if strided else '*'}"] = (tiled._forward_lc, tiled)
        for ks in (ext + 4, "full"):
            wide = WideConv2d(geom, kernel_size=ks)
            cases[f"wide:{ks}"] = (wide, wide)
        x = torch.randn(batch, geom.in_channels, *geom.in_spatial, requires_grad=True)
        times: dict[str, list[float]] = {k: [] for k in cases}
        for fn, mod in cases.values():
            fwd_bwd(fn, list(mod.parameters()), x)  # warm-up
        for _ in range(rounds):
            for k, (fn, mod) in cases.items():
                t = time.perf_counter()
                fwd_bwd(fn, list(mod.parameters()), x)
                times[k].append(time.perf_counter() - t)
        tc = statistics.median(times["conv"]) * 1e3
        for k, (fn, mod) in cases.items():
            if k == "conv":
                continue
            tk = statistics.median(times[k]) * 1e3
            extra = ""
            if k.startswith("wide"):
                work = mod.wide_geometry.T / geom.T
                extra = f", {work:.1f}x the conv's multiply-adds"
            print(f"{k + '/conv fwd+bwd':<31} {model_name}.2nd conv B={batch}: {tk / tc:5.2f}x "
                  f"({k.split()[0]} {tk:.1f} ms, conv {tc:.1f} ms{extra})  [{shape}]")


def penalty_ratio(batch: int, rounds: int, clock=time.perf_counter) -> None:
    from archrelax.train.config import TrainConfig
    from archrelax.train.setup import make_optimizer

    torch.manual_seed(0)
    efcn = relax(create_model("vanilla_cnn"), to="fc", example_input=torch.zeros(1, 3, 32, 32))
    opt = make_optimizer(TrainConfig(lr=1e-4), efcn)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    n_params = sum(p.numel() for p in efcn.parameters())

    def step(case: tuple[str, str] | None) -> float:
        t = clock()
        loss = F.cross_entropy(efcn(x), y)
        if case is not None and case[1] == "autograd":
            loss = loss + 1e-3 * constraint_penalty(efcn, case[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if case is not None and case[1] == "fused":
            add_penalty_grad_(efcn, case[0], 1e-3)
        opt.step()
        return clock() - t

    cases = [None] + [(t, how) for how in ("autograd", "fused") for t in ("cnn", "local", "shared")]
    for c in cases:
        step(c)  # warm-up (and the off-subspace part becomes non-zero)
    times: dict = {c: [] for c in cases}
    for _ in range(rounds):
        for c in cases:
            times[c].append(step(c))
    plain = statistics.median(times[None])
    print(f"eFCN(VanillaCNN) SGD step, batch {batch}, {n_params / 1e6:.1f}M parameters: {plain * 1e3:.0f} ms")
    for c in cases[1:]:
        with_pen = statistics.median(times[c])
        form = "loss + λ·constraint_penalty" if c[1] == "autograd" else "add_penalty_grad_ after backward"
        print(f"penalty / step  toward={c[0]:<7} {c[1]:<8} B={batch}: {(with_pen - plain) / plain:6.3f} "
              f"(step with {form} {with_pen * 1e3:.0f} ms, plain step {plain * 1e3:.0f} ms; target <= 0.10)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--skip-layers", action="store_true")
    ap.add_argument("--skip-penalty", action="store_true")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="penalty/step timing: wall time, or this process's CPU time (steadier on a loaded machine "
                    "with --threads 1; with more threads it also counts their spinning)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"median of {args.rounds} interleaved rounds (* = the forward path TiledConv2d uses)")
    if not args.skip_layers:
        layer_ratios(args.batch, args.rounds)
    if not args.skip_penalty:
        print(f"penalty timing: {args.clock} clock")
        penalty_ratio(args.batch, args.rounds, time.perf_counter if args.clock == "wall" else time.process_time)


if __name__ == "__main__":
    main()
