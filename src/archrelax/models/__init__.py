"""Model registry (timm-style): ``@register_model(name)`` on a factory, ``create_model(name, **kw)``.

Factories take ``(*, num_classes=10, in_channels=3, input_size=32, **kw)`` and return an ``nn.Module`` whose
``input_shape`` attribute is the ``(C, H, W)`` it was built for. ``create_model("pkg.module:factory")``
imports a user factory without registering it: any ``nn.Module`` factory (``torchvision.models:resnet18``), which
may take no ``in_channels``/``input_size`` and say nothing of its input: ``create_model(..., input_shape=(C, H,
W))`` then says it (the trainer's ``input_shape`` setting, ``--input-shape CxHxW``), and the trainer passes such a
factory only ``num_classes`` from the data (:func:`data_kwargs`). ``build_architecture(arch)`` rebuilds a model from the
plain-data record stored in every checkpoint. ``check_model_kwargs`` checks options against a factory's
signature without building anything (``create_model`` runs it first, the spec validation too), so a typo
is one line naming the key and the factory's parameters, not a traceback from inside the factory.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from collections.abc import Mapping
from typing import Any, Callable

from torch import nn

from ._shapes import pair

__all__ = ["register_model", "create_model", "list_models", "build_architecture", "get_factory", "check_model_kwargs",
           "DATA_KEYS", "data_kwargs", "parse_input_shape", "format_input_shape", "relax_steps", "add_relax_step"]

Factory = Callable[..., nn.Module]
_REGISTRY: dict[str, Factory] = {}
# factory options the trainer passes from the data set, on top of the user's model_kwargs
DATA_KEYS = ("num_classes", "in_channels", "input_size")


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator: register ``factory`` under ``name`` (re-registering the same function is allowed)."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"model name {name!r} must be a non-empty string without ':'")

    def deco(factory: Factory) -> Factory:
        old = _REGISTRY.get(name)
        # the same function re-registered (module reload) is fine; a different one would silently shadow
        if old is not None and (old.__module__, old.__qualname__) != (factory.__module__, factory.__qualname__):
            raise ValueError(f"model name {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        _REGISTRY[name] = factory
        return factory

    return deco


def _load_builtins() -> None:
    # importing the modules runs their @register_model decorators
    from . import alexnet, baselines, vanilla  # noqa: F401


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_factory(name: str) -> Factory:
    """The factory for a registered name or a ``"pkg.module:factory"`` path."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        module = _import(name, mod_name)
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            close = difflib.get_close_matches(attr, public, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"model {name!r}: module {mod_name!r} ({getattr(module, '__file__', None) or 'built in'}) "
                             f"has no callable {attr!r}{hint}")
        return factory
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))} "
            "(or give a 'package.module:factory' path)"
        )
    return _REGISTRY[name]


def _import(name: str, mod_name: str) -> Any:
    """Import the module of a ``"pkg.module:factory"`` path; an error names the module, where Python looked and
    the fix (a module that is found but fails to import says what failed inside it)."""
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name is None or not (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise ValueError(f"model {name!r}: importing module {mod_name!r} failed: {e} (a module it imports is not "
                             "installed)") from e
        shown = ", ".join(repr(p or ".") for p in sys.path[:4]) + (", ..." if len(sys.path) > 4 else "")
        raise ValueError(
            f"model {name!r}: cannot import module {mod_name!r}: no {e.name!r} on sys.path (first entries: {shown}); "
            f"run from the folder that holds {mod_name.split('.')[0]}.py (the archrelax command looks in the current "
            "folder first), add that folder to PYTHONPATH, or pip install the package") from e
    except Exception as e:  # an error inside the user's module: say so, not 'cannot import'
        raise ValueError(f"model {name!r}: importing module {mod_name!r} failed: {type(e).__name__}: {e}") from e


def parse_input_shape(value: Any, where: str = "input_shape") -> tuple[int, int, int]:
    """``"3x32x32"``, ``[3, 32, 32]`` or ``(3, 32, 32)`` -> ``(3, 32, 32)``: a model's (C, H, W) input shape."""
    parts: Any = value
    if isinstance(value, str):
        parts = value.lower().split("x")
        try:
            parts = [int(p) for p in parts]
        except ValueError:
            parts = None
    ok = (isinstance(parts, (list, tuple)) and len(parts) == 3
          and all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in parts))
    if not ok:
        raise ValueError(f"{where} {value!r} is not an input shape; give CxHxW with positive integers, e.g. 3x32x32")
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def format_input_shape(shape: tuple[int, ...]) -> str:
    """``(3, 32, 32)`` -> ``"3x32x32"`` (the canonical spelling of the trainer's ``input_shape``)."""
    return "x".join(str(int(s)) for s in shape)


