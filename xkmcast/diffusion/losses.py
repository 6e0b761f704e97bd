"""Training losses of EDM (Karras et al. 2022, section 5) and CorrDiff (Mardani et al. 2023).

Denoising score matching with the EDM weighting: draw sigma from a noise distribution p(sigma),
n ~ N(0, sigma^2 I), and minimise

    lambda(sigma) || D(y + n; sigma, condition) - y ||^2,   lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2

where sd is sigma_data (a float or one value per channel). The noise distributions:

- ``LogNormalSigma(P_mean, P_std)``: ln(sigma) ~ N(P_mean, P_std^2). EDM / StormCast use
  P_mean = -1.2, P_std = 1.2; CorrDiff's residual model uses P_mean = 0.0, P_std = 1.2.
- ``LogUniformSigma(sigma_min=0.002, sigma_max=80)``: ln(sigma) ~ U(ln sigma_min, ln sigma_max).

CorrDiff splits the target y into a mean mu(condition), predicted by a frozen regression network
trained with a plain MSE (``regression_loss``), and a residual r = y - mu that the diffusion model
learns (``residual_loss``); mu may also be appended to the condition ("hr mean conditioning").

Every loss returns a ``LossOutput(loss, sigma)``: ``loss`` has one value per sample (B,) so that a
trainer can average, weight or bin it by ``sigma`` (B,) (None for the regression loss). Reduction
per sample, with channel weights w_c and a validity mask m (1 = valid):

    loss_b = sum_{c,h,w} w_c m_bchw e_bchw / sum_{c,h,w} m_bchw

which is the plain mean when there is no mask and no weights.

Calling conventions: a denoiser is called ``denoiser(x, sigma=sigma, condition=cond, **net_kwargs)``
(``EDMPrecond`` and ``EDMPrecondSuperResolution`` of :mod:`xkmcast.diffusion.edm` accept that);
a regression network ``regression(zeros_like(y), condition, **net_kwargs)`` (CorrDiff's
convention, :class:`xkmcast.nn.unet_regression.RegressionUNet`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from ..errors import ConfigError, explain

__all__ = [
    "SigmaDistribution",
    "LogNormalSigma",
    "LogUniformSigma",
    "sigma_distribution",
    "edm_weight",
    "reduce_per_sample",
    "LossOutput",
    "regression_loss",
    "denoising_loss",
    "residual_loss",
    "edm_loss",
]


class SigmaDistribution(Protocol):
    """A distribution of training noise levels: ``dist(n, generator=, device=) -> sigma (n,)``."""

    def __call__(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor: ...


def _draw(kind: str, n: int, generator: torch.Generator | None, device) -> Tensor:
    """Standard normal or uniform draws made on the generator's device, then moved to ``device``."""
    gdev = generator.device if generator is not None else (device or "cpu")
    fn = torch.randn if kind == "normal" else torch.rand
    return fn(n, generator=generator, device=gdev, dtype=torch.float32).to(device or gdev)


#: EDM's training noise prior ln sigma ~ N(-1.2, 1.2^2) (Karras et al. 2022, table 1)
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2
#: the default log-uniform training noise range
LOGUNIFORM_SIGMA_MIN, LOGUNIFORM_SIGMA_MAX = 0.002, 80.0


class LogNormalSigma:
    """ln(sigma) ~ N(P_mean, P_std^2)."""

    def __init__(self, P_mean: float = EDM_P_MEAN, P_std: float = EDM_P_STD):
        self.P_mean, self.P_std = float(P_mean), float(P_std)

    def __call__(self, n, *, generator=None, device=None) -> Tensor:
        return (self.P_mean + self.P_std * _draw("normal", n, generator, device)).exp()

    def __repr__(self) -> str:
        return f"LogNormalSigma(P_mean={self.P_mean}, P_std={self.P_std})"


