"""Line up a truth (or a baseline) with a prediction before scoring: index coordinates, valid times,
and the horizontal grid.

:func:`match_truth` returns the truth on exactly the prediction's dims, or raises:

1. along every dim both have with an index (``time``, ``lat``, ``x`` ...), the truth is selected at
   the prediction's labels (TimeCoverageError / CoordinateError when it lacks some);
2. a forecast indexed by ``lead_time`` with a ``valid_time`` coordinate gets the truth at its valid
   times; otherwise a truth whose time dim has another name than the prediction's (``valid_time``
   against ``time``) is renamed to it;
3. the grid: when the truth's horizontal dims differ from the prediction's but both grids are the
   same points (same shape, latitudes and longitudes within ``1e-6`` degrees, found by
   :func:`xkmcast.fields.grid.find_grid`), the truth's dims are renamed to the prediction's;
4. any dim of the truth the prediction lacks is refused (GridError naming the dims of both): such a
   dim would broadcast against the prediction's own, e.g. a (lat, lon) truth against a (y, x)
   prediction into a (y, x, lat, lon) array, which for global grids does not fit in memory.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import xarray as xr

from ..errors import CoordinateError, GridError, TimeCoverageError, explain
from .coords import coordinate_names

__all__ = ["match_truth", "TIME_NAMES"]

TIME_NAMES = coordinate_names("time")


def match_truth(prediction: xr.Dataset, truth: xr.Dataset, member_dim: Hashable = "member",
                what: str = "truth") -> xr.Dataset:
    """``truth`` on the prediction's dims and labels (see the module docstring); ``what`` names it in errors."""
    truth = _align_grid(prediction, truth, what)
    truth = _same_time_dim(prediction, truth)
    truth = _select_labels(prediction, truth, what)
    extra = [d for d in truth.dims if d not in prediction.dims]
    if extra:
        missing = [d for d in prediction.dims if d not in truth.dims and d != member_dim]
        raise GridError(explain(
            f"The {what} has dims the prediction lacks; scoring would broadcast them against each other",
            expected=f"the {what} on the prediction's dims {list(prediction.dims)}",
            found=f"{what} dims {list(truth.dims)}: {extra} not in the prediction"
                  + (f", and the prediction's {missing} not in the {what}" if missing else ""),
            fix=f"put both on one grid first, e.g. {what}.kmcast.regrid(prediction) "
                f"(or rename the {what}'s dims {extra} to the prediction's when they are the same points)",
        ))
    return truth


def _same_time_dim(prediction: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """The truth's time dim renamed to the prediction's when each has one under another name (ERA5 from
    the CDS since 2024 has ``valid_time``; a downscaled result ``time``). A forecast (``valid_time``
    along its init and lead times) takes the truth at those below instead."""
    if "valid_time" in prediction.coords and "valid_time" not in prediction.dims:
        return truth
    p = [t for t in TIME_NAMES if t in prediction.dims]
    t = [t for t in TIME_NAMES if t in truth.dims]
    if len(p) == 1 and len(t) == 1 and p[0] != t[0] and p[0] not in truth.variables:
        return truth.rename({t[0]: p[0]})
    return truth


def _select_labels(prediction: xr.Dataset, truth: xr.Dataset, what: str) -> xr.Dataset:
    for d in prediction.dims:
        if d in truth.dims and d in prediction.indexes and d in truth.indexes:
            wanted = prediction.indexes[d]
            if truth.indexes[d].equals(wanted):
                continue
            try:
                truth = truth.sel({d: wanted})
            except KeyError as exc:
                error = TimeCoverageError if d in TIME_NAMES else CoordinateError
                raise error(explain(
                    f"The {what} does not cover the prediction along {d!r}",
                    expected=f"{d} values {span(wanted)}", found=f"{span(truth.indexes[d])}",
                    fix=f"pass a {what} covering the prediction, or select the prediction's common part",
                )) from exc
    free_time = [t for t in TIME_NAMES if t in truth.dims and t not in prediction.dims]
    if free_time and "valid_time" in prediction.coords:
        t = free_time[0]
        try:
            truth = truth.sel({t: prediction["valid_time"]}).drop_vars([t, "valid_time"], errors="ignore")
        except KeyError as exc:
            raise TimeCoverageError(explain(
                f"The {what} does not cover the valid times of the forecast",
                expected=span(prediction["valid_time"].values.ravel()), found=span(truth.indexes[t]),
            )) from exc
    return truth


def _align_grid(prediction: xr.Dataset, truth: xr.Dataset, what: str) -> xr.Dataset:
    """The truth with its horizontal dims renamed to the prediction's when the two grids are the same
    points; unchanged when the dims already agree or either grid cannot be found."""
    from .grid import find_grid

    try:
        pg, tg = find_grid(prediction), find_grid(truth)
    except (GridError, CoordinateError):
        return truth
    if (tg.y_dim, tg.x_dim) == (pg.y_dim, pg.x_dim) or pg.y_dim not in prediction.dims:
        return truth
    if tg.shape != pg.shape:
        return truth  # refused by match_truth, naming the dims
    same = np.allclose(tg.lat, pg.lat, atol=1e-6) and np.allclose(
        np.mod(tg.lon - pg.lon + 180.0, 360.0) - 180.0, 0.0, atol=1e-6)
    if not same:
        return truth
    clash = {pg.y_dim, pg.x_dim} & set(truth.dims)
    if clash:
        raise GridError(explain(f"The {what}'s grid matches the prediction's, but its dims clash with them",
                                found=f"{what} dims {list(truth.dims)}", fix="rename the dims of the truth"))
    spatial = [n for n, c in truth.coords.items() if {tg.y_dim, tg.x_dim} & set(c.dims)]
    return truth.drop_vars(spatial).rename({tg.y_dim: pg.y_dim, tg.x_dim: pg.x_dim})


def span(values) -> str:
    """``"n values from a to b"`` (``"nothing"`` when empty), for error messages."""
    values = np.asarray(values)
    if values.size == 0:
        return "nothing"
    return f"{values.size} values from {values.min()} to {values.max()}"
