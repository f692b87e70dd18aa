"""Cost of the subspace distances the trainer records at every evaluation, against one training step.

The model is the eFCN (or ``--relax lc``: the eLCN) of VanillaCNN on CIFAR-sized inputs. Every round times,
back to back: one training step exactly like the trainer's (forward, cross-entropy, backward, SGD step with
momentum, batch ``--batch-size``), ``offlocal_ratio`` (δ), ``cnn_distance``, and ``subspace_distances`` (δ,
off-sharing ratio and CNN distance in one pass, what the trainer calls). Medians are reported as ratios
to the step. Target: δ and cnn_distance each <= 0.10 of a step of the VanillaCNN eFCN.

Off-local noise is added to the relaxed weights first (so the distances are not 0 and every part is
exercised), and the values are printed next to a float64 reference computed from the definitions with
full-size masks and projections: they must agree to 1e-6 relative.

    python benchmarks/bench_distances.py [--batch-size 250] [--rounds 5] [--threads N] [--relax fc|lc]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from archrelax.embed import relax, relaxed_layers
from archrelax.embed.subspace import cnn_distance, offlocal_ratio, subspace_distances
from archrelax.models import create_model
from archrelax.train.config import TrainConfig
from archrelax.train.setup import make_optimizer


@torch.no_grad()
def reference(model: torch.nn.Module) -> tuple[float, float, float]:
    """(δ, off-sharing ratio, CNN distance) from the definitions in float64: full-size masks, ``project()``
    refined once, φ applied to it. Slow; for checking only."""
    total = sum(float(p.detach().double().square().sum()) for p in model.parameters())
    off = share = dist = 0.0
    for layer in relaxed_layers(model).values():
        w, mask = layer.weight.detach().double(), layer.local_mask()
        cw, cb = layer.nearest_cnn()
        diff = layer.embed_weight(cw.double()) - w
        off += float(w[~mask].square().sum())
        share += float(diff[mask].square().sum())
        dist += float(diff.square().sum())
        if cb is not None:
            db = float((layer.embed_bias(cb.double()) - layer.bias.double()).square().sum())
            share, dist = share + db, dist + db
    return (off / total) ** 0.5, (share / total) ** 0.5, (dist / total) ** 0.5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=250, help="batch size of the training step (default: 250)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds, median reported (default: 5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--relax", choices=("fc", "lc"), default="fc", help="eFCN (default) or eLCN of VanillaCNN")
    p.add_argument("--no-reference", action="store_true", help="skip the float64 reference check")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cnn = create_model("vanilla_cnn")
    model = relax(cnn, to=args.relax, example_input=torch.zeros(1, *cnn.input_shape))
    with torch.no_grad():
        for layer in relaxed_layers(model).values():
            noise = torch.randn_like(layer.weight).mul_(1e-3)
            layer.weight.add_(noise.masked_fill_(layer.local_mask(), 0))  # off-local noise
            layer.weight.mul_(1 + 1e-2 * torch.randn_like(layer.weight))  # unshared local weights too
    n_params = sum(q.numel() for q in model.parameters())
    label = {"fc": "eFCN", "lc": "eLCN"}[args.relax]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, VanillaCNN {label} "
          f"({n_params / 1e6:.1f}M parameters), batch {args.batch_size}, median of {args.rounds} interleaved rounds, "
          f"load average {os.getloadavg()[0]:.2f} at start")

    opt = make_optimizer(TrainConfig(lr=1e-6), model)  # tiny lr: the distances stay those checked below
    x = torch.randn(args.batch_size, *cnn.input_shape)
    y = torch.randint(0, 10, (args.batch_size,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fns = {"step": step, "offlocal_ratio": lambda: offlocal_ratio(model), "cnn_distance": lambda: cnn_distance(model),
           "subspace_distances": lambda: subspace_distances(model)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(args.rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"training step           {med['step'] * 1e3:8.1f} ms")
    for k, name, target in (("offlocal_ratio", "δ / step", " (target <= 0.10)"),
                            ("cnn_distance", "cnn_distance / step", " (target <= 0.10)"),
                            ("subspace_distances", "subspace_distances / step", " (δ, off-sharing, distance in one pass)")):
        print(f"{name:<26} {med[k] / med['step']:.3f}{target}  [{med[k] * 1e3:.1f} ms]")
    d = subspace_distances(model)
    print(f"values: δ {d.offlocal_ratio:.9g}, off-sharing {d.offsharing_ratio:.9g}, cnn_distance {d.cnn_distance:.9g}; "
          f"δ² + off-sharing² - cnn_distance² = {d.offlocal_ratio**2 + d.offsharing_ratio**2 - d.cnn_distance**2:.2g}")
    if not args.no_reference:
        ref = reference(model)
        rel = max(abs(a - b) / b for a, b in zip((d.offlocal_ratio, d.offsharing_ratio, d.cnn_distance), ref))
        print(f"float64 reference: δ {ref[0]:.9g}, off-sharing {ref[1]:.9g}, cnn_distance {ref[2]:.9g}; "
              f"largest relative difference {rel:.1e} (must be <= 1e-6)")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
