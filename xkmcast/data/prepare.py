"""Build a training store: coarse inputs regridded onto the fine grid, targets, invariants, statistics.

Layout of a prepared store (zarr v3, unconsolidated; one chunk per time step by default)::

    input_<v>   (time, y, x) float32   coarse input variable v regridded onto the fine grid
    target_<v>  (time, y, x) float32   fine variable v (the truth a model learns)
    <inv>       (y, x)       float32   fine invariants (orog, lsm, ...), plain names
    lat, lon (y, x), x, y (m), crs, time     the fine grid's CF coordinates
    attrs: xkmcast_store = "training/1"; xkmcast_input_vars / xkmcast_output_vars /
           xkmcast_invariants (JSON lists of canonical names); xkmcast_stats (JSON, keyed by the
           store's variable names, see :mod:`xkmcast.data.stats`); xkmcast_stats_times (JSON
           ``{"first", "last", "count"}`` of the times the statistics cover); xkmcast_missing (JSON
           ``{target name: number of NaN}``: missing target values are allowed, left out of training;
           inputs and invariants must have none); regrid_method.

:func:`prepare` is lazy until the write (dask: it also runs on a ``dask.distributed`` cluster when
``out`` is on a filesystem the workers share), then computes the statistics from the written store
in one pass and only then moves the store into place: it is written to a hidden temporary directory
beside ``out`` and renamed, so a failure never leaves a partial store at ``out``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from ..atomic import atomic_path
from ..errors import (ConfigError, DataNotFoundError, InvalidDataError, MissingVariableError,
                      TimeCoverageError, explain)
from ..fields.calendar import labels_as, require_same_calendar, time_index
from ..fields.grid import find_grid, time_indexed
from ..fields.transforms import parse_transforms
from .stats import DEFAULT_LOG_EPS, STATS_ATTR, Stats, stats_graph

__all__ = ["prepare", "open_store", "store_names", "split_stats", "select_times", "times_fingerprint",
           "INPUT_PREFIX", "TARGET_PREFIX", "STORE_FORMAT", "STATS_TIMES_ATTR", "MISSING_ATTR",
           "missing_state_error"]

INPUT_PREFIX = "input_"
TARGET_PREFIX = "target_"
STORE_FORMAT = "training/1"
#: the store attribute naming the times its statistics were computed over
STATS_TIMES_ATTR = "xkmcast_stats_times"
#: the store attribute counting each target's missing values (JSON ``{store name: count}``)
MISSING_ATTR = "xkmcast_missing"


def select_times(ds: xr.Dataset, times) -> xr.Dataset:
    """``ds`` at ``times``: None (all), a label slice, a list of labels, or a list of int positions."""
    if times is None:
        return ds
    if isinstance(times, slice):
        return ds.sel(time=times)
    values = list(times)
    if values and all(isinstance(v, (int, np.integer)) for v in values):
        return ds.isel(time=values)
    return ds.sel(time=np.asarray(values, dtype=ds["time"].dtype))


def times_fingerprint(time: xr.DataArray) -> dict:
    """``{"first", "last", "count"}`` of a time coordinate (ISO strings): what statistics cover."""
    values = np.asarray(time.values)
    if values.size == 0:
        return {"first": None, "last": None, "count": 0}
    return {"first": str(values.min())[:19], "last": str(values.max())[:19], "count": int(values.size)}


def store_names(input_vars: Iterable[str] = (), output_vars: Iterable[str] = (), invariants: Iterable[str] = ()):
    """The store's variable names ``(inputs, targets, invariants)`` for canonical names."""
    return ([INPUT_PREFIX + v for v in input_vars], [TARGET_PREFIX + v for v in output_vars], list(invariants))


def split_stats(stats: Stats, input_vars: Sequence[str], output_vars: Sequence[str],
                invariants: Sequence[str] = ()) -> tuple[Stats, Stats]:
    """``(input_stats, output_stats)`` of a prepared store keyed by canonical names (inputs include
    the invariants), e.g. for a model spec: the same name can be both input and output."""
    i, o, v = store_names(input_vars, output_vars, invariants)
    inputs = stats.subset([*i, *v]).rename(dict(zip(i, input_vars)))
    outputs = stats.subset(o).rename(dict(zip(o, output_vars)))
    return inputs, outputs


