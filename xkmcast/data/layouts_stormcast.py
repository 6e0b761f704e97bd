"""Reader of the StormCast HRRR + ERA5 training store (PhysicsNeMo ``data_loader_hrrr_era5.py``).

Layout under ``<location>``::

    era5/{train,valid,test}/<YEAR>.zarr     variable ``data`` (time, channel, latitude, longitude)
    era5/stats/{means,stds}.npy             per-channel normalisation of ERA5
    <hrrr>/invariants.zarr                  ``HRRR_invariants`` (channel, y, x), e.g. lsm, orog
    <hrrr>/<stats>/{means,stds}.npy         per-channel normalisation of HRRR
    <hrrr>/{train,valid,test}/<YEAR>.zarr   variable ``HRRR`` (time, channel, y, x), 2-D latitude/longitude

``<hrrr>`` (``conus_dataset_name``, "hrrr" in PhysicsNeMo's dataset scripts) and ``<stats>`` ("stats")
are found automatically when there is a single candidate. Years present for HRRR and ERA5 must match,
as the recipe requires. Returns ``{"state": HRRR + invariants on the HRRR grid, "background": ERA5 on
its lat/lon grid}``; the HRRR grid gets projection ``x`` / ``y`` in metres and a ``crs`` grid_mapping
(HRRR Lambert conformal) when its latitude / longitude are a regular grid in that projection. HRRR
channels such as ``u1`` / ``t10`` are hybrid model levels and keep their names. The recipe's
``missing_samples_*.npy`` (a pickled list of datetimes) is not read: loading pickles runs code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ..fields.coords import coordinate_attrs
from ..errors import InvalidDataError, MissingVariableError, explain
from ..fields.grid import HRRR_CRS_CF
from .layouts import channel_dataset, channel_names, index_xy, set_stats

__all__ = ["read_stormcast", "hrrr_projection_xy"]


def _only(candidates: list[Path], what: str, where: Path, hint: str) -> Path:
    if len(candidates) == 1:
        return candidates[0]
    raise InvalidDataError(
        explain(
            f"Cannot tell which {what} to use in {where}",
            expected=f"exactly one {what}",
            found=[c.name for c in candidates] or "none",
            fix=hint,
        )
    )


def _year_stores(folder: Path) -> dict[int, Path]:
    return {int(p.name[:4]): p for p in sorted(folder.glob("[0-9][0-9][0-9][0-9].zarr"))}


def _open(path: Path, chunks) -> xr.Dataset:
    consolidated = (path / ".zmetadata").exists() or None
    return xr.open_zarr(path, consolidated=consolidated, chunks=chunks if chunks is not None else {})


def _stats(folder: Path, names: list[str]) -> dict:
    means, stds = folder / "means.npy", folder / "stds.npy"
    if not (means.is_file() and stds.is_file()):
        return {}
    mean, std = np.load(means).reshape(-1), np.load(stds).reshape(-1)
    if mean.size != len(names) or std.size != len(names):
        raise InvalidDataError(
            explain(f"The statistics in {folder} do not match the channels", expected=f"{len(names)} values", found=f"means {mean.size}, stds {std.size}")
        )
    return {n: (mean[k], std[k]) for k, n in enumerate(names)}


def hrrr_projection_xy(lat: np.ndarray, lon: np.ndarray, rtol: float = 1e-3):
    """1-D HRRR Lambert x (columns) and y (rows) in metres of a 2-D lat/lon grid, or None if irregular."""
    import pyproj

    crs = pyproj.CRS.from_cf(HRRR_CRS_CF)
    to_xy = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x2, y2 = to_xy.transform((np.asarray(lon) + 180.0) % 360.0 - 180.0, np.asarray(lat))
    x, y = x2.mean(axis=0), y2.mean(axis=1)
    step = max(np.abs(np.diff(x)).mean() if x.size > 1 else 1.0, np.abs(np.diff(y)).mean() if y.size > 1 else 1.0)
    if np.abs(x2 - x[None, :]).max() > rtol * step or np.abs(y2 - y[:, None]).max() > rtol * step:
        return None
    return x, y


def read_stormcast(
    location: str | Path,
    *,
    split: str = "valid",
    years: list[int] | None = None,
    conus_dataset_name: str | None = None,
    hrrr_stats: str | None = None,
    chunks: dict | None = None,
) -> dict[str, xr.Dataset]:
    """Open one split of a StormCast store; see the module docstring."""
    location = Path(location)
    era5_dir = location / "era5"
    if not era5_dir.is_dir():
        raise InvalidDataError(explain("Not a StormCast store: no era5/ folder", expected=f"{era5_dir}", found=sorted(p.name for p in location.iterdir()) if location.is_dir() else str(location)))
    hrrr_dir = location / conus_dataset_name if conus_dataset_name else _only(
        [p for p in location.iterdir() if p.is_dir() and p.name != "era5" and (p / "invariants.zarr").exists()],
        "HRRR folder (with invariants.zarr)", location, "pass conus_dataset_name=",
    )
    hrrr_years, era5_years = _year_stores(hrrr_dir / split), _year_stores(era5_dir / split)
    if years is not None:
        hrrr_years = {y: p for y, p in hrrr_years.items() if y in years}
        era5_years = {y: p for y, p in era5_years.items() if y in years}
    if not hrrr_years or sorted(hrrr_years) != sorted(era5_years):
        raise InvalidDataError(
            explain(
                f"HRRR and ERA5 years of split {split!r} do not match (or there are none)",
                expected="the same <YEAR>.zarr stores under both",
                found=f"HRRR {sorted(hrrr_years)}, ERA5 {sorted(era5_years)}",
            )
        )
    hrrr = xr.concat([_open(hrrr_years[y], chunks) for y in sorted(hrrr_years)], dim="time")
    era5 = xr.concat([_open(era5_years[y], chunks) for y in sorted(era5_years)], dim="time")
    for ds, var, where in ((hrrr, "HRRR", hrrr_dir), (era5, "data", era5_dir)):
        if var not in ds or "channel" not in ds[var].dims:
            raise MissingVariableError(explain(f"The {where.name} stores lack the array {var!r}", expected=f"{var}(time, channel, y, x)", found=list(ds.data_vars)))
    return {"state": _state(hrrr, hrrr_dir, hrrr_stats, location), "background": _background(era5, era5_dir, location)}


def _state(hrrr: xr.Dataset, hrrr_dir: Path, stats_name: str | None, location: Path) -> xr.Dataset:
    da = hrrr["HRRR"]
    ydim, xdim = da.dims[-2:]
    if "latitude" not in hrrr or "longitude" not in hrrr:
        raise MissingVariableError(explain("The HRRR stores lack 2-D latitude / longitude", expected=["latitude", "longitude"], found=list(hrrr.variables)))
    lat = np.asarray(hrrr["latitude"].values, dtype=np.float64)
    lon = np.asarray(hrrr["longitude"].values, dtype=np.float64)
    if lat.ndim == 3:  # concatenated along time by mistake of the store: take the first
        lat, lon = lat[0], lon[0]
    labels = [str(c) for c in np.asarray(hrrr["channel"].values)]
    names = channel_names(labels, model_levels=True)
    da = da.drop_vars([c for c in da.coords if c not in ("time",)]).rename({ydim: "y", xdim: "x"})
    coords = {"lat": (("y", "x"), lat, coordinate_attrs("latitude")), "lon": (("y", "x"), lon, coordinate_attrs("longitude"))}
    state = channel_dataset(da, "channel", names, labels, "state", coords)
    stats_dir = hrrr_dir / stats_name if stats_name else next(
        (p for p in sorted(hrrr_dir.iterdir()) if (p / "means.npy").is_file()), hrrr_dir / "stats"
    )
    stats = _stats(stats_dir, names)
    inv_path = hrrr_dir / "invariants.zarr"
    if inv_path.exists():
        inv = _open(inv_path, None)
        if "HRRR_invariants" not in inv:
            raise MissingVariableError(explain("invariants.zarr lacks HRRR_invariants", found=list(inv.data_vars)))
        arr = inv["HRRR_invariants"]
        iy, ix = arr.dims[-2:]
        arr = arr.isel({iy: slice(0, state.sizes["y"]), ix: slice(0, state.sizes["x"])})
        arr = arr.drop_vars([c for c in arr.coords]).rename({iy: "y", ix: "x"})
        inv_labels = [str(c) for c in np.asarray(inv["channel"].values)]
        inv_names = channel_names(inv_labels)
        for name, var in channel_dataset(arr, arr.dims[0], inv_names, inv_labels, "invariant").data_vars.items():
            state[name if name not in state else f"{name}_invariant"] = var
    xy = hrrr_projection_xy(lat, lon)
    if xy is not None:
        x, y = xy
        state = state.assign_coords(
            x=("x", x, {"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"}),
            y=("y", y, {"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"}),
            crs=((), np.int32(0), dict(HRRR_CRS_CF)),
        )
        for name in state.data_vars:
            state[name].attrs["grid_mapping"] = "crs"
    state.attrs = {"xkmcast_layout": "stormcast", "source": str(location)}
    return set_stats(index_xy(state), stats)


def _background(era5: xr.Dataset, era5_dir: Path, location: Path) -> xr.Dataset:
    da = era5["data"]
    labels = [str(c) for c in np.asarray(era5["channel"].values)]
    names = channel_names(labels)
    lat_name = next((n for n in ("latitude", "lat") if n in da.dims), da.dims[-2])
    lon_name = next((n for n in ("longitude", "lon") if n in da.dims), da.dims[-1])
    da = da.drop_vars([c for c in da.coords if c not in ("time", lat_name, lon_name)])
    da = da.rename({lat_name: "latitude", lon_name: "longitude"})
    bg = channel_dataset(da, "channel", names, labels, "background")
    bg["latitude"].attrs.update({**coordinate_attrs("latitude"), "axis": "Y"})
    bg["longitude"].attrs.update({**coordinate_attrs("longitude"), "axis": "X"})
    bg.attrs = {"xkmcast_layout": "stormcast", "source": str(location)}
    return set_stats(bg, _stats(era5_dir / "stats", names))
