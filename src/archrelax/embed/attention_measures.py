"""How far a relaxed attention model has moved from the conv it came from.

Per attention layer (:class:`~archrelax.embed.attention.AttentionConvNd`), on the inputs it sees in one forward
pass of a probe batch (or, without one, on its positional attention alone, which is the whole attention while
W_q = 0):

- ``mean_distance``: ConViT's nonlocality, Σ A·‖r_q − c_p‖ / Σ A over the real keys (in input pixels, c_p the
  query's receptive-field centre), averaged over samples, heads and queries with the attention mass as weight;
  ``conv_mean_distance`` is the same of the conv itself (its live taps' distances to the centre);
- ``content_share``: the share of attention that is content-based, ½‖A − A_pos‖₁ (the total variation between
  the attention and the attention without its content term), averaged over samples, heads and queries; 0 while
  W_q = 0 (exactly: both softmaxes see the same logits);
- ``offtarget``: the distance to the conv, δ-like: the attention mass away from the conv's tap, 1 − A[q₀] with
  q₀ the input the tap reads (the null key for a tap that reads zero padding), averaged likewise: e^(−α/2)-small
  right after the embedding, 1 where no head looks where its tap did;
- ``output_distance``: ‖y − y_conv‖ / ‖y_conv‖ on the probe batch, y_conv the conv with the layer's own value maps
  and bias (what ``to_cnn`` returns); NaN without a probe batch;
- α (mean, min, max over heads: the sharpness the logits use, α + s under an anneal) and the offsets' lengths
  ‖offset_h‖ (mean, max; input pixels).

:func:`attention_measures` gives the model's figures as one flat dict of floats (what a trainer records beside
δ): every layer counts once in the means, the α and offset statistics run over all heads. Pure: the model is
not changed (one forward pass, buffers and RNG restored).
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .attention import AttentionConvNd
from .footprint import ExampleInput, _state_preserved, example_inputs

__all__ = ["AttentionMeasures", "layer_attention_measures", "layer_measures", "attention_measures", "MEASURE_KEYS"]

# the keys of attention_measures(model), in order
MEASURE_KEYS = ("attn_mean_distance", "attn_content_share", "attn_offtarget", "attn_output_distance",
                "attn_alpha_mean", "attn_alpha_min", "attn_alpha_max", "attn_offset_mean", "attn_offset_max")


@dataclass(frozen=True)
class AttentionMeasures:
    """One attention layer's measures (see the module docstring); NaN where the probe batch was needed."""

    mean_distance: float
    conv_mean_distance: float
    content_share: float
    offtarget: float
    output_distance: float
    alpha_mean: float
    alpha_min: float
    alpha_max: float
    offset_mean: float
    offset_max: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _key_distances(layer: AttentionConvNd, queries: slice) -> Tensor:
    """``(Pc, Q)``: ‖r_q − c_p‖ from the queries' receptive-field centres to every input position."""
    g, c = layer.geometry, layer.centre[queries]  # (Pc, dim)
    sq = None
    for d, n in enumerate(g.in_spatial):
        term = (torch.arange(n, device=c.device, dtype=c.dtype) - c[:, d : d + 1]).square()  # (Pc, n)
        sq = term if sq is None else (sq.unsqueeze(-1) + term.unsqueeze(-2)).flatten(-2)
    return sq.sqrt()


def _conv_mean_distance(layer: AttentionConvNd) -> float:
    """The conv's own mean distance: its live taps' distances to the receptive-field centre, averaged."""
    t, live = layer.tap_coords.double(), layer.index >= 0  # (P, T, dim), (P, T)
    dist = (t - layer.centre.double()[:, None]).norm(dim=-1)
    return float(dist[live].mean()) if live.any() else float("nan")


def _conv_output(layer: AttentionConvNd, x: Tensor) -> Tensor:
    """The layer's nearest conv (its own value maps and bias) applied to ``x``: a copy of the layer put back at
    the embedding, so every geometry works (an asymmetric padding no nn.Conv expresses included)."""
    ref = copy.deepcopy(layer)
    w, b = layer.nearest_cnn()
    ref.load_conv_(w, b)
    return ref(x)


