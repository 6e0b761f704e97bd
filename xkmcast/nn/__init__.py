"""Neural networks of xkmcast (pure torch: nothing here knows about xarray).

* U-Nets of the SongUNet family (CorrDiff, StormCast), compatible with PhysicsNeMo 2.2.2
  weights: :class:`SongUNet`, :class:`SongUNetPosEmbd`, :class:`SongUNetPosLtEmbd`, the
  regression wrappers :class:`RegressionUNet` and :class:`StormCastUNet`, presets
  (:func:`songunet_preset`);
* :class:`DiT`, the diffusion transformer of Stormscope; :class:`WeatherViT`, a deterministic
  ViT forecaster;
* :func:`load_mdlus` / :func:`save_mdlus` for PhysicsNeMo ``.mdlus`` checkpoints;
* :data:`NETWORKS`: the network classes by name (built from a spec entry by
  :func:`xkmcast.models.stages.build_stage`).
"""

from xkmcast.nn.dit import DiT
from xkmcast.nn.mdlus import EDMCheckpoint, load_mdlus, read_mdlus, save_mdlus
from xkmcast.nn.registry import NETWORKS
from xkmcast.nn.unet import SONGUNET_PRESETS, SongUNet, match_physicsnemo_eval, songunet_preset
from xkmcast.nn.unet_posembd import SongUNetPosEmbd, SongUNetPosLtEmbd
from xkmcast.nn.unet_regression import RegressionUNet, StormCastUNet, regression_unet
from xkmcast.nn.vit import WeatherViT

__all__ = [
    "NETWORKS",
    "SONGUNET_PRESETS",
    "DiT",
    "EDMCheckpoint",
    "RegressionUNet",
    "SongUNet",
    "SongUNetPosEmbd",
    "SongUNetPosLtEmbd",
    "StormCastUNet",
    "WeatherViT",
    "load_mdlus",
    "match_physicsnemo_eval",
    "read_mdlus",
    "regression_unet",
    "save_mdlus",
    "songunet_preset",
]