def open_pair(source, coarse=None, coarsen: int | None = None) -> tuple[xr.Dataset, xr.Dataset]:
    """``(fine, coarse)`` for preparing a store: ``source`` (catalog entry or path) is the fine target;
    the coarse input is ``coarse`` (entry or path), else ``source`` block-averaged by ``coarsen``, else
    the ``input`` part of a layout that holds both (the sample, HRRR-Mini, CWA)."""
    from ..errors import ConfigError
    from .layouts import open_dataset

    if coarse is not None:
        return open_dataset(source), open_dataset(coarse)
    if coarsen is not None:
        from .synthetic import block_mean

        fine = open_dataset(source)
        return fine, block_mean(fine, coarsen)
    try:
        return open_dataset(source, part="target"), open_dataset(source, part="input")
    except ConfigError:
        pass
    raise ConfigError(explain(
        f"{source!r} holds no coarse input",
        expected="a coarse dataset (coarse=... / --coarse / data.coarse) or a coarsening factor (coarsen=...)",
        found="neither", fix="pass coarsen=8 (say) or the coarse dataset",
    ))


def open_store(path: str | os.PathLike, *, chunks=None) -> xr.Dataset:
    """Open a prepared zarr store (or any zarr / NetCDF) lazily; ``chunks=None`` reads with no dask."""
    p = Path(path)
    if not p.exists():
        raise DataNotFoundError(explain("No store at this path", found=str(p),
                                        fix="run xkmcast.data.prepare.prepare(...) or check the path"))
    if p.is_dir():
        return xr.open_zarr(p, consolidated=False, chunks=chunks)
    return xr.open_dataset(p, chunks=chunks, cache=False)


def _select(ds: xr.Dataset, names: Sequence[str], convert_units: bool) -> xr.Dataset:
    try:
        from ..fields.variables import select_variables
    except ImportError:  # pragma: no cover - the variables table ships with the package
        select_variables = None
    if select_variables is not None:
        return select_variables(ds, list(names), convert_units=convert_units)
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise MissingVariableError(explain("Variables are missing", expected=list(names), found=list(ds.data_vars)))
    return ds[list(names)]


def _time_dim(ds: xr.Dataset, what: str) -> str | None:
    """The time dim of ``ds``'s grid, each variable of ``ds`` checked to have no dims but time and the
    grid's (:func:`~xkmcast.fields.validate.check_grid_dims`)."""
    from ..fields.validate import check_grid_dims

    grid = find_grid(ds)
    check_grid_dims(ds, grid, what, "a pressure level is selected by naming it: z500 for z at 500 hPa "
                                    "(data.input_vars / data.output_vars)")
    return grid.time_dim


def _common_times(fine: xr.Dataset, coarse: xr.Dataset, times) -> np.ndarray:
    """The times both sources hold (within ``times``: a slice of labels or a list of them), sorted; the
    two on one calendar (datetime64 or ``cftime`` dates of one model calendar)."""
    ft, ct = fine["time"].values, coarse["time"].values
    fi, ci = time_index(ft), time_index(ct)
    require_same_calendar(fi, ci, "fine", "coarse")
    common = fi.intersection(ci).sort_values()
    if times is not None:
        if isinstance(times, slice):
            common = common[common.slice_indexer(times.start, times.stop)]
        else:
            common = common.intersection(labels_as(list(times), common))
    if common.size == 0:
        raise TimeCoverageError(explain(
            "The fine and coarse datasets share no time" + (" in the requested window" if times is not None else ""),
            expected="at least one time present in both", found=f"fine {_span(ft)}; coarse {_span(ct)}; times={times}",
            fix="check the time ranges (and time zones / offsets) of the two sources"))
    return np.asarray(common.values)


