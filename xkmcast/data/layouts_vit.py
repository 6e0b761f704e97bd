"""Reader of the ViT weather-transformer HDF5 layout.

Layout (from the recipe): ``<root>/{train,valid,test}/*.h5``, typically one file per year, each with a
dataset ``fields`` of shape ``[time, channel, height, width]`` (float32), plus
``<root>/stats/global_means.npy`` and ``global_stds.npy`` (per channel; any shape with C values,
e.g. ``(1, C, 1, 1)``).

The layout itself does not name channels nor place the grid, so, in order of preference:

* channel names: ``channels=``; else an attribute ``channels`` / ``channel_names`` / ``variables``
  of ``fields``; else ``coords.channel`` of ``<root>/metadata/data.json`` (FourCastNet / makani
  convention); else ``channel_0`` ... (kept as labels, no canonical name);
* latitude / longitude (1-D): ``lat=`` / ``lon=``; else ``coords.lat`` / ``coords.lon`` of
  ``data.json``; else a global equiangular grid: latitudes from 90 to -90 (both poles when the
  height is odd, e.g. 721; 90 down to -90 + 180/H when even, e.g. the 720 rows of FourCastNet),
  longitudes ``360 * i / W`` from 0;
* time: a file named ``<YEAR>.h5`` starts at ``<YEAR>-01-01T00``; the step is ``dt_hours=``, else
  the hours of that year divided by the number of steps when that is a whole number (6 h for 1460
  steps). Otherwise ``time`` is the integer step index (not decoded) and ``attrs["xkmcast_time"]``
  says so.

Returns ``{"state": Dataset}``; ``split=`` picks the folder, a path to one ``.h5`` file opens that file.
"""

from __future__ import annotations

import calendar
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..fields.coords import coordinate_attrs
from ..errors import InvalidDataError, MissingVariableError, explain
from .layouts import channel_dataset, channel_names, set_stats

__all__ = ["read_vit", "vit_default_latlon"]


def vit_default_latlon(ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """The global equiangular grid assumed when nothing names it (see module docstring)."""
    lat = np.linspace(90.0, -90.0, ny) if ny % 2 else 90.0 - 180.0 * np.arange(ny) / ny
    return lat, 360.0 * np.arange(nx) / nx


def _metadata(root: Path) -> dict:
    path = root / "metadata" / "data.json"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return (json.load(f) or {}).get("coords", {}) or {}


def _times(path: Path, nt: int, dt_hours: float | None):
    match = re.fullmatch(r"(\d{4})", path.stem)
    if match:
        year = int(match.group(1))
        hours = (366 if calendar.isleap(year) else 365) * 24
        step = dt_hours if dt_hours is not None else (hours / nt if nt and hours % nt == 0 else None)
        if step is not None:
            return pd.date_range(f"{year}-01-01", periods=nt, freq=pd.Timedelta(hours=step)).values, True
    return np.arange(nt), False


def _open_fields(path: Path) -> xr.DataArray:
    ds = xr.open_dataset(path, engine="h5netcdf", phony_dims="sort", chunks={})
    if "fields" not in ds:
        raise MissingVariableError(
            explain(f"The HDF5 file {path.name} has no dataset 'fields'", expected="fields[time, channel, y, x]", found=list(ds.variables))
        )
    da = ds["fields"]
    if da.ndim != 4:
        raise InvalidDataError(explain(f"'fields' in {path.name} is not 4-D", expected="[time, channel, y, x]", found=da.shape))
    return da.rename(dict(zip(da.dims, ("time", "channel", "y", "x"))))


def read_vit(
    root: str | Path,
    *,
    split: str = "train",
    channels: list[str] | None = None,
    lat: np.ndarray | None = None,
    lon: np.ndarray | None = None,
    dt_hours: float | None = None,
) -> dict[str, xr.Dataset]:
    """Open one split of the ViT HDF5 layout (or one ``.h5`` file); see the module docstring."""
    root = Path(root)
    if root.is_file():
        files, root = [root], root.parent.parent
    else:
        files = sorted((root / split).glob("*.h5"))
    if not files:
        raise InvalidDataError(
            explain(f"No HDF5 files for split {split!r}", expected=f"{root / split}/*.h5", found=sorted(p.name for p in root.iterdir()) if root.is_dir() else str(root))
        )
    pieces, decoded = [], True
    for path in files:
        da = _open_fields(path)
        times, ok = _times(path, da.sizes["time"], dt_hours)
        decoded &= ok
        pieces.append(da.assign_coords(time=times))
    if not decoded:  # mixed or undecodable names: a plain running index
        pieces = [p.assign_coords(time=np.arange(p.sizes["time"])) for p in pieces]
        offset = np.cumsum([0] + [p.sizes["time"] for p in pieces[:-1]])
        pieces = [p.assign_coords(time=p["time"] + o) for p, o in zip(pieces, offset)]
    fields = xr.concat(pieces, dim="time") if len(pieces) > 1 else pieces[0]
    n_channels, ny, nx = fields.sizes["channel"], fields.sizes["y"], fields.sizes["x"]

    meta = _metadata(root)
    labels = channels or fields.attrs.get("channels") or fields.attrs.get("channel_names") or fields.attrs.get("variables") or meta.get("channel")
    labels = [str(c) for c in np.atleast_1d(labels)] if labels is not None else [f"channel_{k}" for k in range(n_channels)]
    if len(labels) != n_channels:
        raise InvalidDataError(explain("The channel names do not match 'fields'", expected=f"{n_channels} names", found=labels))
    names = channel_names(labels)

    default_lat, default_lon = vit_default_latlon(ny, nx)
    lat = np.asarray(lat if lat is not None else meta.get("lat", default_lat), dtype=np.float64)
    lon = np.asarray(lon if lon is not None else meta.get("lon", default_lon), dtype=np.float64)
    if lat.shape != (ny,) or lon.shape != (nx,):
        raise InvalidDataError(explain("Latitude / longitude do not match the grid of 'fields'", expected=f"({ny},) and ({nx},)", found=f"{lat.shape} and {lon.shape}"))

    fields = fields.rename({"y": "latitude", "x": "longitude"})
    fields.attrs = {}
    state = channel_dataset(fields, "channel", names, labels, "state")
    state = state.assign_coords(
        latitude=("latitude", lat, {**coordinate_attrs("latitude"), "axis": "Y"}),
        longitude=("longitude", lon, {**coordinate_attrs("longitude"), "axis": "X"}),
    )
    state["time"].attrs = {"standard_name": "time"} if decoded else {"long_name": "time step index"}
    state.attrs = {"xkmcast_layout": "vit", "source": str(root)}
    if not decoded:
        state.attrs["xkmcast_time"] = "time is a step index: name files <YEAR>.h5 or pass dt_hours="
    stats = {}
    means, stds = root / "stats" / "global_means.npy", root / "stats" / "global_stds.npy"
    if means.is_file() and stds.is_file():
        mean, std = np.load(means).reshape(-1), np.load(stds).reshape(-1)
        if mean.size != n_channels or std.size != n_channels:
            raise InvalidDataError(explain("stats/global_means.npy / global_stds.npy do not match the channels", expected=f"{n_channels} values", found=f"{mean.size} and {std.size}"))
        stats = {n: (mean[k], std[k]) for k, n in enumerate(names)}
    return {"state": set_stats(state, stats)}
