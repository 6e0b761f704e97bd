"""The sample dataset shipped inside the package: ``xkmcast/sample/sample.nc`` (regenerate: ``python -m
xkmcast.data.make_sample``).

One CF-NetCDF4 file, one Dataset, two grids on distinct dims, following the naming of
:func:`xkmcast.data.layouts.open_dataset` with all parts (the coarse part prefixed ``era5_``):

=============================================  ==========================  =========================
variables                                      dims                        grid
=============================================  ==========================  =========================
``t2m u10m v10m tp refc`` (fine truth)         ``(time, y, x)``            Lambert conformal 3 km,
``orog lsm`` (fine invariants)                 ``(y, x)``                  64 x 64, 2-D ``lat/lon``,
                                                                           ``x/y`` in m, ``crs``
``era5_t2m era5_u10m era5_v10m era5_tp``       ``(time, latitude,          regular 0.25 deg
``era5_msl era5_tcwv era5_z500 era5_t850``      longitude)``               lat/lon (ERA5-like,
``era5_orog era5_lsm`` (coarse invariants)     ``(latitude, longitude)``   latitude descending)
=============================================  ==========================  =========================

48 hourly times from 2024-07-01T00 UTC. The fine fields are point values of a
:class:`~xkmcast.data.synthetic.SyntheticWeather` world (seed :data:`SAMPLE_SEED`, a coast and hills
up to ~1.8 km in the domain, with the diurnal boundary layer ``boundary_layer=1``: a lapse rate that
follows stability and cloud, thermal slope winds); the coarse fields are area means of the same world over each
0.25 deg cell (8 x 8 sub-points, cos(lat)-weighted), on a grid one cell larger than the fine domain
on every side, so the demo has to regrid them. Units: K, m s-1, kg m-2 (``tp``: amount over the
hour ending at the valid time), dBZ, Pa, m2 s-2, m, land fraction. Each variable has
``xkmcast_role`` (target / invariant / input) and the file keeps the statistics of every variable in
``attrs["xkmcast_stats"]``. Values are stored float32 with zlib and 0.01 (tp, refc: 0.001 / 0.01)
absolute precision, about 2 MB. The terrain is synthetic: it is not the real geography at these
coordinates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..atomic import atomic_path
from ..fields.grid import make_lambert_grid, make_latlon_grid
from .stats import STATS_ATTR, compute_stats
from .synthetic import COARSE_VARS, FINE_VARS, INVARIANTS, SyntheticWeather

__all__ = ["SAMPLE_PATH", "SAMPLE_SEED", "COARSE_PREFIX", "build_sample", "write_sample", "split_sample", "open_sample"]

SAMPLE_PATH = Path(__file__).resolve().parents[1] / "sample" / "sample.nc"
SAMPLE_SEED = 5
COARSE_PREFIX = "era5_"
#: absolute precision kept in the file (netCDF4 least_significant_digit, decimal digits)
_DIGITS = {"tp": 3, "lsm": 3, "orog": 1, "msl": 1, "z500": 1}


def build_sample(*, seed: int = SAMPLE_SEED, nx: int = 64, ny: int = 64, dx: float = 3000.0, times: int = 48,
                 start: str = "2024-07-01", lat0: float = 38.5, lon0: float = -97.5, resolution: float = 0.25,
                 supersample: int = 8, boundary_layer: float = 1.0) -> xr.Dataset:
    """The sample Dataset (layout in the module docstring), built in memory, deterministically."""
    world = SyntheticWeather(seed, lat_ref=lat0, lon_ref=lon0, boundary_layer=boundary_layer)
    time = pd.date_range(start, periods=times, freq="1h").values
    fine_grid = make_lambert_grid(nx, ny, dx, lat0, lon0)
    fine = world.dataset(fine_grid, time, FINE_VARS)
    lat, lon = fine_grid["lat"].values, fine_grid["lon"].values
    lats = np.arange(np.floor(lat.min() / resolution) - 1, np.ceil(lat.max() / resolution) + 2) * resolution
    lons = np.arange(np.floor(lon.min() / resolution) - 1, np.ceil(lon.max() / resolution) + 2) * resolution
    coarse_grid = make_latlon_grid(lats[::-1], lons, lat_name="latitude", lon_name="longitude")
    coarse = world.dataset(coarse_grid, time, COARSE_VARS, supersample=supersample)
    for name in fine.data_vars:
        fine[name].attrs["xkmcast_role"] = "invariant" if name in INVARIANTS else "target"
    for name in coarse.data_vars:
        coarse[name].attrs["xkmcast_role"] = "invariant" if name in INVARIANTS else "input"
    coarse = coarse.rename({v: COARSE_PREFIX + v for v in coarse.data_vars})
    ds = xr.merge([fine, coarse.drop_vars("time")], combine_attrs="override")
    ds["time"].attrs.update(standard_name="time", axis="T")
    ds.attrs = {
        "title": "xkmcast sample: synthetic km-scale weather with a coarse ERA5-like twin",
        "source": f"xkmcast.data.make_sample.build_sample(seed={seed}); xkmcast.data.synthetic",
        "Conventions": "CF-1.8",
        "comment": "fine variables on (time, y, x); coarse (area-mean 0.25 deg) variables prefixed "
                   f"{COARSE_PREFIX!r} on (time, latitude, longitude); synthetic terrain, not real geography",
        "license": "CC0-1.0 (generated data)",
    }
    ds.attrs[STATS_ATTR] = compute_stats(ds).to_json()
    return ds


def _encoding(ds: xr.Dataset) -> dict:
    enc = {}
    for name in ds.data_vars:
        base = name.removeprefix(COARSE_PREFIX)
        enc[name] = {"zlib": True, "complevel": 9, "shuffle": True, "dtype": "float32",
                     "least_significant_digit": _DIGITS.get(base, 2), "_FillValue": None}
    enc["time"] = {"units": "hours since 2024-01-01 00:00:00", "calendar": "proleptic_gregorian", "dtype": "int32"}
    for c in ("lat", "lon", "x", "y", "latitude", "longitude"):
        enc[c] = {"zlib": True, "_FillValue": None}
    return enc


def write_sample(path: str | Path = SAMPLE_PATH, **kwargs) -> Path:
    """Build the sample (``kwargs`` to :func:`build_sample`) and write it as compressed NetCDF4."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = build_sample(**kwargs)
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=_encoding(ds))
    return path