def _infer_input_shape(factory: Factory, kwargs: dict[str, Any]) -> tuple[int, int, int] | None:
    """(C, H, W) from the factory's effective ``in_channels``/``input_size`` arguments, if it has them."""
    try:
        bound = inspect.signature(factory).bind_partial(**kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    args = bound.arguments
    if "in_channels" not in args or "input_size" not in args:
        return None
    h, w = pair(args["input_size"])
    return (int(args["in_channels"]), h, w)


def _signature(factory: Factory) -> tuple[dict[str, inspect.Parameter], bool] | None:
    """The keyword parameters of ``factory`` and whether it takes ``**kwargs`` (None: no signature to read)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = {n: p for n, p in sig.parameters.items() if p.kind in kinds}
    return params, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def check_model_kwargs(name: str, kwargs: Mapping[str, Any], *, data_keys: bool = False,
                       input_shape: bool = False) -> None:
    """Raise ValueError when model ``name``'s factory does not take a key of ``kwargs``, or needs one not given.

    Only the factory's signature is read; nothing is built. A factory with a ``base`` parameter and
    ``**kwargs`` (the ``fcn``/``lcn`` baselines) forwards the keys it does not take to the factory of its
    base model: those are checked against that one. A factory with ``**kwargs`` otherwise takes anything.
    ``data_keys``: also the keys the trainer passes from the data (:func:`data_kwargs`: :data:`DATA_KEYS`, or
    with ``input_shape`` (the input shape given apart) ``num_classes`` and those the factory names).
    """
    extra = [] if not data_keys else ["num_classes"] if input_shape else list(DATA_KEYS)
    keys = [*kwargs, *(k for k in extra if k not in kwargs)]
    chain: list[tuple[str, list[str]]] = []  # (factory, its parameters) the keys pass through
    current, rest = name, keys
    while True:
        try:
            factory = get_factory(current)
        except ValueError as e:
            if current == name:
                raise
            raise ValueError(f"model {name!r}: base {current!r} is not a model ({e})") from None
        sig = _signature(factory)
        if sig is None:
            return
        params, var_kw = sig
        chain.append((current, list(params)))
        missing = [n for n, p in params.items() if p.default is p.empty and n not in rest]
        if missing:
            raise ValueError(f"model {current!r} needs option(s) {', '.join(map(repr, missing))}; give them in "
                             f"model_kwargs ({_takes(chain)})")
        rest = [k for k in rest if k not in params]
        base = kwargs.get("base", params["base"].default) if "base" in params else None
        if var_kw and isinstance(base, str) and base != current and len(chain) < 4:
            current = base  # fcn/lcn: the rest goes to the base model's factory (checked even when empty)
            continue
        if not rest:
            return
        if var_kw:
            return
        break
    every = [p for _, ps in chain for p in ps]
    close = difflib.get_close_matches(rest[0], every, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    data = [k for k in rest if k in extra and k not in kwargs]
    note = ""
    if data:
        passes = "num_classes" if input_shape else ", ".join(DATA_KEYS)
        note = f"; the trainer passes {passes} from the data"
        if not input_shape and "num_classes" not in data:
            note += (" (a model that takes no in_channels/input_size: give its input shape apart, `--input-shape CxHxW` "
                     "or the spec's input_shape, and only num_classes is passed)")
    raise ValueError(f"model {name!r} has no option {', '.join(map(repr, rest))}{hint} ({_takes(chain)}{note})")


def _named_params(name: str, kwargs: Mapping[str, Any]) -> set[str]:
    """The parameters named in the signatures of ``name``'s factory and of the base models it forwards to."""
    names: set[str] = set()
    current = name
    for _ in range(4):
        sig = _signature(get_factory(current))
        if sig is None:
            break
        params, var_kw = sig
        names |= set(params)
        base = kwargs.get("base", params["base"].default) if "base" in params else None
        if not (var_kw and isinstance(base, str) and base != current):
            break
        current = base
    return names


def data_kwargs(name: str, num_classes: int, shape: tuple[int, int, int], *, input_shape: bool = False,
                kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The factory options the trainer passes from the data (``shape``: the images' (C, H, W)).

    Without ``input_shape`` all of :data:`DATA_KEYS` (archrelax's factory convention). With it (the input shape
    is given apart, for a factory that follows another convention, e.g. torchvision's
    ``resnet18(*, weights, progress, **kwargs)``): ``num_classes``, and ``in_channels`` / ``input_size`` only where
    the factory (or the base it forwards to) names them.
    """
    c, h, w = (int(s) for s in shape)
    every = {"num_classes": int(num_classes), "in_channels": c, "input_size": h if h == w else [h, w]}
    if not input_shape:
        return every
    named = _named_params(name, kwargs or {})
    return {k: v for k, v in every.items() if k == "num_classes" or k in named}


def _takes(chain: list[tuple[str, list[str]]]) -> str:
    first, *bases = chain
    text = f"{first[0]} takes: {', '.join(first[1]) or 'nothing'}"
    return text + "".join(f"; its base {b!r} takes: {', '.join(ps) or 'nothing'}" for b, ps in bases)


def create_model(name: str, *, input_shape: Any = None, **kwargs: Any) -> nn.Module:
    """Build model ``name`` (registered name or ``"pkg.module:factory"``) with factory keyword arguments.

    ``input_shape``: the (C, H, W) the model takes (a tuple or ``"CxHxW"``), for a model that does not say it
    (no ``input_shape`` attribute, no ``in_channels``/``input_size`` options: torchvision's, timm's); given to a
    factory marked ``takes_input_shape`` (the ``fcn``/``lcn`` baselines, which hand it to their base), set as
    ``model.input_shape`` otherwise; a model that declares another shape is an error.
    Unknown or missing keyword arguments raise ValueError naming them and the factory's parameters.
    """
    factory = get_factory(name)
    check_model_kwargs(name, kwargs)
    shape = None if input_shape is None else parse_input_shape(input_shape)
    if shape is not None and getattr(factory, "takes_input_shape", False):
        kwargs = {**kwargs, "input_shape": shape}
    try:
        model = factory(**kwargs)
    except TypeError as e:  # a **kwargs factory (torchvision's) handing the trainer's data keys to a class without them
        bad = [k for k in ("in_channels", "input_size") if k in kwargs and f"'{k}'" in str(e)]
        if not bad:
            raise
        raise ValueError(f"model {name!r} does not take {' or '.join(bad)} ({e}); for a model that takes no "
                         "in_channels/input_size give its input shape apart, and only num_classes is passed from the "
                         "data: `--input-shape CxHxW` (archrelax train), `input_shape: CxHxW` (an experiment spec), "
                         "create_model(..., input_shape=(C, H, W))") from e
    if not isinstance(model, nn.Module):
        raise TypeError(f"model factory {name!r} returned {type(model).__name__}, not an nn.Module")
    declared = getattr(model, "input_shape", None)
    if declared is None:
        declared = _infer_input_shape(factory, kwargs) if shape is None else shape
        if declared is None:
            raise ValueError(
                f"model {name!r} does not say its input shape: it has no input_shape attribute and its factory takes no "
                "in_channels/input_size; give it: `--input-shape CxHxW` (archrelax train), `input_shape: CxHxW` (an "
                "experiment spec), create_model(..., input_shape=(C, H, W)), or set model.input_shape in the factory")
        model.input_shape = declared
    elif shape is not None and tuple(declared) != shape:
        raise ValueError(f"model {name!r} declares input_shape {tuple(declared)} but input_shape "
                         f"{format_input_shape(shape)} was given; leave input_shape unset for this model, or build it "
                         "for that shape (its in_channels/input_size options)")
    return model


_ARCH_KEYS = {"model", "model_kwargs", "input_shape", "relax_chain", "relax_layers", "relax_chain_layers"}


def relax_steps(arch: dict[str, Any]) -> list[tuple[str, list[str] | None]]:
    """The relaxation chain of an arch record as ``[(target string, layers)]``, in order.

    ``relax_layers`` is the layer selection of every step; a chain whose steps relaxed different layers
    (a relaxation path: ``features.0`` at t1, ``features.3`` at t2) records one selection per step in
    ``relax_chain_layers`` instead (same length as ``relax_chain``), which then takes precedence.
    """
    chain = list(arch.get("relax_chain") or [])
    per_step = arch.get("relax_chain_layers")
    if per_step is None:
        return [(step, arch.get("relax_layers")) for step in chain]
    if not isinstance(per_step, list) or len(per_step) != len(chain):
        raise ValueError(f"arch relax_chain_layers {per_step!r} must be a list with one layer selection (list or "
                         f"null) per step of relax_chain {chain!r}")
    return list(zip(chain, per_step))


def add_relax_step(arch: dict[str, Any], target: str, layers: list[str] | None) -> dict[str, Any]:
    """``arch`` with one more relaxation step (``target`` on ``layers``; None: every layer it can move).

    While every step has the same selection the record keeps its original form (``relax_layers``, no
    ``relax_chain_layers``), so the arch records of ordinary runs are what they always were.
    """
    steps = relax_steps(arch) + [(target, None if layers is None else list(layers))]
    out = {k: v for k, v in arch.items() if k not in ("relax_chain", "relax_layers", "relax_chain_layers")}
    selections = [sel for _, sel in steps]
    out["relax_chain"] = [t for t, _ in steps]
    if all(sel == selections[0] for sel in selections):
        out["relax_layers"] = selections[0]
    else:
        out["relax_layers"] = None
        out["relax_chain_layers"] = selections
    return out


def build_architecture(arch: dict[str, Any], force: bool = False) -> nn.Module:
    """Rebuild a model from its plain-data record.

    ``arch = {"model": name, "model_kwargs": {...}, "relax_chain": ["lc", "fc"], "relax_layers": list|None}``
    (and ``"input_shape": "CxHxW"`` for a model that does not say its own, :func:`create_model`; and ``"relax_chain_layers"``: one selection per step, when the steps relaxed different layers; see
    :func:`relax_steps`): the model is created, then relaxed by each step of the chain in order (weights are
    fresh; load the checkpoint's state dict afterwards). Steps are target strings (``archrelax.embed.targets``):
    "lc", "fc", "wide:5", "wide:5x3", "wide:full", "tiled:2", "tiled:2x3". ``force`` is passed to ``relax``
    (skip its memory guard).
    """
    if not isinstance(arch, dict) or "model" not in arch:
        raise ValueError(f"arch record must be a dict with at least a 'model' key, got {arch!r}")
    unknown = set(arch) - _ARCH_KEYS
    if unknown:
        raise ValueError(f"arch record has unknown keys {sorted(unknown)}; valid keys: {sorted(_ARCH_KEYS)}")
    steps = relax_steps(arch)
    model = create_model(arch["model"], input_shape=arch.get("input_shape"), **dict(arch.get("model_kwargs") or {}))
    if steps:
        import torch

        from archrelax.embed.relax import relax

        from archrelax.embed.targets import parse_target

        example = torch.zeros(1, *model.input_shape)
        for step, layers in steps:
            try:
                target = parse_target(step)
            except ValueError as e:
                raise ValueError(f"arch relax_chain step {step!r} is not a valid target: {e}") from None
            # the architecture only: the caller loads a checkpoint's weights (checked when they were relaxed)
            model = relax(model, to=target, example_input=example, layers=layers, force=force, check=False)
    return model
