"""Readers of the two published CorrDiff layouts: HRRR-Mini (NetCDF4 groups) and CWA Taiwan (zarr).

Both return ``{"target": Dataset, "input": Dataset}`` following the conventions of
:mod:`xkmcast.data.layouts` (one variable per channel with canonical names, CF lat/lon, stats in
``attrs["xkmcast_stats"]``).

HRRR-Mini (``hrrr_mini_train.nc`` + ``stats.json``), as read by PhysicsNeMo's CorrDiff-Mini loader:

* root: ``time(sample)`` and ``coord(sample, 2)``, the row / column of the patch's first pixel in
  the HRRR grid of the ``invariant`` group (the loader crops invariants as ``[i:i+ny, j:j+nx]``);
* group ``output``: HRRR targets ``(sample, ny, nx)`` (64 x 64); group ``input``: ERA5
  ``(sample, ny/f, nx/f)`` on blocks of f x f HRRR pixels (the loader upsamples by f = ny / ny_in);
* group ``invariant``: ``latitude``, ``longitude``, ``elev_mean``, ``lsm_mean`` on the whole HRRR grid;
* ``stats.json``: ``{"input"|"output"|"invariant": {variable: {"mean": m, "std": s}}}``.

Patches sit at different places, so latitude / longitude are ``(sample, y, x)``: the HRRR grid cropped
at each patch's offsets (lazily, with dask). The input's latitude / longitude are the means over each
f x f block of the patch, the cells the loader's upsampling assumes. ``elev_mean`` / ``lsm_mean`` are
cropped the same way and named ``orog`` / ``lsm`` (role ``invariant``).

CWA (``2023-01-24-cwb-4years.zarr``), as read by PhysicsNeMo's ``datasets/cwb.py``: arrays ``cwb`` /
``era5`` ``(time, channel, south_north, west_east)`` with ``*_variable`` (names), ``*_pressure`` (hPa,
NaN at the surface), ``*_center`` / ``*_scale`` (normalisation), ``cwb_valid(time)``,
``era5_valid(time, channel)``, ``XLAT`` / ``XLONG`` and ``time``. ERA5 is stored already interpolated to
the 2 km grid. Channel ``geopotential_height`` holds ERA5 geopotential in m2 s-2 (its centre values
are ~5.5e4 at 500 hPa), so it is named ``z<level>``. The valid flags become the coordinate ``valid``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from ..fields.coords import coordinate_attrs
from ..errors import InvalidDataError, MissingVariableError, explain
from .layouts import channel_dataset, channel_names, index_xy, set_stats, variable_attrs

__all__ = ["read_cwa", "read_hrrr_mini"]

HRRR_MINI_GROUPS = ("input", "output", "invariant")
#: HRRR-Mini invariant names -> canonical (cell means of the 3 km fields).
HRRR_MINI_INVARIANTS = {"elev_mean": "orog", "lsm_mean": "lsm"}


# ------------------------------------------------------------------------------------- HRRR-Mini


def _hdf5_groups(path: Path) -> list[str]:
    import h5py

    if not h5py.is_hdf5(path):
        raise InvalidDataError(
            explain("Not a NetCDF4/HDF5 file, so not the HRRR-Mini layout", expected="hrrr_mini_train.nc (NetCDF4)", found=str(path))
        )
    with h5py.File(path, "r") as f:
        return sorted(k for k, v in f.items() if isinstance(v, h5py.Group))


def _find(ds: xr.Dataset, names: tuple[str, ...], what: str, where: str) -> str:
    for name in names:
        if name in ds.variables:
            return name
    raise MissingVariableError(
        explain(f"The {where} has no {what}", expected=list(names), found=list(ds.variables))
    )


def _crop(full: np.ndarray, offsets: np.ndarray, ny: int, nx: int):
    """Lazy ``(n, ny, nx)`` stack of ``full[i:i+ny, j:j+nx]`` for each offset row ``(i, j)``."""
    import dask.array as da

    offsets_d = da.from_array(offsets, chunks=(max(1, min(len(offsets), 512)), 2))

    def block(rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.empty((0, ny, nx), full.dtype)
        return np.stack([full[i : i + ny, j : j + nx] for i, j in rows])

    return offsets_d.map_blocks(
        block, dtype=full.dtype, drop_axis=1, new_axis=[1, 2], chunks=(offsets_d.chunks[0], (ny,), (nx,))
    )


def _block_mean(arr, factor: int, angular: bool = False):
    """Mean over f x f blocks of the last two axes; ``angular`` averages longitudes on the circle."""
    n, ny, nx = arr.shape
    if angular:
        z = np.exp(1j * np.deg2rad(arr))
        z = z.reshape(n, ny // factor, factor, nx // factor, factor).mean(axis=(2, 4))
        return np.rad2deg(np.angle(z))
    return arr.reshape(n, ny // factor, factor, nx // factor, factor).mean(axis=(2, 4))


def _group_channels(ds: xr.Dataset, sample_dim: str, where: str) -> tuple[list[str], tuple[str, str]]:
    variables = [v for v in ds.data_vars if ds[v].ndim == 3]
    if not variables:
        raise MissingVariableError(
            explain(f"The HRRR-Mini group {where!r} has no (sample, y, x) variables", found=list(ds.data_vars))
        )
    dims = ds[variables[0]].dims
    if dims[0] != sample_dim and sample_dim not in dims:
        raise InvalidDataError(explain(f"Group {where!r} does not share the sample dimension", expected=sample_dim, found=dims))
    return variables, (dims[1], dims[2])


def read_hrrr_mini(path: str | Path, *, stats_path: str | Path | None = None, chunks: dict | None = None) -> dict[str, xr.Dataset]:
    """Open ``hrrr_mini_train.nc`` (and ``stats.json`` beside it, or ``stats_path``); see the module docstring."""
    path = Path(path)
    groups = _hdf5_groups(path)
    missing = [g for g in HRRR_MINI_GROUPS if g not in groups]
    if missing:
        raise InvalidDataError(
            explain(f"The HRRR-Mini file lacks the group(s) {missing}", expected=list(HRRR_MINI_GROUPS), found=groups or "no groups")
        )
    opts = {"engine": "h5netcdf", "chunks": chunks if chunks is not None else {}}
    root = xr.open_dataset(path, **opts)
    time_name = _find(root, ("time",), "sample times", "HRRR-Mini root group")
    coord_name = _find(root, ("coord",), "patch offsets (coord)", "HRRR-Mini root group")
    sample_dim = root[time_name].dims[0]
    out = xr.open_dataset(path, group="output", **opts)
    inp = xr.open_dataset(path, group="input", **opts)
    inv = xr.open_dataset(path, group="invariant", engine="h5netcdf")

    out_vars, (oy, ox) = _group_channels(out, sample_dim, "output")
    in_vars, (iy, ix) = _group_channels(inp, sample_dim, "input")
    ny, nx, ny_in, nx_in = out.sizes[oy], out.sizes[ox], inp.sizes[iy], inp.sizes[ix]
    factor = ny // ny_in
    if ny % ny_in or nx % nx_in or nx // nx_in != factor:
        raise InvalidDataError(
            explain("HRRR-Mini input and output patch sizes are not a whole multiple", expected="output = f x input in y and x", found=f"output {ny}x{nx}, input {ny_in}x{nx_in}")
        )
    lat_name = _find(inv, ("latitude", "lat"), "latitude", "HRRR-Mini invariant group")
    lon_name = _find(inv, ("longitude", "lon"), "longitude", "HRRR-Mini invariant group")
    lat_full = np.asarray(inv[lat_name].values, dtype=np.float64)
    lon_full = np.asarray(inv[lon_name].values, dtype=np.float64)
    offsets = np.asarray(root[coord_name].values).astype(np.int64).reshape(-1, 2)
    grid_ny, grid_nx = lat_full.shape
    if len(offsets) and (offsets.min() < 0 or (offsets[:, 0] + ny).max() > grid_ny or (offsets[:, 1] + nx).max() > grid_nx):
        raise InvalidDataError(
            explain("HRRR-Mini patch offsets fall outside the invariant grid", expected=f"0 <= i <= {grid_ny - ny}, 0 <= j <= {grid_nx - nx}", found=f"rows {offsets[:, 0].min()}..{offsets[:, 0].max()}, columns {offsets[:, 1].min()}..{offsets[:, 1].max()}")
        )

    stats = _hrrr_mini_stats(stats_path if stats_path is not None else path.with_name("stats.json"))
    dims3 = ("sample", "y", "x")
    lat, lon = _crop(lat_full, offsets, ny, nx), _crop(lon_full, offsets, ny, nx)
    common = {
        "time": ("sample", root[time_name].values, {"standard_name": "time", "long_name": "valid time"}),
        "y_offset": ("sample", offsets[:, 0], {"long_name": "row of the patch's first pixel in the HRRR grid"}),
        "x_offset": ("sample", offsets[:, 1], {"long_name": "column of the patch's first pixel in the HRRR grid"}),
    }

    def group_dataset(ds, variables, ydim, xdim, role, group_key, lat_, lon_):
        mapping = {ds[variables[0]].dims[0]: "sample", ydim: "y", xdim: "x"}
        renamed = ds[variables].rename({k: v for k, v in mapping.items() if k != v})
        names = channel_names(variables)
        data = {}
        part_stats = {}
        for name, label in zip(names, variables):
            var = renamed[label].variable.copy()
            var.attrs = {**variable_attrs(name, label), "xkmcast_role": role}
            data[name] = var
            if label in stats.get(group_key, {}):
                part_stats[name] = (stats[group_key][label]["mean"], stats[group_key][label]["std"])
        coords = {**common, "lat": (dims3, lat_, coordinate_attrs("latitude")), "lon": (dims3, lon_, coordinate_attrs("longitude"))}
        return xr.Dataset(data, coords=coords), part_stats

    target, target_stats = group_dataset(out, out_vars, oy, ox, "target", "output", lat, lon)
    for label, canon in HRRR_MINI_INVARIANTS.items():
        if label in inv.data_vars:
            field = _crop(np.asarray(inv[label].values), offsets, ny, nx)
            target[canon] = (dims3, field, {**variable_attrs(canon, label), "xkmcast_role": "invariant"})
            if label in stats.get("invariant", {}):
                target_stats[canon] = (stats["invariant"][label]["mean"], stats["invariant"][label]["std"])
    lat_in, lon_in = _block_mean(lat, factor), _block_mean(lon, factor, angular=True)
    source, source_stats = group_dataset(inp, in_vars, iy, ix, "input", "input", lat_in, lon_in)
    target.attrs = {"xkmcast_layout": "hrrr_mini", "source": str(path)}
    source.attrs = {"xkmcast_layout": "hrrr_mini", "source": str(path), "xkmcast_upsample_factor": factor}
    return {
        "target": set_stats(index_xy(target), target_stats),
        "input": set_stats(index_xy(source), source_stats),
    }


def _hrrr_mini_stats(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        stats = json.load(f)
    if not isinstance(stats, dict):
        raise InvalidDataError(explain("stats.json is malformed", expected='{"input": {var: {"mean", "std"}}, ...}', found=type(stats).__name__))
    return stats


# ------------------------------------------------------------------------------------------- CWA

CWA_REQUIRED = ("cwb", "cwb_variable", "era5", "era5_variable", "XLAT", "XLONG", "time")


def read_cwa(path: str | Path, *, consolidated: bool | None = None, chunks: dict | None = None) -> dict[str, xr.Dataset]:
    """Open the CWA Taiwan zarr store; see the module docstring."""
    path = Path(path)
    if consolidated is None:
        consolidated = (path / ".zmetadata").exists() or None
    ds = xr.open_zarr(path, consolidated=consolidated, chunks=chunks if chunks is not None else {})
    missing = [v for v in CWA_REQUIRED if v not in ds.variables]
    if missing:
        raise MissingVariableError(
            explain(f"The CWA store lacks {missing}", expected=list(CWA_REQUIRED), found=sorted(map(str, ds.variables)))
        )
    ydim, xdim = ds["XLAT"].dims
    coords = {
        "lat": (("y", "x"), ds["XLAT"].values, coordinate_attrs("latitude")),
        "lon": (("y", "x"), ds["XLONG"].values, coordinate_attrs("longitude")),
    }
    parts = {}
    for prefix, role in (("cwb", "target"), ("era5", "input")):
        da = ds[prefix]
        if da.ndim != 4 or da.dims[2:] != (ydim, xdim):
            raise InvalidDataError(
                explain(f"The CWA array {prefix!r} has the wrong shape", expected=f"(time, channel, {ydim}, {xdim})", found=da.dims)
            )
        channel_dim = da.dims[1]
        labels = [str(v) for v in np.asarray(ds[f"{prefix}_variable"].values)]
        levels = np.asarray(ds[f"{prefix}_pressure"].values, dtype=float) if f"{prefix}_pressure" in ds else None
        names = channel_names(labels, levels)
        da = da.rename({ydim: "y", xdim: "x"}).drop_vars([c for c in da.coords if c != "time"])
        part = channel_dataset(da, channel_dim, names, labels, role, coords)
        valid = _cwa_valid(ds, prefix)
        if valid is not None:
            part = part.assign_coords(valid=("time", valid, {"long_name": f"all {prefix} channels valid at this time"}))
        stats = {}
        if f"{prefix}_center" in ds and f"{prefix}_scale" in ds:
            center, scale = np.asarray(ds[f"{prefix}_center"].values), np.asarray(ds[f"{prefix}_scale"].values)
            stats = {n: (center[k], scale[k]) for k, n in enumerate(names)}
        part.attrs = {"xkmcast_layout": "cwa", "source": str(path)}
        parts[role] = set_stats(index_xy(part), stats)
    return parts


def _cwa_valid(ds: xr.Dataset, prefix: str):
    name = f"{prefix}_valid"
    if name not in ds:
        return None
    valid = np.asarray(ds[name].values) != 0
    return valid.all(axis=-1) if valid.ndim == 2 else valid
