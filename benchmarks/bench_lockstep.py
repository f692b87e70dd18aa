"""Lockstep against separate runs: the same relaxed runs of one CNN (switch times x seeds), trained one after
another by ``train`` and together by ``train_lockstep``, wall time side by side in one process (CPU by default).

On a GPU lockstep turns R small steps into one large one; on a CPU the stacked GEMMs cost what separate ones
do, so the ratio shows the overhead (or saving) of the stacking itself: data loaded once, one process, batched
evaluation, against the merged-batch copies and per-member bookkeeping. Checkpoints follow the time rule in both
(``checkpoint_every_s`` 60 s: none but the first in runs this short).

    python benchmarks/bench_lockstep.py [--relax fc lc] [--width 16] [--switch 3] [--seeds 2] [--epochs 2]
                                        [--threads N] [--device cpu] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from archrelax.train import TrainConfig, read_metrics, train
from archrelax.train.lockstep import train_lockstep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--relax", nargs="+", default=["fc", "lc"], help="relaxations to time (default: fc lc)")
    p.add_argument("--width", type=int, default=16, help="VanillaCNN width (default 16)")
    p.add_argument("--data", default="synthetic:1x28x28:10:1000:500", help="data (default: 1000 28x28 images)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--switch", type=int, default=3, help="switch times per seed (epochs 0..N-1; default 3)")
    p.add_argument("--seeds", type=int, default=2, help="seeds (default 2)")
    p.add_argument("--epochs", type=float, default=2.0, help="epochs of each relaxed run (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds, median reported (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"load average {load:.2f}")
    root = Path(tempfile.mkdtemp(prefix="bench-lockstep-"))
    base = dict(model="vanilla_cnn", model_kwargs={"width": args.width}, data=args.data, batch_size=args.batch_size,
                lr=0.01, eval_times="log:10", device=args.device, progress=False)
    try:
        for s in range(args.seeds):
            train(TrainConfig(**base, epochs=max(args.switch - 1, 0), snapshots=list(range(args.switch)), seed=s),
                  root / f"cnn{s}")
        for to in args.relax:
            cfgs = [TrainConfig(**base, epochs=args.epochs, relax=to, seed=s,
                                init_from=str(root / f"cnn{s}" / "snapshots" / f"epoch_{t}.pt"))
                    for s in range(args.seeds) for t in range(args.switch)]
            t_sep, t_ls, worst = [], [], 0.0
            for r in range(args.rounds):  # interleaved: load changes hit both alike
                t = time.perf_counter()
                for i, c in enumerate(cfgs):
                    train(c, root / f"{to}-sep-{r}-{i}")
                t_sep.append(time.perf_counter() - t)
                t = time.perf_counter()
                train_lockstep(cfgs, [root / f"{to}-ls-{r}-{i}" for i in range(len(cfgs))])
                t_ls.append(time.perf_counter() - t)
                for i in range(len(cfgs)):
                    a = read_metrics(root / f"{to}-sep-{r}-{i}" / "metrics.jsonl")
                    b = read_metrics(root / f"{to}-ls-{r}-{i}" / "metrics.jsonl")
                    for ra, rb in zip(a, b):
                        for k in ("train_loss", "test_loss", "train_acc", "test_acc"):
                            worst = max(worst, abs(ra[k] - rb[k]) / max(abs(ra[k]), 1e-12))
            s, l = statistics.median(t_sep), statistics.median(t_ls)
            print(f"{'eFCN' if to == 'fc' else 'eLCN'} x{len(cfgs)} ({args.switch} switch times x {args.seeds} seeds, "
                  f"{args.epochs:g} epochs): separate {s:7.2f} s, lockstep {l:7.2f} s, lockstep/separate {l / s:.2f}; "
                  f"largest relative metric difference {worst:.1e}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