def split_sample(ds: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    """``(coarse, fine)``: the two grids of the sample as separate Datasets with canonical names."""
    coarse_names = [v for v in ds.data_vars if v.startswith(COARSE_PREFIX)]
    fine_names = [v for v in ds.data_vars if not v.startswith(COARSE_PREFIX)]
    coarse = ds[coarse_names].rename({v: v.removeprefix(COARSE_PREFIX) for v in coarse_names})
    coarse = coarse.drop_vars([c for c in coarse.coords if set(coarse[c].dims) & {"y", "x"} or c == "crs"],
                              errors="ignore")
    fine = ds[fine_names].drop_vars([c for c in ds.coords if set(ds[c].dims) & {"latitude", "longitude"}],
                                    errors="ignore")
    for part in (coarse, fine):
        part.attrs = {k: v for k, v in ds.attrs.items() if k != STATS_ATTR}
    return coarse, fine


def open_sample(part: str | None = None, **kwargs) -> xr.Dataset:
    """Open the shipped sample (lazily); ``part="coarse"`` / ``"fine"`` returns one grid (see split_sample)."""
    ds = xr.open_dataset(SAMPLE_PATH, **{"engine": "h5netcdf", **kwargs})
    if part is None:
        return ds
    coarse, fine = split_sample(ds)
    if part not in ("coarse", "fine"):
        raise ValueError(f"part must be None, 'coarse' or 'fine', got {part!r}")
    return coarse if part == "coarse" else fine


if __name__ == "__main__":  # pragma: no cover
    p = write_sample()
    print(f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)")
