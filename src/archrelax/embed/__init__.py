"""Exact embeddings of CNNs into eLCNs / eFCNs, model conversion, subspace tools and memory footprint.

- :mod:`.connectivity`: ``ConvGeometry`` and ``index_map`` (the single source of truth for connectivity)
- :mod:`.locally_connected`, :mod:`.dense`: the relaxed layers (all subclass ``RelaxedConv``)
- :mod:`.relax`: ``relax(model, to=..., example_input=..., layers=...)`` and ``transfer``
- :mod:`.subspace`: ``subspace_distances`` (``offlocal_ratio``, ``offsharing_ratio``, ``cnn_distance``), ``to_cnn``,
  ``ablate``
- :mod:`.footprint`: ``footprint(model, example_input, to=...) -> Footprint``
"""
from __future__ import annotations

from .base import RelaxedConv, SubspaceSqNorms
from .connectivity import ConvGeometry, index_map
from .dense import DenseConv
from .footprint import Footprint, LayerFootprint, footprint
from .locally_connected import LocallyConnected1d, LocallyConnected2d
from .relax import relax, relaxed_layers, transfer
from .subspace import (SubspaceDistances, ablate, cnn_distance, offlocal_ratio, offsharing_ratio, subspace_distances,
                       to_cnn)

__all__ = [
    "ConvGeometry", "index_map", "RelaxedConv", "LocallyConnected1d", "LocallyConnected2d", "DenseConv",
    "relax", "transfer", "relaxed_layers", "offlocal_ratio", "offsharing_ratio", "cnn_distance", "subspace_distances",
    "SubspaceDistances", "SubspaceSqNorms", "to_cnn", "ablate",
    "footprint", "Footprint", "LayerFootprint",
]
