"""Exactness of every lattice target on whole models: max abs / rel error of the logits against the CNN.

VanillaCNN and AlexNet (archrelax.models) and torchvision's ResNet-18 (num_classes=10), all on 3x32x32, eval
mode with random BatchNorm statistics, batch 4, in float32 and float64; each relaxed to every target and
along the lattice's paths (``a>b``: relax to a, then to b). rel = max|Δ| / max|logits|.

    python benchmarks/lattice_exactness.py [--models vanilla_cnn alexnet resnet18] [--dtypes float32 float64]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from archrelax.embed import cnn_distance, relax

TARGETS = ["wide:7", "wide:full", "tiled:2", "tiled:3x2", "lc", "fc",
           "tiled:2>lc", "tiled:2>fc", "tiled:2>lc>fc", "wide:7>fc", "wide:full>fc"]


def make(name: str, dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "resnet18":
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
    else:
        from archrelax.models import create_model

        model = create_model(name)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.to(dtype).eval(), torch.randn(4, 3, 32, 32, dtype=dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["vanilla_cnn", "alexnet", "resnet18"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--targets", nargs="+", default=TARGETS)
    args = ap.parse_args()
    print(f"torch {torch.__version__}; logits of the relaxed model vs the CNN, batch 4, 3x32x32")
    print(f"{'model':<12} {'dtype':<8} {'target':<16} {'max abs err':>12} {'max rel err':>12} {'cnn_dist':>9} {'time':>7}")
    for name in args.models:
        for dt in args.dtypes:
            model, x = make(name, getattr(torch, dt))
            with torch.no_grad():
                ref = model(x)
            for to in args.targets:
                t = time.perf_counter()
                relaxed = model
                for step in to.split(">"):
                    relaxed = relax(relaxed, step, x)
                with torch.no_grad():
                    err = (relaxed(x) - ref).abs().max().item()
                rel = err / ref.abs().max().item()
                dist = cnn_distance(relaxed)
                print(f"{name:<12} {dt:<8} {to:<16} {err:12.3e} {rel:12.3e} {dist:9.1e} {time.perf_counter() - t:6.1f}s",
                      flush=True)
                del relaxed


if __name__ == "__main__":
    main()
