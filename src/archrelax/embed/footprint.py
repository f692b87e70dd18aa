"""Memory footprint of a CNN and of its eLCN / eFCN relaxations, computed from ConvGeometry alone.

Nothing relaxed is allocated: the counts follow from each conv's geometry (channels, kernel, input and
output spatial shapes), which one forward pass of ``example_input`` reveals. ``relax()`` uses the same
code path for its memory guard, so the estimate it prints is the one ``archrelax footprint`` shows.
An attention target (``"attn"``) also has a workspace: one chunk of its (batch, heads, queries, keys)
attention (:func:`archrelax.embed.attention.workspace_bytes`), which the guard adds to the parameters.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn

from .connectivity import ConvGeometry

__all__ = ["Footprint", "LayerFootprint", "footprint", "param_count", "workspace_bound", "capture_input_spatial",
           "probe", "Probe", "probe_inputs", "eval_forward", "example_tensor", "example_inputs", "ExampleInput",
           "human_bytes"]

TARGETS = ("cnn", "lc", "fc")  # plus the lattice's string forms "wide:K", "wide:full", "tiled:T", "attn" (targets.py)
# optimiser state in multiples of the parameter bytes: SGD momentum keeps one buffer, Adam two
OPTIMIZER_STATE = {"sgd": 1, "adam": 2}
_LABELS = {"cnn": "CNN", "lc": "eLCN", "fc": "eFCN", "fc_ref": "eFCN(ref)", "attn": "Attn"}


def _check_target(target: str) -> str:
    """``target`` itself if it is a footprint target: one of TARGETS, "fc_ref", or a wide/tiled string form."""
    if target in TARGETS or target == "fc_ref":
        return target
    from .targets import parse_target

    try:
        kind = parse_target(target).kind if isinstance(target, str) else None
    except ValueError:
        kind = None
    if kind not in ("wide", "tiled", "attn"):
        raise ValueError(f"footprint target {target!r} is not one of {TARGETS} or a lattice form 'wide:K' (e.g. "
                         "'wide:5', 'wide:5x3'), 'wide:full', 'tiled:T' (e.g. 'tiled:2', 'tiled:2x3'), 'attn' (e.g. "
                         "'attn:dk=4')")
    return target


def param_count(geom: ConvGeometry, target: str) -> int:
    """Parameters of one conv layer as ``target``: "cnn", "lc" (eLCN), "fc" (eFCN, padding folded in),
    "fc_ref" (the reference code's eFCN, which keeps a column for every zero-padded input element),
    "wide:K" / "wide:full" (a conv weight with the wide kernel, shared bias), "tiled:T" (one conv weight
    and bias per tile, T clamped to the layer's output size) or "attn" (the conv's weight and bias, α, the
    offsets and the content maps)."""
    c_out, p = geom.out_channels, geom.P
    conv = math.prod(geom.conv_weight_shape)
    if target == "cnn":
        return conv + (c_out if geom.bias else 0)
    bias = c_out * p if geom.bias else 0  # relaxed biases are free per output unit
    if target == "lc":
        return p * conv + bias
    if target == "fc":
        return c_out * p * geom.in_channels * geom.Q + bias
    if target == "fc_ref":
        padded = math.prod(n + b + a for n, (b, a) in zip(geom.in_spatial, geom.padding))
        return c_out * p * geom.in_channels * padded + bias
    from .targets import parse_target

    t = parse_target(_check_target(target))
    if t.kind == "attn":
        from .attention import attention_param_count

        return attention_param_count(geom, t.key_dim)
    if t.kind == "wide":
        from .wide import wide_layout

        wide, _ = wide_layout(geom, t.kernel_size, check_padding=False)  # a count, so any padding mode
        return math.prod(wide.conv_weight_shape) + (c_out if geom.bias else 0)
    from .tiled import tile_layout

    n_tiles = math.prod(tile_layout(geom, t.tile))
    return n_tiles * (conv + (c_out if geom.bias else 0))


def workspace_bound(geom: ConvGeometry, target: str, itemsize: int, batch: int | None = None) -> int:
    """Bytes of the activation workspace one layer of ``target`` needs beyond its input and output: one chunk of
    an attention layer's (batch, heads, queries, keys) attention at ``batch`` (None: at any batch), 0 for the
    other targets (their activations are input-sized)."""
    if not isinstance(target, str) or not target.startswith("attn"):
        return 0
    from .attention import key_dim_for
    from .attention_chunks import workspace_bytes
    from .targets import parse_target

    return workspace_bytes(geom, key_dim_for(geom, parse_target(target).key_dim), itemsize, batch)


# ---------------------------------------------------------------------------------------------------------
# one forward pass to learn every conv's input spatial shape


# example_input: a tensor or a shape (one positional argument), a tuple of them (positional arguments), or a
# dict of them (keyword arguments, or the one argument of a forward(batch) that takes a dict)
Example = Union[torch.Tensor, Sequence[int]]
ExampleInput = Union[Example, tuple[Example, ...], Mapping[str, Example], None]
_FORMS = ("a tensor; a shape such as (1, 3, 32, 32) (or the model's (C, H, W)); a tuple of tensors/shapes, one per "
          "positional argument of forward(); a dict of tensors/shapes, the keyword arguments of forward() (or "
          "the dict that a forward(batch) takes); or None for the model's input_shape")


def _is_shape(x: Any) -> bool:
    return isinstance(x, (tuple, list, torch.Size)) and len(x) > 0 and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in x)


def _describe(x: Any) -> str:
    """What was given, briefly: tensors by shape and dtype, containers by their items."""
    if isinstance(x, torch.Tensor):
        return f"Tensor{tuple(x.shape)}"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in x.items()) + "}"
    if isinstance(x, (tuple, list)) and x and not all(isinstance(s, int) for s in x):
        return "(" + ", ".join(_describe(v) for v in x) + ("," if len(x) == 1 else "") + ")"
    text = repr(x)
    return f"{type(x).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _bad(example_input: Any, why: str = "") -> ValueError:
    return ValueError(f"example_input {_describe(example_input)} is not an accepted form{': ' + why if why else ''}; "
                      f"give {_FORMS}")


def _zeros(model: nn.Module, shape: Sequence[int], declared: Any, min_batch: int = 1) -> torch.Tensor:
    """Zeros of ``shape`` on the model's device and dtype; a shape as long as the declared (C, H, W) gets a
    batch of 2 prepended (2, so train-mode BatchNorm1d layers accept it). ``min_batch``: a batch shape's first
    dim raised to at least this (a shape one longer than the declared one, or of an image batch (B, C, H, W) when
    none is declared)."""
    shape = tuple(int(s) for s in shape)
    if _is_shape(declared) and len(shape) == len(declared):
        shape = (2, *shape)
    batched = len(shape) == len(declared) + 1 if _is_shape(declared) else len(shape) >= 4
    if batched and shape[0] < min_batch:
        shape = (min_batch, *shape[1:])
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    return torch.zeros(shape, device=ref.device if ref is not None else None,
                       dtype=ref.dtype if ref is not None else None)


def _one(model: nn.Module, x: Any, declared: Any, whole: Any, min_batch: int = 1) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if _is_shape(x):
        return _zeros(model, x, declared, min_batch)
    raise _bad(whole, f"{_describe(x)} is neither a tensor nor a shape of ints")


def _takes_keywords(model: nn.Module, keys: Sequence[str]) -> bool:
    """Whether forward() accepts every key as a keyword argument (else a dict is its one batch argument)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    named = {n for n, p in params.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                        inspect.Parameter.KEYWORD_ONLY)}
    return set(keys) <= named


