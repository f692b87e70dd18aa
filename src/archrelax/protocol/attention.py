"""The protocol's attention runs: which convs they relax, and at which α.

A conv made self-attention (:mod:`archrelax.embed.attention`) attends, for each of its P output positions and T
taps, over all its Q input positions: its attention has T·P·(Q + 1) entries per sample where the conv has
P·T·C_in/g·C_out multiply-adds. :func:`~archrelax.embed.attention.attention_cost` is their ratio; on the models
here it is either tiny (VanillaCNN's second and third convs: 0.002-0.05, AlexNet's: 0.0001-0.005; a training
step 2-11x the eLCN's) or large (the first conv, every output pixel over the whole image: 5.3 on CIFAR, 24.5 on
mnist at width 32; 450x, 23 s a step). So the attention runs relax the convs with ``attention_cost <=
attention.max_cost`` (1 by default), and a spec that names another one is refused before anything runs, with
the layer's figures.

The costs need the layers' geometry, so the model is built as the trainer builds it, on the experiment's data
(its input shape and classes: ``load_data``, a cached load); only a spec with attention runs pays for it.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from archrelax.embed.connectivity import ConvGeometry

    from .spec import ExperimentSpec

__all__ = ["ConvCost", "conv_costs", "attention_layers", "attention_target", "is_attention"]


def is_attention(target: str | None) -> bool:
    """Whether a target string names the attention (``"attn"``, ``"attn:alpha=32"``, ...)."""
    return isinstance(target, str) and target.split(":")[0] == "attn"


def attention_target(target: str, alpha: float, anneal_to: float | None = None, anneal_steps: int = 20) -> str:
    """The canonical target of an attention run: ``target`` as the spec writes it, with ``alpha`` (the spec's
    ``attention.alpha``) where it names no α (``"attn"``, ``"attn:dk=0"``; ``"attn:alpha=80"`` keeps its 80, whose
    canonical form is ``"attn"``), and ``anneal_to`` over ``anneal_steps`` (``attention.anneal_to``,
    ``attention.anneal_steps``; None: no anneal) where it names no anneal; other targets unchanged (canonical)."""
    from archrelax.embed.targets import DEFAULT_ALPHA, parse_target

    t = parse_target(target)
    if t.kind != "attn":
        return t.spec
    named = {o.partition("=")[0].strip().lower() for o in target.partition(":")[2].split(",")}
    if "alpha" not in named:
        t = dataclasses.replace(t, alpha=None if float(alpha) == DEFAULT_ALPHA else float(alpha))
    if anneal_to is not None and t.anneal_to is None:
        t = dataclasses.replace(t, anneal_to=float(anneal_to), anneal_steps=int(anneal_steps))
    return t.spec


@dataclass(frozen=True)
class ConvCost:
    """One conv of the experiment's model: its module path, geometry and attention cost."""

    name: str
    geometry: "ConvGeometry"
    cost: float

    def describe(self, batch_size: int) -> str:
        """The figures of an error message: the conv, the attention's size and its cost."""
        g = self.geometry
        shape = "x".join(map(str, g.in_spatial))
        per_sample = g.T * g.P * (g.Q + 1)
        return (f"{self.name!r} ({g.in_channels}->{g.out_channels}, kernel {'x'.join(map(str, g.kernel_size))} on "
                f"{shape}): its attention has {g.T} heads x {g.P} queries x {g.Q + 1} keys = {per_sample:,} entries "
                f"per sample ({per_sample * batch_size / 1e6:,.0f}M per batch of {batch_size}), attention_cost "
                f"{self.cost:.3g}")


def conv_costs(spec: "ExperimentSpec") -> list[ConvCost]:
    """Every Conv1d/Conv2d of the spec's model, in model order, built as the trainer builds it for the spec's data."""
    from archrelax.embed.attention import attention_cost
    from archrelax.embed.footprint import footprint
    from archrelax.models import create_model
    from archrelax.train.config import TrainConfig
    from archrelax.train.setup import load_run_data, model_kwargs_for

    cfg = TrainConfig(model=spec.model, model_kwargs=dict(spec.model_kwargs), input_shape=spec.input_shape,
                      data=spec.data, data_root=spec.data_root, train_size=spec.train_size, test_size=spec.test_size,
                      data_seed=spec.data_seed)
    data = load_run_data(cfg)
    kw = model_kwargs_for(cfg, len(data.classes), data.train.images.shape[1:])
    model = create_model(spec.model, input_shape=cfg.input_shape, **kw)
    del data
    return [ConvCost(ly.name, ly.geometry, attention_cost(ly.geometry))
            for ly in footprint(model, None, to="cnn", reference=False).layers]


def _matching(names: Sequence[str], patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the names any pattern matches, in order; the patterns that match none): relax()'s names-or-globs rule."""
    hit = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return hit, [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]


def attention_layers(spec: "ExperimentSpec", layers: Sequence[str] | None = None, *, where: str = "'attention.layers'",
                     costs: list[ConvCost] | None = None) -> tuple[str, ...]:
    """The convs an attention run of ``spec`` relaxes, by module path in model order: ``layers`` (names/globs, each
    conv they match checked against ``attention.max_cost``), or, for None, ``attention.layers`` likewise, or, when
    that is null too, every conv of ``relax_layers`` (null: every conv) whose attention fits. Raises
    :class:`~archrelax.protocol.spec.SpecError` naming ``where``, the conv and its figures (or, when nothing fits,
    every conv's) and how to allow it. ``costs``: :func:`conv_costs` of the spec, when already computed."""
    from .spec import SpecError

    costs = conv_costs(spec) if costs is None else costs
    by_name = {c.name: c for c in costs}
    limit, batch = spec.attention.max_cost, spec.train.batch_size
    allowed = f"allowed: convs with attention_cost <= 'attention.max_cost' = {limit:g}"
    if layers is None and spec.attention.layers is not None:
        layers = spec.attention.layers
    if layers is not None:
        chosen, unmatched = _matching(list(by_name), list(layers))
        if unmatched:
            raise SpecError([f"{where} = {list(layers)}: {unmatched} match no conv of {spec.model!r}; its convs: "
                             f"{list(by_name)}"])
        heavy = [by_name[n] for n in chosen if by_name[n].cost > limit]
        if heavy:
            raise SpecError([f"{where} asks for attention on {c.describe(batch)} > {limit:g}: a training step would "
                             f"cost hundreds of times the eLCN's; {allowed} ({_fitting(costs, limit)}), or raise "
                             f"'attention.max_cost' to at least {c.cost:.3g} to relax it anyway" for c in heavy])
        return tuple(chosen)
    pool = list(by_name) if spec.relax_layers is None else _matching(list(by_name), spec.relax_layers)[0]
    chosen = [n for n in pool if by_name[n].cost <= limit]
    if not chosen:
        raise SpecError([f"the attention runs have no conv to relax: every conv of {spec.model!r}"
                         + ("" if spec.relax_layers is None else f" in 'relax_layers' = {spec.relax_layers}")
                         + f" costs more than 'attention.max_cost' = {limit:g}: "
                         + "; ".join(by_name[n].describe(batch) for n in pool)
                         + "; raise 'attention.max_cost' or name the layers in 'attention.layers'"])
    return tuple(chosen)


def _fitting(costs: list[ConvCost], limit: float) -> str:
    fit = [c.name for c in costs if c.cost <= limit]
    return f"here {', '.join(fit)}" if fit else "none of this model's convs"
