"""EDM preconditioning (Karras et al. 2022, "Elucidating the design space of diffusion-based
generative models", section 5 and table 1).

The network F is never asked to output the clean image directly. With noise level sigma and data
standard deviation sigma_data (written sd below) the denoiser is

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

    c_skip  = sd^2 / (sigma^2 + sd^2)
    c_out   = sigma sd / sqrt(sigma^2 + sd^2)
    c_in    = 1 / sqrt(sigma^2 + sd^2)
    c_noise = ln(sigma) / 4

so that the input and the training target of F both have unit variance at every noise level.
``sd`` may be one number or one value per channel (a tensor of shape (C,)).

Conditioning images (the low-resolution field of CorrDiff, the previous state of StormCast) are
concatenated to the scaled noisy image *after* the c_in scaling and are not scaled themselves.

The modules here keep the wrapped network under the attribute ``model`` so that their state dicts
have the same layout as PhysicsNeMo's ``EDMPrecond`` / ``EDMPrecondSuperResolution``
(``model.<network parameter names>``) and checkpoints load either way. The CorrDiff regression
network (no preconditioning, noise label 0) is :class:`xkmcast.nn.unet_regression.RegressionUNet`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "edm_coefficients",
    "EDMPrecond",
    "EDMPrecondSuperResolution",
]


def _channel_view(value: float | Tensor, like: Tensor) -> float | Tensor:
    """A float stays a float, a 0-d tensor stays 0-d; a per-channel tensor of shape (C,) becomes
    (1, C, 1, ..., 1); tensors take the dtype and device of ``like``."""
    if isinstance(value, Tensor):
        shape = (1, value.numel()) + (1,) * (like.ndim - 2) if value.ndim > 0 else ()
        return value.to(device=like.device, dtype=like.dtype).reshape(shape)
    return float(value)


def edm_coefficients(
    sigma: Tensor, sigma_data: float | Tensor = 0.5, ndim: int = 4
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The EDM preconditioning coefficients (c_skip, c_out, c_in, c_noise).

    ``sigma`` has shape (B,) (or anything with B elements); it is reshaped to (B, 1, ..., 1) with
    ``ndim`` dims so it broadcasts over an image batch. ``sigma_data`` is a float or a (C,) tensor;
    with a tensor, c_skip / c_out / c_in have shape (B, C, 1, ..., 1). c_noise has shape (B,).
    """
    s = sigma.reshape((-1,) + (1,) * (ndim - 1))
    sd = _channel_view(sigma_data, s.expand((s.shape[0], 1) + (1,) * (ndim - 2)))
    var = s**2 + sd**2
    c_skip = sd**2 / var
    c_out = s * sd / var.sqrt()
    c_in = 1.0 / var.sqrt()
    c_noise = s.log().flatten() / 4
    return c_skip, c_out, c_in, c_noise


