"""The training-mean fine detail a CorrDiff regression with ``input_skip`` starts from.

With ``model.input_skip`` the CorrDiff regression mean is ``mu = R(c) + interp(x) + D``
(:meth:`xkmcast.models.corrdiff.CorrDiff.regression_mean`): the network learns the departure from the
coarse input regridded to the fine grid plus ``D``, the part of that departure that sits at the same
place at every time (the fine structure that orography, coasts and land use draw, which interpolation
cannot know and an input without invariants does not show). In normalised output units, per output
channel ``c`` and pixel ``p``::

    d_c(t, p) = y_c(t, p) - interp_c(t, p)                      (the departure at time t)
    m_c(p)    = mean over the training times t of d_c(t, p)      (non-finite values left out;
                                                                 up to MAX_SAMPLES times, evenly spread)
    w_c       = clip( sum_{v, p} d_c(v, p) m_c(p) / (N_v sum_p m_c(p)^2), 0, 1 )   over the N_v validation times v
    D_c(p)    = w_c m_c(p)

``w_c`` is the least-squares factor of ``m_c`` in the departures of times it was not computed from,
clipped to [0, 1]: 1 where the detail is stationary, near 0 where it changes from time to time (a
mean of a few weather-driven departures would only add their noise); 1 without validation times.
For an output that is not an input, ``interp_c = 0`` and ``m_c`` is its training-mean anomaly.

Measured on real fields (docs/guide/training.md): WRF Guam at 0.78 km coarsened x4 (no orography
given) and the 1996 blizzard analyses coarsened x2 / x3.
"""

from __future__ import annotations

import torch

from .spread import evenly_spread_batches

__all__ = ["mean_detail", "MAX_SAMPLES"]

#: training and validation samples read for the mean and its weight (evenly spread over each set)
MAX_SAMPLES = 512


def _departures(pipeline, dataset):
    """``(d, valid)`` of batches of up to MAX_SAMPLES samples spread evenly over ``dataset``: the
    departures (B, C_out, H, W) float64 with non-finite or masked values set to 0, and where they are valid."""
    for _, batch in evenly_spread_batches(dataset, MAX_SAMPLES, pipeline.device):
        d = (batch["target"].float() - pipeline.interpolation(batch["input"].float())).double()
        ok = torch.isfinite(d)
        if batch.get("mask") is not None:
            ok = ok & batch["mask"].to(torch.bool)
        yield torch.where(ok, d, torch.zeros_like(d)), ok


def mean_detail(pipeline, train, valid=None) -> tuple[torch.Tensor, list[float]] | None:
    """``(D (C_out, H, W) float32, weights w per output channel)`` of the module docstring, from the
    ``train`` (and ``valid``) datasets of whole fields; None without training samples."""
    if train is None or len(train) == 0:
        return None
    with torch.no_grad():
        total = count = 0
        for d, ok in _departures(pipeline, train):
            total, count = total + d.sum(dim=0), count + ok.sum(dim=0)
        m = total / count.clamp(min=1)  # (C_out, H, W)
        weights = torch.ones(m.shape[0], dtype=torch.float64)
        if valid is not None and len(valid) > 0:
            cross, n_valid = 0, 0
            for d, _ in _departures(pipeline, valid):
                cross, n_valid = cross + (d * m).sum(dim=(0, 2, 3)), n_valid + d.shape[0]
            norm = m.pow(2).sum(dim=(1, 2)) * n_valid
            weights = torch.where(norm > 0, cross / norm.clamp(min=1e-300), torch.zeros_like(norm))
            weights = weights.clamp(0.0, 1.0).cpu()
    detail = (m * weights.to(m).reshape(-1, 1, 1)).float().cpu()
    return detail, [float(w) for w in weights]
