"""``archrelax train``: one training run from the command line (a thin layer over ``train``).

The options are built from the fields of :class:`TrainConfig` (type, default, help, spelling, group), so a
new setting is one new field: how an option parses follows from the field's type (numbers in any ordinary
notation, Literal choices, on/off flags, comma lists, a JSON object, evaluation/snapshot times).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import typing
from pathlib import Path
from typing import Any, Callable, Literal

from archrelax._typed import parse_float, parse_int

from .config import TrainConfig, missing_packages, option_name

GROUPS = ("data", "relaxation", "optimisation", "length and records", "execution")


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


def _arg_type(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    """``fn`` with its ValueError turned into argparse's 'argument --x: invalid value' message."""
    def parse(text: str) -> Any:
        try:
            return fn(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = fn.__name__.lstrip("_")
    return parse


def _times(text: str) -> str | list[float]:
    """'log:N' / 'every' stay strings; '0,0.5,2' becomes a list of epochs (``schedule.parse_times``, as TrainConfig)."""
    from .schedule import parse_times

    value = parse_times(text)
    if value is text and not (text.startswith("log:") or text == "every"):
        raise ValueError(f"{text!r}: use 'log:N', 'every' or comma-separated epochs like 0,0.5,2")
    return value


def _kwargs(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{text!r} is not JSON ({e}); e.g. '{{\"width\": 32}}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"{text!r} must be a JSON object")
    return value


def _names(text: str) -> list[str] | None:
    """'crop,flip' -> ['crop', 'flip']; '' -> None (the field's default)."""
    return [t for t in text.split(",") if t.strip()] or None


_FORMAT = {list: "; comma-separated", dict: "; a JSON object"}


def _base(tp: Any) -> Any:
    """``X | None`` -> X; other types unchanged."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 and type(None) in typing.get_args(tp) else tp


def _option(f: dataclasses.Field, tp: Any) -> dict[str, Any]:
    """argparse keyword arguments for field ``f`` of type ``tp``: how its text parses follows from the type."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = _base(tp)
    origin = typing.get_origin(base)
    if base is bool:
        if f.default is None or f.default is True:
            return {"action": argparse.BooleanOptionalAction}
        return {"action": "store_true"}
    if origin is Literal:
        return {"choices": list(typing.get_args(base))}
    if base is int:
        return {"type": _arg_type(parse_int)}
    if base is float:
        return {"type": _arg_type(parse_float)}
    if origin is dict:
        return {"type": _arg_type(_kwargs)}
    if origin is list:
        return {"type": _arg_type(_names)}
    if str in args and any(typing.get_origin(a) is list for a in args):  # eval_times, snapshots
        return {"type": _arg_type(_times)}
    return {}


def _help(text: str, form: str) -> str:
    """The field's help with how to write the value on the command line, before any '(default: ...)'."""
    text = text.replace("%", "%%")
    at = text.find(" (default:")
    return text + form if at < 0 else text[:at] + form + text[at:]


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def add_options(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (MODEL positional), in field order within the ``GROUPS`` sections."""
    hints = typing.get_type_hints(TrainConfig)
    groups: dict[str | None, Any] = {None: p, **{g: p.add_argument_group(g) for g in GROUPS}}
    for f in dataclasses.fields(TrainConfig):
        help_text = _help(f.metadata["help"], _FORMAT.get(typing.get_origin(_base(hints[f.name])), ""))
        flag = option_name(f)
        if not flag:
            groups[f.metadata["group"]].add_argument(f.name, help=help_text)
            continue
        groups[f.metadata["group"]].add_argument(flag, dest=f.name, default=_default(f), help=help_text,
                                                 **_option(f, hints[f.name]))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to the ``archrelax`` parser."""
    p = subparsers.add_parser(
        "train", help="train a model (or its relaxed form) into a resumable run folder",
        description="Train MODEL and write OUT/{config.json,status.json,metrics.jsonl,checkpoints/,snapshots/,"
                    "final.pt}. Rerunning the same command resumes an interrupted run. Every option is a field "
                    "of archrelax.TrainConfig (docs/config.md).",
        formatter_class=_Help)
    add_options(p)
    p.add_argument("--out", required=True, help="run folder (created; an existing one is resumed)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    for f in dataclasses.fields(TrainConfig):  # an empty comma list means the field's default
        if values[f.name] is None and isinstance(_default(f), list):
            values[f.name] = _default(f)
    if values["until_zero_loss"]:
        values["epochs"] = None  # --max-epochs is the cap
    for f in dataclasses.fields(TrainConfig):  # range checks, naming the option rather than the field
        bad = TrainConfig.problem(f.name, values[f.name])
        if bad:
            raise ValueError(f"{option_name(f) or f.name.upper()} {_shown(values[f.name])} is not valid; {bad}")
    return TrainConfig(**values)


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def run(args: argparse.Namespace) -> int:
    from archrelax.data import check_data
    from archrelax.models import check_model_kwargs

    from .trainer import train

    cfg = config_from_args(args)
    if cfg.init_from is not None:
        if not Path(cfg.init_from).is_file():
            raise FileNotFoundError(f"--from {cfg.init_from!r}: no such snapshot file")
        # a path typed on the command line is relative to where it was typed; in the config, relative means
        # relative to the run folder (TrainConfig.init_path)
        cfg = dataclasses.replace(cfg, init_from=os.path.abspath(cfg.init_from))
    # before the run folder is created: a typo in --model-kwargs, a missing data path or package leaves nothing
    check_model_kwargs(cfg.model, cfg.model_kwargs, data_keys=True, input_shape=cfg.input_shape is not None)
    for name, pkg in missing_packages(cfg.to_dict()):
        raise ValueError(f"{option_name(_FIELDS[name])} needs the {pkg} package, which is not installed here: "
                         f"pip install 'archrelax[{pkg}]'")
    check_data(cfg.data, cfg.data_root)
    result = _train_new_or_resumed(cfg, Path(args.out), train)
    m = result["metrics"] or {}
    print(f"{result['status']} at epoch {result['epoch']:g}: train acc {m.get('train_acc', float('nan')):.4f}, "
          f"test acc {m.get('test_acc', float('nan')):.4f} -> {args.out}")
    return 0 if result["status"] == "done" else 1


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _train_new_or_resumed(cfg: TrainConfig, out: Path, train: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """``train(cfg, out)``; a start that fails before anything is trained into a folder this command created
    (a model that cannot be built, data that cannot be read, out of memory while relaxing) leaves no folder."""
    new = not out.exists()
    try:
        return train(cfg, out)
    except BaseException:
        from archrelax.store import RunFolder

        if new and out.is_dir() and not RunFolder(out).has_training_state():
            shutil.rmtree(out, ignore_errors=True)
        raise
