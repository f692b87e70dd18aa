"""``archrelax data SOURCE``: decode a data source into the cache now (e.g. on a login node before batch
jobs) and print what a run would see."""
from __future__ import annotations

import argparse
import time

from .splits import SUBSETS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data", help="decode and cache a data source, print its summary",
        description="Decode SOURCE once into the uint8 tensor cache and print sizes, classes and statistics.",
    )
    p.add_argument("source", nargs="?", default="mnist5k",
                   help="mnist5k (default, offline), cifar10, cifar100, imagefolder:PATH, "
                   "synthetic[:CxHxW[:K[:NTR[:NTE]]]]")
    p.add_argument("--data-root", default=None, help="folder of cifar10/cifar100 (default $ARCHRELAX_DATA or "
                   "~/.cache/archrelax/datasets); base of a relative imagefolder PATH")
    p.add_argument("--train-size", type=int, default=None, help="training subset size (default: all)")
    p.add_argument("--test-size", type=int, default=None, help="test subset size (default: all)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the stratified subsets (default 0)")
    p.add_argument("--subset", choices=SUBSETS, default="stratified", help="how the subsets pick images: "
                   "stratified (class proportions kept, default) or first (the first N in the stored order)")
    p.add_argument("--cache-dir", default=None, help="default $ARCHRELAX_CACHE or ~/.cache/archrelax")
    p.add_argument("--download", action="store_true", help="download cifar10/cifar100 if missing (default: never)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from . import load_data

    t = time.perf_counter()
    d = load_data(args.source, args.data_root, train_size=args.train_size, test_size=args.test_size,
                  seed=args.data_seed, subset=args.subset, cache_dir=args.cache_dir, download=args.download or None)
    elapsed = time.perf_counter() - t
    classes = ", ".join(d.classes[:10]) + (f", ... ({len(d.classes)})" if len(d.classes) > 10 else "")
    print(f"{d.name}: {len(d.train)} train / {len(d.test)} test images of shape {d.input_shape} (C, H, W), "
          f"{d.num_classes} classes: {classes}")
    print(f"mean {[round(v, 4) for v in d.mean.tolist()]}  std {[round(v, 4) for v in d.std.tolist()]}  "
          f"(training split, [0, 1] units); loaded in {elapsed:.2f}s")
    return 0