@torch.no_grad()
def layer_attention_measures(layer: AttentionConvNd, x: Tensor | None = None) -> AttentionMeasures:
    """The measures of one attention layer on its input batch ``x`` ``(B, C_in, *in_spatial)`` (None: the positional
    attention alone; content share and output distance are then NaN)."""
    g = layer.geometry
    alpha = layer.effective_alpha().detach().double()
    shift = layer.offset.detach().double().norm(dim=-1)
    target = torch.where(layer.index >= 0, layer.index, g.Q)  # (P, T): the conv's key (the null for padding)
    mass = dist = content = off = 0.0
    count = 0
    f64 = torch.float64
    for rows, queries, a, a_pos in layer.attention_chunks(x):  # a: (rows, Pc, T, Q + 1), few passes over each
        rep = rows.stop - rows.start if a.shape[0] == 1 else 1  # one row standing for all (x-independent)
        real = a[..., : g.Q]
        mass += float(real.sum(dtype=f64)) * rep
        dist += float(torch.einsum("rptq,pq->", real, _key_distances(layer, queries))) * rep
        if x is not None and layer.key_dim:
            content += float((a - a_pos).abs_().sum(dtype=f64)) * 0.5 * rep
        tap = target[queries].expand(a.shape[0], -1, -1).unsqueeze(-1)  # (rows, Pc, T, 1)
        off += float((1 - a.gather(-1, tap).double()).sum()) * rep
        count += (rows.stop - rows.start) * g.T * (queries.stop - queries.start)
    nan = float("nan")
    out_dist = nan
    if x is not None:
        y, ref = layer(x).double(), _conv_output(layer, x).double()
        den = float(ref.norm())
        out_dist = float((y - ref).norm()) / den if den > 0 else nan
    return AttentionMeasures(
        mean_distance=dist / mass if mass > 0 else nan, conv_mean_distance=_conv_mean_distance(layer),
        content_share=content / count if x is not None else nan, offtarget=off / count, output_distance=out_dist,
        alpha_mean=float(alpha.mean()), alpha_min=float(alpha.min()), alpha_max=float(alpha.max()),
        offset_mean=float(shift.mean()), offset_max=float(shift.max()))


def _layer_inputs(model: nn.Module, inputs: ExampleInput, layers: dict[str, AttentionConvNd]) -> dict[str, Tensor]:
    """Each attention layer's input in one forward pass of ``inputs`` (buffers and RNG restored)."""
    args, kwargs = example_inputs(model, inputs)
    seen: dict[str, Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, a[0].detach()))
             for n, m in layers.items()]
    try:
        with _state_preserved(model):
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def layer_measures(model: nn.Module, inputs: ExampleInput = None) -> dict[str, AttentionMeasures]:
    """:class:`AttentionMeasures` of every attention layer of ``model`` by module path. ``inputs``: a probe batch
    in any form ``relax``'s ``example_input`` takes (a tensor, a tuple, a dict); None: the positional attention
    alone (no forward pass)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AttentionConvNd)}
    if not layers:
        return {}
    xs = _layer_inputs(model, inputs, layers) if inputs is not None else {}
    return {n: layer_attention_measures(m, xs.get(n)) for n, m in layers.items()}


def attention_measures(model: nn.Module, inputs: ExampleInput = None) -> dict[str, float]:
    """The model's attention measures as one flat dict of floats, keys :data:`MEASURE_KEYS` (empty for a model
    without attention layers): the per-layer measures averaged over layers (each layer once), α and the offsets'
    lengths over all heads. ``inputs``: a probe batch (None: positional attention only; content share and
    output distance are NaN)."""
    per = layer_measures(model, inputs)
    if not per:
        return {}
    layers = [m for m in model.modules() if isinstance(m, AttentionConvNd)]
    alpha = torch.cat([m.effective_alpha().detach().double().reshape(-1) for m in layers])
    shift = torch.cat([m.offset.detach().double().norm(dim=-1) for m in layers])

    def mean(key: str) -> float:
        vals = [getattr(v, key) for v in per.values()]
        return float("nan") if any(math.isnan(v) for v in vals) else sum(vals) / len(vals)

    return {"attn_mean_distance": mean("mean_distance"), "attn_content_share": mean("content_share"),
            "attn_offtarget": mean("offtarget"), "attn_output_distance": mean("output_distance"),
            "attn_alpha_mean": float(alpha.mean()), "attn_alpha_min": float(alpha.min()),
            "attn_alpha_max": float(alpha.max()), "attn_offset_mean": float(shift.mean()),
            "attn_offset_max": float(shift.max())}