def example_inputs(model: nn.Module, example_input: ExampleInput, *, min_batch: int = 1
                   ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments of the one forward pass that reveals the layers' input shapes.

    - a tensor, or a shape (a tuple of ints, e.g. ``(1, 3, 32, 32)``): the one positional argument. A shape
      as long as the model's ``input_shape`` (C, H, W) gets a batch of 2 prepended.
    - a tuple (or list) of tensors/shapes: one per positional argument, ``model(x, mask)``.
    - a dict of tensors/shapes: keyword arguments ``model(image=..., mask=...)`` when forward() takes those
      names, else the one argument of a ``forward(batch)`` that takes a dict. (A tuple holding a dict passes
      the dict positionally in every case.)
    - None: ``model.input_shape``, which may itself be a shape, a tuple of shapes or a dict of shapes.

    Shapes become zeros on the device and dtype of the model's first float parameter; ``min_batch`` raises the
    batch of a shape (its first dim) to at least that many.
    """
    declared = getattr(model, "input_shape", None)
    if example_input is None:
        if declared is None:
            raise ValueError(f"example_input is required: {type(model).__name__} has no `input_shape`; give {_FORMS}")
        example_input = tuple(declared) if _is_shape(declared) else declared
    whole = example_input
    if isinstance(example_input, torch.Tensor) or _is_shape(example_input):
        return (_one(model, example_input, declared, whole, min_batch),), {}
    if isinstance(example_input, Mapping):
        if not example_input or not all(isinstance(k, str) for k in example_input):
            raise _bad(whole, "a dict needs string keys and at least one entry")
        decl = declared if isinstance(declared, Mapping) else {}
        values = {k: _one(model, v, decl.get(k), whole, min_batch) for k, v in example_input.items()}
        return ((), values) if _takes_keywords(model, list(values)) else ((values,), {})
    if isinstance(example_input, (tuple, list)) and all(isinstance(s, int) for s in example_input):
        raise _bad(whole, "a shape needs integers >= 0 and at least one of them")
    if isinstance(example_input, (tuple, list)):
        decl = (declared if isinstance(declared, (tuple, list)) and not _is_shape(declared) else
                (declared,) if isinstance(declared, Mapping) else ())
        args = []
        for i, x in enumerate(example_input):
            d = decl[i] if i < len(decl) else None
            if isinstance(x, Mapping):  # a dict argument, e.g. forward(batch)
                args.append({k: _one(model, v, (d or {}).get(k) if isinstance(d, Mapping) else None, whole,
                                     min_batch)
                             for k, v in x.items()})
            else:
                args.append(_one(model, x, d, whole, min_batch))
        return tuple(args), {}
    raise _bad(whole)


def example_tensor(model: nn.Module, example_input: torch.Tensor | tuple[int, ...] | None) -> torch.Tensor:
    """The one input tensor of a single-input model (see :func:`example_inputs` for every accepted form)."""
    args, kwargs = example_inputs(model, example_input)
    if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
        raise ValueError(f"example_input {_describe(example_input)} is not one tensor or shape")
    return args[0]


def _fed(args: tuple, kwargs: dict) -> str:
    """'shape (2, 3, 32, 32)' for one tensor, else the call: '(Tensor(2, 3, 32, 32), mask=Tensor(2, 1, 32, 32))'."""
    if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
        return f"shape {tuple(args[0].shape)}"
    return "(" + ", ".join([_describe(a) for a in args] + [f"{k}={_describe(v)}" for k, v in kwargs.items()]) + ")"


@contextlib.contextmanager
def _state_preserved(model: nn.Module) -> Iterator[None]:
    """Run a forward pass without side effects: buffers (BatchNorm running stats, counters) are restored
    and the global RNG streams (dropout) are left where they were."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    tensors = [*model.parameters(), *model.buffers()]
    devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        try:
            yield
        finally:
            for buf, value in saved:
                buf.copy_(value)


def randomised(obj: Any, gen: torch.Generator) -> Any:
    """``obj`` with each floating tensor replaced by standard-normal values (same shape, dtype, device); other
    tensors (token ids, masks) and values kept. An example input is often zeros, on which a conv shows only its bias."""
    if isinstance(obj, torch.Tensor):
        if not obj.is_floating_point():
            return obj
        return torch.randn(obj.shape, generator=gen, dtype=torch.float32).to(device=obj.device, dtype=obj.dtype)
    if isinstance(obj, dict):
        return {k: randomised(v, gen) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(randomised(v, gen) for v in obj)
    return obj


def probe_inputs(model: nn.Module, example_input: ExampleInput) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of the probe (and of relax's check): :func:`example_inputs` at a batch of at least 2, every
    floating tensor replaced by seeded standard-normal values."""
    args, kwargs = example_inputs(model, example_input, min_batch=2)
    gen = torch.Generator().manual_seed(0)
    return randomised(args, gen), randomised(kwargs, gen)


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Every module in train (or eval) mode inside; each module's own mode restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.train(training)
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def eval_forward(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    """``model(*args, **kwargs)`` in eval mode (dropout off, BatchNorm on its running statistics) under no_grad,
    from a fixed RNG state, without side effects: modes, buffers and the global RNG restored."""
    with _state_preserved(model), _mode(model, False):
        torch.manual_seed(0)  # the same RNG state for every model (random ops that eval mode leaves on)
        return model(*args, **kwargs)


@dataclass
class Probe:
    """One forward pass of the probe input: the arguments it fed, each module's input spatial shape, and the
    model's output in eval mode (what relax's check compares the relaxed model with)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    spatial: dict[str, tuple[int, ...]]
    output: Any


def probe(model: nn.Module, example_input: ExampleInput, modules: Mapping[str, nn.Module]) -> Probe:
    """Input spatial shape of each module in ``modules`` (name -> module), and the model's output, from one forward
    pass in eval mode (:func:`eval_forward`) of :func:`probe_inputs` (a batch of at least 2).

    Eval mode, so that a BatchNorm at batch 1 or a dropout does not get in the way, and the same pass is the
    reference of relax's check. Modules that only run in train mode (auxiliary heads, e.g. GoogLeNet's) get their
    shapes from a second pass in train mode, also without side effects. Modules neither pass reached are absent
    from ``spatial``. A module called twice with different spatial shapes raises ValueError.
    """
    args, kwargs = probe_inputs(model, example_input)
    seen: dict[int, tuple[int, ...]] = {}
    clashes: dict[int, set[tuple[int, ...]]] = {}
    names = {id(m): n for n, m in modules.items()}

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        inp = args[0] if args else next(iter(kwargs.values()))
        dim = len(mod.kernel_size)  # 1 or 2 spatial dims
        spatial = tuple(int(s) for s in inp.shape[-dim:])
        prev = seen.setdefault(id(mod), spatial)
        if prev != spatial:
            clashes.setdefault(id(mod), {prev}).add(spatial)

    def run(training: bool) -> Any:
        try:
            if not training:
                return eval_forward(model, args, kwargs)
            with _state_preserved(model), _mode(model, True):
                return model(*args, **kwargs)
        except (RuntimeError, TypeError, KeyError, IndexError) as e:  # a shape or signature mismatch: say what was fed
            raise ValueError(f"the forward pass of example_input ({_fed(args, kwargs)}) through "
                             f"{type(model).__name__}{' in train mode' if training else ''} failed: "
                             f"{type(e).__name__}: {e}; pass an input the model accepts: {_FORMS}") from e

    unique = {id(m): m for m in modules.values()}
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in unique.values()]
    try:
        output = run(False)
        if any(i not in seen for i in unique):
            run(True)
    finally:
        for h in handles:
            h.remove()
    if clashes:
        detail = "; ".join(f"{names[i]!r} saw input spatial shapes {sorted(s)}" for i, s in clashes.items())
        raise ValueError(
            f"a conv layer is called more than once with different input shapes ({detail}); a relaxed layer is "
            "tied to one input shape: give each call its own module, or exclude it with layers="
        )
    return Probe(args, kwargs, {n: seen[id(m)] for n, m in modules.items() if id(m) in seen}, output)


def capture_input_spatial(
    model: nn.Module, example_input: ExampleInput, modules: Mapping[str, nn.Module]
) -> dict[str, tuple[int, ...]]:
    """Input spatial shape of each module in ``modules`` (name -> module), from the probe (:func:`probe`: eval
    mode, a batch of at least 2; modes, buffers and RNG restored). Modules the pass never reached are absent."""
    return probe(model, example_input, modules).spatial


# ---------------------------------------------------------------------------------------------------------
# the report


def _human(n: float, units: tuple[str, ...]) -> str:
    """3 significant digits with a decimal (SI) unit: 12.5 kB, 956 MB, 56.8M."""
    i = 0
    while abs(n) >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:.0f}{units[i]}" if i == 0 or abs(n) >= 1000 else f"{n:.3g}{units[i]}"


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units, three significant digits: '512 B', '1.5 kB', '2.07 GB'."""
    return _human(n, (" B", " kB", " MB", " GB", " TB"))


def _human_count(n: float) -> str:
    return _human(n, ("", "k", "M", "G", "T"))


@dataclass(frozen=True)
class LayerFootprint:
    """One conv layer: its geometry, element size and parameter count per target; ``workspace``: the
    activation workspace bytes of the targets that have one (attention: one chunk of its attention)."""

    name: str
    kind: str  # class name of the module in the model (Conv2d, LocallyConnected2d, ...)
    geometry: ConvGeometry
    itemsize: int  # bytes per parameter element (dtype-aware)
    params: dict[str, int]
    workspace: dict[str, int] = field(default_factory=dict)

    def bytes(self, target: str) -> int:
        return self.params[target] * self.itemsize

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "kind": self.kind, "geometry": self.geometry.to_dict(), "itemsize": self.itemsize,
               "params": dict(self.params), "bytes": {t: self.bytes(t) for t in self.params}}
        if self.workspace:
            out["workspace"] = dict(self.workspace)
        return out


@dataclass(frozen=True)
class Footprint:
    """Per-layer and total parameter counts and bytes of a model as CNN / eLCN / eFCN.

    ``other_params`` / ``other_bytes`` are the parameters outside the conv layers (linear, norm, ...),
    the same for every target. Optimiser state: SGD with momentum keeps 1x the parameter bytes, Adam 2x.
    """

    layers: list[LayerFootprint]
    targets: tuple[str, ...]
    other_params: int
    other_bytes: int
    batch_size: int | None = None  # the batch the workspaces are for (None: the most any batch needs)

    def total_params(self, target: str) -> int:
        self._check(target)
        return self.other_params + sum(layer.params[target] for layer in self.layers)

    def total_bytes(self, target: str) -> int:
        self._check(target)
        return self.other_bytes + sum(layer.bytes(target) for layer in self.layers)

    def optimizer_bytes(self, target: str, optimizer: str = "adam") -> int:
        if optimizer not in OPTIMIZER_STATE:
            raise ValueError(f"optimizer {optimizer!r} is not one of {sorted(OPTIMIZER_STATE)}")
        return OPTIMIZER_STATE[optimizer] * self.total_bytes(target)

    def workspace_bytes(self, target: str) -> int:
        """The largest layer workspace of ``target`` (the layers run one after another)."""
        self._check(target)
        return max((layer.workspace.get(target, 0) for layer in self.layers), default=0)

    def _check(self, target: str) -> None:
        if target not in self.targets:
            raise ValueError(f"target {target!r} was not computed; this footprint has {self.targets}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "targets": list(self.targets),
            "layers": [layer.to_dict() for layer in self.layers],
            "other": {"params": self.other_params, "bytes": self.other_bytes},
            "total": {t: {"params": self.total_params(t), "bytes": self.total_bytes(t),
                          **{f"{o}_state_bytes": self.optimizer_bytes(t, o) for o in OPTIMIZER_STATE},
                          **({"workspace_bytes": self.workspace_bytes(t)} if any(t in ly.workspace for ly in self.layers)
                             else {})}
                      for t in self.targets},
            **({"batch_size": self.batch_size} if self.batch_size is not None else {}),
        }

    def __str__(self) -> str:
        def shape(c: int, s: tuple[int, ...]) -> str:
            return "x".join(str(v) for v in (c, *s))

        work = [t for t in self.targets if any(t in ly.workspace for ly in self.layers)]

        def cols(t: str) -> tuple[str, ...]:
            return ("params", "bytes", "workspace") if t in work else ("params", "bytes")

        def blank(t: str, *vals: str) -> list[str]:
            return [*vals, *[""] * (len(cols(t)) - len(vals))]

        head = ["layer", "in -> out"] + [f"{_LABELS.get(t, t)} {col}" for t in self.targets for col in cols(t)]
        rows = [[ly.name, f"{shape(ly.geometry.in_channels, ly.geometry.in_spatial)} -> "
                 f"{shape(ly.geometry.out_channels, ly.geometry.out_spatial)}"]
                + [v for t in self.targets for v in (_human_count(ly.params[t]), human_bytes(ly.bytes(t)))
                   + ((human_bytes(ly.workspace.get(t, 0)),) if t in work else ())]
                for ly in self.layers]
        rows.append(["(other layers)", ""] + [v for t in self.targets
                                              for v in blank(t, _human_count(self.other_params),
                                                             human_bytes(self.other_bytes))])
        rows.append(["total", ""] + [v for t in self.targets
                                     for v in (_human_count(self.total_params(t)), human_bytes(self.total_bytes(t)))
                                     + ((human_bytes(self.workspace_bytes(t)),) if t in work else ())])
        for opt, label in (("sgd", "+ SGD momentum state"), ("adam", "+ Adam state")):
            rows.append([label, ""] + [v for t in self.targets
                                       for v in blank(t, "", human_bytes(self.optimizer_bytes(t, opt)))])
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

        def fmt(r: list[str]) -> str:
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

        rule = "-" * len(fmt(head))
        lines = [fmt(head), rule, *(fmt(r) for r in rows[: len(self.layers)]), rule,
                 *(fmt(r) for r in rows[len(self.layers):])]
        if work:
            at = f"at batch {self.batch_size}" if self.batch_size is not None else "at most, at any batch"
            lines.append(f"workspace: one chunk of an attention layer's (batch, heads, queries, keys) attention ({at}; "
                         "the total is the largest layer's, since layers run one after another)")
        if "fc_ref" in self.targets:
            lines.append(f"eFCN(ref): the reference code's eFCN, with a column for every zero-padded input element "
                         f"({self.total_bytes('fc') / self.total_bytes('fc_ref'):.2f}x of it is needed here)")
        return "\n".join(lines)


def _conv_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv1d/Conv2d modules and relaxed layers (which carry their own geometry), by module path."""
    from .base import RelaxedConv

    return {n: m for n, m in model.named_modules() if isinstance(m, (RelaxedConv, nn.Conv1d, nn.Conv2d))}


