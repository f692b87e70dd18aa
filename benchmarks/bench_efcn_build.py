"""Building the eFCN of the CIFAR AlexNet against allocating and zero-filling the same number of bytes.

The eFCN build is ``DenseConv.from_conv`` on every Conv2d of the model (padding folded in, so no columns
for padded zeros), with the input shapes found by one forward pass. The baseline is ``torch.zeros`` of as
many float32 elements as all those DenseConv parameters together. Rounds alternate the two; medians are
reported. (The paper's public ``cnn2fc`` takes about 5.5 s on this kind of machine for its 0.95 GB version
with padding columns; see /work/shared/MEASURED.md.)

    python benchmarks/bench_efcn_build.py [--model alexnet] [--rounds 5] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from archrelax.embed.connectivity import ConvGeometry
from archrelax.embed.dense import DenseConv
from archrelax.models import create_model


def convs_with_shapes(model: nn.Module) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    found: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: found.append((n, m, tuple(i[0].shape[2:]))))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    with torch.no_grad():
        model(torch.zeros(1, *model.input_shape))
    for h in hooks:
        h.remove()
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="alexnet")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    convs = convs_with_shapes(create_model(args.model))

    def build() -> int:
        n = 0
        for _, conv, spatial in convs:
            layer = DenseConv.from_conv(conv, spatial)
            n += sum(p.numel() for p in layer.parameters())
            del layer  # one layer alive at a time, like the zero-fill baseline's single buffer
        return n

    numel = build()  # warm-up, and the element count for the baseline
    times: dict[str, list[float]] = {"build": [], "zeros": []}
    for _ in range(args.rounds):
        t = time.perf_counter()
        build()
        times["build"].append(time.perf_counter() - t)
        t = time.perf_counter()
        z = torch.zeros(numel)
        times["zeros"].append(time.perf_counter() - t)
        del z
    tb, tz = (statistics.median(times[k]) for k in ("build", "zeros"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.rounds} alternating rounds")
    for name, conv, spatial in convs:
        g = ConvGeometry.from_conv(conv, spatial)
        print(f"  {name}: conv {tuple(conv.weight.shape)} on {spatial} -> DenseConv weight "
              f"({g.out_channels * g.P}, {g.in_channels * g.Q})")
    print(f"efcn build / zero-fill  {args.model} ({numel * 4 / 1e9:.3f} GB float32): {tb / tz:.2f}x "
          f"(build {tb * 1e3:.0f} ms, zeros {tz * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