class LogUniformSigma:
    """ln(sigma) ~ U(ln sigma_min, ln sigma_max)."""

    def __init__(self, sigma_min: float = LOGUNIFORM_SIGMA_MIN, sigma_max: float = LOGUNIFORM_SIGMA_MAX):
        if not 0 < sigma_min < sigma_max:
            raise ConfigError(
                explain("log-uniform sigma needs 0 < sigma_min < sigma_max",
                        expected="0 < sigma_min < sigma_max", found=(sigma_min, sigma_max))
            )
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def __call__(self, n, *, generator=None, device=None) -> Tensor:
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return (lo + (hi - lo) * _draw("uniform", n, generator, device)).exp()

    def __repr__(self) -> str:
        return f"LogUniformSigma(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


#: the published noise distributions by name: "edm" (Karras et al.; StormCast), "residual" (CorrDiff's
#: residual model), "loguniform"; the model kinds name theirs (:mod:`xkmcast.models.kinds`)
_NAMED = {
    "edm": lambda: LogNormalSigma(EDM_P_MEAN, EDM_P_STD),
    "residual": lambda: LogNormalSigma(0.0, EDM_P_STD),
    "loguniform": lambda: LogUniformSigma(),
}


def sigma_distribution(spec: str | SigmaDistribution) -> SigmaDistribution:
    """A sigma distribution from a name ('edm', 'residual', 'loguniform') or an object already
    following the interface (returned unchanged)."""
    if callable(spec):
        return spec
    try:
        return _NAMED[str(spec).lower()]()
    except KeyError:
        raise ConfigError(
            explain("unknown sigma distribution", expected=sorted(_NAMED), found=spec,
                    fix="use one of the names or pass LogNormalSigma(...) / LogUniformSigma(...)")
        ) from None


