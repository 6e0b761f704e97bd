"""The bridge xarray <-> tensors for downscaling: select, regrid, normalise, run, build the result.

``downscale(ds, model, members=8)`` takes a coarse dataset (ERA5 or any CF dataset holding the
variables the bundle asks for, found by canonical name / CF standard name / alias, units converted),
regrids it onto the bundle's fine grid, normalises it, runs the pipeline's ``sample`` (regression +
residual diffusion for CorrDiff) one time chunk at a time inside a dask graph, denormalises and
returns a CF-annotated Dataset with dims ``(member, time, y, x)``.

Reproducibility contract: the noise of member ``k`` at valid time ``t`` comes from a generator seeded
by :func:`xkmcast.diffusion.seeds.row_seed` ``(seed, k, t)`` only, so the result does not depend on
``batch_size``, on the time chunking, on which other times are asked for, or on the dask scheduler.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr

from ..errors import GridError, InvalidDataError, XkmcastError, explain
from .grid import Grid, find_grid
from .variables import cf_attrs, select_variables

__all__ = ["downscale", "model_grid", "model_result", "ModelRef", "resolve_model", "to_model_inputs", "onto_input_grid"]


# ----------------------------------------------------------------------------------------- models


class ModelRef:
    """A picklable handle on a model: a bundle path + device, loaded once per process (dask workers)."""

    _cache: dict[tuple[str, str], Any] = {}
    _lock = threading.Lock()

    def __init__(self, path: str, device: str = "cpu"):
        self.path, self.device = str(path), str(device)

    def get(self):
        key = (self.path, self.device)
        with self._lock:
            if key not in self._cache:
                from ..models.published import load

                self._cache[key] = load(self.path, device=self.device).eval()
            return self._cache[key]


def resolve_model(model, device: str | None = None):
    """A pipeline from a pipeline, a bundle path or a :class:`ModelRef`; moved to ``device``."""
    from ..device import select_device

    dev = select_device(device)
    if isinstance(model, ModelRef):
        return model.get()
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        return ModelRef(str(model), str(dev)).get()
    return model.to(dev).eval()


def require_task(pipeline, *, forecast: bool) -> None:
    """XkmcastError unless ``pipeline`` forecasts (has ``step``) when ``forecast``, else downscales
    (has ``sample``); the message names the kinds that do (:data:`xkmcast.models.kinds.KINDS`)."""
    from ..models.kinds import KINDS

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
    """What the dask graph carries: a path handle when the model came from disk, else the object."""
    source = getattr(pipeline, "source_path", None)
    if source is not None:
        return ModelRef(source, str(pipeline.device))
    return pipeline


# ------------------------------------------------------------------------------------------ grids


def model_grid(pipeline) -> xr.Dataset:
    """The model's fine grid as a coordinates-only CF Dataset (dims ``y``, ``x``)."""
    spec = pipeline.spec.grid
    lat = pipeline.grid_lat.detach().cpu().numpy().astype(float)
    lon = pipeline.grid_lon.detach().cpu().numpy().astype(float)
    x = np.asarray(spec["x"], float) if spec.get("x") is not None else None
    y = np.asarray(spec["y"], float) if spec.get("y") is not None else None
    grid = Grid("y", "x", None, lat, lon, "lat", "lon", x, y, "x", "y", None, spec.get("grid_mapping"))
    return grid.to_dataset()


def _wrap(dlon: np.ndarray) -> np.ndarray:
    return (dlon + 180.0) % 360.0 - 180.0


# ------------------------------------------------------------------------------------ the bridge