def _span(t: np.ndarray) -> str:
    return f"{t.size} times {t.min()} .. {t.max()}" if t.size else "no times"


def _on_fine_grid(coarse: xr.Dataset, fine: xr.Dataset, method: str, options: dict) -> xr.Dataset:
    """The coarse variables on the fine grid (Regridder; identity when the grids already agree)."""
    cg, fg = find_grid(coarse), find_grid(fine)
    if cg.shape == fg.shape and np.allclose(cg.lat, fg.lat) and np.allclose(cg.lon, fg.lon):
        return coarse.rename({cg.y_dim: fg.y_dim, cg.x_dim: fg.x_dim}).drop_vars(
            [c for c in coarse.coords if set(coarse[c].dims) & {cg.y_dim, cg.x_dim}])
    from ..fields.regrid import Regridder
    from ..fields.winds import warn_if_grid_relative

    warn_if_grid_relative(coarse, "coarse input", fine)
    regridder = Regridder(coarse, fine, method=method, **options)
    if regridder.outside_nan:  # NaN inputs would make every loss NaN
        raise ConfigError(explain(
            f"The coarse grid does not cover {regridder.n_outside} points of the fine grid, and "
            "allow_outside=True would leave the training inputs NaN there",
            expected="a training store without NaN inputs", found=f"regrid_options {options}",
            fix="use allow_outside: nearest (data.regrid_options={allow_outside: nearest}) to take the nearest "
                "coarse value there, or crop the fine grid to the inside of the coarse cell centres"))
    if regridder.n_outside:
        import warnings

        warnings.warn(f"{regridder.n_outside} of {int(np.prod(regridder.target_shape))} fine grid points are outside "
                      "the coarse grid: their inputs are the nearest coarse values (allow_outside: nearest)",
                      stacklevel=3)
    return regridder(coarse)


