"""Network classes by name, so that bundles and checkpoints can rebuild a network from its class name
and arguments (names are the class names; PhysicsNeMo aliases included). The one builder is
:func:`xkmcast.models.stages.build_stage`."""

from __future__ import annotations

import torch

from xkmcast.nn.dit import DiT
from xkmcast.nn.unet import SongUNet
from xkmcast.nn.unet_posembd import SongUNetPosEmbd, SongUNetPosLtEmbd
from xkmcast.nn.unet_regression import RegressionUNet, StormCastUNet
from xkmcast.nn.vit import WeatherViT

__all__ = ["NETWORKS"]

NETWORKS: dict[str, type[torch.nn.Module]] = {
    "SongUNet": SongUNet,
    "SongUNetPosEmbd": SongUNetPosEmbd,
    "SongUNetPosLtEmbd": SongUNetPosLtEmbd,
    "RegressionUNet": RegressionUNet,
    "CorrDiffRegressionUNet": RegressionUNet,
    "StormCastUNet": StormCastUNet,
    "DiT": DiT,
    "WeatherViT": WeatherViT,
}