def to_model_inputs(ds: xr.Dataset, pipeline, names, *, role: str = "input", regrid_method: str = "bilinear",
                    time_dim: str = "time", require_on_grid: bool = False):
    """Select ``names`` (canonical), regrid onto the model grid and normalise: a lazy DataArray
    ``(time, channel, y, x)`` of float32 on the model grid, normalised with the statistics of
    ``role``. With ``require_on_grid`` a dataset that is
    not already on the model grid is refused (GridError) instead of regridded."""
    from .regrid import Regridder

    selected = select_variables(ds, names)
    if role == "input" and pipeline.spec.extra.get("input_grid") is not None:
        selected = onto_input_grid(selected, pipeline.spec.extra["input_grid"], regrid_method)
    target = model_grid(pipeline)
    src_grid = find_grid(selected)
    same = src_grid.shape == target.lat.shape and np.allclose(src_grid.lat, target.lat.values, atol=1e-4) and \
        np.allclose(_wrap(src_grid.lon - target.lon.values), 0.0, atol=1e-4)
    if same:
        on_grid = selected.rename({src_grid.y_dim: "y", src_grid.x_dim: "x"})
        on_grid = on_grid.drop_vars([c for c in on_grid.coords if set(on_grid[c].dims) & {"y", "x"}])
    elif require_on_grid:
        raise GridError(
            explain(
                "The state is not on the model's grid",
                expected=f"the bundle's grid {target.lat.shape} "
                f"(lat {float(target.lat.min()):.3f}..{float(target.lat.max()):.3f})",
                found=f"grid {src_grid.shape} (lat {src_grid.lat.min():.3f}..{src_grid.lat.max():.3f})",
                fix="give the initial state on the grid the model was trained on",
            )
        )
    else:
        on_grid = Regridder(selected, target, method=regrid_method)(selected)
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
    regrid_method: str = "bilinear",
    device: str | None = None,
    precision: str = "fp32",
) -> xr.Dataset:
    """Downscale the coarse ``ds`` with ``model`` (a pipeline or a bundle path).

    ``device``: "cuda", "cpu", ... (default: CUDA when present); ``precision="amp-bf16"`` runs the
    networks under bfloat16 autocast (CUDA and CPU), the sampler state staying float64.

    Returns a Dataset on the model grid with one variable per output channel, dims
    ``(member, time, y, x)``, 2-D ``lat`` / ``lon``, the grid's ``crs`` and CF attributes; with
    ``include_mean`` also ``<var>_regression`` ``(time, y, x)``, the regression mean. With
    dask-backed input the result is dask-backed (one task per time chunk); with numpy input it is
    computed before returning.
    """
    from ..device import check_precision

    check_precision(precision)
    pipeline = resolve_model(model, device)
    spec = pipeline.spec
    require_task(pipeline, forecast=False)
    lazy_input = any(v.chunks is not None for v in ds.data_vars.values())
    inputs = to_model_inputs(ds, pipeline, spec.input_vars, regrid_method=regrid_method)
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
        options={"sampler": sampler, "num_steps": num_steps, "patch": patch, "batch_size": batch_size},
        precision=precision,
    )
    data = dsa.map_blocks(
        run,
        inputs.data,
        dtype=np.float32,
        new_axis=[0],
        chunks=((n_lead,), inputs.data.chunks[0], (n_out,), inputs.data.chunks[2], inputs.data.chunks[3]),
        name="xkmcast-downscale",
    )
    time = {"time": ("time", times, {"standard_name": "time", "axis": "T"})}
    result = model_result(pipeline, data[:members], ("member", "time"), time, "downscaling",
                          mean=data[members] if include_mean else None)
    return result if lazy_input else result.compute()


def _downscale_block(block: np.ndarray, *, handle, times, members, seed, include_mean, options, precision="fp32",
                     block_info=None):
    """One time chunk: (t, C_in, H, W) normalised -> (members [+1 mean], t, C_out, H, W) physical."""
    import torch

    from ..diffusion.seeds import row_seeds

    pipeline = handle.get() if isinstance(handle, ModelRef) else handle
    start, stop = block_info[0]["array-location"][0] if block_info else (0, block.shape[0])
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

    with torch.no_grad(), autocast(pipeline.device, precision):
        samples, mean = pipeline.sample(cond, seeds=seeds, **{k: v for k, v in options.items() if v is not None})
    out = samples.float().cpu().numpy()  # (M, t, C_out, H, W)
    if include_mean:
        out = np.concatenate([out, mean.float().cpu().numpy()[None]], axis=0)
    return pipeline.stats_for("output").denormalise(out, pipeline.spec.output_vars, axis=2).astype(np.float32)


def model_result(pipeline, data, dims: tuple[str, ...], coords: dict, task: str, mean=None) -> xr.Dataset:
    """The CF Dataset of a model's output: one variable per output channel of ``data``
    ``(*dims, channel, y, x)`` (``dims`` starting with ``member``), on the model grid (2-D lat / lon,
    ``crs``), with ``coords`` for the other dims; ``mean`` ``(*dims[1:], channel, y, x)`` adds
    ``<var>_regression``, the regression mean. ``task`` ("downscaling", "forecast") names the source."""
    grid = model_grid(pipeline)
    members = data.shape[0]
    all_coords = {**grid.coords, "member": ("member", np.arange(members), {"long_name": "ensemble member"}), **coords}
    gm = {"grid_mapping": "crs"} if "crs" in grid.coords else {}
    axis = (slice(None),) * len(dims)
    variables = {}
    for i, name in enumerate(pipeline.spec.output_vars):
        attrs = {**cf_attrs(name), **gm}
        variables[name] = ((*dims, "y", "x"), data[(*axis, i)], attrs)
        if mean is not None:
            mean_attrs = {**attrs, "long_name": attrs["long_name"] + " (regression mean)"}
            variables[f"{name}_regression"] = ((*dims[1:], "y", "x"), mean[(*axis[1:], i)], mean_attrs)
    attrs = {"Conventions": "CF-1.8", "source": f"xkmcast {pipeline.spec.kind} {task}",
             "xkmcast_model_kind": pipeline.spec.kind}
    return xr.Dataset(variables, coords=all_coords, attrs=attrs)
