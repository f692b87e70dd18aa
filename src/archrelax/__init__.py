"""archrelax: exact embeddings of CNNs into their eLCN/eFCN equivalents, and the relaxation protocol.

The public API is re-exported here lazily (importing ``archrelax`` stays cheap; each name loads its
module on first use).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # embedding and subspace tools
    "relax": "archrelax.embed.relax",
    "transfer": "archrelax.embed.relax",
    "offlocal_ratio": "archrelax.embed.subspace",
    "offsharing_ratio": "archrelax.embed.subspace",
    "cnn_distance": "archrelax.embed.subspace",
    "subspace_distances": "archrelax.embed.subspace",
    "SubspaceDistances": "archrelax.embed.subspace",
    "to_cnn": "archrelax.embed.subspace",
    "ablate": "archrelax.embed.subspace",
    "constraint_penalty": "archrelax.embed.penalty",
    "add_penalty_grad_": "archrelax.embed.penalty",
    "footprint": "archrelax.embed.footprint",
    "Footprint": "archrelax.embed.footprint",
    "RelaxedConv": "archrelax.embed.base",
    "ConvGeometry": "archrelax.embed.connectivity",
    "index_map": "archrelax.embed.connectivity",
    "LocallyConnected1d": "archrelax.embed.locally_connected",
    "LocallyConnected2d": "archrelax.embed.locally_connected",
    "DenseConv": "archrelax.embed.dense",
    "TiledConv1d": "archrelax.embed.tiled",
    "TiledConv2d": "archrelax.embed.tiled",
    "WideConv1d": "archrelax.embed.wide",
    "WideConv2d": "archrelax.embed.wide",
    "AttentionConv1d": "archrelax.embed.attention",
    "AttentionConv2d": "archrelax.embed.attention",
    "attention_measures": "archrelax.embed.attention_measures",
    "parse_target": "archrelax.embed.targets",
    # models
    "create_model": "archrelax.models",
    "register_model": "archrelax.models",
    "list_models": "archrelax.models",
    "build_architecture": "archrelax.models",
    # data
    "load_data": "archrelax.data",
    "BatchFeed": "archrelax.data",
    "DataSplits": "archrelax.data",
    "ImageSet": "archrelax.data",
    # training
    "TrainConfig": "archrelax.train",
    "train": "archrelax.train",
    "load_checkpoint": "archrelax.train",
    "model_from_checkpoint": "archrelax.train.checkpoint",
    "read_metrics": "archrelax.train.trainer",
    "soft_lambda": "archrelax.train.soft",
    "SoftSchedule": "archrelax.train.soft",
    # protocol
    "load_spec": "archrelax.protocol",
    "run_experiment": "archrelax.protocol",
    "make_plan": "archrelax.protocol",
    "Store": "archrelax.protocol",
    # the on-disk format
    "ExperimentFolder": "archrelax.store",
    "RunFolder": "archrelax.store",
    # analysis
    "analyse_experiment": "archrelax.analysis",
    # report
    "write_report": "archrelax.report",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'archrelax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
