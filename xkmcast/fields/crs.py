"""The map projection (a pyproj CRS) of a dataset: from its CF ``grid_mapping`` variable
(:func:`find_crs`), from WRF's global attributes (:func:`wrf_crs`: ``MAP_PROJ`` 1 Lambert conformal,
2 polar stereographic, 3 Mercator, on WRF's sphere of radius 6 370 000 m) or from the GRIB grid
definition cfgrib keeps on each variable (:func:`grib_crs`: ``GRIB_gridType`` lambert or
polar_stereographic: HRRR, NAM, RAP), and the projected x / y axes of a grid given by its 2-D latitude /
longitude (:func:`projected_axes`). Nothing here knows of torch.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
import xarray as xr

from ..errors import GridError, explain

__all__ = ["crs_from_cf", "find_crs", "wrf_crs", "grib_crs", "projected_axes"]


@functools.lru_cache(maxsize=64)
def _crs_from_cf(frozen: str):
    """pyproj.CRS.from_cf is slow (~0.5 s with a custom sphere): cache it by the attributes' JSON."""
    from pyproj import CRS

    return CRS.from_cf(json.loads(frozen))


def crs_from_cf(attrs: dict):
    """The pyproj CRS of CF grid_mapping ``attrs`` (cached)."""
    return _crs_from_cf(json.dumps(_jsonable(attrs), sort_keys=True))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def find_crs(ds: xr.Dataset) -> tuple[dict | None, Any, str | None]:
    names: list[str] = []
    for da in ds.data_vars.values():
        gm = da.attrs.get("grid_mapping") or da.encoding.get("grid_mapping")
        if isinstance(gm, str) and gm.split(":")[0] in ds.variables:
            names.append(gm.split(":")[0])
    names += [n for n, v in ds.variables.items() if "grid_mapping_name" in v.attrs]
    for name in names:
        attrs = dict(ds[name].attrs)
        try:
            return attrs, crs_from_cf(attrs), name
        except Exception as exc:  # pyproj raises CRSError and others for incomplete attributes
            raise GridError(
                explain(
                    f"The CF grid_mapping variable {name!r} cannot be read",
                    found=str(attrs),
                    fix="check its attributes against the CF conventions (grid_mapping_name, standard_parallel, ...)",
                )
            ) from exc
    return None, None, None


def wrf_crs(ds: xr.Dataset) -> tuple[dict | None, Any]:
    """The CRS from WRF global attributes (MAP_PROJ 1 Lambert, 2 polar stereographic, 3 Mercator)."""
    a = ds.attrs
    if "MAP_PROJ" not in a:
        return None, None
    proj = int(a["MAP_PROJ"])
    radius = 6370000.0  # WRF's sphere
    if proj == 1:
        cf = {
            "grid_mapping_name": "lambert_conformal_conic",
            "standard_parallel": [float(a["TRUELAT1"]), float(a["TRUELAT2"])],
            "longitude_of_central_meridian": float(a["STAND_LON"]),
            "latitude_of_projection_origin": float(a.get("MOAD_CEN_LAT", a.get("CEN_LAT"))),
            "earth_radius": radius,
        }
    elif proj == 2:
        cf = {
            "grid_mapping_name": "polar_stereographic",
            "straight_vertical_longitude_from_pole": float(a["STAND_LON"]),
            "latitude_of_projection_origin": 90.0 if float(a["TRUELAT1"]) > 0 else -90.0,
            "standard_parallel": float(a["TRUELAT1"]),
            "earth_radius": radius,
        }
    elif proj == 3:
        cf = {
            "grid_mapping_name": "mercator",
            "standard_parallel": float(a["TRUELAT1"]),
            "longitude_of_projection_origin": float(a["STAND_LON"]),
            "earth_radius": radius,
        }
    else:
        return None, None
    return cf, crs_from_cf(cf)


#: the sphere of NCEP's grids (GRIB shapeOfTheEarth 6, which cfgrib does not keep): HRRR, NAM, RAP
NCEP_EARTH_RADIUS = 6371229.0


def grib_crs(ds: xr.Dataset) -> tuple[dict | None, Any]:
    """The CRS of the GRIB grid definition cfgrib keeps on the variables (``GRIB_gridType`` lambert or
    polar_stereographic, with ``GRIB_LoVInDegrees`` / ``GRIB_orientationOfTheGridInDegrees``,
    ``GRIB_LaDInDegrees`` and, for Lambert, ``GRIB_Latin1InDegrees`` / ``GRIB_Latin2InDegrees``; the
    pole of a polar-stereographic grid by ``GRIB_projectionCentreFlag``), on NCEP's sphere; (None, None)
    otherwise, and when a key is missing (never a guessed projection)."""
    a = next((v.attrs for v in ds.data_vars.values() if "GRIB_gridType" in v.attrs), {})
    kind = a.get("GRIB_gridType")
    lov = a.get("GRIB_LoVInDegrees", a.get("GRIB_orientationOfTheGridInDegrees"))
    needed = {"lambert": ("GRIB_LaDInDegrees", "GRIB_Latin1InDegrees", "GRIB_Latin2InDegrees"),
              "polar_stereographic": ("GRIB_LaDInDegrees",)}.get(kind)
    if needed is None or lov is None or any(k not in a for k in needed):
        return None, None
    lov = ((float(lov) + 180.0) % 360.0) - 180.0
    if kind == "lambert":
        cf = {
            "grid_mapping_name": "lambert_conformal_conic",
            "standard_parallel": [float(a["GRIB_Latin1InDegrees"]), float(a["GRIB_Latin2InDegrees"])],
            "longitude_of_central_meridian": lov,
            "latitude_of_projection_origin": float(a["GRIB_LaDInDegrees"]),
            "earth_radius": NCEP_EARTH_RADIUS,
        }
    else:
        south = int(a.get("GRIB_projectionCentreFlag", 0)) & 128  # bit 1 (of 8): the south pole
        cf = {
            "grid_mapping_name": "polar_stereographic",
            "straight_vertical_longitude_from_pole": lov,
            "latitude_of_projection_origin": -90.0 if south else 90.0,
            "standard_parallel": float(a["GRIB_LaDInDegrees"]),
            "earth_radius": NCEP_EARTH_RADIUS,
        }
    return cf, crs_from_cf(cf)


def projected_axes(crs: Any, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """x / y in metres of a projected grid whose lat/lon are given, when the grid is regular in x/y."""
    from pyproj import Transformer

    t = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    xx, yy = t.transform(lon, lat)
    x, y = xx.mean(axis=0), yy.mean(axis=1)
    spacing = max(np.abs(np.diff(x)).mean() if x.size > 1 else 1.0, 1.0)
    if np.abs(xx - x[None, :]).max() < 0.05 * spacing and np.abs(yy - y[:, None]).max() < 0.05 * spacing:
        return x, y
    return None, None
