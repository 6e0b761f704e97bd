"""Verification scores as xarray functions: deterministic, ensemble, rank histogram.

Every score has the same signature::

    score(forecast, truth, *, dim=None, weights=None, member_dim="member", ...)

- ORDER: the forecast first, the truth second -- the reverse of xskillscore's ``(observations,
  forecasts)``. Errors are ``forecast - truth``: a positive ``bias`` means the forecast is too high.
  Passing both by name (``bias(forecast=f, truth=y)``) makes a call order-proof; a truth with a
  member dimension (the usual sign of swapped arguments) is refused.
- ``forecast`` / ``truth``: DataArray or Dataset (variables matched by name). ``truth`` has no
  member dimension. Both must share their index coordinates exactly (else :class:`CoordinateError`):
  select the common times first, e.g. ``truth.sel(time=forecast.time)``.
- ``dim``: the dimensions to average over (a name or a list). ``None`` means every dimension except
  ``member_dim``; the dimensions not named are kept (time, lead_time, ...).
- ``weights``: optional DataArray broadcastable against the data (e.g. cos(latitude) or cell area); the
  average over ``dim`` is then ``sum(w * s) / sum(w)`` over the points where the score ``s`` is not NaN.
- NaN points (in truth or forecast) are skipped in the average; a point with any NaN member has a NaN
  ensemble score and is skipped too.

The numpy kernels (``crps_ensemble_kernel``, ``rank_kernel``) work on arrays with the members on the
last axis; the xarray functions wrap them with ``xr.apply_ufunc(..., dask="parallelized")`` or use
plain xarray operations, so dask input stays lazy until ``.compute()``.

Power spectra, autocorrelation and the patch size suggestion live in :mod:`xkmcast.fields.spectra`,
the patch-seam :func:`blockiness` in :mod:`xkmcast.fields.blockiness`; both are re-exported here.
Nothing here knows of torch.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from ..errors import CoordinateError, InvalidDataError, explain
from .blockiness import blockiness
from .spectra import (
    autocorrelation,
    decorrelation_length,
    periodogram,
    power_spectrum,
    suggest_patch_size,
)

__all__ = [
    "blockiness",
    "mae",
    "rmse",
    "bias",
    "crps",
    "spread",
    "spread_skill",
    "rank_histogram",
    "crps_ensemble_kernel",
    "rank_kernel",
    "power_spectrum",
    "periodogram",
    "autocorrelation",
    "decorrelation_length",
    "suggest_patch_size",
]

XArray = xr.DataArray | xr.Dataset
Dim = Hashable | Sequence[Hashable] | None


# --------------------------------------------------------------------------------------------- helpers


def _all_dims(*objs: XArray | None) -> list[Hashable]:
    dims: dict[Hashable, None] = {}
    for obj in objs:
        if obj is not None:
            dims.update(dict.fromkeys(obj.dims))
    return list(dims)


def _reduce_dims(dim: Dim, member_dim: Hashable, *objs: XArray | None,
                 keep: Sequence[Hashable] = ()) -> list[Hashable]:
    """The dims to average over (the one helper of metrics, spectra and scores): ``dim`` checked
    against the dims of ``objs`` other than ``keep``, or (``dim=None``) all those except the member dim."""
    available = [d for d in _all_dims(*objs) if d not in keep]
    if dim is None:
        return [d for d in available if d != member_dim]
    dims = [dim] if isinstance(dim, str) or not isinstance(dim, Sequence) else list(dim)
    missing = [d for d in dims if d not in available]
    if missing:
        raise CoordinateError(
            explain(
                f"Cannot average over {missing}: no such dimension" + (f" besides {list(keep)}" if keep else ""),
                expected=f"names among {available}",
                found=str(dims),
                fix="pass dim=None to average over every dimension except the members",
            )
        )
    if member_dim in dims:
        raise CoordinateError(
            explain(
                f"The member dimension {member_dim!r} cannot be in dim",
                found=str(dims),
                fix="ensemble scores reduce the members themselves; name only the other dims",
            )
        )
    return dims


def _align(forecast: XArray, truth: XArray, member_dim: Hashable) -> tuple[XArray, XArray]:
    if member_dim in truth.dims:
        raise InvalidDataError(
            explain(
                f"The truth has a member dimension {member_dim!r}",
                expected="a single observed / analysed state per point",
                found=f"truth dims {list(truth.dims)}",
                fix="xkmcast scores take (forecast, truth), the reverse of xskillscore's (observations, forecasts): "
                f"check the order (or pass forecast=, truth=), select one member of the truth, or pass the right "
                f"member_dim (forecast dims: {list(forecast.dims)})",
            )
        )
    try:
        return xr.align(forecast, truth, join="exact")
    except ValueError as exc:
        raise CoordinateError(
            explain(
                "Forecast and truth have different coordinate values",
                expected="identical index coordinates on the shared dimensions",
                found=str(exc).splitlines()[0],
                fix="select the common points first, e.g. truth = truth.sel(time=forecast.time)",
            )
        ) from exc


def _mean(x: XArray, dims: list[Hashable], weights: xr.DataArray | None) -> XArray:
    if weights is None:
        return x.mean(dims)
    return x.weighted(weights).mean(dims)


def _with_units(result: XArray, like: XArray | None, long_name: str, units: str | None = None) -> XArray:
    """Set fresh attributes on ``result``: ``long_name`` and ``units`` (default: those of ``like``)."""
    targets = result.data_vars.items() if isinstance(result, xr.Dataset) else [(None, result)]
    for name, da in targets:
        src = like if name is None else (like[name] if isinstance(like, xr.Dataset) and name in like else None)
        u = units if units is not None or src is None else src.attrs.get("units")
        da.attrs = {"long_name": long_name} | ({"units": u} if u else {})
    if isinstance(result, xr.Dataset):
        result.attrs = {}
    return result


def _ensemble(forecast: XArray, member_dim: Hashable) -> XArray:
    """``forecast`` with a member dimension (a deterministic forecast becomes a one-member ensemble)."""
    if member_dim in forecast.dims:
        return forecast
    return forecast.expand_dims({member_dim: 1})


# --------------------------------------------------------------------------------------------- deterministic


def bias(forecast: XArray, truth: XArray, *, dim: Dim = None, weights=None, member_dim: Hashable = "member") -> XArray:
    """Mean error ``bias = mean_dim(f - y)`` of forecast ``f`` against truth ``y``: positive when the
    forecast is too high. ``(forecast, truth)``: forecast first (xskillscore takes ``(observations, forecasts)``).
    A member dimension of ``forecast`` is kept (one score per member); pass ``forecast.mean("member")``
    for the bias of the ensemble mean."""
    forecast, truth = _align(forecast, truth, member_dim)
    dims = _reduce_dims(dim, member_dim, forecast, truth)
    return _with_units(_mean(forecast - truth, dims, weights), truth, "bias")


def mae(forecast: XArray, truth: XArray, *, dim: Dim = None, weights=None, member_dim: Hashable = "member") -> XArray:
    """Mean absolute error ``mae = mean_dim |f - y|`` of forecast ``f`` against truth ``y``.
    ``(forecast, truth)``: forecast first (xskillscore takes ``(observations, forecasts)``);
    errors are ``f - y``. A member dimension of ``forecast`` is kept (one score per member); pass
    ``forecast.mean("member")`` for the MAE of the ensemble mean."""
    forecast, truth = _align(forecast, truth, member_dim)
    dims = _reduce_dims(dim, member_dim, forecast, truth)
    return _with_units(_mean(abs(forecast - truth), dims, weights), truth, "mean absolute error")


def rmse(forecast: XArray, truth: XArray, *, dim: Dim = None, weights=None, member_dim: Hashable = "member") -> XArray:
    """Root mean square error ``rmse = sqrt(mean_dim (f - y)^2)`` of forecast ``f`` against truth ``y``.
    ``(forecast, truth)``: forecast first (xskillscore takes ``(observations, forecasts)``);
    errors are ``f - y``. A member dimension of ``forecast`` is kept (one score per member); pass
    ``forecast.mean("member")`` for the ensemble mean."""
    forecast, truth = _align(forecast, truth, member_dim)
    dims = _reduce_dims(dim, member_dim, forecast, truth)
    return _with_units(np.sqrt(_mean((forecast - truth) ** 2, dims, weights)), truth, "root mean square error")


# --------------------------------------------------------------------------------------------- CRPS


def crps_ensemble_kernel(x: np.ndarray, y: np.ndarray, fair: bool = False) -> np.ndarray:
    """CRPS of ensembles ``x`` (members on the last axis) against ``y``, in O(M log M) per point.

    With the members sorted, ``x_(1) <= ... <= x_(M)``, the pair sum is
    ``sum_{i,j} |x_i - x_j| = 2 sum_i (2i - M - 1) x_(i)``, so

        crps = (1/M) sum_i |x_i - y| - 1/(2 D) sum_{i,j} |x_i - x_j|,

    with ``D = M^2`` (the plain / "energy" estimator) or ``D = M (M - 1)`` (``fair=True``, the fair
    estimator of Ferro 2014 used by WeatherBench 2). The members are shifted by ``y`` first (the CRPS is
    translation invariant) to keep the sums accurate for large offsets such as temperatures in kelvin.
    """
    y = np.asarray(y, dtype=np.float64)
    d = np.sort(np.asarray(x, dtype=np.float64) - y[..., None], axis=-1)
    m = d.shape[-1]
    if m == 0:
        raise InvalidDataError(explain("The ensemble has no members", found="0 members"))
    if fair and m < 2:
        raise InvalidDataError(
            explain(
                "The fair CRPS needs at least two members",
                found=f"{m} member",
                fix="use fair=False (it equals the absolute error for one member)",
            )
        )
    skill = np.abs(d).mean(axis=-1)
    coeff = 2.0 * np.arange(1, m + 1) - m - 1
    pair_sum = 2.0 * (d * coeff).sum(axis=-1)
    denom = m * (m - 1) if fair else m * m
    return skill - 0.5 * pair_sum / denom


def crps(
    forecast: XArray,
    truth: XArray,
    *,
    dim: Dim = None,
    weights=None,
    member_dim: Hashable = "member",
    fair: bool = False,
) -> XArray:
    """Continuous ranked probability score of an ensemble ``forecast`` against ``truth``, averaged over ``dim``.

    ``(forecast, truth)``: forecast first (xskillscore takes ``(observations, forecasts)``);
    the members are on ``member_dim`` of the forecast, never of the truth.

    Per point, with members ``x_1..x_M`` and truth ``y``:

        crps = E|X - y| - 1/2 E|X - X'|
             = (1/M) sum_i |x_i - y| - 1/(2 M^2) sum_{i,j} |x_i - x_j|          (fair=False)
        crps_fair = (1/M) sum_i |x_i - y| - 1/(2 M (M-1)) sum_{i,j} |x_i - x_j|   (fair=True)

    ``fair=False`` is the CRPS of the empirical distribution of the members (scoringrules
    estimator "nrg"/"pwm", xskillscore / properscoring ``crps_ensemble``); ``fair=True`` is unbiased
    for the CRPS of the distribution the members are drawn from (scoringrules "fair", WeatherBench 2
    ``CRPS`` with its ensemble fair estimator). A forecast without ``member_dim`` is a one-member
    ensemble, whose CRPS is the absolute error. Computed by sorting, O(M log M) per point.
    """
    forecast, truth = _align(forecast, truth, member_dim)
    forecast = _ensemble(forecast, member_dim)
    dims = _reduce_dims(dim, member_dim, forecast, truth)
    point = xr.apply_ufunc(
        crps_ensemble_kernel,
        forecast,
        truth,
        input_core_dims=[[member_dim], []],
        kwargs={"fair": fair},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"allow_rechunk": True},
    )
    return _with_units(_mean(point, dims, weights), truth, "fair CRPS" if fair else "CRPS")


# --------------------------------------------------------------------------------------------- spread


def spread(
    forecast: XArray,
    truth: XArray | None = None,
    *,
    dim: Dim = None,
    weights=None,
    member_dim: Hashable = "member",
) -> XArray:
    """Ensemble spread: ``sqrt(mean_dim var_member(f))`` with the unbiased member variance (ddof=1).

    ``(forecast, truth)``: forecast first (xskillscore takes ``(observations, forecasts)``).

    ``truth`` is optional (it only takes part in the choice of the dims when ``dim=None``; where it is
    NaN the points are skipped, so that spread and RMSE cover the same points).
    """
    _require_members(forecast, member_dim, 2, "the spread")
    if truth is not None:
        forecast, truth = _align(forecast, truth, member_dim)
    dims = _reduce_dims(dim, member_dim, forecast, truth)
    var = forecast.var(member_dim, ddof=1, skipna=False)  # a missing pixel is missing in every member
    if truth is not None:
        var = var.where(truth.notnull())
    return _with_units(np.sqrt(_mean(var, dims, weights)), forecast if truth is None else truth, "ensemble spread")


#: relative RMSE below which the spread-skill ratio is NaN (no error to compare the spread with)
SPREAD_SKILL_RTOL = 1e-5


def spread_skill(
    forecast: XArray,
    truth: XArray,
    *,
    dim: Dim = None,
    weights=None,
    member_dim: Hashable = "member",
) -> XArray:
    """Spread-skill ratio with the finite-ensemble correction (Fortin et al. 2014):

        ssr = sqrt((M + 1) / M) * spread / rmse(ensemble mean)
            = sqrt((M + 1) / M) * sqrt(mean_dim var_member(f; ddof=1)) / sqrt(mean_dim (mean_member(f) - y)^2)

    For a calibrated ensemble (truth and members exchangeable draws) the expected squared error of the
    mean is ``(M + 1)/M`` times the expected unbiased member variance, so ``ssr`` is close to 1;
    ``ssr < 1`` means under-dispersion, ``> 1`` over-dispersion. Points where truth or the ensemble mean
    is NaN are left out of both averages. Where the RMSE is below ``SPREAD_SKILL_RTOL`` (1e-5) times
    the RMS of the truth, the error is round-off (a forecast at lead 0 is its initial state) and the
    ratio is NaN, not a ratio of round-offs.
    ``(forecast, truth)``: forecast first (xskillscore takes ``(observations, forecasts)``);
    errors are ``mean_member(f) - y``.
    """
    forecast, truth = _align(forecast, truth, member_dim)
    _require_members(forecast, member_dim, 2, "the spread-skill ratio")
    dims = _reduce_dims(dim, member_dim, forecast, truth)
    m = forecast.sizes[member_dim]
    err2 = (forecast.mean(member_dim, skipna=False) - truth) ** 2
    var = forecast.var(member_dim, ddof=1, skipna=False).where(err2.notnull())
    mse = _mean(err2, dims, weights)
    ratio = np.sqrt((m + 1) / m) * np.sqrt(_mean(var, dims, weights) / mse)
    # no skill to compare with (a forecast at lead 0 equals its initial state up to round-off): NaN
    scale2 = _mean((truth**2).where(err2.notnull()), dims, weights)
    ratio = ratio.where(mse > (SPREAD_SKILL_RTOL**2) * scale2)
    return _with_units(ratio, None, "spread-skill ratio", units="1")


def _require_members(forecast: XArray, member_dim: Hashable, n: int, what: str) -> None:
    if member_dim not in forecast.dims or forecast.sizes[member_dim] < n:
        found = forecast.sizes.get(member_dim, 0)
        raise InvalidDataError(
            explain(
                f"{what[0].upper() + what[1:]} needs an ensemble of at least {n} members along {member_dim!r}",
                found=f"{found} members (dims {list(forecast.dims)})",
                fix="pass member_dim= the name of the ensemble dimension, or generate more members",
            )
        )


# --------------------------------------------------------------------------------------------- rank histogram


def rank_kernel(x: np.ndarray, y: np.ndarray, seed: int | None = 0) -> np.ndarray:
    """Rank of ``y`` among the members ``x`` (last axis), 1..M+1, ties broken at random.

    ``rank = 1 + #(x_i < y) + U`` with ``U`` uniform on ``0..#(x_i == y)`` (random tie-breaking, drawn
    from ``numpy.random.default_rng(seed)``; with dask each chunk starts from the same seed). NaN where
    ``y`` or any member is NaN.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    below = (x < y[..., None]).sum(axis=-1)
    ties = (x == y[..., None]).sum(axis=-1)
    rng = np.random.default_rng(seed)
    extra = np.floor(rng.random(y.shape) * (ties + 1))
    rank = (1 + below + extra).astype(np.float64)
    invalid = np.isnan(y) | np.isnan(x).any(axis=-1)
    return np.where(invalid, np.nan, rank)


