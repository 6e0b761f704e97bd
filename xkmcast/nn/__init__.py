"""Neural networks of xkmcast (pure torch: nothing here knows about xarray).

* U-Nets of the SongUNet family (CorrDiff, StormCast), compatible with PhysicsNeMo 2.2.2
  weights: :class:`SongUNet`, :class:`SongUNetPosEmbd`, :class:`SongUNetPosLtEmbd`, the
  regression wrappers :class:`RegressionUNet` and :class:`StormCastUNet`, presets
  (:func:`songunet_preset`); :func:`set_periodic_x` pads them circularly along x (global grids);
* :class:`DiT`, xkmcast's diffusion transformer; :class:`PhysicsNeMoDiT`, PhysicsNeMo 2.2.2's DiT
  (weights of StormScope / CorrDiff COSMO-REA, dense or neighbourhood attention with NATTEN's rule,
  :func:`neighborhood_attention_2d`); :class:`WeatherViT`, a deterministic ViT forecaster;
* :func:`load_mdlus` / :func:`save_mdlus` for PhysicsNeMo ``.mdlus`` checkpoints;
* :data:`NETWORKS`: the network classes by name (built from a spec entry by
  :func:`xkmcast.models.stages.build_stage`).
"""

from xkmcast.nn.dit import DiT
from xkmcast.nn.layers import set_periodic_x
from xkmcast.nn.mdlus import EDMCheckpoint, load_mdlus, read_mdlus, save_mdlus
from xkmcast.nn.neighborhood_attention import neighborhood_attention_2d
from xkmcast.nn.physicsnemo_dit import PhysicsNeMoDiT
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
    "PhysicsNeMoDiT",
    "RegressionUNet",
    "SongUNet",
    "SongUNetPosEmbd",
    "SongUNetPosLtEmbd",
    "StormCastUNet",
    "WeatherViT",
    "load_mdlus",
    "match_physicsnemo_eval",
    "neighborhood_attention_2d",
    "read_mdlus",
    "regression_unet",
    "save_mdlus",
    "set_periodic_x",
    "songunet_preset",
]
