"""Cost of the sharpness along training (``TrainConfig.sharpness_products``) against the training it rides on.

For the CNN of the needle-mnist and demo presets (their planned config for seed 0: model, data, batch, lr,
evaluation times, snapshots), the run is trained with the hook off and on, back to back in this process, and
the line

    needle-mnist CNN: sharpness along training / training = X (target <= 0.1)

gives X = (time on − time off) / time off. Beside it: the time spent inside the λ_max calls themselves (timed
around ``Recorder._sharpness`` in the run with the hook on) over the time off, the number of rows, and the λ_max
curve's first, largest and last values with how many rows converged.

    python benchmarks/bench_sharpness_curve.py [--presets needle-mnist demo] [--epochs E] [--threads 1]
                                               [--products P] [--samples N] [--clock cpu|wall] [--reps 3]

``--products``/``--samples``: the hook's settings (default: the values the needle-mnist preset sets, 8 and 64).
``--epochs``: a shorter CNN (its evaluation times, ``log:N`` over the shorter horizon, then fall closer
together: the ratio is then an upper bound of the full run's). ``--clock cpu`` (default) times this process's
CPU time, steadier on a shared machine; ``--reps`` repeats the off/on pair and prints the median ratio. An
untimed one-epoch run with the hook on comes first (data loading, first calls).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from archrelax.protocol.plan import make_plan
from archrelax.protocol.spec import load_spec
from archrelax.train import TrainConfig, read_metrics, train
from archrelax.train.recorder import Recorder


def cnn_config(preset: str, epochs: float | None) -> TrainConfig:
    """The preset's seed-0 CNN, on the CPU, quiet, with the hook off."""
    run = next(r for r in make_plan(load_spec(preset=preset)).values() if r.kind == "cnn" and r.seed == 0)
    c = {**run.config, "device": "cpu", "progress": False, "sharpness_products": 0}
    if epochs is not None:
        c["epochs"] = epochs
        c["snapshots"] = [t for t in c["snapshots"] if t <= epochs]
    return TrainConfig.from_dict(c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["needle-mnist", "demo"])
    ap.add_argument("--epochs", type=float, default=None, help="shorter CNN (default: the preset's length)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--products", type=int, default=8)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    inside = [0.0]
    measure = Recorder._sharpness

    def timed(self):
        t = clock()
        try:
            return measure(self)
        finally:
            inside[0] += clock() - t

    Recorder._sharpness = timed
    for preset in args.presets:
        off = cnn_config(preset, args.epochs)
        on = TrainConfig.from_dict({**off.to_dict(), "sharpness_products": args.products,
                                    "sharpness_samples": args.samples})
        ratios, direct = [], []
        with tempfile.TemporaryDirectory() as tmp:  # warm-up, untimed: data loading, first calls, allocator
            train(TrainConfig.from_dict({**on.to_dict(), "epochs": min(on.horizon, 1.0), "snapshots": []}),
                  Path(tmp) / "warm")
        for _ in range(args.reps):
            with tempfile.TemporaryDirectory() as tmp:
                t = clock()
                train(off, Path(tmp) / "off")
                t_off = clock() - t
                inside[0] = 0.0
                t = clock()
                train(on, Path(tmp) / "on")
                t_on = clock() - t
                rows = read_metrics(Path(tmp) / "on" / "metrics.jsonl")
            ratios.append((t_on - t_off) / t_off)
            direct.append(inside[0] / t_off)
        lam = [r["lambda_max"] for r in rows]
        conv = sum(r["lambda_max_converged"] for r in rows)
        print(f"{preset} CNN: sharpness along training / training = {statistics.median(ratios):.3f} "
              f"(target <= 0.1)  [off {t_off:.1f} s, on {t_on:.1f} s ({args.clock}); inside the λ_max calls "
              f"{statistics.median(direct):.3f} of training; {len(rows)} rows, {off.horizon:g} epochs, "
              f"{args.products} products on {args.samples} images; λ_max first {lam[0]:.3g}, max {max(lam):.3g}, "
              f"last {lam[-1]:.3g}; {conv}/{len(rows)} converged]", flush=True)


if __name__ == "__main__":
    main()
