"""The bridge xarray <-> tensors for downscaling: select, regrid, normalise, run, build the result.

``downscale(ds, model, members=8)`` takes a coarse dataset (ERA5 or any CF dataset holding the
variables the bundle asks for, found by canonical name / CF standard name / alias, units converted),
regrids it onto the bundle's fine grid, normalises it, runs the pipeline's ``sample`` (regression +
residual diffusion for CorrDiff) one time chunk at a time inside a dask graph, denormalises and
returns a CF-annotated Dataset with dims ``(member, time, y, x)`` (on a lat/lon model grid, its
latitude / longitude dims in place of ``y`` / ``x``).

Reproducibility contract: the noise of member ``k`` at valid time ``t`` comes from a generator seeded
by :func:`xkmcast.diffusion.seeds.row_seed` ``(seed, k, t)`` only, so the result does not depend on
``batch_size``, on the time chunking, on which other times are asked for, or on the dask scheduler.
With centred members (``centre``) member ``k`` also depends on the member count ``M`` (the ensemble
``(seed, M, t)`` is the same whatever the batching).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr

from ..errors import ConfigError, DomainCoverageError, GridError, InvalidDataError, XkmcastError, explain
from .grid import Grid, find_grid, find_time_dim, make_latlon_grid, time_indexed
from .variables import cf_attrs, select_variables

__all__ = ["downscale", "grid_dims", "model_grid", "model_result", "regrid_defaults", "ModelRef", "resolve_model",
           "to_model_inputs", "onto_input_grid"]


# ----------------------------------------------------------------------------------------- models


class ModelRef:
    """A picklable handle on a model: a bundle path + device, loaded once per process (dask workers).

    The cache key is the resolved path, the device and a stamp of the bundle's two files (inode,
    size, modification time): a relative and an absolute path share one entry, and a bundle
    re-exported to the same path (atomically: new inodes) is loaded afresh."""

    _cache: dict[tuple[str, str], tuple[tuple, Any]] = {}
    _lock = threading.Lock()

    def __init__(self, path: str, device: str = "cpu"):
        self.path, self.device = str(path), str(device)

    def _stamp(self, folder) -> tuple:
        from ..models.bundle import CONFIG, WEIGHTS

        stamp = []
        for name in (CONFIG, WEIGHTS):
            try:
                st = (folder / name).stat()
            except OSError:
                return ()
            stamp.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamp)

    def get(self):
        from pathlib import Path

        folder = Path(self.path).resolve()
        key, stamp = (str(folder), self.device), self._stamp(folder)
        with self._lock:
            cached = self._cache.get(key)
            if cached is None or cached[0] != stamp:
                from ..models.published import load

                self._cache[key] = (stamp, load(self.path, device=self.device).eval())
            return self._cache[key][1]


def resolve_model(model, device: str | None = None):
    """A pipeline from a pipeline, a bundle path or a :class:`ModelRef`; moved to ``device``."""
    from ..device import select_device

    dev = select_device(device)
    if isinstance(model, ModelRef):
        return model.get()
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        return ModelRef(str(model), str(dev)).get()
    return model.to(dev).eval()


def require_task(pipeline, *, forecast: bool, centre: bool | None = None) -> None:
    """XkmcastError unless ``pipeline`` forecasts (has ``step``) when ``forecast``, else downscales
    (has ``sample``); the message names the kinds that do (:data:`xkmcast.models.kinds.KINDS`). A
    ``centre`` setting needs a diffusion on a regression mean (ConfigError otherwise)."""
    from ..models.kinds import KINDS

    stages = getattr(pipeline, "stages", {})
    if centre is not None and not ("regression" in stages and "diffusion" in stages):
        raise ConfigError(explain("centre= applies to models whose diffusion adds members' residuals to a regression mean",
                                  expected="a model with regression and diffusion stages (CorrDiff, StormCast)",
                                  found=f"{pipeline.spec.kind} with stages {sorted(stages)}", fix="drop centre="))
    if hasattr(pipeline, "step" if forecast else "sample"):
        return
    kind = pipeline.spec.kind
    able = [k.name for k in KINDS.values() if k.forecast == forecast]
    if forecast:
        raise XkmcastError(explain(f"A {kind} model downscales, it does not step a state forward",
                                   expected=f"a model of kind {' / '.join(able)}", found=kind,
                                   fix="use ds.kmcast.downscale(model) for downscaling models"))
    raise XkmcastError(explain(f"A {kind} model steps a state forward, it does not downscale",
                               expected=f"a model of kind {' / '.join(able)}", found=kind,
                               fix="use state.kmcast.forecast(model, steps=..., background=...)"))


def _graph_handle(model, pipeline):
    """What the dask graph carries: a path handle when the model came from disk and is as loaded, else
    the object (a spec or weights edited in memory are not what the workers would load)."""
    from ..models.bundle import reloadable_source

    source = reloadable_source(pipeline)
    if source is not None:
        return ModelRef(source, str(pipeline.device))
    return pipeline


# ------------------------------------------------------------------------------------------ grids


def grid_dims(pipeline) -> tuple[str, str]:
    """The dims of the model grid in results: the 1-D latitude / longitude dims of a lat/lon grid
    (``spec.grid["latlon_dims"]``, e.g. ``("latitude", "longitude")``), those of a projected or rotated
    grid's y / x (``spec.grid["xy_dims"]``, e.g. ``("rlat", "rlon")``), else ``("y", "x")``."""
    dims = pipeline.spec.grid.get("latlon_dims") or pipeline.spec.grid.get("xy_dims")
    return (str(dims[0]), str(dims[1])) if dims else ("y", "x")