def prepare(fine: xr.Dataset, coarse: xr.Dataset, out: str | os.PathLike, *, input_vars: Sequence[str],
            output_vars: Sequence[str], invariants: Sequence[str] = (), times=None,
            regrid_method: str = "bilinear", regrid_options: dict | None = None, chunks: dict | None = None,
            log_vars: Iterable[str] = (), log_eps: float = DEFAULT_LOG_EPS, convert_units: bool = True,
            overwrite: bool = False, stats_times=None, transforms: dict[str, str] | None = None,
            states: bool = False) -> Path:
    """Write the training store ``out`` (layout in the module docstring) and return its path.

    ``fine`` holds ``output_vars`` and ``invariants``; ``coarse`` holds ``input_vars`` (canonical
    names, found by alias / standard_name and converted to canonical units). Times are the inner join
    of both, optionally restricted by ``times`` (a label slice or a list); none left ->
    TimeCoverageError. ``regrid_options`` go to the :class:`~xkmcast.fields.regrid.Regridder` (``allow_outside``,
    ``subsample``, ``backend``) and are recorded with ``regrid_method``. ``log_vars`` (canonical names) get the
    log1p transform in the statistics.
    ``stats_times`` (a label slice, labels or positions; default all times) restricts the times the
    statistics are computed over, e.g. to the training window, so that no evaluation time leaks
    into the normalisation; the store records them in ``xkmcast_stats_times``.
    TimeCoverageError. ``transforms`` ``{canonical name: "log1p" | "sqrt"}`` (:mod:`xkmcast.fields.transforms`)
    are recorded in the statistics, computed on the transformed values of the input and the target of
    that variable; ``log_vars`` is the same as ``log1p`` for each name (with ``log_eps``).
    ``chunks`` overrides the default ``{"time": 1, y: -1, x: -1}``. Missing target values are counted
    (``xkmcast_missing``) and allowed, unless ``states`` (the targets are a forecaster's states); missing
    input or invariant values are an InvalidDataError, and nothing is written.
    """
    from ..fields.regrid import check_options

    out = Path(out)
    regrid_options = check_options(regrid_options)
    if out.exists() and not overwrite:
        raise ConfigError(explain("The output store exists already", found=str(out),
                                  fix="pass overwrite=True or choose another path"))
    fine_sel = _select(fine, [*output_vars, *invariants], convert_units)
    coarse_sel = _select(coarse, list(input_vars), convert_units)
    fdim, cdim = _time_dim(fine_sel, "fine"), _time_dim(coarse_sel, "coarse")
    if fdim is None or cdim is None:
        raise TimeCoverageError(explain("Both sources need a time dimension",
                                        found=f"fine: {fdim}, coarse: {cdim}"))
    fine_sel, coarse_sel = time_indexed(fine_sel, fdim, "time"), time_indexed(coarse_sel, cdim, "time")
    common = _common_times(fine_sel, coarse_sel, times)
    grid = find_grid(fine_sel)
    on_fine = _on_fine_grid(coarse_sel.sel(time=common), fine_sel, regrid_method, regrid_options)

    data = {}
    for v in input_vars:
        data[INPUT_PREFIX + v] = _f32(on_fine[v], "input")
    for v in output_vars:
        data[TARGET_PREFIX + v] = _f32(fine_sel[v].sel(time=common), "target")
    for v in invariants:
        inv = fine_sel[v]
        data[v] = _f32(inv.isel(time=0, drop=True) if "time" in inv.dims else inv, "invariant")
    coords = {k: c for k, c in fine_sel.coords.items() if k != "time" and set(c.dims) <= set(grid.dims)}
    ds = xr.Dataset(data).assign_coords(coords).assign_coords(time=common)
    ds["time"].attrs.update(standard_name="time", axis="T")
    if grid.grid_mapping and grid.grid_mapping_var is None and "crs" not in ds.variables:
        # a projection known from global attributes (WRF's MAP_PROJ), which the store's own attrs replace
        ds = ds.assign_coords(crs=xr.DataArray(np.int32(0), attrs=dict(grid.grid_mapping)))
        for var in ds.data_vars.values():
            var.attrs["grid_mapping"] = "crs"
    sizes = {"time": 1, grid.y_dim: -1, grid.x_dim: -1, **(chunks or {})}
    ds = ds.chunk({k: v for k, v in sizes.items() if k in ds.dims})
    for var in ds.variables.values():
        var.encoding = {}
    i_names, o_names, inv_names = store_names(input_vars, output_vars, invariants)
    log_names = [n for v in log_vars for n in (INPUT_PREFIX + v, TARGET_PREFIX + v) if n in ds.data_vars]
    store_transforms = {n: t for v, t in parse_transforms(transforms).items()
                        for n in (INPUT_PREFIX + v, TARGET_PREFIX + v) if n in ds.data_vars}
    ds.attrs = {
        "xkmcast_store": STORE_FORMAT,
        "xkmcast_input_vars": json.dumps(list(input_vars)),
        "xkmcast_output_vars": json.dumps(list(output_vars)),
        "xkmcast_invariants": json.dumps(list(invariants)),
        "regrid_method": regrid_method,
        "regrid_options": json.dumps(regrid_options),
        "title": "xkmcast training store",
    }

    with atomic_path(out, overwrite=overwrite) as tmp:
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, compute=True)
        whole = xr.open_zarr(tmp, consolidated=False)
        written = select_times(whole, stats_times)
        if written.sizes["time"] == 0:
            raise TimeCoverageError(explain("No store time lies in the statistics window", found=stats_times,
                                            expected=f"times within {_span(common)}"))
        import dask

        moments, finish = stats_graph(written, [*i_names, *o_names, *inv_names], log_vars={n: log_eps for n in log_names},
                                      eps=log_eps, transforms=store_transforms)
        counts = {n: whole[n].isnull().sum().data for n in [*i_names, *o_names, *inv_names]}
        moments, counts = dask.compute(moments, counts)  # one read of the store
        missing = _check_missing(whole, {n: int(c) for n, c in counts.items()}, o_names, states)
        import zarr

        zarr.open_group(str(tmp), mode="r+", zarr_format=3).attrs.update(
            {STATS_ATTR: finish(moments).to_json(), STATS_TIMES_ATTR: json.dumps(times_fingerprint(written["time"])),
             MISSING_ATTR: json.dumps(missing)})
    return out


