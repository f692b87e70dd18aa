"""Model registry (timm-style): ``@register_model(name)`` on a factory, ``create_model(name, **kw)``.

Factories take ``(*, num_classes=10, in_channels=3, input_size=32, **kw)`` and return an ``nn.Module`` whose
``input_shape`` attribute is the ``(C, H, W)`` it was built for. ``create_model("pkg.module:factory")``
imports a user factory without registering it. ``build_architecture(arch)`` rebuilds a model from the
plain-data record stored in every checkpoint.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from torch import nn

from ._shapes import pair

__all__ = ["register_model", "create_model", "list_models", "build_architecture", "get_factory"]

Factory = Callable[..., nn.Module]
_REGISTRY: dict[str, Factory] = {}


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
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise ValueError(f"model {name!r}: cannot import module {mod_name!r} ({e})") from e
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise ValueError(f"model {name!r}: module {mod_name!r} has no callable {attr!r}")
        return factory
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))} "
            "(or give a 'package.module:factory' path)"
        )
    return _REGISTRY[name]


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


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name`` (registered name or ``"pkg.module:factory"``) with factory keyword arguments."""
    factory = get_factory(name)
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model factory {name!r} returned {type(model).__name__}, not an nn.Module")
    if not hasattr(model, "input_shape"):
        shape = _infer_input_shape(factory, kwargs)
        if shape is None:
            raise ValueError(
                f"model {name!r} has no input_shape attribute and its factory takes no in_channels/input_size; "
                "set model.input_shape = (C, H, W) in the factory"
            )
        model.input_shape = shape
    return model


_ARCH_KEYS = {"model", "model_kwargs", "relax_chain", "relax_layers"}


def build_architecture(arch: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its plain-data record.

    ``arch = {"model": name, "model_kwargs": {...}, "relax_chain": ["lc", "fc"], "relax_layers": list|None}``:
    the model is created, then relaxed by each step of the chain in order (weights are fresh; load the
    checkpoint's state dict afterwards). Steps are target strings (``archrelax.embed.targets``): "lc", "fc",
    "wide:5", "wide:5x3", "wide:full", "tiled:2", "tiled:2x3".
    """
    if not isinstance(arch, dict) or "model" not in arch:
        raise ValueError(f"arch record must be a dict with at least a 'model' key, got {arch!r}")
    unknown = set(arch) - _ARCH_KEYS
    if unknown:
        raise ValueError(f"arch record has unknown keys {sorted(unknown)}; valid keys: {sorted(_ARCH_KEYS)}")
    model = create_model(arch["model"], **dict(arch.get("model_kwargs") or {}))
    chain = list(arch.get("relax_chain") or [])
    if chain:
        import torch

        from archrelax.embed.relax import relax

        from archrelax.embed.targets import parse_target

        example = torch.zeros(1, *model.input_shape)
        for step in chain:
            try:
                target = parse_target(step)
            except ValueError as e:
                raise ValueError(f"arch relax_chain step {step!r} is not a valid target: {e}") from None
            model = relax(model, to=target, example_input=example, layers=arch.get("relax_layers"))
    return model