def model_grid(pipeline) -> xr.Dataset:
    """The model's fine grid as a coordinates-only CF Dataset: 1-D latitude / longitude dims and
    coordinates for a lat/lon grid (:func:`grid_dims`); else the grid's y / x dims (default ``y`` /
    ``x``) with 2-D ``lat`` / ``lon``, and their values (metres, or rotated degrees: axis Y / X) and the
    ``crs`` of a projected grid."""
    spec = pipeline.spec.grid
    lat = pipeline.grid_lat.detach().cpu().numpy().astype(float)
    lon = pipeline.grid_lon.detach().cpu().numpy().astype(float)
    ydim, xdim = grid_dims(pipeline)
    if spec.get("latlon_dims"):
        return make_latlon_grid(lat[:, 0], lon[0, :], lat_name=ydim, lon_name=xdim)
    x = np.asarray(spec["x"], float) if spec.get("x") is not None else None
    y = np.asarray(spec["y"], float) if spec.get("y") is not None else None
    grid = Grid(ydim, xdim, None, lat, lon, "lat", "lon", x, y, xdim, ydim, None, spec.get("grid_mapping"),
                xy_km=bool(spec.get("xy_km")))
    return grid.to_dataset()


def _wrap(dlon: np.ndarray) -> np.ndarray:
    return (dlon + 180.0) % 360.0 - 180.0


# ------------------------------------------------------------------------------------ the bridge