class _Preconditioned(nn.Module):
    """Shared state: the wrapped network ``model``, sigma_data, the supported sigma range, fp16."""

    _sigma_data_in_state_dict = False
    scale_cond_input = False  # PhysicsNeMo's legacy EDMPrecondSR(scale_cond_input=True) also scales the condition

    def __init__(
        self,
        net: nn.Module,
        sigma_data: float | Tensor = 0.5,
        sigma_min: float = 0.0,
        sigma_max: float = math.inf,
        use_fp16: bool = False,
    ):
        super().__init__()
        self.model = net
        if isinstance(sigma_data, Tensor) or self._sigma_data_in_state_dict:
            sd = torch.as_tensor(sigma_data, dtype=torch.float32).detach().clone()
            sd = sd.flatten() if sd.numel() > 1 else sd.reshape(())
            # a buffer so that .to(device) moves it; in the state dict only where PhysicsNeMo has it
            self.register_buffer("sigma_data", sd, persistent=self._sigma_data_in_state_dict)
        else:
            self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.use_fp16 = bool(use_fp16)

    def _net_dtype(self, x: Tensor, force_fp32: bool) -> torch.dtype:
        """float16 only when asked for and on CUDA (as PhysicsNeMo); float32 otherwise."""
        if self.use_fp16 and not force_fp32 and x.device.type == "cuda":
            return torch.float16
        return torch.float32

    def _denoise(self, x: Tensor, sigma, condition: Tensor | None, force_fp32: bool, **net_kwargs: Any) -> Tensor:
        """c_skip x + c_out F(cat(c_in x, condition), c_noise) in float32; sigma one per sample or one."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data, x.ndim)
        arg = c_in * x
        if condition is not None:
            cond = condition.to(arg.dtype)
            arg = torch.cat([arg, c_in * cond if self.scale_cond_input else cond], dim=1)
        F_x = self._run(arg, c_noise, self._net_dtype(x, force_fp32), **net_kwargs)
        return c_skip * x + c_out * F_x

    def _run(self, arg: Tensor, c_noise: Tensor, dtype: torch.dtype, **net_kwargs: Any) -> Tensor:
        if dtype == torch.float16 and next(self.model.parameters(), arg).dtype != torch.float16:
            with torch.autocast("cuda", dtype=torch.float16):
                out = self.model(arg.to(dtype), c_noise.to(dtype), **net_kwargs)
        else:
            out = self.model(arg.to(dtype), c_noise.to(dtype), **net_kwargs)
        return out.to(torch.float32)


class EDMPrecond(_Preconditioned):
    """D(x; sigma) = c_skip x + c_out F(c_in x [++ condition], c_noise [, class_labels]).

    Parameters
    ----------
    net : the network F, called as ``net(x, noise_labels, class_labels=..., **net_kwargs)``.
    sigma_data : float, or a (C,) tensor for one value per output channel.
    sigma_min, sigma_max : the noise range the denoiser supports; samplers clip to it.
    use_fp16 : run F in float16 on CUDA (the c_* arithmetic and the output stay float32).

    ``forward(x, sigma, condition=None, class_labels=None, force_fp32=False, **net_kwargs)``:
    x (B, C, H, W) noisy image, sigma (B,) or a scalar, condition (B, Cc, H, W) concatenated
    along channels after the scaling. Returns D(x; sigma) in float32.

    State dict: ``model.*`` and ``sigma_data`` (a buffer), as PhysicsNeMo's ``EDMPrecond``.
    """

    _sigma_data_in_state_dict = True

    def forward(
        self,
        x: Tensor,
        sigma: Tensor | float,
        condition: Tensor | None = None,
        class_labels: Tensor | None = None,
        force_fp32: bool = False,
        **net_kwargs: Any,
    ) -> Tensor:
        return self._denoise(x, sigma, condition, force_fp32, class_labels=class_labels, **net_kwargs)


class EDMPrecondSuperResolution(_Preconditioned):
    """The CorrDiff denoiser: EDM preconditioning with the low-resolution field as condition.

    Same semantics as PhysicsNeMo 2.2.2's ``EDMPrecondSuperResolution``: x and sigma are cast to
    float32, the network input is ``cat([c_in * x, img_lr], dim=1)`` (noisy image first, then the
    condition, unscaled), F is called as ``model(arg, c_noise, class_labels=None, **model_kwargs)``
    (e.g. ``global_index=``, ``lead_time_label=``, ``embedding_selector=``), and the result is
    ``c_skip x + c_out F`` in float32. The wrapped network sits under ``model`` so a PhysicsNeMo
    state dict loads with ``load_state_dict`` unchanged.

    Unlike PhysicsNeMo this class takes an already built network (the constructor arguments of the
    network live with the network), and also accepts the condition as ``condition=`` so that the
    samplers and losses can call every denoiser as ``denoiser(x, sigma=..., condition=...)``.

    ``scale_cond_input=True`` reproduces the legacy ``EDMPrecondSR`` of old CorrDiff checkpoints, whose
    network input is ``c_in * cat([x, img_lr])`` (the condition scaled too).
    """

    def __init__(self, net: nn.Module, sigma_data: float | Tensor = 0.5, sigma_min: float = 0.0,
                 sigma_max: float = math.inf, use_fp16: bool = False, scale_cond_input: bool = False):
        super().__init__(net, sigma_data, sigma_min, sigma_max, use_fp16)
        self.scale_cond_input = bool(scale_cond_input)

    def forward(
        self,
        x: Tensor,
        img_lr: Tensor | None = None,
        sigma: Tensor | float | None = None,
        force_fp32: bool = False,
        *,
        condition: Tensor | None = None,
        **model_kwargs: Any,
    ) -> Tensor:
        if sigma is None:
            raise TypeError("EDMPrecondSuperResolution.forward needs sigma (noise level per sample)")
        if img_lr is not None and condition is not None:
            raise TypeError("pass the low-resolution field as img_lr or as condition, not both")
        img_lr = condition if img_lr is None else img_lr
        return self._denoise(x, sigma, img_lr, force_fp32, class_labels=None, **model_kwargs)

