"""Training: ``TrainConfig`` (plain data), ``train(config, out_dir)`` (resumable run folder), checkpoints."""
from __future__ import annotations

from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import TrainConfig
from .trainer import evaluate, read_metrics, train

__all__ = ["TrainConfig", "train", "load_checkpoint", "model_from_checkpoint", "read_metrics", "evaluate"]