def to_model_inputs(ds: xr.Dataset, pipeline, names, *, role: str = "input", regrid_method: str = "bilinear",
                    regrid_options: dict | None = None, time_dim: str = "time", require_on_grid: bool = False,
                    check_ranges: bool = True):
    """Select ``names`` (canonical), check them (:mod:`xkmcast.fields.validate`: times distinct and not
    empty, values finite and, with ``check_ranges``, plausible), regrid onto the model grid
    (``regrid_method``, with the :class:`~xkmcast.fields.regrid.Regridder` options ``regrid_options``)
    and normalise: a lazy DataArray ``(time, channel, y, x)`` of float32 on the model grid, normalised
    with the statistics of ``role``. With ``require_on_grid`` a dataset that is not already on the
    model grid is refused (GridError) instead of regridded."""
    from .regrid import Regridder, check_options
    from .winds import warn_if_grid_relative
    from .validate import as_dataset, check_grid_dims, check_times, checked_values

    selected = select_variables(as_dataset(ds, role), names)
    src_grid = find_grid(selected)
    selected = time_indexed(selected, src_grid.time_dim)  # WRF: Time indexed by XTIME (the grid is the same)
    if role == "input" and pipeline.spec.extra.get("input_grid") is not None:
        selected = onto_input_grid(selected, pipeline.spec.extra["input_grid"], regrid_method)
        src_grid = find_grid(selected)
    target = model_grid(pipeline)
    tlat, tlon = (pipeline.grid_lat.detach().cpu().numpy(), pipeline.grid_lon.detach().cpu().numpy())
    check_times(selected, src_grid.time_dim, role)
    check_grid_dims(selected, src_grid, role, "for each {dim}: xr.concat([ds.sel({dim}=v).kmcast... for v in "
                                              "ds.{dim}.values], '{dim}')")
    selected = checked_values(selected, names, check_ranges=check_ranges, time_dim=src_grid.time_dim)
    same = src_grid.shape == tlat.shape and np.allclose(src_grid.lat, tlat, atol=1e-4) and \
        np.allclose(_wrap(src_grid.lon - tlon), 0.0, atol=1e-4)
    if same:
        on_grid = selected.rename({src_grid.y_dim: "y", src_grid.x_dim: "x"})
        on_grid = on_grid.drop_vars([c for c in on_grid.coords if set(on_grid[c].dims) & {"y", "x"}])
    elif require_on_grid:
        raise GridError(
            explain(
                "The state is not on the model's grid",
                expected=f"the bundle's grid {tlat.shape} (lat {tlat.min():.3f}..{tlat.max():.3f})",
                found=f"grid {src_grid.shape} (lat {src_grid.lat.min():.3f}..{src_grid.lat.max():.3f})",
                fix="give the initial state on the grid the model was trained on",
            )
        )
    else:
        warn_if_grid_relative(selected, role, target)
        try:
            regridder = Regridder(selected, target, method=regrid_method, **check_options(regrid_options))
        except DomainCoverageError as exc:
            raise DomainCoverageError(
                f"The {role} does not cover the model's grid, the grid its bundle was trained on ({tlat.shape}, "
                f"lat {tlat.min():.3f}..{tlat.max():.3f}); the model predicts on that grid only. {exc}") from None
        on_grid = regridder(selected)
        ty, tx = grid_dims(pipeline)
        on_grid = on_grid.rename({ty: "y", tx: "x"}) if (ty, tx) != ("y", "x") else on_grid
    normed = pipeline.stats_for(role).normalise(on_grid[list(names)])
    if src_grid.time_dim and src_grid.time_dim != time_dim:
        normed = normed.rename({src_grid.time_dim: time_dim})
    if time_dim not in normed.dims:
        normed = normed.expand_dims(time_dim)
    arr = normed.to_dataarray("channel").transpose(time_dim, "channel", "y", "x").astype("float32")
    return arr.drop_vars([c for c in arr.coords if c not in (time_dim, "channel")])


def onto_input_grid(ds: xr.Dataset, input_grid: dict, regrid_method: str = "bilinear") -> xr.Dataset:
    """``ds`` on the coarse grid a published package was trained on (``{"lat": [...], "lon": [...]}``,
    1-D), so that the model sees its inputs interpolated exactly as in training: data already on that
    grid pass unchanged, any other data covering it are regridded onto it first."""
    from .grid import make_latlon_grid
    from .regrid import Regridder

    lat, lon = np.asarray(input_grid["lat"], float), np.asarray(input_grid["lon"], float)
    src = find_grid(ds)
    if src.shape == (lat.size, lon.size) and np.allclose(src.lat, lat[:, None], atol=1e-6) and \
            np.allclose(_wrap(src.lon - lon[None, :]), 0.0, atol=1e-6):
        return ds
    target = make_latlon_grid(lat, lon)
    return Regridder(ds, target, method=regrid_method)(ds)


