"""``archrelax train``: one training run from the command line (a thin layer over ``train``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config import TrainConfig

_D = TrainConfig.__dataclass_fields__


def _default(name: str):
    f = _D[name]
    return f.default_factory() if callable(f.default_factory) else f.default


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default (spelled 'none' when unset), unless the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or "default:" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        default = action.default
        shown = "none" if default in (None, "", [], {}) else default
        if isinstance(default, bool) and action.nargs == 0:
            shown = "on" if default else "off"
        return f"{text} (default: {shown})"


def _times(text: str):
    """'log:N' / 'every' stay strings; '0,0.5,2' becomes a list of epochs."""
    if text.startswith("log:") or text == "every":
        return text
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use 'log:N', 'every' or comma-separated epochs like 0,0.5,2")


def _kwargs(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({e}); e.g. '{{\"width\": 32}}'")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a JSON object")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to the ``archrelax`` parser."""
    p = subparsers.add_parser(
        "train", help="train a model (or its relaxed form) into a resumable run folder",
        description="Train MODEL and write OUT/{config.json,status.json,metrics.jsonl,checkpoints/,snapshots/,"
                    "final.pt}. Rerunning the same command resumes an interrupted run.",
        formatter_class=_Help)
    p.add_argument("model", help="registered model name (vanilla_cnn, alexnet, fcn, lcn, ...) or 'pkg.module:factory'")
    p.add_argument("--model-kwargs", type=_kwargs, default={}, help="JSON object of model options, e.g. '{\"width\": 32}'; classes, channels and input size come from the data")
    p.add_argument("--out", required=True, help="run folder (created; an existing one is resumed)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=_default("data"),
                   help="mnist5k | cifar10 | cifar100 | imagefolder:PATH | synthetic")
    g.add_argument("--data-root", default=None, help="folder holding or receiving the data set")
    g.add_argument("--train-size", type=int, default=None, help="training subset size (default: all)")
    g.add_argument("--test-size", type=int, default=None, help="test subset size (default: all)")
    g.add_argument("--data-seed", type=int, default=_default("data_seed"), help="seed of the subsets")
    g.add_argument("--augment", default="", help="comma-separated on-device augmentations, e.g. crop,flip")
    g = p.add_argument_group("relaxation")
    g.add_argument("--relax", choices=["lc", "fc"], default=None, help="train the eLCN (lc) or eFCN (fc) embedding")
    g.add_argument("--relax-layers", default=None, help="comma-separated conv names/globs to relax (default: all)")
    g.add_argument("--from", dest="init_from", default=None, help="snapshot whose weights start this run")
    g.add_argument("--optimizer-state", choices=["reset", "carry"], default=_default("optimizer_state"),
                   help="with --from: start the optimiser afresh, or carry its buffers through the embedding")
    g = p.add_argument_group("optimisation")
    g.add_argument("--opt", dest="optimizer", choices=["sgd", "adam", "adamw"], default=_default("optimizer"),
                   help="optimiser")
    g.add_argument("--lr", type=float, default=_default("lr"), help="learning rate")
    g.add_argument("--momentum", type=float, default=_default("momentum"), help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=_default("weight_decay"), help="weight decay")
    g.add_argument("--schedule", choices=["constant", "step", "cosine"], default=_default("schedule"),
                   help="learning-rate schedule")
    g.add_argument("--step-size", type=float, default=_default("step_size"), help="epochs between 'step' decays")
    g.add_argument("--gamma", type=float, default=_default("gamma"), help="'step' decay factor")
    g.add_argument("--warmup-epochs", type=float, default=_default("warmup_epochs"), help="linear warm-up length")
    g.add_argument("--batch-size", type=int, default=_default("batch_size"), help="batch size")
    g = p.add_argument_group("length and records")
    g.add_argument("--epochs", type=float, default=_default("epochs"), help="number of epochs (fractional allowed)")
    g.add_argument("--until-zero-loss", action="store_true",
                   help="stop at 100%% train accuracy (or train loss < --loss-threshold); needs --max-epochs")
    g.add_argument("--max-epochs", type=float, default=None, help="cap of an --until-zero-loss run")
    g.add_argument("--loss-threshold", type=float, default=None, help="also stop when the train loss is below this")
    g.add_argument("--eval-times", type=_times, default=_default("eval_times"),
                   help="evaluations on the full train and test sets: log:N, every, or epochs like 0,1,5")
    g.add_argument("--snapshots", type=_times, default="",
                   help="snapshot epochs: log:N or comma-separated epochs like 0,0.5,2 (default: none)")
    g.add_argument("--seed", type=int, default=_default("seed"), help="seed of initialisation and batch order")
    g = p.add_argument_group("execution")
    g.add_argument("--device", default=_default("device"), help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    g.add_argument("--amp", choices=["bf16"], default=None, help="bf16 autocast (GPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: only when stderr is a terminal)")
    g.add_argument("--tensorboard", action="store_true", help="also log metrics to OUT/tensorboard")
    g.add_argument("--checkpoint-every-steps", type=int, default=None, help="also checkpoint every N steps (checkpoints are always written at epoch ends)")
    g.add_argument("--checkpoint-every-s", type=float, default=_default("checkpoint_every_s"),
                   help="checkpoint at least this often (seconds)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    split = lambda s: [t for t in s.split(",") if t] if s else None  # noqa: E731
    return TrainConfig(
        model=args.model, model_kwargs=args.model_kwargs, relax=args.relax, relax_layers=split(args.relax_layers),
        init_from=args.init_from, optimizer_state=args.optimizer_state, data=args.data, data_root=args.data_root,
        train_size=args.train_size, test_size=args.test_size, data_seed=args.data_seed,
        augment=split(args.augment) or [], optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, step_size=args.step_size, gamma=args.gamma,
        warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
        epochs=None if args.until_zero_loss else args.epochs, until_zero_loss=args.until_zero_loss,
        max_epochs=args.max_epochs, loss_threshold=args.loss_threshold, eval_times=args.eval_times,
        snapshots=args.snapshots or [], seed=args.seed, device=args.device, amp=args.amp, compile=args.compile,
        progress=args.progress, tensorboard=args.tensorboard, checkpoint_every_steps=args.checkpoint_every_steps,
        checkpoint_every_s=args.checkpoint_every_s)


def run(args: argparse.Namespace) -> int:
    from .trainer import train

    if args.init_from is not None and not Path(args.init_from).is_file():
        raise FileNotFoundError(f"--from {args.init_from!r}: no such snapshot file")
    result = train(config_from_args(args), args.out)
    m = result["metrics"] or {}
    print(f"{result['status']} at epoch {result['epoch']:g}: train acc {m.get('train_acc', float('nan')):.4f}, "
          f"test acc {m.get('test_acc', float('nan')):.4f} -> {args.out}")
    return 0 if result["status"] == "done" else 1
