"""Writing results: zarr (v3) or NetCDF, atomically, and the CorrDiff ``generate.py`` NetCDF layout.

Every writer first writes to a temporary sibling and renames it into place only when the whole
dataset is written (:func:`xkmcast.atomic.atomic_path`), so an error (a NaN found in a late time chunk, a full disk,
Ctrl-C) never leaves a half-written output behind. Dask-backed datasets are streamed chunk by chunk
(with a progress bar when asked).

The CorrDiff layout (read by :func:`xkmcast.fields.scoring.open_corrdiff_netcdf` and by the recipe's
scoring scripts): root variables ``lat`` / ``lon`` (y, x) and ``time``; groups ``prediction``
(ensemble, time, y, x), ``truth`` (time, y, x) and ``input`` (time, y, x), one variable per channel.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import xarray as xr

from ..atomic import atomic_path
from ..errors import XkmcastError, explain

__all__ = ["write_dataset", "write_corrdiff_netcdf", "output_format"]


def output_format(path: str | os.PathLike) -> str:
    """``"zarr"`` or ``"netcdf"`` from the file name (``.zarr`` / ``.nc`` / ``.nc4``)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".zarr":
        return "zarr"
    if suffix in (".nc", ".nc4", ".netcdf"):
        return "netcdf"
    raise XkmcastError(explain("Unknown output format", expected="a path ending in .zarr or .nc",
                               found=str(path), fix="name the output e.g. result.zarr or result.nc"))


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    from dask.diagnostics import ProgressBar

    return ProgressBar(minimum=1.0)


def write_dataset(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False, progress: bool = False) -> Path:
    """Write ``ds`` to ``path`` (zarr v3 or NetCDF4 by suffix), atomically, streaming dask chunks."""
    path = Path(path)
    fmt = output_format(path)
    with atomic_path(path, overwrite=overwrite) as tmp, _progress(progress):
        if fmt == "zarr":
            ds.to_zarr(tmp, consolidated=False, zarr_format=3)
        else:
            ds.to_netcdf(tmp, engine="h5netcdf")
    return path


def write_corrdiff_netcdf(
    prediction: xr.Dataset,
    path: str | os.PathLike,
    *,
    truth: xr.Dataset | None = None,
    inputs: xr.Dataset | None = None,
    member_dim: str = "member",
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``prediction`` (member, time, y, x) in the CorrDiff generate.py group layout."""
    from .grid import find_grid

    path = Path(path)
    grid = find_grid(prediction)
    ydim, xdim = grid.dims
    root = xr.Dataset(
        {
            "lat": (("y", "x"), grid.lat, {"standard_name": "latitude", "units": "degrees_north"}),
            "lon": (("y", "x"), grid.lon, {"standard_name": "longitude", "units": "degrees_east"}),
        },
        coords={"time": prediction["time"].values},
    )

    def plain(ds: xr.Dataset) -> xr.Dataset:
        ds = ds.rename({ydim: "y", xdim: "x"}) if ydim in ds.dims else ds
        drop = [c for c in ds.coords if c not in ("time",)]
        return ds.drop_vars(drop)

    pred = plain(prediction[[v for v in prediction.data_vars if member_dim in prediction[v].dims]])
    pred = pred.rename({member_dim: "ensemble"}).transpose("ensemble", "time", "y", "x")
    with atomic_path(path, overwrite=overwrite) as tmp, _progress(progress):
        root.to_netcdf(tmp, engine="h5netcdf")
        pred.to_netcdf(tmp, group="prediction", mode="a", engine="h5netcdf")
        if truth is not None:
            plain(truth).to_netcdf(tmp, group="truth", mode="a", engine="h5netcdf")
        if inputs is not None:
            plain(inputs).to_netcdf(tmp, group="input", mode="a", engine="h5netcdf")
    return path