def downscale(
    ds: xr.Dataset,
    model,
    members: int = 1,
    *,
    seed: int = 0,
    sampler: str | None = None,
    num_steps: int | None = None,
    patch: tuple[int, int] | None = None,
    batch_size: int | None = None,
    time_chunk: int = 1,
    include_mean: bool = False,
    regrid_method: str | None = None,
    regrid_options: dict | None = None,
    device: str | None = None,
    precision: str = "fp32",
    check_ranges: bool = True,
    lead_times=None,
    centre: bool | None = None,
) -> xr.Dataset:
    """Downscale the coarse ``ds`` with ``model`` (a pipeline or a bundle path).

    Time-window packages (CorrDiff CMIP6 -> ERA5, ``load_model("corrdiff-cmip6-era5")``) take the window
    of each time from ``ds``'s time axis and give outputs at ``window centre + lead_times`` (hours or
    timedeltas, default -12 h, within [-12, +11] h); see :mod:`xkmcast.fields.downscale_window`
    for that input contract. ``lead_times`` applies to them only.

    ``regrid_method`` / ``regrid_options`` (e.g. ``{"allow_outside": True}``): how ``ds`` is regridded
    onto the model grid; by default as the model's training inputs were (``spec.grid["regrid"]``,
    bilinear for bundles that do not record it), the options given updating the recorded ones. With
    ``allow_outside=True`` the model grid points ``ds`` does not cover come out NaN (the network sees the
    normalised mean there), with ``"nearest"`` they take the nearest input value (as the recipes'
    training stores do); without it they raise DomainCoverageError.

    ``ds`` is a Dataset or a named DataArray. The input is checked first (:mod:`xkmcast.fields.validate`):
    distinct, non-empty times; finite values (NaN like inf: an InvalidDataError naming the variable);
    values within each variable's plausible range unless ``check_ranges=False``.

    ``centre``: the members' residuals centred on their mean, so that the ensemble mean is the regression
    mean (default: as the model records it, on for the residual models xkmcast trains; see
    :meth:`xkmcast.models.base.Pipeline.members_about_mean`).

    ``device``: "cuda", "cpu", ... (default: CUDA when present); ``precision="amp-bf16"`` runs the
    networks under bfloat16 autocast (CUDA and CPU), the sampler state staying float64; ``"auto"`` does
    where the device computes bfloat16 in hardware (:func:`xkmcast.device.resolve_precision`).

    Returns a Dataset on the model grid with one variable per output channel, dims
    ``(member, time, y, x)``, 2-D ``lat`` / ``lon``, the grid's ``crs`` and CF attributes (on a lat/lon
    model grid dims ``(member, time, <lat>, <lon>)`` with 1-D coordinates, see :func:`model_grid`); with
    ``include_mean`` also ``<var>_regression`` ``(time, y, x)``, the regression mean; the input's other
    coordinates along time (a forecast's ``forecast_reference_time`` and ``step``) are kept. With
    dask-backed input the result is dask-backed (one task per time chunk); with numpy input it is
    computed before returning.
    """
    from ..device import check_precision
    from .validate import as_dataset, require_positive

    check_precision(precision)
    require_positive(members=members, time_chunk=time_chunk, num_steps=num_steps, batch_size=batch_size)
    ds = as_dataset(ds)
    pipeline = resolve_model(model, device)
    spec = pipeline.spec
    require_task(pipeline, forecast=False, centre=centre)
    if spec.extra.get("time_window"):
        from .downscale_window import downscale_window

        return downscale_window(ds, pipeline, members, seed=seed, lead_times=lead_times, include_mean=include_mean,
                                regrid_method=regrid_method or "bilinear", check_ranges=check_ranges,
                                precision=precision, sampler=sampler, num_steps=num_steps, patch=patch,
                                batch_size=batch_size, centre=centre)
    if lead_times is not None:
        raise ConfigError(explain("lead_times only applies to time-window packages (CorrDiff CMIP6)",
                                  found=lead_times, fix="drop lead_times: this model downscales each time of ds"))
    lazy_input = any(v.chunks is not None for v in ds.data_vars.values())
    method, options = regrid_defaults(pipeline, regrid_method, regrid_options)
    inputs = to_model_inputs(ds, pipeline, spec.input_vars, regrid_method=method, regrid_options=options,
                             check_ranges=check_ranges)
    inputs = inputs.chunk({"time": time_chunk, "channel": -1, "y": -1, "x": -1})
    times = inputs["time"].values
    n_out = len(spec.output_vars)
    n_lead = members + (1 if include_mean else 0)
    run = functools.partial(
        _downscale_block,
        handle=_graph_handle(model, pipeline),
        times=times,
        members=members,
        seed=seed,
        include_mean=include_mean,
        options={"sampler": sampler, "num_steps": num_steps, "patch": patch, "batch_size": batch_size, "centre": centre},
        precision=precision,
        outside_nan=options.get("allow_outside") is True,
    )
    data = dsa.map_blocks(
        run,
        inputs.data,
        dtype=np.float32,
        new_axis=[0],
        chunks=((n_lead,), inputs.data.chunks[0], (n_out,), inputs.data.chunks[2], inputs.data.chunks[3]),
        name="xkmcast-downscale",
    )
    time = {"time": ("time", times, {"standard_name": "time", "axis": "T"}), **_time_coords(ds, len(times))}
    result = model_result(pipeline, data[:members], ("member", "time"), time, "downscaling",
                          mean=data[members] if include_mean else None)
    return result if lazy_input else result.compute()


