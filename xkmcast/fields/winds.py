"""Wind components along a grid's axes -> along east and north.

Models on a Lambert conformal, polar-stereographic or rotated grid write the wind along the grid's
x and y axes: HRRR, NAM and RAP in GRIB (``GRIB_uvRelativeToGrid = 1``), raw WRF output (``U10``,
``V10``). Away from the projection's central meridian those axes are turned from east and north (by
up to 20 degrees at the edges of the HRRR domain), so such a ``u10m`` is not the eastward wind an
ERA5-trained model reads. xkmcast reads them as the file gives them (a published StormCast learned
HRRR's grid-relative winds); :func:`earth_relative_winds` turns them, and regridding them onto another
grid as they are (a coarse input of ``downscale`` or ``prepare``) warns (:func:`warn_if_grid_relative`).

The angle ``theta(y, x)`` of the grid's x axis from east (counter-clockwise) comes from the grid's own
latitudes and longitudes, by differences along x on the sphere: ``theta = atan2(dlat, cos(lat) dlon)``
(centred inside, one-sided at the edges; second order in the spacing: within 1e-3 degree of the
projection's meridian convergence on a 30 km Lambert grid), so any conformal grid works
without knowing its projection. Its y axis is ``theta + 90`` degrees (conformal), and

    u_east  = u cos(theta) - v sin(theta)
    v_north = u sin(theta) + v cos(theta).
"""

from __future__ import annotations

import re

import numpy as np
import xarray as xr

from ..errors import ConfigError, explain
from .grid import find_grid

__all__ = ["grid_angle", "earth_relative_winds", "is_grid_relative", "wind_pairs", "warn_if_grid_relative"]

#: attribute a wind component gets once turned (with cfgrib's ``GRIB_uvRelativeToGrid`` set to 0)
ROTATED_ATTR = "xkmcast_earth_relative"


def grid_angle(lat: np.ndarray, lon: np.ndarray, x_axis: int = -1) -> np.ndarray:
    """The angle [rad] of the grid's x axis from east, counter-clockwise, at every point of the 2-D
    ``lat`` / ``lon`` [deg] (x along ``x_axis``)."""
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    lon = np.rad2deg(np.unwrap(np.deg2rad(lon), axis=x_axis))  # across the date line
    order = 2 if lat.shape[x_axis] > 2 else 1
    dlat = np.gradient(lat, axis=x_axis, edge_order=order)
    dlon = np.gradient(lon, axis=x_axis, edge_order=order) * np.cos(np.deg2rad(lat))
    return np.arctan2(dlat, dlon)


def wind_pairs(ds: xr.Dataset) -> list[tuple[str, str]]:
    """The (u, v) variable pairs of ``ds`` by their canonical names: ``u10m`` / ``v10m``, ``u100m`` /
    ``v100m``, ``u850`` / ``v850``, ``u`` / ``v`` (with a level dim)."""
    pairs = []
    for name in ds.data_vars:
        m = re.fullmatch(r"u(\d+m|\d+|)", str(name))
        if m and f"v{m.group(1)}" in ds.data_vars:
            pairs.append((str(name), f"v{m.group(1)}"))
    return pairs


def is_grid_relative(da: xr.DataArray, ds: xr.Dataset) -> bool:
    """Whether a wind component is known to be along a grid turned from east / north: cfgrib's
    ``GRIB_uvRelativeToGrid = 1``, or raw WRF output on a Lambert or polar-stereographic grid (WRF's
    ``MAP_PROJ`` 1 or 2; its Mercator and latitude / longitude grids are not turned), and not turned
    here already."""
    if marked_earth_relative(da):
        return False
    flag = da.attrs.get("GRIB_uvRelativeToGrid")
    if flag is not None:  # on a latitude / longitude or Gaussian grid, along the grid is east / north
        return int(flag) == 1 and not str(da.attrs.get("GRIB_gridType", "")).startswith(("regular_", "reduced_"))
    return int(ds.attrs.get("MAP_PROJ", 0)) in (1, 2)


def marked_earth_relative(da: xr.DataArray) -> bool:
    """A wind component marked east / north: turned here before, or cfgrib's ``GRIB_uvRelativeToGrid = 0``."""
    return bool(da.attrs.get(ROTATED_ATTR)) or da.attrs.get("GRIB_uvRelativeToGrid") == 0


def earth_relative_winds(ds: xr.Dataset, pairs: list[tuple[str, str]] | None = None) -> xr.Dataset:
    """``ds`` with its grid-relative wind components turned to east / north (module docstring).

    ``pairs``: the (u, v) names to turn; default: the pairs of :func:`wind_pairs` known to be along the
    grid (:func:`is_grid_relative`). Named pairs are turned unless marked east / north already
    (``GRIB_uvRelativeToGrid = 0``, or turned here before): name them only for winds you know are
    along the grid (a CMOR ``uas`` is eastward). Lazy (dask) when ``ds`` is."""
    if pairs is None:
        pairs = [p for p in wind_pairs(ds) if is_grid_relative(ds[p[0]], ds) and is_grid_relative(ds[p[1]], ds)]
    pairs = [tuple(p) for p in pairs]
    missing = [n for p in pairs for n in p if n not in ds.data_vars]
    if missing:
        raise ConfigError(explain("Wind components not in the dataset", expected=pairs, found=list(ds.data_vars),
                                  fix="name (u, v) pairs the dataset holds"))
    pairs = [p for p in pairs if not any(marked_earth_relative(ds[n]) for n in p)]
    if not pairs:
        return ds
    grid = find_grid(ds)
    theta = xr.DataArray(grid_angle(grid.lat, grid.lon), dims=(grid.y_dim, grid.x_dim))
    cos, sin = np.cos(theta), np.sin(theta)
    out = ds.copy()
    for u_name, v_name in pairs:
        u, v = ds[u_name], ds[v_name]
        for name, value in ((u_name, u * cos - v * sin), (v_name, u * sin + v * cos)):
            attrs = dict(ds[name].attrs, **{ROTATED_ATTR: 1})
            if "GRIB_uvRelativeToGrid" in attrs:
                attrs["GRIB_uvRelativeToGrid"] = 0
            out[name] = value.transpose(*ds[name].dims).astype(ds[name].dtype).assign_attrs(attrs)
    return out


def warn_if_grid_relative(ds: xr.Dataset, role: str, target: xr.Dataset | None = None) -> None:
    """Warn when ``ds`` (about to be regridded onto ``target``'s grid) holds wind components along its
    grid: regridded as they are, they are neither along the new grid nor east / north, unless the new
    grid is on the same projection (block means of the grid: the axes are the same)."""
    along = [n for p in wind_pairs(ds) for n in p if is_grid_relative(ds[n], ds)]
    if along and target is not None:
        source_crs, target_crs = find_grid(ds).crs, find_grid(target).crs
        if source_crs is not None and target_crs is not None and source_crs == target_crs:
            return
    if along:
        import warnings

        warnings.warn(f"{', '.join(along)} of the {role} are along its grid (GRIB_uvRelativeToGrid = 1, or raw WRF "
                      "output), not east and north, and are regridded onto another grid as they are; turn them "
                      "first: ds.kmcast.earth_relative_winds()", UserWarning, stacklevel=3)
