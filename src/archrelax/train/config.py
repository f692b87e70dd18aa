"""TrainConfig: one training run as plain data (JSON beside the run, a plain dict inside every checkpoint)."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "RUNTIME_FIELDS"]

_CHOICES = {
    "relax": (None, "lc", "fc"),
    "optimizer_state": ("reset", "carry"),
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("constant", "step", "cosine"),
    "amp": (None, "bf16"),
}

# Fields that change how a run is watched or how often it saves, never its numbers: a run may be resumed
# with different values of these (e.g. a progress bar on, checkpoints more often).
RUNTIME_FIELDS = ("progress", "tensorboard", "checkpoint_every_steps", "checkpoint_every_s")


@dataclass
class TrainConfig:
    """Everything that defines one training run. Defaults follow the paper's seed (SGD, constant lr)."""

    # model and its relaxation
    model: str = "vanilla_cnn"  # registry name or "pkg.module:factory"
    model_kwargs: dict = field(default_factory=dict)  # e.g. {"width": 32}; classes/channels/size come from data
    relax: str | None = None  # None | "lc" | "fc": train the relaxed (embedded) form of the model
    relax_layers: list | None = None  # names/globs of the convs to relax (None: all)
    init_from: str | None = None  # snapshot path; its weights initialise this run (embedded when relax is set)
    optimizer_state: str = "reset"  # "reset" | "carry" the snapshot's optimiser state (see trainer docs)
    # data
    data: str = "mnist5k"
    data_root: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    data_seed: int = 0
    augment: list = field(default_factory=list)  # passed to BatchFeed, e.g. ["crop", "flip"]
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9  # SGD momentum; Adam's beta1 stays at its default
    weight_decay: float = 0.0
    schedule: str = "constant"
    step_size: float = 30.0  # epochs between decays of the "step" schedule
    gamma: float = 0.1  # decay factor of the "step" schedule
    warmup_epochs: float = 0.0  # linear warm-up from 0 to lr over this many epochs
    batch_size: int = 250
    # length
    epochs: float | None = 100.0
    until_zero_loss: bool = False  # stop at 100 % train accuracy (or train loss < loss_threshold)
    max_epochs: float | None = None  # the cap of an until-zero-loss run
    loss_threshold: float | None = None
    # what is recorded
    eval_times: Any = "log:20"  # "log:N" | "every" | list of epochs
    snapshots: Any = field(default_factory=list)  # list of epochs | "log:N"
    seed: int = 0
    # how it runs
    device: str = "auto"
    amp: str | None = None  # None | "bf16" (autocast)
    compile: bool = False
    progress: bool | None = None  # None: on when stderr is a terminal
    tensorboard: bool = False
    checkpoint_every_steps: int | None = None  # extra mid-epoch checkpoints (besides every epoch end)
    checkpoint_every_s: float | None = 60.0  # ... and at least this often in wall time

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name, valid in _CHOICES.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is not valid; choose from {valid}")
        if self.until_zero_loss:
            if self.max_epochs is None or self.max_epochs <= 0:
                raise ValueError("TrainConfig.until_zero_loss=True needs max_epochs > 0 (the cap), "
                                 f"got max_epochs={self.max_epochs!r}")
            if self.epochs is not None:
                raise ValueError(f"TrainConfig.epochs={self.epochs!r} with until_zero_loss=True: set epochs=None "
                                 "(max_epochs is the cap)")
        elif self.epochs is None or self.epochs < 0:
            raise ValueError(f"TrainConfig.epochs={self.epochs!r}: give epochs >= 0, or until_zero_loss=True "
                             "with max_epochs")
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size={self.batch_size!r} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr={self.lr!r} must be > 0")
        if self.init_from is None and self.optimizer_state == "carry":
            raise ValueError("TrainConfig.optimizer_state='carry' needs init_from (a snapshot to carry from)")
        for name in ("eval_times", "snapshots"):
            _check_times(name, getattr(self, name))

    @property
    def horizon(self) -> float:
        """Planned length in epochs (the cap for an until-zero-loss run)."""
        return float(self.max_epochs if self.until_zero_loss else self.epochs)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # deep plain-data copy

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; valid keys are {valid}")
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        from archrelax.utils import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return cls.from_dict(yaml.safe_load(path.read_text()) or {})
        return cls.from_dict(json.loads(path.read_text()))


def _check_times(name: str, value: Any) -> None:
    if isinstance(value, str):
        if value == "every" and name == "eval_times":
            return
        if value.startswith("log:") and value[4:].isdigit() and int(value[4:]) >= 2:
            return
        valid = "'log:N' (N >= 2)" + (" or 'every'" if name == "eval_times" else "")
        raise ValueError(f"TrainConfig.{name}={value!r} is not valid; use {valid} or a list of epochs")
    if not isinstance(value, (list, tuple)) or any(not isinstance(t, (int, float)) or t < 0 for t in value):
        raise ValueError(f"TrainConfig.{name}={value!r} must be a list of epochs >= 0 or a 'log:N' string")