def missing_state_error(names: Sequence[str]) -> InvalidDataError:
    """The error of a forecaster's state variables ``names`` (canonical) with missing values."""
    return InvalidDataError(explain(
        f"The state variable{'s' if len(names) > 1 else ''} {', '.join(names)} "
        f"{'have' if len(names) > 1 else 'has'} missing values (NaN)",
        expected="finite states: a forecaster reads the whole state at every step",
        found=f"missing values in {list(names)}",
        fix="fill them before preparing (e.g. ds.fillna(0) for precipitation outside a radar's coverage, "
            "ds.interpolate_na for gaps), or crop the grid to where the state has values"))


def _check_missing(store: xr.Dataset, counts: dict[str, int], targets: Sequence[str],
                   states: bool = False) -> dict[str, int]:
    """``{target name: number of missing values}`` of a written store; InvalidDataError when an input or
    an invariant has a missing value (the networks need every input), a target has no value at all, or
    (``states``: the targets are a forecaster's states, its next inputs) a target has a missing value.

    Missing target values (NaN: outside an observation network's domain, over the sea of a land-only
    analysis) are left out of the training losses and the statistics
    (:class:`~xkmcast.data.samples.DownscalingSamples`), and the model's output is missing where the
    target had no value at any training time."""
    if states and any(counts[n] for n in targets):
        raise missing_state_error([n[len(TARGET_PREFIX):] for n in targets if counts[n]])
    bad = {n: c for n, c in counts.items() if c and n not in targets}
    if bad:
        label = {n: f"coarse input {n[len(INPUT_PREFIX):]}" if n.startswith(INPUT_PREFIX) else f"invariant {n}"
                 for n in bad}
        name, n = next(iter(bad.items()))
        values = store[name]
        where = values.isnull()
        times = int(where.any([d for d in where.dims if d != "time"]).sum()) if "time" in where.dims else None
        raise InvalidDataError(explain(
            f"The {label[name]} has missing values on the fine grid"
            + (f" (and the {', '.join(label[k] for k in list(bad)[1:])})" if len(bad) > 1 else ""),
            expected="finite inputs and invariants everywhere (the networks read every pixel of them)",
            found=f"{n} NaN of {values.size} values" + (f", at {times} of {values.sizes['time']} times" if times else ""),
            fix=("fill the invariant where it is missing (e.g. orog.fillna(0) over the sea) " if "time" not in values.dims
                 else "fill the coarse source's missing values before preparing (e.g. coarse.interpolate_na(dim, "
                      "method='nearest', fill_value='extrapolate'), coarse.fillna(value)) or drop the times where a "
                      "whole field is missing (coarse.dropna('time', how='all')), or crop the fine grid to where the "
                      "coarse data has values: a bilinear fine point takes NaN from any of its 4 coarse neighbours")
                + ". Missing values of the fine targets are allowed: training leaves them out"))
    empty = [n for n in targets if counts.get(n) == store[n].size]
    if empty:
        raise InvalidDataError(explain(f"The target {empty[0]} has no value at all in the store",
                                       expected="some finite values of every target", found=f"all {store[empty[0]].size} NaN",
                                       fix="check the fine source's variable (its _FillValue, its units) and the times"))
    return {n: counts[n] for n in targets}


def _f32(da: xr.DataArray, role: str) -> xr.DataArray:
    """``da`` as float32 with its role, without coordinates that vary in time besides time itself (WRF's
    XLAT / XLONG (Time, y, x): the store's 2-D lat / lon hold the grid once, not once per time)."""
    da = da.drop_vars([c for c in da.coords if c != "time" and "time" in da[c].dims])
    out = da.astype("float32")
    out.attrs = {**{k: v for k, v in da.attrs.items() if k not in ("coordinates",)}, "xkmcast_role": role}
    return out
