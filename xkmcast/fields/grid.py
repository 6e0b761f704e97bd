"""Find the horizontal grid of a dataset: dimensions, 2-D latitude / longitude and the CRS.

Search order (first hit wins):

1. CF meaning through cf_xarray: coordinates with ``standard_name`` latitude / longitude (or units
   degrees_north / degrees_east), ``axis`` X / Y / T, ``projection_[xy]_coordinate``, and the CF
   ``grid_mapping`` variable named by a data variable.
2. Known aliases of published datasets (the table of :mod:`xkmcast.fields.coords`): ERA5 (``latitude`` / ``longitude``, descending latitude,
   longitudes 0..360), WRF and CWA (``XLAT`` / ``XLONG``, dims ``south_north`` / ``west_east`` /
   ``Time``, projection in the global attributes ``MAP_PROJ``, ``TRUELAT1`` ...), HRRR
   (``gridlat_0`` / ``gridlon_0``, Lambert conformal).

The result is a :class:`Grid`, a plain description with numpy arrays that regridding, plotting and
inference share. Nothing here knows of torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cf_xarray  # noqa: F401  (registers the .cf accessor used below)
import numpy as np
import xarray as xr

from .coords import coordinate_attrs, coordinate_names
from .crs import crs_from_cf, find_crs, grib_crs, projected_axes, wrf_crs
from ..errors import CoordinateError, GridError, explain

__all__ = ["Grid", "find_grid", "find_time_dim", "make_lambert_grid", "make_latlon_grid", "check_monotonic",
           "datetime_coords", "time_indexed", "HRRR_CRS_CF", "EARTH_RADIUS_M"]

#: radius (m) of the sphere on which great-circle grid spacings are measured
EARTH_RADIUS_M = 6371000.0

LAT_ALIASES = coordinate_names("latitude")
LON_ALIASES = coordinate_names("longitude")
TIME_ALIASES = coordinate_names("time")
X_ALIASES = coordinate_names("X")
Y_ALIASES = coordinate_names("Y")

#: CF grid_mapping of the HRRR 3 km CONUS grid (Lambert conformal on a sphere of radius 6371229 m).
HRRR_CRS_CF = {
    "grid_mapping_name": "lambert_conformal_conic",
    "standard_parallel": [38.5, 38.5],
    "longitude_of_central_meridian": 262.5,
    "latitude_of_projection_origin": 38.5,
    "earth_radius": 6371229.0,
}


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """A horizontal grid.

    ``lat`` / ``lon`` are always 2-D ``(ny, nx)`` arrays in degrees (longitudes as in the data).
    ``x`` / ``y`` are 1-D projection coordinates in metres when the grid has them (on a rotated pole
    grid, ``rotated_latitude_longitude``: rotated longitude / latitude in degrees). ``xy_km``: the data
    gives them in kilometres (Daymet's Lambert conformal x / y), so its own datasets
    (:meth:`to_dataset`) label them in km too. ``rectilinear`` is true when latitude depends only on
    ``y_dim`` and longitude only on ``x_dim`` (a lat/lon grid).
    """

    y_dim: str
    x_dim: str
    time_dim: str | None
    lat: np.ndarray
    lon: np.ndarray
    lat_name: str | None = None
    lon_name: str | None = None
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    x_name: str | None = None
    y_name: str | None = None
    crs: Any = None  # pyproj.CRS
    grid_mapping: dict | None = None
    rectilinear: bool = False
    grid_mapping_var: str | None = None  # name of the CF grid_mapping variable in the data
    xy_km: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.lat.shape)  # type: ignore[return-value]

    @property
    def dims(self) -> tuple[str, str]:
        return (self.y_dim, self.x_dim)

    @property
    def rotated_pole(self) -> bool:
        """x / y are rotated longitude / latitude in degrees (CF ``rotated_latitude_longitude``), not metres."""
        return (self.grid_mapping or {}).get("grid_mapping_name") == "rotated_latitude_longitude"

    def spacing_m(self) -> tuple[float, float]:
        """Mean grid spacing (dy, dx) in metres: from x/y when present, else the mean great-circle
        distance (haversine, sphere of radius :data:`EARTH_RADIUS_M`) between neighbouring points along
        y and along x. On a lat/lon grid that is ``R dlat`` along y and ``~R cos(lat) dlon`` averaged
        over the rows along x; on a grid rotated against north (a projection given by 2-D lat/lon
        only) it is the true spacing, which latitude / longitude differences alone underestimate."""
        if self.x is not None and self.y is not None and len(self.x) > 1 and len(self.y) > 1 and not self.rotated_pole:
            return float(np.abs(np.diff(self.y)).mean()), float(np.abs(np.diff(self.x)).mean())
        lat, lon = np.deg2rad(self.lat), np.deg2rad(self.lon)
        dy = _haversine(lat[:-1], lon[:-1], lat[1:], lon[1:]).mean() if lat.shape[0] > 1 else np.nan
        dx = _haversine(lat[:, :-1], lon[:, :-1], lat[:, 1:], lon[:, 1:]).mean() if lat.shape[1] > 1 else np.nan
        return float(EARTH_RADIUS_M * dy), float(EARTH_RADIUS_M * dx)

    @property
    def periodic_x(self) -> bool:
        """True for a rectilinear lat/lon grid whose longitudes close the circle (a global grid): the
        column after the last is the first (:class:`xkmcast.fields.regrid_weights.LonAxis`)."""
        if not self.rectilinear or self.x is not None or self.shape[1] < 2:
            return False
        from .regrid_weights import LonAxis

        return LonAxis(self.lon[0, :]).periodic

    def model_info(self) -> dict[str, Any]:
        """What a model records about its grid besides the 2-D lat / lon (``spec.grid``, see
        :meth:`xkmcast.models.base.Pipeline.set_grid`): ``grid_mapping``; ``x`` / ``y`` in metres
        (projected grids); ``latlon_dims``, the names of the 1-D latitude / longitude dims of a
        rectilinear lat/lon grid (its results keep them), else None; ``xy_dims``, the names of the dims
        of x / y (``rlat`` / ``rlon``, ``south_north`` / ``west_east``: results keep them too), else None;
        ``xy_km`` (x / y given in km by the data); ``periodic_x``."""
        latlon = self.rectilinear and self.x is None and self.lat_name == self.y_dim and self.lon_name == self.x_dim
        return {"grid_mapping": self.grid_mapping,
                "x": None if self.x is None else np.asarray(self.x, float).tolist(),
                "y": None if self.y is None else np.asarray(self.y, float).tolist(),
                "latlon_dims": [self.y_dim, self.x_dim] if latlon else None,
                "xy_dims": [self.y_dim, self.x_dim] if self.x is not None else None,
                "xy_km": self.xy_km,
                "periodic_x": self.periodic_x}

    def to_dataset(self) -> xr.Dataset:
        """The grid alone as a CF Dataset: 2-D lat/lon, x/y in metres (km when the data gave km; rotated
        pole: rotated longitude / latitude in degrees) and a ``crs`` grid_mapping."""
        dims = (self.y_dim, self.x_dim)
        coords: dict[str, Any] = {
            "lat": (dims, self.lat, coordinate_attrs("latitude")),
            "lon": (dims, self.lon, coordinate_attrs("longitude")),
        }
        if self.x is not None and self.y is not None:
            scale = 1e-3 if self.xy_km else 1.0
            coords[self.x_dim] = (self.x_dim, self.x * scale, _axis_attrs("x", self.rotated_pole, self.xy_km))
            coords[self.y_dim] = (self.y_dim, self.y * scale, _axis_attrs("y", self.rotated_pole, self.xy_km))
        ds = xr.Dataset(coords=coords)
        if self.grid_mapping:
            ds["crs"] = xr.DataArray(np.int32(0), attrs=dict(self.grid_mapping))
            ds = ds.set_coords("crs")
        return ds


def _haversine(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Central angle (radians) between points given in radians."""
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2.0 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _axis_attrs(axis: str, rotated_pole: bool = False, km: bool = False) -> dict:
    if rotated_pole:  # CF: grid_longitude / grid_latitude of the rotated pole grid
        name = {"x": "grid_longitude", "y": "grid_latitude"}[axis]
        return {"standard_name": name, "units": "degrees", "axis": axis.upper(), "long_name": name.replace("_", " ")}
    return {**coordinate_attrs(axis.upper()), "units": "km" if km else "m", "long_name": f"{axis} coordinate of projection"}


def _in_km(ds: xr.Dataset, name: str) -> bool:
    """The projection coordinate ``name`` is in kilometres by its units (else metres: CF's default)."""
    from .variables import normalise_units

    return normalise_units(ds[name].attrs.get("units")) == "km"


# --------------------------------------------------------------------------------------------- find


def find_grid(obj: xr.Dataset | xr.DataArray) -> Grid:
    """Describe the horizontal grid of ``obj`` (see the module docstring for the search order).

    Raises :class:`GridError` when no latitude / longitude (or projected x / y with a CRS) can be
    found, and :class:`CoordinateError` for non-monotonic or duplicated 1-D coordinates.
    """
    ds = obj.to_dataset(name=obj.name or "__da__") if isinstance(obj, xr.DataArray) else obj
    lat_name, lon_name = _find_latlon_names(ds)
    grid_mapping, crs, gm_var = find_crs(ds)
    x_name, y_name = _find_xy_names(ds)

    if lat_name is None or lon_name is None:
        if x_name and y_name and crs is not None:
            return _grid_from_projection(ds, x_name, y_name, crs, grid_mapping, gm_var)
        raise GridError(
            explain(
                "Could not find the latitude / longitude of the dataset",
                expected="coordinates with standard_name latitude/longitude, or one of "
                f"{LAT_ALIASES[:5]} / {LON_ALIASES[:5]}, or projection x/y with a CF grid_mapping",
                found=f"variables {list(ds.variables)}",
                fix="add CF attributes (ds['lat'].attrs['standard_name'] = 'latitude') or rename the coordinates",
            )
        )

    lat_da, lon_da = ds[lat_name], ds[lon_name]
    lat_da, lon_da = _drop_extra_dims(lat_da), _drop_extra_dims(lon_da)
    time_dim = find_time_dim(ds)

    if lat_da.ndim == 1 and lon_da.ndim == 1:
        y_dim, x_dim = lat_da.dims[0], lon_da.dims[0]
        if y_dim == x_dim:
            raise GridError(
                explain(
                    "Latitude and longitude share one dimension (an unstructured grid)",
                    expected="a 2-D grid: lat(y) and lon(x), or 2-D lat(y, x) / lon(y, x)",
                    found=f"{lat_name}{lat_da.dims}, {lon_name}{lon_da.dims}",
                    fix="reshape the points onto a 2-D grid before using xkmcast",
                )
            )
        lat1, lon1 = np.asarray(lat_da.values, float), np.asarray(lon_da.values, float)
        check_monotonic(lat1, lat_name)
        check_monotonic(np.unwrap(lon1, period=360.0), lon_name)
        lon2, lat2 = np.meshgrid(lon1, lat1)
        return Grid(y_dim, x_dim, time_dim, lat2, lon2, lat_name, lon_name, None, None, None, None,
                    crs, grid_mapping, rectilinear=True, grid_mapping_var=gm_var)

    if lat_da.ndim != 2 or lat_da.dims != lon_da.dims:
        raise GridError(
            explain(
                "Latitude / longitude must be 1-D each or both 2-D on the same dims",
                found=f"{lat_name}{lat_da.dims}, {lon_name}{lon_da.dims}",
                fix="select a single time / level of the coordinate arrays first",
            )
        )
    y_dim, x_dim = lat_da.dims
    lat2 = np.asarray(lat_da.values, float)
    lon2 = np.asarray(lon_da.values, float)
    x = y = None
    xn = yn = None
    km = False
    if x_name and y_name and ds[x_name].dims == (x_dim,) and ds[y_name].dims == (y_dim,):
        x, y = np.asarray(ds[x_name].values, float), np.asarray(ds[y_name].values, float)
        if not _is_index_like(x, y):
            check_monotonic(x, x_name)
            check_monotonic(y, y_name)
            xn, yn = x_name, y_name
            km = _in_km(ds, x_name)
            if km:
                x, y = x * 1e3, y * 1e3
        else:
            x = y = None
    if crs is None:
        grid_mapping, crs = wrf_crs(ds)
    if crs is None:
        grid_mapping, crs = grib_crs(ds)
    if x is None and crs is not None and not crs.is_geographic:
        x, y = projected_axes(crs, lat2, lon2)
    rect = bool(np.allclose(lat2, lat2[:, :1]) and np.allclose(lon2, lon2[:1, :]))
    return Grid(y_dim, x_dim, time_dim, lat2, lon2, lat_name, lon_name, x, y, xn, yn, crs, grid_mapping, rect, gm_var,
                xy_km=km)


def check_monotonic(values: np.ndarray, name: str) -> None:
    """Raise CoordinateError unless ``values`` is strictly increasing or strictly decreasing."""
    values = np.asarray(values)
    if values.size < 2:
        return
    d = np.diff(values)
    if np.all(d > 0) or np.all(d < 0):
        return
    dup = values[np.concatenate([[False], d == 0])]
    raise CoordinateError(
        explain(
            f"Coordinate {name!r} is not strictly monotonic",
            expected="strictly increasing or strictly decreasing values without duplicates",
            found=f"duplicates {dup[:5].tolist()}" if dup.size else f"direction changes in {values[:8].tolist()}...",
            fix=f"ds.sortby({name!r}) and drop duplicates (ds.drop_duplicates({name!r}))",
        )
    )


def _is_index_like(x: np.ndarray, y: np.ndarray) -> bool:
    """True when x / y are just 0..n-1 indices (WRF dims without coordinate values)."""
    return bool(np.array_equal(x, np.arange(x.size)) and np.array_equal(y, np.arange(y.size)))


def _find_latlon_names(ds: xr.Dataset) -> tuple[str | None, str | None]:
    lat = lon = None
    try:
        lats = ds.cf.coordinates.get("latitude", [])
        lons = ds.cf.coordinates.get("longitude", [])
    except Exception:  # cf_xarray raises on some malformed attrs; fall back to aliases
        lats, lons = [], []
    # cf_xarray finds coordinates only; WRF files keep XLAT / XLONG as data variables
    for name, da in ds.variables.items():
        sn = da.attrs.get("standard_name")
        if sn == "latitude" and name not in lats:
            lats = [*lats, name]
        if sn == "longitude" and name not in lons:
            lons = [*lons, name]
    lat = _prefer_2d(ds, lats)
    lon = _prefer_2d(ds, lons)
    if lat is None:
        lat = next((n for n in LAT_ALIASES if n in ds.variables), None)
    if lon is None:
        lon = next((n for n in LON_ALIASES if n in ds.variables), None)
    return lat, lon


def _prefer_2d(ds: xr.Dataset, names: list[str]) -> str | None:
    if not names:
        return None
    return max(names, key=lambda n: (ds[n].ndim == 2, ds[n].ndim))


def _find_xy_names(ds: xr.Dataset) -> tuple[str | None, str | None]:
    x = y = None
    for name, da in ds.coords.items():
        if da.ndim != 1:
            continue
        sn, axis = da.attrs.get("standard_name", ""), da.attrs.get("axis", "")
        if sn == "projection_x_coordinate" or (axis == "X" and sn != "longitude"):
            x = x or name
        if sn == "projection_y_coordinate" or (axis == "Y" and sn != "latitude"):
            y = y or name
    x = x or next((n for n in X_ALIASES if n in ds.coords and ds[n].ndim == 1), None)
    y = y or next((n for n in Y_ALIASES if n in ds.coords and ds[n].ndim == 1), None)
    return x, y


def find_time_dim(ds: xr.Dataset) -> str | None:
    """The time dim of ``ds`` (by cf_xarray's T axis / time coordinate, else a known time name), None
    when it has none: :func:`find_grid`'s ``time_dim``, without finding the horizontal grid."""
    try:
        names = ds.cf.axes.get("T", []) + ds.cf.coordinates.get("time", [])
    except Exception:
        names = []
    for name in [*names, *TIME_ALIASES]:
        if name in ds.dims:
            return name
        if name in ds.variables and ds[name].ndim == 1:
            return ds[name].dims[0]
    return None


def datetime_coords(ds: xr.Dataset, dim: str) -> list[str]:
    """The names of the datetime coordinates of ``ds`` along ``dim`` alone (WRF's ``XTIME`` along ``Time``)."""
    return [n for n, c in ds.coords.items() if c.dims == (dim,) and c.dtype.kind == "M"]


def time_indexed(ds: xr.Dataset, dim: str | None, name: str | None = None) -> xr.Dataset:
    """``ds`` with its time dim ``dim`` indexed by its times: when the dim has no index of its own but a
    datetime coordinate along it (WRF's ``Time``, whose times are ``XTIME``), that coordinate becomes its
    index; the dim is renamed ``name`` when given. ``dim`` None: ``ds`` as it is."""
    if dim is None:
        return ds
    if dim not in ds.indexes:
        stamps = datetime_coords(ds, dim)
        if stamps:
            ds = ds.drop_vars(stamps).assign_coords({dim: ds[stamps[0]].values})
    return ds.rename({dim: name}) if name is not None and name != dim else ds


def _drop_extra_dims(da: xr.DataArray) -> xr.DataArray:
    """WRF stores XLAT(Time, south_north, west_east): keep the first time of such coordinates."""
    while da.ndim > 2:
        da = da.isel({da.dims[0]: 0}, drop=True)
    return da


def _grid_from_projection(ds, x_name, y_name, crs, grid_mapping, gm_var) -> Grid:
    from pyproj import Transformer

    x = np.asarray(ds[x_name].values, float)
    y = np.asarray(ds[y_name].values, float)
    check_monotonic(x, x_name)
    check_monotonic(y, y_name)
    km = _in_km(ds, x_name)
    if km:  # the CRS's easting / northing are metres
        x, y = x * 1e3, y * 1e3
    xx, yy = np.meshgrid(x, y)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xx, yy)
    return Grid(ds[y_name].dims[0], ds[x_name].dims[0], find_time_dim(ds), lat, lon, None, None,
                x, y, x_name, y_name, crs, grid_mapping, rectilinear=False, grid_mapping_var=gm_var, xy_km=km)


