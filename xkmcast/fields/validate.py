"""Checks of what a user hands to downscale / forecast, each failing with an :mod:`xkmcast.errors` type.

* :func:`as_dataset` -- a named DataArray becomes a one-variable Dataset; an unnamed one is refused.
* :func:`require_positive` -- counts (members, steps, time chunk, batch size) must be integers >= 1.
* :func:`check_times` -- the time coordinate may be neither empty nor hold a time twice (two rows
  with one time would get identical noise: the seed is a function of the time).
* :func:`check_grid_dims` -- a variable may have no dims but time and the grid's (a level or an
  ensemble ``number`` left over would reach the networks as an extra axis).
* :func:`checked_values` -- every value of a selected variable must be finite (NaN is treated like
  inf: an :class:`InvalidDataError` naming the variable and the count, never a silent fill) and,
  unless ``check_ranges=False``, inside the variable's ``valid_range`` of ``variables.yaml`` (the
  canonical units), which catches e.g. t2m in degC labelled K. On dask-backed data the check runs
  chunk by chunk when the data are computed, so it costs no extra pass over the input.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import ConfigError, CoordinateError, InvalidDataError, TimeCoverageError, explain

__all__ = ["as_dataset", "require_positive", "check_times", "check_grid_dims", "checked_values"]


def as_dataset(obj, what: str = "input") -> xr.Dataset:
    """``obj`` as a Dataset: a Dataset unchanged, a named DataArray as ``obj.to_dataset()``."""
    if isinstance(obj, xr.Dataset):
        return obj
    if isinstance(obj, xr.DataArray):
        if obj.name is None:
            raise InvalidDataError(explain(
                f"The {what} is an unnamed DataArray: its variable cannot be identified",
                expected="a Dataset, or a DataArray whose name is a variable (t2m, 2t, ...)",
                found="DataArray with name None", fix="pass da.to_dataset(name='t2m') or a Dataset"))
        return obj.to_dataset()
    raise InvalidDataError(explain(f"The {what} is not xarray data", expected="an xarray Dataset",
                                   found=type(obj).__name__, fix="open it with xkmcast.open_dataset or xarray"))


def require_positive(**values) -> None:
    """ConfigError unless every given value (None skipped) is an integer >= 1."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(explain(f"{name} must be a whole number of at least 1", expected=f"{name} >= 1",
                                      found=repr(value), fix=f"pass {name}=1 or more"))


def check_times(ds: xr.Dataset, dim: str | None, what: str = "input") -> None:
    """TimeCoverageError when ``ds`` has no time along ``dim``; CoordinateError when one repeats."""
    if dim is None or dim not in ds.dims:
        return
    times = pd.Index(ds[dim].values) if dim in ds.coords else None
    if ds.sizes[dim] == 0:
        raise TimeCoverageError(explain(f"The {what} holds no time", expected=f"at least one {dim}", found="0 times",
                                        fix="check the time selection (--times) against the data's times"))
    if times is not None and times.has_duplicates:
        dup = sorted({str(t) for t in times[times.duplicated()]})
        raise CoordinateError(explain(f"The {what} holds the same {dim} more than once",
                                      expected=f"distinct {dim} values", found=f"repeated: {dup[:5]}",
                                      fix=f"drop the duplicates, e.g. ds.drop_duplicates('{dim}')"))


def check_grid_dims(ds: xr.Dataset, grid, what: str, fix: str) -> None:
    """InvalidDataError when a variable of ``ds`` has a dim besides ``grid``'s time, y and x (a
    :class:`~xkmcast.fields.grid.Grid`), naming it; ``fix`` is what to do besides selecting one value of
    it (``{dim}`` in it: that dim's name)."""
    allowed = {grid.time_dim, grid.y_dim, grid.x_dim}
    for name, da in ds.data_vars.items():
        extra = [d for d in da.dims if d not in allowed]
        if extra:
            raise InvalidDataError(explain(
                f"The {what} variable {name!r} has dims {extra} besides time and the grid",
                expected=f"({grid.time_dim}, {grid.y_dim}, {grid.x_dim}) or ({grid.y_dim}, {grid.x_dim})",
                found=f"{name} {dict(da.sizes)}",
                fix=f"select one {extra[0]} first (e.g. ds.isel({extra[0]}=0)); " + fix.format(dim=extra[0])))


def checked_values(ds: xr.Dataset, names, *, check_ranges: bool = True, time_dim: str | None = None) -> xr.Dataset:
    """``ds`` whose variables ``names`` raise (when their values are read) on non-finite or
    implausible values (see the module docstring); messages name the times along ``time_dim``."""
    from ..errors import MissingVariableError
    from .variables import variable_info

    out = ds.copy()
    for name in names:
        da = ds[name]
        try:
            info = variable_info(name)
            units, bounds = info.units, (info.valid_range if check_ranges else None)
        except MissingVariableError:  # a model's own channel the table does not know: finiteness only
            units, bounds = da.attrs.get("units", "1"), None
        axis = da.dims.index(time_dim) if time_dim in da.dims else None
        times = ds[time_dim].values if axis is not None and time_dim in ds.coords else None
        check = _Check(name, units, bounds, axis, times)
        if da.chunks is not None:
            out[name] = da.copy(data=da.data.map_blocks(check, dtype=da.dtype))
        else:
            check(np.asarray(da.values))
    return out


class _Check:
    """The block check of :func:`checked_values` (picklable for distributed workers)."""

    def __init__(self, name: str, units: str, bounds, axis: int | None = None, times=None):
        self.name, self.units, self.bounds, self.axis, self.times = name, units, bounds, axis, times

    def _where(self, bad: np.ndarray, block_info) -> str:
        """The times of the block holding ``bad`` values (when known)."""
        if self.axis is None or self.times is None:
            return ""
        start = block_info[0]["array-location"][self.axis][0] if block_info else 0
        other = tuple(i for i in range(bad.ndim) if i != self.axis)
        rows = np.flatnonzero(bad.any(axis=other)) + start
        return f" at times {[str(t) for t in self.times[rows[:5]]]}"

    def __call__(self, block: np.ndarray, block_info=None) -> np.ndarray:
        finite = np.isfinite(block)
        if not finite.all():
            n_nan = int(np.isnan(block).sum())
            raise InvalidDataError(explain(
                f"The input variable {self.name} holds {block.size - int(finite.sum())} non-finite values"
                + self._where(~finite, block_info),
                expected="finite values (NaN and inf are both refused; nothing is filled silently)",
                found=f"{n_nan} NaN and {block.size - int(finite.sum()) - n_nan} infinite of {block.size} values",
                fix="fill or drop them first (ds.fillna / ds.dropna / ds.interpolate_na), or subset the domain"))
        if self.bounds is not None and block.size:
            lo, hi = self.bounds
            bmin, bmax = float(block.min()), float(block.max())
            if bmin < lo or bmax > hi:
                raise InvalidDataError(explain(
                    f"The input variable {self.name} has physically implausible values for {self.units}"
                    + self._where((block < lo) | (block > hi), block_info),
                    expected=f"values within {lo:g} .. {hi:g} {self.units} (valid_range in variables.yaml)",
                    found=f"values {bmin:.6g} .. {bmax:.6g}",
                    fix="check the units attribute (degC labelled K? hPa labelled Pa?), or pass "
                        "check_ranges=False (--no-check-ranges) to skip this check"))
        return block
