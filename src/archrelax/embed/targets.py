"""Relaxation targets: the lattice between a CNN and its eFCN, and the string form checkpoints store.

A CNN is an FCN under two constraints, locality and weight sharing. Each target releases some of them:

=============  ==================  ==========================================================================
target         layer               released
=============  ==================  ==========================================================================
``"tiled:T"``  TiledConv1d/2d      sharing, partially: output positions equal modulo T share a filter
``"lc"``       LocallyConnected*   sharing (the eLCN; ``tiled:T`` with T = the output size)
``"wide:K"``   WideConv1d/2d       locality, partially: a K-tap kernel, zero outside the original taps
``"wide:full"``WideConv1d/2d       locality: the global convolution (every output sees the whole input)
``"fc"``       DenseConv           both (the eFCN)
``"attn"``     AttentionConv1d/2d  the fixed offsets: positional self-attention, one head per tap, with content
=============  ==================  ==========================================================================

String forms: ``"lc"``, ``"fc"``, ``"wide:5"``, ``"wide:5x3"`` (per spatial dim), ``"wide:full"``,
``"tiled:2"``, ``"tiled:2x3"``, ``"attn"``, ``"attn:alpha=40,dk=4"`` (options, any order, comma-separated:
``alpha`` the positional sharpness at the embedding, ``dk`` the content key width, 0 for positional attention
only, ``anneal_to`` and ``anneal_steps``, given together, the sharpness annealed after the switch; see
:mod:`.attention`). ``relax(model, to="wide", kernel_size=5)`` and ``relax(model, to="wide:5")``
are the same target; :attr:`RelaxTarget.spec` gives the canonical string (what ``arch["relax_chain"]`` holds).
An int applies to every spatial dim; a tuple gives one value per dim (so it must match the conv's dim).

The moves along the lattice (each exact, see :mod:`archrelax.embed.relax`): a conv goes to any target;
a tiled layer to ``"lc"`` or ``"fc"``; an eLCN or a wide layer to ``"fc"``; an attention layer nowhere (its
positional focus and content attention are no point of the lattice above it) (``relax.next_targets(layer)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["RelaxTarget", "parse_target", "target_problem", "per_dim", "TARGET_FORMS", "KINDS", "NEXT", "DEFAULT_ALPHA",
           "ATTN_OPTIONS"]

KINDS = ("lc", "fc", "wide", "tiled", "attn")
# the moves up the lattice: a layer relaxed to kind k can be relaxed further to NEXT[k] (a conv to any kind)
NEXT: dict[str, tuple[str, ...]] = {"tiled": ("lc", "fc"), "lc": ("fc",), "wide": ("fc",), "fc": (), "attn": ()}
TARGET_FORMS = ("'lc', 'fc', 'wide:K' (e.g. 'wide:5', 'wide:5x3'), 'wide:full', 'tiled:T' (e.g. 'tiled:2', 'tiled:2x3'), "
                "'attn' (options e.g. 'attn:alpha=40', 'attn:dk=0', 'attn:alpha=40,dk=4')")
# the attention's positional sharpness α at the embedding: the null key's logit is -α/2 and every other key's
# is <= -α, so the softmax leaks e^(-α/2) = 4e-18 (below float64's half-ulp of 1) off the conv's tap
DEFAULT_ALPHA = 80.0
ATTN_OPTIONS = {"alpha": "the positional sharpness α > 0 at the embedding (default 80)",
                "dk": "the content query/key width, an int >= 0; 0: positional attention only (default min(C_in, 8))",
                "anneal_to": "the sharpness α > 0 is annealed to after the switch, linearly over anneal_steps steps, "
                             "so that its softmax unsaturates and α, the offsets and the content maps learn "
                             "(default: none, α stays at its embedding value)",
                "anneal_steps": "the steps of that anneal, an int >= 1 (given with anneal_to)"}

Size = int | tuple[int, ...]


@dataclass(frozen=True)
class RelaxTarget:
    """One point of the lattice: ``kind`` in :data:`KINDS`; ``kernel_size`` (wide: int, per-dim tuple or
    ``"full"``) and ``tile`` (tiled: int or per-dim tuple) are None for the other kinds; ``alpha`` and
    ``key_dim`` (attn) are None for their defaults (:data:`DEFAULT_ALPHA`, min(C_in, 8) per layer);
    ``anneal_to`` and ``anneal_steps`` (attn) both None (no anneal) or both set."""

    kind: str
    kernel_size: Size | str | None = None
    tile: Size | None = None
    alpha: float | None = None
    key_dim: int | None = None
    anneal_to: float | None = None
    anneal_steps: int | None = None

    @property
    def spec(self) -> str:
        """Canonical string form: ``"lc"``, ``"fc"``, ``"wide:5"``, ``"wide:5x3"``, ``"wide:full"``, ``"tiled:2x3"``,
        ``"attn"``, ``"attn:alpha=40,dk=4"``, ``"attn:alpha=32,anneal_to=4,anneal_steps=20"`` (options in this
        order, defaults left out)."""
        if self.kind == "wide":
            return f"wide:{_fmt(self.kernel_size)}"
        if self.kind == "tiled":
            return f"tiled:{_fmt(self.tile)}"
        if self.kind == "attn":
            opts = ([f"alpha={self.alpha:g}"] if self.alpha is not None else []) + (
                [f"dk={self.key_dim}"] if self.key_dim is not None else []) + (
                [f"anneal_to={self.anneal_to:g}", f"anneal_steps={self.anneal_steps}"] if self.anneal_to is not None
                else [])
            return "attn" + (":" + ",".join(opts) if opts else "")
        return self.kind

    def __str__(self) -> str:
        return self.spec


def _fmt(v: Any) -> str:
    return v if isinstance(v, str) else (str(v) if isinstance(v, int) else "x".join(map(str, v)))


def _sizes(value: Any, name: str, context: str, allow_full: bool) -> Size | str:
    """An int >= 1, a tuple of them (a 1-tuple becomes an int) or, if allowed, "full"."""
    if allow_full and value == "full":
        return "full"
    if isinstance(value, str):
        parts = value.lower().split("x")
        try:
            value = tuple(int(p) for p in parts)
        except ValueError:
            value = None
    elif isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    elif isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        value = tuple(value)
    else:
        value = None
    if not value or any(v < 1 for v in value):
        full = ", 'full'" if allow_full else ""
        raise ValueError(f"{context}: {name} must be a positive int or a per-dim tuple of them{full} "
                         f"(strings: '5', '5x3'{full}); valid targets: {TARGET_FORMS}")
    return value[0] if len(value) == 1 else value


def parse_target(to: "str | RelaxTarget", *, kernel_size: Any = None, tile: Any = None) -> RelaxTarget:
    """The :class:`RelaxTarget` named by ``to`` (a string form, a kind with ``kernel_size``/``tile``
    keywords, or a RelaxTarget). Raises ValueError naming the valid targets."""
    if isinstance(to, RelaxTarget):
        if kernel_size is not None or tile is not None:
            raise ValueError(f"relax: to={to.spec!r} already fixes its sizes; do not pass kernel_size=/tile= too")
        return to
    if not isinstance(to, str):
        raise ValueError(f"relax: to={to!r} is not a valid target; valid targets: {TARGET_FORMS}")
    kind, sep, arg = to.partition(":")
    context = f"relax(to={to!r})"
    if kind not in KINDS or (sep and kind in ("lc", "fc")):
        raise ValueError(f"relax: to={to!r} is not a valid target; valid targets: {TARGET_FORMS}")
    if kind == "attn":
        if kernel_size is not None or tile is not None:
            raise ValueError(f"{context}: kernel_size= and tile= do not apply to 'attn' (its options go in the string: "
                             f"{', '.join(f'{k}: {v}' for k, v in ATTN_OPTIONS.items())})")
        return _parse_attn(arg if sep else "", context)
    if kind != "wide" and kernel_size is not None:
        raise ValueError(f"{context}: kernel_size= applies to to='wide' only")
    if kind != "tiled" and tile is not None:
        raise ValueError(f"{context}: tile= applies to to='tiled' only")
    if kind in ("lc", "fc"):
        return RelaxTarget(kind)
    given = kernel_size if kind == "wide" else tile
    name = "kernel_size" if kind == "wide" else "tile"
    if sep and given is not None:
        raise ValueError(f"{context}: the {name} is given twice (in the string and as {name}={given!r}); give it once")
    if not sep and given is None:
        example = "'wide:5', 'wide:full' or to='wide', kernel_size=5" if kind == "wide" else "'tiled:2' or to='tiled', tile=2"
        raise ValueError(f"{context} needs a {name}: e.g. to={example}")
    value = _sizes(arg if sep else given, name, context, allow_full=kind == "wide")
    return RelaxTarget(kind, kernel_size=value) if kind == "wide" else RelaxTarget(kind, tile=value)


def _positive(given: dict[str, str], key: str, context: str) -> float:
    """The option ``key`` of an 'attn' target as a positive finite float, or a ValueError naming it."""
    try:
        value = float(given[key])
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(f"{context}: {key}={given[key]!r} must be a positive finite number ({ATTN_OPTIONS[key]})")
    return value


def _parse_attn(arg: str, context: str) -> RelaxTarget:
    """``"alpha=40,dk=4"`` (any order, each at most once) -> RelaxTarget("attn", alpha=40.0, key_dim=4); a value
    equal to the default is left out, so every spelling of one layer has one canonical spec. ``anneal_to`` and
    ``anneal_steps`` come together or not at all."""
    valid = "; ".join(f"{k}: {v}" for k, v in ATTN_OPTIONS.items())
    given: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in arg.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in ATTN_OPTIONS or key in given:
            why = ("is given twice" if key in given else "is not key=value" if not eq else "is not an option")
            raise ValueError(f"{context}: {part!r} {why}; 'attn' takes comma-separated key=value options ({valid}), "
                             "e.g. 'attn:alpha=40,dk=4'")
        given[key] = value.strip()
    alpha = key_dim = None
    if "alpha" in given:
        alpha = _positive(given, "alpha", context)
        alpha = None if alpha == DEFAULT_ALPHA else alpha
    if "dk" in given:
        try:
            key_dim = int(given["dk"])
        except ValueError:
            key_dim = -1
        if key_dim < 0:
            raise ValueError(f"{context}: dk={given['dk']!r} must be an int >= 0 ({ATTN_OPTIONS['dk']})")
    anneal_to = anneal_steps = None
    if ("anneal_to" in given) != ("anneal_steps" in given):
        raise ValueError(f"{context}: anneal_to and anneal_steps go together (e.g. 'attn:alpha=32,anneal_to=4,"
                         f"anneal_steps=20'); got only {'anneal_to' if 'anneal_to' in given else 'anneal_steps'}")
    if "anneal_to" in given:
        anneal_to = _positive(given, "anneal_to", context)
        try:
            anneal_steps = int(given["anneal_steps"])
        except ValueError:
            anneal_steps = 0
        if anneal_steps < 1:
            raise ValueError(f"{context}: anneal_steps={given['anneal_steps']!r} must be an int >= 1 "
                             f"({ATTN_OPTIONS['anneal_steps']})")
    return RelaxTarget("attn", alpha=alpha, key_dim=key_dim, anneal_to=anneal_to, anneal_steps=anneal_steps)


def target_problem(to: str) -> str | None:
    """None when ``to`` is a target string, else what is valid (:data:`TARGET_FORMS`): the check of every
    setting that takes one (TrainConfig.relax, the spec's targets, soft target and path steps)."""
    try:
        parse_target(to)
    except ValueError:
        return TARGET_FORMS
    return None


def per_dim(value: Size, dim: int, name: str) -> tuple[int, ...]:
    """``value`` (int or tuple) as one int per spatial dim of a ``dim``-d conv."""
    if isinstance(value, int):
        return (value,) * dim
    if len(value) != dim:
        raise ValueError(f"{name}={_fmt(value)!r} has {len(value)} entries; a {dim}d conv needs {dim} "
                         f"(or one int for every dim)")
    return tuple(value)