def edm_weight(sigma: Tensor, sigma_data: float | Tensor = 0.5, ndim: int = 4) -> Tensor:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, shaped (B, 1, ...) or (B, C, 1, ...) for a
    per-channel sd of shape (C,)."""
    s = sigma.reshape((-1,) + (1,) * (ndim - 1))
    sd = sigma_data
    if isinstance(sd, Tensor) and sd.ndim > 0:
        sd = sd.to(device=s.device, dtype=s.dtype).reshape((1, -1) + (1,) * (ndim - 2))
    return (s**2 + sd**2) / (s * sd) ** 2


def reduce_per_sample(
    error: Tensor, channel_weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """sum_{c,h,w} w_c m e / sum_{c,h,w} m per sample, for error (B, C, H, W).

    ``channel_weights`` has shape (C,); ``mask`` broadcasts to error's shape ((B or 1, 1 or C, H, W)),
    1 where the target is valid. A sample with no valid pixel gets loss 0.
    """
    if channel_weights is not None:
        w = torch.as_tensor(channel_weights, dtype=error.dtype, device=error.device)
        error = error * w.reshape((1, -1) + (1,) * (error.ndim - 2))
    dims = tuple(range(1, error.ndim))
    if mask is None:
        return error.mean(dim=dims)
    m = mask.to(error.dtype).expand_as(error)
    return (error * m).sum(dim=dims) / m.sum(dim=dims).clamp_min(1.0)


class LossOutput(NamedTuple):
    """Per-sample losses (B,) and the noise levels used (B,), or None for a regression loss."""

    loss: Tensor
    sigma: Tensor | None


def regression_loss(
    regression: Any,
    target: Tensor,
    condition: Tensor,
    *,
    channel_weights: Tensor | None = None,
    mask: Tensor | None = None,
    **net_kwargs: Any,
) -> LossOutput:
    """CorrDiff's regression loss: || F(cat(0, condition); noise label 0) - y ||^2 per sample.

    ``regression(zeros_like(target), condition, **net_kwargs)`` predicts the target (the zero
    channels and the zero noise label are CorrDiff's convention, see ``RegressionUNet`` in nn).
    """
    prediction = regression(torch.zeros_like(target), condition, **net_kwargs)
    return LossOutput(reduce_per_sample((prediction - target) ** 2, channel_weights, mask), None)


def denoising_loss(
    denoiser: Any,
    target: Tensor,
    condition: Tensor | None = None,
    *,
    sigma_dist: str | SigmaDistribution = "edm",
    sigma_data: float | Tensor | None = None,
    channel_weights: Tensor | None = None,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    **net_kwargs: Any,
) -> LossOutput:
    """EDM denoising score matching on ``target`` (B, C, H, W).

    sigma ~ sigma_dist (one per sample), n = sigma * eps with eps ~ N(0, I) (drawn from
    ``generator`` if given), loss_b = reduce(lambda(sigma) (D(y + n; sigma, condition) - y)^2).
    ``sigma_data`` defaults to the denoiser's own ``sigma_data`` (else 0.5).
    """
    dist = sigma_distribution(sigma_dist)
    if sigma_data is None:
        sigma_data = getattr(denoiser, "sigma_data", 0.5)
    B = target.shape[0]
    sigma = dist(B, generator=generator, device=target.device).to(target.dtype)
    gdev = generator.device if generator is not None else target.device
    eps = torch.randn(target.shape, generator=generator, device=gdev, dtype=target.dtype).to(target.device)
    noisy = target + sigma.reshape((-1,) + (1,) * (target.ndim - 1)) * eps
    kwargs = dict(net_kwargs)
    if condition is not None:
        kwargs["condition"] = condition
    D = denoiser(noisy, sigma=sigma, **kwargs)
    weight = edm_weight(sigma, sigma_data, target.ndim)
    return LossOutput(reduce_per_sample(weight * (D - target) ** 2, channel_weights, mask), sigma)


def residual_loss(
    denoiser: Any,
    target: Tensor,
    condition: Tensor,
    *,
    regression: Any = None,
    mean: Tensor | None = None,
    condition_on_mean: bool = False,
    sigma_dist: str | SigmaDistribution = "residual",
    sigma_data: float | Tensor | None = None,
    channel_weights: Tensor | None = None,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    regression_kwargs: dict | None = None,
    **net_kwargs: Any,
) -> LossOutput:
    """CorrDiff's residual diffusion loss.

    mu = regression(zeros_like(y), condition) computed under ``torch.no_grad`` (the regression
    network is frozen: no gradient ever reaches it), or passed precomputed as ``mean``; the
    diffusion target is r = y - mu; with ``condition_on_mean`` the condition becomes
    cat([mu, condition]) (mean first, PhysicsNeMo's order). Then the denoising loss on r with
    ln(sigma) ~ N(0, 1.2^2) by default.
    """
    if (regression is None) == (mean is None):
        raise ConfigError(explain("residual_loss needs exactly one of regression= or mean=",
                                  expected="a frozen regression network or its precomputed mean",
                                  found=f"regression={regression!r}, mean={'given' if mean is not None else None}"))
    if mean is None:
        with torch.no_grad():
            mean = regression(torch.zeros_like(target), condition, **(regression_kwargs or {}))
    mean = mean.detach()
    residual = target - mean
    if condition_on_mean:
        condition = torch.cat([mean.to(condition.dtype), condition], dim=1)
    return denoising_loss(
        denoiser, residual, condition, sigma_dist=sigma_dist, sigma_data=sigma_data,
        channel_weights=channel_weights, mask=mask, generator=generator, **net_kwargs,
    )


def edm_loss(
    denoiser: Any,
    target: Tensor,
    condition: Tensor | None = None,
    *,
    P_mean: float = EDM_P_MEAN,
    P_std: float = EDM_P_STD,
    **kwargs: Any,
) -> LossOutput:
    """The EDM loss with ln(sigma) ~ N(P_mean, P_std^2) (StormCast's diffusion loss: -1.2, 1.2).
    Other keyword arguments as in :func:`denoising_loss`."""
    return denoising_loss(denoiser, target, condition, sigma_dist=LogNormalSigma(P_mean, P_std), **kwargs)
