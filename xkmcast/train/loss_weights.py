"""Balanced regression loss: each output channel's departure counts alike (``model.loss.channel_weights:
balanced``; ``auto``, the default, is that for the kinds whose row of :data:`xkmcast.models.kinds.KINDS`
has ``balanced_regression``: the ViT).

A regression with ``input_skip`` learns a departure ``d_c`` per output channel ``c``, in normalised units
(:meth:`xkmcast.models.base.Pipeline.regression_departure`: the 6-hour tendency of a forecast model, the
departure from the regridded input of CorrDiff). Normalised by the state's spread, those departures have
very different sizes: on the 1996 blizzard analyses the 6-hour tendency's RMS is 0.23 of the state's
spread for t2m and 0.73 for v10m, so an unweighted MSE gives the temperature tendency a tenth of a
wind's weight. ``balanced`` weighs channel ``c`` by

    q_c = mean over training samples and valid pixels of d_c^2        (up to MAX_SAMPLES samples,
    w_c = (1 / q_c) / mean_k (1 / q_k)                                 evenly spread)

so each channel's loss is its mean square error relative to the departure's own, and the weights average
1 (the loss keeps its size). It is the tendency normalisation of GraphCast (Lam et al. 2023: targets as
differences scaled by their standard deviation), applied as loss weights: the network's output and the
bundle's inference are unchanged. A channel whose departure is 0 everywhere (q_c = 0) takes weight 1
before the normalisation. Stages other than a regression with ``input_skip`` (a regression of the
target itself, a diffusion whose residual is already scaled per channel) keep equal weights.

Measured on the blizzard (bench/science.py, 2 minutes, one day in four validating; MAE over the
baseline's, geometric mean over variables and leads, two training seeds): the tiny ViT's steps 0.863 /
0.833x persistence unweighted, 0.818 / 0.819 balanced; the StormCast U-Net's ensemble 0.818 / 0.789 and
0.831 / 0.793; the CorrDiff round trips (x bilinear) 0.707 / 0.724 (x2, two seeds) and 0.784 (x3)
unweighted, 0.709 / 0.727 and 0.777 balanced (t2m and msl 1-5 % better, the winds up to 6 % worse). A
transformer whose token vectors write every channel of their patch spends its capacity where the loss
says; the U-Nets do not need the weights, so only the ViT's kind turns them on.
"""

from __future__ import annotations

import torch

from .spread import evenly_spread_batches, valid_values

__all__ = ["balanced_channel_weights", "MAX_SAMPLES"]

#: training samples read for the mean squares (evenly spread over the set)
MAX_SAMPLES = 64


@torch.no_grad()
def balanced_channel_weights(pipeline, dataset, max_samples: int = MAX_SAMPLES) -> list[float] | None:
    """``w_c`` of the module docstring over up to ``max_samples`` samples of ``dataset`` (non-finite or
    masked values left out); None without samples or valid values (equal weights)."""
    if dataset is None or len(dataset) == 0:
        return None
    total = count = None
    for _, batch in evenly_spread_batches(dataset, max_samples, pipeline.device):
        d, ok = valid_values(pipeline.regression_departure(batch).double(), batch)
        sq = (d * d).sum(dim=(0, 2, 3)).cpu()
        n = ok.sum(dim=(0, 2, 3)).cpu().double()
        total, count = (sq, n) if total is None else (total + sq, count + n)
    if total is None or bool((count == 0).all()):
        return None
    q = total / count.clamp(min=1)
    inverse = torch.where(q > 0, 1.0 / q.clamp(min=1e-300), torch.ones_like(q))
    return [float(v) for v in inverse / inverse.mean()]
