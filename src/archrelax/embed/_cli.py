"""Command-line entry points of archrelax.embed (see archrelax.cli): ``archrelax footprint MODEL``."""
from __future__ import annotations

import argparse
import json

# presets of --to; any other value is a target ("lc", "fc", "wide:K", "wide:full", "tiled:T", "attn"), shown beside the CNN
_TO = {"all": ("cnn", "lc", "fc"), "lattice": ("cnn", "tiled:2", "lc", "wide:full", "fc")}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to the ``archrelax`` parser."""
    p = subparsers.add_parser(
        "footprint",
        help="parameter and optimiser memory of a model as CNN / eLCN / eFCN / lattice targets",
        description="Print per-layer and total parameter counts and bytes of MODEL as a CNN and relaxed to "
        "eLCN / eFCN (or any lattice target: tiled:T, wide:K, wide:full, attn), with SGD-momentum and Adam state "
        "estimates, and for attn the workspace of one chunk of the attention. Nothing relaxed is allocated.",
    )
    p.add_argument("model", metavar="MODEL", help="registered model name (see list_models()) or 'pkg.module:factory'")
    p.add_argument("--to", nargs="+", default=["all"], metavar="TARGET",
                   help="relaxation targets to show beside the CNN: 'all' (lc fc), 'lattice' (tiled:2 lc wide:full "
                   "fc), or targets such as lc fc tiled:2 tiled:2x3 wide:7 wide:full attn attn:dk=0 (default: all)")
    p.add_argument("--num-classes", type=int, default=None, help="number of classes (default: the factory's)")
    p.add_argument("--in-channels", type=int, default=None, help="input channels (default: the factory's)")
    p.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                   help="input spatial size: N or H W (default: the factory's)")
    p.add_argument("--input-shape", default=None, metavar="CxHxW",
                   help="input shape of a model that does not say it (torchvision's: no in_channels/input_size), "
                        "e.g. 3x224x224 (default: the model's)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="batch size of the attention workspace (default: the most any batch needs)")
    p.add_argument("--json", action="store_true", help="print the footprint as JSON instead of a table")
    p.set_defaults(func=_footprint)


def _footprint(args: argparse.Namespace) -> int:
    from archrelax.models import create_model

    from .footprint import footprint

    kw = {}
    if args.num_classes is not None:
        kw["num_classes"] = args.num_classes
    if args.in_channels is not None:
        kw["in_channels"] = args.in_channels
    if args.input_size is not None:
        if len(args.input_size) not in (1, 2):
            raise ValueError(f"--input-size {args.input_size}: give N or H W")
        kw["input_size"] = args.input_size[0] if len(args.input_size) == 1 else tuple(args.input_size)
    model = create_model(args.model, input_shape=args.input_shape, **kw)
    targets = ["cnn"]
    for t in args.to:
        for u in _TO.get(t, (t,)):
            if u not in targets:
                targets.append(u)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: give a batch size >= 1")
    fp = footprint(model, None, to=tuple(targets), batch_size=args.batch_size)
    if args.json:
        print(json.dumps(fp.to_dict(), indent=2))
    else:
        shape = "x".join(map(str, model.input_shape))
        print(f"{args.model} on {shape} inputs ({', '.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'})")
        print(fp)
    return 0
