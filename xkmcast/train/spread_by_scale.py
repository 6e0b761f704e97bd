"""The gain of a residual diffusion's members' spread by spatial scale, calibrated on validation times.

One spread level per channel (:mod:`xkmcast.train.spread`) gets the amplitude right on average over the
scales, not scale by scale: a diffusion trained for minutes draws residuals rougher than the error they
model (too much power at the smallest scales, too little at large ones), and a rollout carries that
noise from step to step. On the validation samples, with ``M`` draws each, the members' spread about
their mean ``d_k`` (the scales already calibrated, :meth:`Pipeline.member_parts`) and the error of the
ensemble mean ``e = t - shared`` (``t`` the true residual, ``shared`` the members' common departure: 0
when they are centred on the regression mean) give, ring by ring of radial wavenumber
(:func:`xkmcast.models.scale_filter.band_power`) and channel by channel,

    sum P_b(e) = k sum_k P_b(g d_k) / (M - 1)                  (k = 1 centred, 1 + 1/M otherwise)

so that the members' spread has the error's power in every ring (summed over the rings, the balance
of the one-level calibration). ``g`` is linear in ``log g`` between the rings' centres
(:func:`xkmcast.models.scale_filter.gain_at`), so it varies within a ring: starting from
``g_b^2 = sum P_b(e) / (k sum_k P_b(d_k) / (M - 1))`` the knots' gains are corrected by the square root of
the remaining ratio, ring by ring, on the power spectra the samples gave (mode by mode: no new draws),
until each ring balances to 1e-3 (or ``REFINEMENTS`` passes). Stored as ``spec.extra["spread_by_scale"]``;
the gains by value and by step (:mod:`xkmcast.train.spread`) are calibrated after it, on the shaped
spread.
"""

from __future__ import annotations

import torch

from ..models.scale_filter import BANDS, MIN_GAIN, band_centres, gain_at, mode_power, ring_sum, wavenumber
from .spread import CALIBRATION_MEMBERS, CALIBRATION_SAMPLES, member_split, spread_balance, validation_draws

__all__ = ["calibrated_scale_gains"]

#: passes of the refinement of the knots' gains (module docstring)
REFINEMENTS = 50


@torch.no_grad()
def calibrated_scale_gains(pipeline, dataset, members: int = CALIBRATION_MEMBERS,
                           max_samples: int = CALIBRATION_SAMPLES, seed: int = 0, bands: int = BANDS,
                           drawn: list | None = None) -> list[dict | None] | None:
    """``spec.extra["spread_by_scale"]`` of the module docstring: per output channel ``{"knots", "gains"}``
    (knots: the rings' centres, cycles per grid length), measured with ``members`` draws on up to
    ``max_samples`` samples of ``dataset`` (seeded as :func:`xkmcast.train.spread.calibrated_sample_scale`),
    with the spec's other scales and without a table it may already hold. None when there is nothing to
    calibrate (no residual draws, no samples, one member); a channel whose draws have no spread: None."""
    if dataset is None or len(dataset) == 0 or members < 2:
        return None
    saved = pipeline.spec.extra.pop("spread_by_scale", None)
    error = spread_power = None
    try:
        for draws, residual, _ in validation_draws(pipeline, dataset, members, max_samples, seed, drawn):
            shared, spread = member_split(pipeline, draws)
            e = mode_power(residual.double() - shared, pipeline.periodic_x).sum(dim=0).cpu()
            d = mode_power(spread.double(), pipeline.periodic_x).sum(dim=(0, 1)).cpu() / (members - 1)
            error, spread_power = (e, d) if error is None else (error + e, spread_power + d)
            shape = tuple(residual.shape[-2:])
    finally:
        if saved is not None:
            pipeline.spec.extra["spread_by_scale"] = saved
    if error is None:
        return None
    k = spread_balance(pipeline, members)
    table = [_ring_gains(error[c], k * spread_power[c], wavenumber(shape, pipeline.periodic_x), bands)
             for c in range(error.shape[0])]
    return table if any(table) else None


def _ring_gains(error: torch.Tensor, spread: torch.Tensor, k: torch.Tensor, bands: int) -> dict | None:
    """``{"knots", "gains"}`` balancing ``ring_sum(error) = ring_sum(g(k)^2 spread)`` (mode power spectra
    at wavenumbers ``k``) ring by ring, refined as in the module docstring; None when a ring has no spread."""
    target, drawn = ring_sum(error, k, bands), ring_sum(spread, k, bands)
    if bool((drawn <= 0).any()):
        return None
    knots = band_centres(bands)
    gains = (target / drawn).sqrt().clamp(min=MIN_GAIN)
    for _ in range(REFINEMENTS):
        ratio = target / ring_sum(gain_at(k, knots, gains.tolist()) ** 2 * spread, k, bands)
        if bool(((ratio - 1).abs() < 1e-3).all()):
            break
        gains = (gains * ratio.sqrt()).clamp(min=MIN_GAIN)
    return {"knots": knots, "gains": [float(g) for g in gains]}