def layer_geometries(
    model: nn.Module, example_input: ExampleInput, layers: Mapping[str, nn.Module], *, probed: Probe | None = None
) -> dict[str, ConvGeometry]:
    """ConvGeometry of each layer in ``layers``: relaxed layers report theirs, convs get theirs from the probe's
    forward pass (``probed``: one already made over these convs). Convs never reached by the pass raise ValueError."""
    from .base import RelaxedConv

    convs = {n: m for n, m in layers.items() if not isinstance(m, RelaxedConv)}
    if probed is None and convs:
        probed = probe(model, example_input, convs)
    spatial = probed.spatial if convs else {}
    missing = [n for n in convs if n not in spatial]
    if missing:
        raise ValueError(
            f"conv layer(s) {missing} never ran in the forward pass of example_input, so their input shape is "
            "unknown: check example_input (its shape, and that forward() reaches these layers); relax() can "
            "also skip them with layers="
        )
    return {n: m.geometry if isinstance(m, RelaxedConv) else ConvGeometry.from_conv(m, spatial[n])
            for n, m in layers.items()}


def footprint(
    model: nn.Module,
    example_input: ExampleInput = None,
    to: str | tuple[str, ...] = TARGETS,
    *,
    reference: bool = True,
    batch_size: int | None = None,
) -> Footprint:
    """Parameter counts and bytes of ``model``'s conv layers as CNN / eLCN / eFCN / points of the lattice between
    them, per layer and in total.

    ``to``: a target or a tuple of them among "cnn", "lc", "fc", "wide:K", "wide:full", "tiled:T" (K, T: an
    int or "AxB" per dim), "attn" (with options: "attn:dk=0"). With "fc" and ``reference=True`` the
    reference code's eFCN (with padding columns) is added as "fc_ref" for comparison. Attention targets
    ("attn", "attn:dk=0", ...) add each layer's workspace: one chunk of its attention at ``batch_size`` (None:
    the most any batch needs). The model is not changed (one forward pass with buffers and RNG restored). Conv3d / ConvTranspose layers count as
    "other" parameters.
    """
    targets = (to,) if isinstance(to, str) else tuple(to)
    if not targets:
        raise ValueError(f"footprint to={to!r}: give at least one target")
    for t in targets:
        if t == "fc_ref":
            raise ValueError("footprint: 'fc_ref' is added by reference=True with 'fc'; do not ask for it in to=")
        try:
            _check_target(t)
        except ValueError as e:
            raise ValueError(f"footprint to={to!r}: {e}") from None
    if "fc" in targets and reference:
        targets = targets + ("fc_ref",)
    layers = _conv_layers(model)
    geoms = layer_geometries(model, example_input, layers)
    rows = []
    for name, m in layers.items():
        w = m.weight
        work = {t: workspace_bound(geoms[name], t, w.element_size(), batch_size) for t in targets}
        rows.append(LayerFootprint(name, type(m).__name__, geoms[name], w.element_size(),
                                   {t: param_count(geoms[name], t) for t in targets},
                                   {t: n for t, n in work.items() if n}))
    counted = {id(p) for m in layers.values() for p in m.parameters(recurse=False)}
    other = [p for p in model.parameters() if id(p) not in counted]
    return Footprint(rows, targets, sum(p.numel() for p in other), sum(p.numel() * p.element_size() for p in other),
                     batch_size)
