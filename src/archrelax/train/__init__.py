"""Training: ``TrainConfig`` (plain data), ``train(config, out_dir)`` (resumable run folder), checkpoints.

The loop's parts: ``setup.py`` (a run's model side: fresh, from a snapshot, resumed), ``recorder.py`` (one run
folder's life), ``step.py`` (the update step and the evaluation, for one model or a stack of R), driven by
``trainer.fit`` (one recorder) and ``lockstep.train_lockstep`` (R recorders over one stack).
"""
from __future__ import annotations

from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import TrainConfig
from .step import evaluate
from .trainer import read_metrics, train

__all__ = ["TrainConfig", "train", "load_checkpoint", "model_from_checkpoint", "read_metrics", "evaluate"]