# --------------------------------------------------------------------------------------------- make


def make_lambert_grid(
    nx: int,
    ny: int,
    dx: float,
    lat0: float,
    lon0: float,
    *,
    dy: float | None = None,
    standard_parallels: tuple[float, float] | None = None,
    earth_radius: float = 6371229.0,
) -> xr.Dataset:
    """A Lambert conformal grid of ``ny x nx`` points spaced ``dx`` (``dy``) metres, centred on (lat0, lon0).

    Returns a coordinates-only CF Dataset: ``x`` / ``y`` (m), 2-D ``lat`` / ``lon`` and a ``crs``
    grid_mapping variable, ready as a regridding target or a model grid.
    """
    from pyproj import Transformer

    dy = dx if dy is None else dy
    sp = standard_parallels or (lat0, lat0)
    cf = {
        "grid_mapping_name": "lambert_conformal_conic",
        "standard_parallel": [float(sp[0]), float(sp[1])],
        "longitude_of_central_meridian": float(lon0),
        "latitude_of_projection_origin": float(lat0),
        "false_easting": 0.0,
        "false_northing": 0.0,
        "earth_radius": float(earth_radius),
    }
    crs = crs_from_cf(cf)
    x = (np.arange(nx) - (nx - 1) / 2) * dx
    y = (np.arange(ny) - (ny - 1) / 2) * dy
    xx, yy = np.meshgrid(x, y)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xx, yy)
    grid = Grid("y", "x", None, lat, lon, "lat", "lon", x, y, "x", "y", crs, cf, rectilinear=False)
    return grid.to_dataset()


def make_latlon_grid(lat: np.ndarray, lon: np.ndarray, *, lat_name: str = "lat", lon_name: str = "lon") -> xr.Dataset:
    """A regular latitude / longitude grid (1-D axes, CF attributes) as a coordinates-only Dataset."""
    lat = np.asarray(lat, float)
    lon = np.asarray(lon, float)
    check_monotonic(lat, lat_name)
    return xr.Dataset(
        coords={
            lat_name: (lat_name, lat, {**coordinate_attrs("latitude"), "axis": "Y"}),
            lon_name: (lon_name, lon, {**coordinate_attrs("longitude"), "axis": "X"}),
        }
    )
