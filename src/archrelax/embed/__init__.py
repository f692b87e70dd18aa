"""Exact embeddings of CNNs into eLCNs / eFCNs, model conversion, subspace tools and memory footprint.

- :mod:`.connectivity`: ``ConvGeometry`` and ``index_map`` (the single source of truth for connectivity)
- :mod:`.locally_connected`, :mod:`.dense`, :mod:`.tiled`, :mod:`.wide`, :mod:`.attention`: the relaxed layers (all
  subclass ``RelaxedConv``): eLCN, eFCN, tiled conv (sharing released in tiles), wide conv (locality released),
  positional self-attention (the fixed offsets released: one head per tap, content attention)
- :mod:`.attention_measures`: ``attention_measures(model, inputs)``: how far an attention model moved from its conv
- :mod:`.targets`: the lattice's targets and their string forms (``"lc"``, ``"fc"``, ``"wide:5"``, ``"tiled:2"``,
  ``"attn"``)
- :mod:`.relax`: ``relax(model, to=..., example_input=..., layers=...)`` and ``transfer``
- :mod:`.subspace`: ``subspace_distances`` (``offlocal_ratio``, ``offsharing_ratio``, ``cnn_distance``), ``to_cnn``,
  ``ablate``
- :mod:`.penalty`: ``constraint_penalty(model, toward)`` (soft release), ``add_penalty_grad_`` (its fused form)
- :mod:`.footprint`: ``footprint(model, example_input, to=...) -> Footprint``
"""
from __future__ import annotations

from .attention import AttentionConv1d, AttentionConv2d
from .attention_measures import AttentionMeasures, attention_measures, layer_measures
from .base import RelaxedConv, SubspaceSqNorms
from .connectivity import ConvGeometry, index_map
from .dense import DenseConv
from .footprint import Footprint, LayerFootprint, footprint
from .locally_connected import LocallyConnected1d, LocallyConnected2d
from .penalty import add_penalty_grad_, constraint_penalty
from .relax import next_targets, relax, relaxed_layers, transfer
from .subspace import (SubspaceDistances, ablate, cnn_distance, offlocal_ratio, offsharing_ratio, subspace_distances,
                       to_cnn)
from .targets import RelaxTarget, parse_target
from .tiled import TiledConv1d, TiledConv2d
from .wide import WideConv1d, WideConv2d

__all__ = [
    "ConvGeometry", "index_map", "RelaxedConv", "LocallyConnected1d", "LocallyConnected2d", "DenseConv",
    "TiledConv1d", "TiledConv2d", "WideConv1d", "WideConv2d", "AttentionConv1d", "AttentionConv2d", "RelaxTarget", "parse_target", "next_targets",
    "relax", "transfer", "relaxed_layers", "offlocal_ratio", "offsharing_ratio", "cnn_distance", "subspace_distances",
    "SubspaceDistances", "SubspaceSqNorms", "to_cnn", "ablate",
    "footprint", "Footprint", "LayerFootprint", "constraint_penalty", "add_penalty_grad_",
    "attention_measures", "layer_measures", "AttentionMeasures",
]
