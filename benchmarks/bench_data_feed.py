"""Data-feed overhead as a share of a VanillaCNN training step (batch 250), measured side by side.

For each augmentation setting, rounds interleave three timings on the same device: k feed-only batches,
k training steps on one fixed batch (no feed), and k training steps fed by BatchFeed. Reported: the feed's
time per batch and its share of a fed step, ``feed / (fed step)``, plus the fed-minus-static difference as
a cross-check. Target: < 5 %.

    python benchmarks/bench_data_feed.py [--data synthetic:3x32x32:10:5000:10] [--device auto] [--rounds 5] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from archrelax.data import BatchFeed, load_data
from archrelax.models import create_model
from archrelax.utils import resolve_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="synthetic:3x32x32:10:5000:10")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--steps", type=int, default=8, help="batches per timing (k)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    data = load_data(args.data)
    model = create_model("vanilla_cnn", num_classes=data.num_classes, in_channels=data.input_shape[0],
                         input_size=data.input_shape[1]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    print(f"device {device}, data {args.data} ({len(data.train)} train images), VanillaCNN, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    for augment in ((), ("crop", "flip")):
        feed = BatchFeed(data.train.images, data.train.labels, args.batch_size, mean=data.mean, std=data.std,
                         device=device, seed=0, augment=augment, drop_last=True)
        k = min(args.steps, len(feed))
        x0, y0 = next(feed.epoch(0))
        for _ in range(2):  # warm-up: allocator, kernels
            step(x0, y0)
        feed_t, static_t, fed_t = [], [], []
        for r in range(args.rounds):
            batches = lambda: zip(range(k), feed.epoch(r))  # noqa: E731
            feed_t.append(timed(lambda: [b for _, b in batches()], device) / k)
            static_t.append(timed(lambda: [step(x0, y0) for _ in range(k)], device) / k)
            fed_t.append(timed(lambda: [step(x, y) for _, (x, y) in batches()], device) / k)
        f, s, d = (statistics.median(v) for v in (feed_t, static_t, fed_t))
        name = "+".join(augment) or "none"
        print(f"augment={name:9s} feed {f * 1e3:7.3f} ms/batch | CNN step {s * 1e3:7.2f} ms | fed step "
              f"{d * 1e3:7.2f} ms | feed share {100 * f / d:5.2f} % of a fed step (fed-static: "
              f"{100 * (d - s) / d:+5.2f} %) target < 5 %")


if __name__ == "__main__":
    main()
