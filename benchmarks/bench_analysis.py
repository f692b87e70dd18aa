"""Cost of the analyses on an experiment folder, and of one Hessian-vector product against one gradient.

1. Each analysis of ``analyse_experiment`` recomputed (force=True) with the default settings, timed alone.
   The demo's budget: a few minutes for all of them on 2 CPUs.
2. For the CNN and the first eFCN of the experiment (final weights), on the sharpness subset: time of one
   Hessian-vector product (double backward) over one gradient. Expected: about 2-4x.

    python benchmarks/bench_analysis.py EXPERIMENT [--threads 1] [--reps 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from archrelax.analysis import ANALYSES, AnalysisSettings, analyse_experiment
from archrelax.analysis.context import Context
from archrelax.analysis.sharpness import hessian_vector_product
from archrelax.store import ExperimentFolder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = AnalysisSettings()
    total = 0.0
    for name in ANALYSES:
        t = time.perf_counter()
        res = analyse_experiment(args.experiment, only=[name], progress=False, settings=settings, force=True)[name]
        dt = time.perf_counter() - t
        total += dt
        items = next((len(getattr(res, k)) for k in ("points", "runs", "curves", "rows") if hasattr(res, k)), 0)
        print(f"analysis {name:<14} {dt:7.2f} s  ({items} records, {len(res.missing)} missing, "
              f"error={res.error})")
    print(f"analysis total          {total:7.2f} s  (threads={torch.get_num_threads()})")

    ctx = Context(ExperimentFolder(args.experiment), settings, progress=False)
    x, y = ctx.data()["hessian"]
    for kind in ("cnn", "efcn"):
        run = next((r for r in ctx.of_kind(kind) if ctx.done(r)), None)
        if run is None:
            continue
        model = ctx.load(ctx.folder(run).final_path).eval()
        params = [p for p in model.parameters() if p.requires_grad]
        v = [torch.randn_like(p) for p in params]

        def grad() -> None:
            torch.autograd.grad(F.cross_entropy(model(x), y), params)

        def hvp() -> None:
            hessian_vector_product(model, x, y, v, batch_size=settings.batch_size)

        grad(), hvp()  # warm-up
        tg = statistics.median(_time(grad) for _ in range(args.reps))
        th = statistics.median(_time(hvp) for _ in range(args.reps))
        n = sum(p.numel() for p in params)
        print(f"hvp {kind:<5} {n:>9d} params, {len(x)} samples: gradient {tg * 1e3:7.1f} ms, "
              f"Hessian-vector product {th * 1e3:7.1f} ms, ratio {th / tg:4.2f}")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
