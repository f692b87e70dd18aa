"""Do the attention's released degrees of freedom learn? The plain exact embedding against the annealed sharpness.

On the lattice preset's shapes (VanillaCNN width 32, mnist5k with 2000 training images, SGD lr 0.05 momentum 0.9,
batch 100: 20 steps an epoch), one seed: a CNN trained ``--cnn-epochs`` epochs, then from its last snapshot, each
for ``--epochs`` epochs at the preset's relaxed lr 0.02: the CNN continued, and ``features.3`` and ``features.6``
made self-attention (the convs the protocol relaxes) for every target of ``--targets``. First, at the switch, the
largest gradient (one batch, cross-entropy) of α, the offsets and W_q under the candidate parametrisations: α = 32
as it is, log α (∂/∂log α = α·∂/∂α), W_k drawn 10x larger, and the logits' sharpness lowered to 16, 8 and 4 (what
an anneal reaches). Then each run's first and last metrics rows: train/test accuracy and the attention measures.

    python benchmarks/bench_attention_anneal.py [--out /tmp/anneal] [--cnn-epochs 2] [--epochs 2]
        [--targets attn:alpha=32 attn:alpha=32,anneal_to=4,anneal_steps=20]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from archrelax.embed import relax
from archrelax.embed.attention import AttentionConvNd
from archrelax.train import train
from archrelax.train.checkpoint import model_from_checkpoint

LAYERS = ["features.3", "features.6"]
BASE = dict(model="vanilla_cnn", model_kwargs={"width": 32}, data="mnist5k", train_size=2000, seed=0,
            optimizer="sgd", momentum=0.9, batch_size=100, until_zero_loss=False, checkpoint_every_s=None)
SHOWN = ("epoch", "train_loss", "train_acc", "test_acc", "attn_content_share", "attn_offtarget", "attn_mean_distance",
         "conv_mean_distance", "attn_alpha_min", "attn_alpha_max", "attn_offset_mean", "attn_offset_max")


def grads_at_switch(snapshot: Path, cnn_cfg: dict) -> None:
    """The largest |gradient| of α, the offsets and W_q at the switch, one training batch, per candidate."""
    from archrelax.train.config import TrainConfig
    from archrelax.train.setup import load_run_data, make_feeds

    cfg = TrainConfig.from_dict(cnn_cfg)
    feed, _ = make_feeds(cfg, load_run_data(cfg), torch.device("cpu"))
    x, y = next(iter(feed.epoch(0)))  # the relaxed run's first batch
    for name, wk, shift in [("alpha=32", 1, 0.0), ("alpha=32, log-alpha", 1, 0.0), ("alpha=32, W_k x10", 10, 0.0),
                            ("sharpness 16", 1, -16.0), ("sharpness 8", 1, -24.0), ("sharpness 4", 1, -28.0)]:
        # the anneal's buffer, set by hand below: the sharpness the candidate stands for
        model = relax(model_from_checkpoint(snapshot), "attn:alpha=32,anneal_to=4,anneal_steps=1", layers=LAYERS,
                      example_input=x[:1])
        att = [m for m in model.modules() if isinstance(m, AttentionConvNd)]
        with torch.no_grad():
            for m in att:
                m.key_weight.mul_(wk)
                m.alpha_shift.fill_(shift)
        F.cross_entropy(model(x), y).backward()
        g_alpha = max(float((m.alpha.grad * (m.alpha.detach() if "log" in name else 1)).abs().max()) for m in att)
        g_off = max(float(m.offset.grad.abs().max()) for m in att)
        g_q = max(float(m.query_weight.grad.abs().max()) for m in att)
        g_w = max(float(m.weight.grad.abs().max()) for m in att)
        print(f"  {name:22s} max|grad|: alpha {g_alpha:.2e}  offset {g_off:.2e}  W_q {g_q:.2e}  (value maps {g_w:.2e})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/bench_attention_anneal")
    p.add_argument("--cnn-epochs", type=float, default=2.0)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--targets", nargs="+", default=["attn:alpha=32", "attn:alpha=32,anneal_to=4,anneal_steps=20"])
    args = p.parse_args()
    out = Path(args.out)
    cnn_cfg = dict(BASE, lr=0.05, epochs=args.cnn_epochs, eval_times=[0, args.cnn_epochs],
                   snapshots=[args.cnn_epochs])
    t0 = time.perf_counter()
    train(cnn_cfg, out / "cnn")
    snapshot = out / "cnn" / "snapshots" / f"epoch_{args.cnn_epochs:g}.pt"
    print(f"CNN {args.cnn_epochs:g} epochs: {time.perf_counter() - t0:.0f} s; gradients at the switch:")
    grads_at_switch(snapshot, cnn_cfg)
    for target in [None, *args.targets]:
        cfg = dict(BASE, lr=0.02, epochs=args.epochs, eval_times="log:5", init_from=str(snapshot), relax=target,
                   relax_layers=None if target is None else LAYERS)
        t0 = time.perf_counter()
        name = "cnn-continued" if target is None else target.replace(":", "-").replace(",", "-").replace("=", "")
        train(cfg, out / name)
        rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        print(f"{target or 'CNN continued'}: {time.perf_counter() - t0:.0f} s")
        for r in (rows[0], rows[-1]):
            print("  " + "  ".join(f"{k} {r[k]:.4g}" for k in SHOWN if k in r))


if __name__ == "__main__":
    main()
