"""Cost of the attention measures the trainer records at every evaluation, against one training step.

The model is VanillaCNN with its second and third convs made self-attention (what the protocol's attention runs
relax: ``attention.max_cost``), at α = 32 (the protocol's), on the lattice preset's shapes (width 32, 1x28x28,
batch 100) and on CIFAR's (width 64, 3x32x32, batch 250). Every round times, back to back: one training step
exactly like the trainer's (forward, cross-entropy, backward, SGD step with momentum) and the recorder's
measures (``recorder._attention_measures``: eval mode, one forward of the probe batch of ``PROBE_SIZE`` images,
the per-layer attention in chunks, the conv's output beside it), and, for scale, the evaluation they join (a
forward of ``--eval-images`` images in batches of 500, as the trainer's evaluation feeds). Medians, as ratios.

    python benchmarks/bench_attention_measures.py [--rounds 5] [--threads N] [--shapes lattice cifar]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from archrelax.embed import relax
from archrelax.models import create_model
from archrelax.train.config import TrainConfig
from archrelax.train.recorder import PROBE_SIZE, _attention_measures
from archrelax.train.setup import make_optimizer

SHAPES = {"lattice": dict(width=32, in_channels=1, input_size=28, batch=100),
          "cifar": dict(width=64, in_channels=3, input_size=32, batch=250)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds, median reported (default: 5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    p.add_argument("--eval-images", type=int, default=3000, help="images of one evaluation (default: 3000, the "
                   "lattice preset's 2000 train + 1000 test)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in args.shapes:
        s = dict(SHAPES[name])
        batch = s.pop("batch")
        cnn = create_model("vanilla_cnn", **s)
        model = relax(cnn, "attn:alpha=32", layers=["features.3", "features.6"])
        opt = make_optimizer(TrainConfig(lr=0.02, momentum=0.9), model)
        x = torch.randn(batch, s["in_channels"], s["input_size"], s["input_size"])
        y = torch.randint(0, 10, (batch,))
        probe = torch.randn(PROBE_SIZE, *x.shape[1:])

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        step()
        _attention_measures(model, probe)  # warm-up: workspaces, caches
        big = torch.randn(500, *x.shape[1:])

        @torch.no_grad()
        def evaluation() -> None:
            model.eval()
            for _ in range(-(-args.eval_images // 500)):
                model(big)
            model.train()

        t_step, t_meas, t_eval = [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            step()
            t1 = time.perf_counter()
            _attention_measures(model, probe)
            t2 = time.perf_counter()
            evaluation()
            t3 = time.perf_counter()
            t_step.append(t1 - t0)
            t_meas.append(t2 - t1)
            t_eval.append(t3 - t2)
        a, b, c = (statistics.median(t) for t in (t_step, t_meas, t_eval))
        print(f"attention measures / step  {name:8s} B={batch}: {b / a:.3f}  (measures {1e3 * b:.1f} ms on "
              f"{PROBE_SIZE} probe images, step {1e3 * a:.1f} ms; measures / evaluation of {args.eval_images} images "
              f"{b / c:.3f}; VanillaCNN width {s['width']}, features.3 and features.6 as attention, "
              f"{torch.get_num_threads()} thread(s))")


if __name__ == "__main__":
    main()