def _time_coords(ds: xr.Dataset, n: int) -> dict:
    """The input's coordinates along its time axis besides the times themselves, kept along the result's
    time: a forecast's ``forecast_reference_time`` and ``step`` (:mod:`xkmcast.data.grib`), ERA5's
    ``expver``."""
    from .coords import coordinate_names

    dim = find_time_dim(ds)
    if dim is None:
        return {}
    times = set(coordinate_names("time")) | {dim}
    return {k: ("time", c.values, c.attrs) for k, c in ds.coords.items()
            if c.dims == (dim,) and k not in times and c.size == n}


def regrid_defaults(pipeline, method: str | None, options: dict | None) -> tuple[str, dict]:
    """``(method, options)`` of a call: ``method`` or the one recorded in ``spec.grid["regrid"]`` (else
    bilinear); the recorded options when the method is the recorded one, updated with ``options``."""
    recorded = pipeline.spec.grid.get("regrid") or {}
    rec_method = recorded.get("method", "bilinear")
    chosen = method or rec_method
    base = dict(recorded.get("options") or {}) if chosen == rec_method else {}
    return chosen, {**base, **(options or {})}


def _downscale_block(block: np.ndarray, *, handle, times, members, seed, include_mean, options, precision="fp32",
                     outside_nan=False, block_info=None):
    """One time chunk: (t, C_in, H, W) normalised -> (members [+1 mean], t, C_out, H, W) physical.

    ``outside_nan`` (``allow_outside``): grid points where the input is NaN (outside its domain) are fed
    zeros (the normalised mean) and come out NaN; otherwise NaN input is refused."""
    import torch

    from ..diffusion.seeds import row_seeds

    pipeline = handle.get() if isinstance(handle, ModelRef) else handle
    start, stop = block_info[0]["array-location"][0] if block_info else (0, block.shape[0])
    outside = ~np.isfinite(block).all(axis=1) if outside_nan else None  # (t, H, W)
    if outside is not None:
        block = np.where(outside[:, None], 0.0, block).astype(block.dtype)
    if not np.isfinite(block).all():
        bad = [str(t) for t, b in zip(times[start:stop], block) if not np.isfinite(b).all()]
        raise InvalidDataError(
            explain(
                "The input holds NaN or infinite values on the model grid",
                expected="finite values everywhere the model grid lies",
                found=f"non-finite values at times {bad[:5]}",
                fix="fill or drop those times (ds.dropna / ds.fillna) or check the domain coverage",
            )
        )
    seeds = [row_seeds(seed, members, t) for t in times[start:stop]]
    cond = torch.from_numpy(np.ascontiguousarray(block)).to(pipeline.device)
    from ..device import autocast

    extra = pipeline.spec.extra
    when = {"times": times[start:stop]} if extra.get("time_channels") else {}
    with torch.no_grad(), autocast(pipeline.device, precision):
        samples, mean = pipeline.sample(cond, seeds=seeds, **when, **{k: v for k, v in options.items() if v is not None})
    out = samples.float().cpu().numpy()  # (M, t, C_out, H, W)
    if include_mean:
        out = np.concatenate([out, mean.float().cpu().numpy()[None]], axis=0)
    if outside is not None:
        out = np.where(outside[None, :, None], np.nan, out)
    out = pipeline.stats_for("output").denormalise(out, pipeline.spec.output_vars, axis=2)
    if extra.get("output_recipe"):  # a package's own post-processing (xkmcast.fields.output_recipe)
        from .output_recipe import apply_output_recipe

        out = apply_output_recipe(out, extra["output_recipe"], pipeline.spec.output_vars, times[start:stop],
                                  pipeline.grid_lat.cpu().numpy(), pipeline.grid_lon.cpu().numpy())
    return out.astype(np.float32)


