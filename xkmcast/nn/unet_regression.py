"""Deterministic (regression) U-Nets: a SongUNet evaluated at noise level zero.

CorrDiff's first stage predicts the conditional mean E[y | x] with a SongUNet(PosEmbd) whose
noise embedding is switched off (``embedding_type="zero"``) and whose noise label is 0;
StormCast's first stage does the same for the next HRRR state. These wrappers mirror
PhysicsNeMo's ``CorrDiffRegressionUNet`` (also saved as ``UNet``) and ``StormCastUNet``: same
constructor arguments, the inner network under ``model`` (state-dict prefix ``model.``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from xkmcast.errors import InvalidDataError, explain
from xkmcast.nn.base import Network
from xkmcast.nn.unet import SongUNet
from xkmcast.nn.unet_posembd import SongUNetPosEmbd, SongUNetPosLtEmbd

__all__ = ["UNET_CLASSES", "RegressionUNet", "StormCastUNet", "regression_unet"]

#: U-Net classes a wrapper can hold (PhysicsNeMo's ``model_type`` values we support).
UNET_CLASSES: dict[str, type[SongUNet]] = {
    "SongUNet": SongUNet,
    "SongUNetPosEmbd": SongUNetPosEmbd,
    "SongUNetPosLtEmbd": SongUNetPosLtEmbd,
}


def _unet_class(model_type: str) -> type[SongUNet]:
    try:
        return UNET_CLASSES[model_type]
    except KeyError:
        raise ValueError(f"unsupported model_type {model_type!r}; expected one of {sorted(UNET_CLASSES)}") from None


class RegressionUNet(Network):
    """CorrDiff regression network: y = F([x, img_lr], c_noise = 0).

    Arguments as PhysicsNeMo's ``CorrDiffRegressionUNet``: the inner ``model_type`` network gets
    ``in_channels = img_in_channels + img_out_channels`` (the target-sized input x, usually zeros,
    concatenated with the conditioning ``img_lr``) and ``out_channels = img_out_channels``;
    other keyword arguments go to the inner network (CorrDiff uses ``embedding_type="zero"``).
    ``use_fp16`` is recorded only.

    forward(x, img_lr=None, **model_kwargs) -> (B, img_out_channels, H, W); ``model_kwargs`` go to
    the inner network (e.g. ``global_index``, ``lead_time_label``).
    """

    physicsnemo_name = "CorrDiffRegressionUNet"
    physicsnemo_module = "physicsnemo.models.diffusion_unets.unet"

    def __init__(
        self,
        img_resolution: int | Sequence[int],
        img_in_channels: int,
        img_out_channels: int,
        use_fp16: bool = False,
        model_type: str = "SongUNetPosEmbd",
        **model_kwargs: Any,
    ):
        super().__init__()
        self.img_in_channels = img_in_channels
        self.img_out_channels = img_out_channels
        self.use_fp16 = use_fp16
        self.model = _unet_class(model_type)(
            img_resolution=img_resolution,
            in_channels=img_in_channels + img_out_channels,
            out_channels=img_out_channels,
            **model_kwargs,
        )

    def forward(self, x: torch.Tensor, img_lr: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        if img_lr is not None:
            if img_lr.shape[0] != x.shape[0] or img_lr.shape[2:] != x.shape[2:]:
                raise InvalidDataError(
                    explain("img_lr does not match x", expected=f"(B, C, H, W) with B, H, W of {tuple(x.shape)}", found=tuple(img_lr.shape))
                )
            x = torch.cat([x, img_lr.to(x.dtype)], dim=1)
        noise = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return self.model(x, noise, class_labels=None, **model_kwargs)


class StormCastUNet(Network):
    """StormCast regression network: y = F(x, c_noise = 0), ``in_channels = img_in_channels``.

    Arguments as PhysicsNeMo's ``StormCastUNet`` (``sigma_*`` and ``use_fp16`` are recorded only).

    forward(x, **model_kwargs) -> (B, img_out_channels, H, W).
    """

    physicsnemo_name = "StormCastUNet"
    physicsnemo_module = "physicsnemo.models.diffusion_unets.unet"

    def __init__(
        self,
        img_resolution: int | Sequence[int],
        img_in_channels: int,
        img_out_channels: int,
        use_fp16: bool = False,
        sigma_min: float = 0.0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ):
        super().__init__()
        self.img_in_channels = img_in_channels
        self.img_out_channels = img_out_channels
        self.use_fp16 = use_fp16
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
        self.model = _unet_class(model_type)(
            img_resolution=img_resolution, in_channels=img_in_channels, out_channels=img_out_channels, **model_kwargs
        )

    def forward(self, x: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        noise = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return self.model(x, noise, class_labels=None, **model_kwargs)


def regression_unet(
    img_resolution: int | Sequence[int],
    in_channels: int,
    out_channels: int,
    preset: str | None = "mini",
    positional_grid: bool = True,
    **overrides: Any,
) -> SongUNet:
    """A bare regression U-Net: ``embedding_type="zero"``, call it with noise_labels = zeros.

    ``in_channels`` counts the data channels only; the grid channels (4 sinusoidal, CorrDiff's
    choice) are added when ``positional_grid`` is true (a :class:`SongUNetPosEmbd`).
    """
    from xkmcast.nn.unet import songunet_preset

    args: dict[str, Any] = songunet_preset(preset) if preset else {}
    args.update(embedding_type="zero", dropout=0.0)
    args.update(overrides)
    if positional_grid:
        n_grid = args.setdefault("N_grid_channels", 4)
        return SongUNetPosEmbd(img_resolution, in_channels + n_grid, out_channels, **args)
    return SongUNet(img_resolution, in_channels, out_channels, **args)
