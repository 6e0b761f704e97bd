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
    f_c(P)    = clip( sum_{(t, m') in P} sum_p d_c(t, p) m'_c(p) / sum_{(t, m') in P} sum_p m'_c(p)^2, 0, 1 )
    w_c       = min( f_c(P_valid), f_c(P_blocks) )        (the one there is, when one set is empty)
    D_c(p)    = w_c m_c(p)

``f_c(P)`` is the least-squares factor of a training-mean detail in the departures of times it was not
computed from, clipped to [0, 1]: 1 where the detail is stationary, near 0 where it changes from time
to time (a mean of a few weather-driven departures would only add their noise). ``P_valid`` pairs
each validation time with ``m``; ``P_blocks``, cross-fitted, each training time of block ``k`` of
CROSS_FIT_BLOCKS contiguous blocks with ``m_{-k}``, the mean over the other blocks (sums over the
valid pixels of each time). The two sets see different ways a detail can fail to hold, and the
weight takes the smaller: validation days next to the training days over-rate a detail that drifts
slowly (the 1996 blizzard x2: t2m 0.99 on them, 0.58 on the held-out days), the blocks far apart in
time over-rate one that changed late in the record (FNOC monthly winds 1982-1992 x2, v: 0.85 on the
blocks of 1982-1989, 0.38 on 1990, 0.31 on 1991-1992; the regression network, whose only position
inputs are 4 smooth sinusoids, cannot take a fixed fine pattern back out of its base, so too large a
weight costs more than too small). ``w = 0`` with a single training time and no validation times:
nothing weighs the detail, and at weight 1 it would be that time's whole departure, leaving the network
nothing to learn on its one sample (a region it did not see would get bilinear; a EURO-CORDEX 0.11 deg
temperature trained on one month over 60 % of the domain: 1.00x bilinear's MAE on the other 40 % at
w = 1, 0.71x at w = 0).
For an output that is not an input, ``interp_c = 0`` and ``m_c`` is its training-mean anomaly.

Measured on real fields (docs/guide/training.md): WRF Guam at 0.78 km coarsened x4 (no orography
given) and the 1996 blizzard analyses coarsened x2 / x3.
"""

from __future__ import annotations

import torch

from .spread import evenly_spread_batches, valid_values

__all__ = ["mean_detail", "MAX_SAMPLES", "CROSS_FIT_BLOCKS"]

#: training and validation samples read for the mean and its weight (evenly spread over each set)
MAX_SAMPLES = 512

#: contiguous blocks of the training times for the cross-fitted weight
CROSS_FIT_BLOCKS = 4


def _departures(pipeline, dataset):
    """``(indices, d, valid)`` of batches of up to MAX_SAMPLES samples spread evenly over ``dataset``:
    the departures (B, C_out, H, W) float64 with non-finite or masked values set to 0, where they are
    valid, and the samples' indices in ``dataset``."""
    for index, batch in evenly_spread_batches(dataset, MAX_SAMPLES, pipeline.device):
        d = (batch["target"].float() - pipeline.interpolation(batch["input"].float())).double()
        yield index, *valid_values(d, batch)


def _fit_terms(d, ok, m):
    """Numerator and denominator (per channel) of the least-squares factor of ``m`` (C, H, W) in the
    departures ``d`` (B, C, H, W) at their valid pixels ``ok`` (or in their sum over times, with ``ok``
    the number of valid values)."""
    return (d * m).sum(dim=(0, 2, 3)), (ok * m.pow(2)).sum(dim=(0, 2, 3))


def _factor(terms: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``f(P)``, ``clip(sum num / sum den, 0, 1)`` per channel over the :func:`_fit_terms` of a set of
    pairs; 0 where the summed ``den`` is 0 (no detail to weigh)."""
    num, den = sum(n for n, _ in terms), sum(q for _, q in terms)
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(den)).clamp(0.0, 1.0)


def mean_detail(pipeline, train, valid=None) -> tuple[torch.Tensor, list[float]] | None:
    """``(D (C_out, H, W) float32, weights w per output channel)`` of the module docstring, from the
    ``train`` (and ``valid``) datasets of whole fields (in time order); None without training samples."""
    if train is None or len(train) == 0:
        return None
    blocks, has_valid = min(CROSS_FIT_BLOCKS, len(train)), valid is not None and len(valid) > 0
    with torch.no_grad():
        sums, counts = [0] * blocks, [0] * blocks  # per block: sum of d, number of valid values
        for index, d, ok in _departures(pipeline, train):
            for i, di, oki in zip(index, d, ok):
                k = i * blocks // len(train)
                sums[k], counts[k] = sums[k] + di, counts[k] + oki
        total, count = sum(sums), sum(counts)
        m = total / count.clamp(min=1)  # (C_out, H, W)
        factors = []  # f(P_blocks), f(P_valid): those there are
        if blocks > 1:  # sum over t in k of d_t . m_{-k} is S_k . m_{-k}
            factors.append(_factor([_fit_terms(s[None], c[None], (total - s) / (count - c).clamp(min=1))
                                    for s, c in zip(sums, counts) if torch.is_tensor(s)]))  # blocks read from
        if has_valid:
            factors.append(_factor([_fit_terms(d, ok, m) for _, d, ok in _departures(pipeline, valid)]))
        weights = torch.stack(factors).amin(dim=0).cpu() if factors else torch.zeros(m.shape[0], dtype=torch.float64)
    detail = (m * weights.to(m).reshape(-1, 1, 1)).float().cpu()
    return detail, [float(w) for w in weights]