def model_result(pipeline, data, dims: tuple[str, ...], coords: dict, task: str, mean=None) -> xr.Dataset:
    """The CF Dataset of a model's output: one variable per output channel of ``data``
    ``(*dims, channel, y, x)`` (``dims`` starting with ``member``), on the model grid
    (:func:`model_grid`: its lat/lon dims, or y / x with 2-D lat / lon and ``crs``), with ``coords``
    for the other dims (variables named ``spec.extra["output_names"]`` when a package renames its
    channels, else ``spec.output_vars``); ``mean`` ``(*dims[1:], channel, y, x)`` adds
    ``<var>_regression``, the regression mean. ``task`` ("downscaling", "forecast") names the source.
    Scalar fields are single-valued on the pole rows of a latitude / longitude grid
    (:mod:`xkmcast.fields.poles`), but for a published package's (:func:`pole_values`)."""
    grid = model_grid(pipeline)
    ydim, xdim = grid_dims(pipeline)
    members = data.shape[0]
    names = pipeline.spec.extra.get("output_names") or pipeline.spec.output_vars
    data, mean = (None if x is None else pole_values(pipeline, x, names) for x in (data, mean))
    all_coords = {**grid.coords, "member": ("member", np.arange(members), {"long_name": "ensemble member"}), **coords}
    gm = {"grid_mapping": "crs"} if "crs" in grid.coords else {}
    axis = (slice(None),) * len(dims)
    variables = {}
    for i, name in enumerate(names):
        attrs = {**cf_attrs(name), **gm}
        variables[name] = ((*dims, ydim, xdim), data[(*axis, i)], attrs)
        if mean is not None:
            mean_attrs = {**attrs, "long_name": attrs["long_name"] + " (regression mean)"}
            variables[f"{name}_regression"] = ((*dims[1:], ydim, xdim), mean[(*axis[1:], i)], mean_attrs)
    attrs = {"Conventions": "CF-1.8", "source": f"xkmcast {pipeline.spec.kind} {task}",
             "xkmcast_model_kind": pipeline.spec.kind}
    return xr.Dataset(variables, coords=all_coords, attrs=attrs)


def pole_values(pipeline, data, names):
    """``data`` (..., channel, y, x) with the scalar channels of ``names`` single-valued on the model
    grid's pole rows (:func:`xkmcast.fields.poles.single_valued_poles`); as it is for a published
    package (``spec.extra["package"]``), whose outputs are what its publisher's code gives."""
    from .poles import pole_rows, scalar_channels, single_valued_poles

    if pipeline.spec.extra.get("package"):
        return data
    rows = pole_rows(pipeline.grid_lat.detach().cpu().numpy())
    return single_valued_poles(data, rows, scalar_channels(names)) if len(rows) else data
