"""Confidence intervals of a score by the bootstrap over one dimension (usually the forecast times).

A score of a few forecast times (a case study, a held-out week) is one draw of what the model would
score on other weather; how far it could move is the question the interval answers.
:func:`bootstrap_interval` resamples the positions of ``over`` with replacement (Efron's bootstrap: ``B``
resamples of ``n`` positions out of ``n``, drawn with ``numpy.random.default_rng(seed)``), or in moving
blocks of ``block`` consecutive positions (Kunsch 1989) where successive times are correlated; for
each resample it evaluates the score on the resampled forecast and truth, averaging over ``over`` as
over any other dimension, and returns the percentile interval

    [ q_{(1 - level)/2}, q_{(1 + level)/2} ]   of the B resampled scores.

Any score of :mod:`xkmcast.fields.metrics` works (``mae``, ``crps``, ``spread_skill``, ...): a ratio
score (spread-skill) is recomputed from the resampled averages, not averaged per time. The points of
one time stay together (a resample draws whole fields, so the spatial correlation is kept).

A resample's average over ``over`` is the average weighted by how often each position was drawn, so
the score is called once, with ``weights`` of dims ``(resample, over)`` (times the caller's own
``weights``): every metric here averages with ``sum(w s) / sum(w)``, the data are not copied per
resample, and dask input stays one lazy graph. A score of your own must take ``dim`` and ``weights``
that way.
Nothing here knows of torch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np
import xarray as xr

from ..errors import InvalidDataError, explain

__all__ = ["bootstrap_interval", "resample_positions", "resample_counts"]

XArray = xr.DataArray | xr.Dataset


def resample_positions(n: int, resamples: int, block: int = 1, seed: int | None = 0) -> np.ndarray:
    """``(resamples, n)`` positions 0..n-1 drawn with replacement: ``n`` single positions per row
    (``block`` 1), or ``ceil(n / block)`` runs of ``block`` consecutive positions, each starting
    uniformly on ``0..n - block``, cut to ``n``."""
    if not 1 <= block <= n:
        raise InvalidDataError(explain("The bootstrap block must hold between 1 and all positions",
                                       expected=f"1 <= block <= {n}", found=block))
    rng = np.random.default_rng(seed)
    runs = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=(resamples, runs))
    return (starts[:, :, None] + np.arange(block)).reshape(resamples, runs * block)[:, :n]


def bootstrap_interval(
    score: Callable[..., XArray],
    forecast: XArray,
    truth: XArray,
    *,
    over: Hashable = "time",
    resamples: int = 1000,
    level: float = 0.9,
    block: int = 1,
    seed: int | None = 0,
    **score_kwargs,
) -> XArray:
    """The ``level`` percentile interval of ``score(forecast, truth, **score_kwargs)`` when the
    positions of ``over`` are resampled (module docstring). Returns the score's result with a new
    ``quantile`` dimension ``[(1 - level) / 2, (1 + level) / 2]``. ``over`` must be reduced by the score
    (it is, with the default ``dim=None``); pass ``block`` > 1 for correlated successive times."""
    for name, obj in (("forecast", forecast), ("truth", truth)):
        if over not in obj.dims:
            raise InvalidDataError(explain(f"The {name} has no dimension {over!r} to resample",
                                           found=f"dims {list(obj.dims)}", fix="pass over= the dimension of the forecast times"))
    if forecast.sizes[over] != truth.sizes[over]:
        raise InvalidDataError(explain(f"Forecast and truth differ in length along {over!r}",
                                       expected=truth.sizes[over], found=forecast.sizes[over],
                                       fix="select the common times first, e.g. truth.sel(time=forecast.time)"))
    if not 0 < level < 1:
        raise InvalidDataError(explain("The interval level is a probability", expected="0 < level < 1", found=level))
    n = forecast.sizes[over]
    member_dim = score_kwargs.get("member_dim", "member")
    dim = score_kwargs.pop("dim", None)
    if dim is None:  # the metrics' default: every dimension but the members
        dim = [d for d in dict.fromkeys([*forecast.dims, *truth.dims]) if d != member_dim]
    dims = list(dim) if isinstance(dim, (list, tuple)) else [dim]
    if over not in dims:
        raise InvalidDataError(explain(f"The score keeps the resampled dimension {over!r}", found=f"dim={dim!r}",
                                       fix=f"let the score average over {over!r} (dim=None or a dim that includes it)"))
    # a resample as weights: each position counted as often as it was drawn (times the user's weights)
    counts = xr.DataArray(resample_counts(resample_positions(n, resamples, block, seed), n), dims=("resample", over))
    weights = score_kwargs.pop("weights", None)
    weights = counts if weights is None else counts * weights
    resampled = score(forecast, truth, dim=dims, weights=weights, **score_kwargs)
    return resampled.quantile([(1 - level) / 2, (1 + level) / 2], dim="resample", keep_attrs=True)


def resample_counts(positions: np.ndarray, n: int) -> np.ndarray:
    """``(resamples, n)``: how often each of the ``n`` positions occurs in each row of ``positions``."""
    counts = np.zeros((positions.shape[0], n))
    np.add.at(counts, (np.repeat(np.arange(positions.shape[0]), positions.shape[1]), positions.ravel()), 1.0)
    return counts
