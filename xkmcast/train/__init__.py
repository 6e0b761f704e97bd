"""Training: configuration (presets + overrides, validated), the trainer, checkpoints, scaling runs.

    from xkmcast.train import load_config, train
    result = train(load_config("corrdiff-tiny-regression", ["training.duration=100"]))
    result.bundle  # <outdir>/<experiment>/<run_id>/model, opens with xkmcast.load_model

Modules: :mod:`.config` (the schema, the only place defaults live), :mod:`.trainer` (the loop and
building a run from its config), :mod:`.distributed` (torchrun, DDP / FSDP2), :mod:`.checkpoint`,
:mod:`.logging` (TensorBoard, images, progress), :mod:`.scaling` (``xkmcast scale``), :mod:`.cli`.
"""

from __future__ import annotations

from .checkpoint import latest_checkpoint, load_checkpoint
from .config import TrainConfig, list_presets, load_config, save_config
from .scaling import run_scaling
from .trainer import Trainer, TrainingDivergedError, TrainResult, train

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "TrainingDivergedError",
    "latest_checkpoint",
    "list_presets",
    "load_checkpoint",
    "load_config",
    "run_scaling",
    "save_config",
    "train",
]
