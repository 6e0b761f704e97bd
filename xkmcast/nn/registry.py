"""Network classes by name, so that bundles and checkpoints can rebuild a network from
``{"name": ..., "kwargs": {...}}`` (names are the class names; PhysicsNeMo aliases included)."""

from __future__ import annotations

from typing import Any

import torch

from xkmcast.errors import ConfigError, explain
from xkmcast.nn.dit import DiT
from xkmcast.nn.physicsnemo_dit import PhysicsNeMoDiT
from xkmcast.nn.unet import SongUNet
from xkmcast.nn.unet_posembd import SongUNetPosEmbd, SongUNetPosLtEmbd
from xkmcast.nn.unet_regression import RegressionUNet, StormCastUNet
from xkmcast.nn.vit import WeatherViT

__all__ = ["NETWORKS", "build_network"]

NETWORKS: dict[str, type[torch.nn.Module]] = {
    "SongUNet": SongUNet,
    "SongUNetPosEmbd": SongUNetPosEmbd,
    "SongUNetPosLtEmbd": SongUNetPosLtEmbd,
    "RegressionUNet": RegressionUNet,
    "CorrDiffRegressionUNet": RegressionUNet,
    "StormCastUNet": StormCastUNet,
    "DiT": DiT,
    "PhysicsNeMoDiT": PhysicsNeMoDiT,
    "WeatherViT": WeatherViT,
}


def build_network(name: str, **kwargs: Any) -> torch.nn.Module:
    """``NETWORKS[name](**kwargs)``; ConfigError listing the known names or the bad arguments."""
    try:
        cls = NETWORKS[name]
    except KeyError:
        raise ConfigError(explain(f"unknown network {name!r}", expected=sorted(NETWORKS), found=name)) from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(explain(f"invalid arguments for {name}", found=str(exc), fix="check the network kwargs in the config")) from exc