def rank_histogram(
    forecast: XArray,
    truth: XArray,
    *,
    dim: Dim = None,
    weights=None,
    member_dim: Hashable = "member",
    seed: int | None = 0,
) -> XArray:
    """Rank (Talagrand) histogram: how often the truth falls at rank ``r`` among the M members.

    ``(forecast, truth)``: forecast first (xskillscore takes ``(observations, forecasts)``):
    swapping them makes the histogram meaningless.

    ``hist[r] = sum over dim of 1{rank == r}`` for ``r = 1..M+1`` (new dimension ``rank``), with the
    rank of :func:`rank_kernel` (ties broken at random with ``seed``). With ``weights`` the counts are
    weighted sums ``sum w 1{rank == r}``. NaN points are not counted. A calibrated ensemble gives a
    flat histogram (expected count ``N / (M + 1)`` in every bin).
    """
    forecast, truth = _align(forecast, truth, member_dim)
    forecast = _ensemble(forecast, member_dim)
    dims = _reduce_dims(dim, member_dim, forecast, truth)
    m = forecast.sizes[member_dim]
    ranks = xr.apply_ufunc(
        rank_kernel,
        forecast,
        truth,
        input_core_dims=[[member_dim], []],
        kwargs={"seed": seed},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"allow_rechunk": True},
    )
    counts = []
    for r in range(1, m + 2):
        hit = ranks == r
        counts.append(hit.sum(dims) if weights is None else hit.astype(np.float64).weighted(weights).sum(dims))
    hist = xr.concat(counts, dim="rank", coords="minimal", compat="override", join="exact")
    hist = _with_units(hist, None, "rank histogram counts", units="1")
    return hist.assign_coords(rank=np.arange(1, m + 2))
