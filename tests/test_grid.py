"""Grid detection: CF meaning first, then ERA5 / WRF / HRRR aliases; checked against pyproj and real WRF output."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from pyproj import CRS, Transformer

import xkmcast  # noqa: F401  (accessor)
from xkmcast.errors import CoordinateError, GridError
from xkmcast.fields.grid import HRRR_CRS_CF, find_grid, make_lambert_grid, make_latlon_grid


def test_wrf_guam_real_output(guam):
    """guam.nc is real WRF output: XLAT/XLONG 2-D, dims south_north/west_east, time dim Time."""
    g = guam.kmcast.grid
    assert g.dims == ("south_north", "west_east")
    assert g.time_dim == "Time"
    assert g.shape == (68, 62)
    assert (g.lat_name, g.lon_name) == ("XLAT", "XLONG")
    np.testing.assert_allclose(g.lat.min(), guam.attrs["geospatial_lat_min"], atol=1e-5)
    np.testing.assert_allclose(g.lon.max(), guam.attrs["geospatial_lon_max"], atol=1e-5)
    dy, dx = g.spacing_m()
    # the data README: spacing about 0.78 km
    assert 700 < dx < 850 and 700 < dy < 850


def test_era5_descending_latitude_and_0_360(era5_like):
    ds = era5_like.assign_coords(longitude=(era5_like.longitude + 250) % 360).sortby("longitude")
    g = find_grid(ds)
    assert g.rectilinear and g.dims == ("latitude", "longitude")
    assert g.lat[0, 0] > g.lat[-1, 0]  # descending kept as in the data
    assert g.time_dim == "time"
    assert g.crs is None


def test_cf_lambert_grid_roundtrip():
    target = make_lambert_grid(40, 30, 3000.0, 38.5, -97.5)
    g = find_grid(target)
    assert g.dims == ("y", "x") and g.shape == (30, 40) and not g.rectilinear
    assert g.crs.to_cf()["grid_mapping_name"] == "lambert_conformal_conic"
    # independent check: project the 2-D lat/lon with pyproj and recover x / y
    xx, yy = Transformer.from_crs("EPSG:4326", g.crs, always_xy=True).transform(g.lon, g.lat)
    np.testing.assert_allclose(xx, np.broadcast_to(g.x, xx.shape), atol=1e-3)
    np.testing.assert_allclose(yy, np.broadcast_to(g.y[:, None], yy.shape), atol=1e-3)
    np.testing.assert_allclose(g.spacing_m(), (3000.0, 3000.0))


def test_projection_only_grid_gets_latlon():
    """x / y with a CF grid_mapping but no lat/lon (HRRR-like): lat/lon computed from the CRS."""
    crs = CRS.from_cf(HRRR_CRS_CF)
    x = np.arange(5) * 3000.0
    y = np.arange(4) * 3000.0
    ds = xr.Dataset(
        {"t2m": (("y", "x"), np.zeros((4, 5)), {"grid_mapping": "crs"}), "crs": ((), 0, HRRR_CRS_CF)},
        coords={"x": ("x", x, {"standard_name": "projection_x_coordinate"}),
                "y": ("y", y, {"standard_name": "projection_y_coordinate"})},
    )
    g = find_grid(ds)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x[2], y[1])
    assert g.lat[1, 2] == pytest.approx(lat) and g.lon[1, 2] == pytest.approx(lon)
    # the HRRR projection origin (38.5 N, 97.5 W) is x = y = 0
    assert g.lat[0, 0] == pytest.approx(38.5) and g.lon[0, 0] == pytest.approx(-97.5)


def test_wrf_lambert_attrs_give_crs():
    """WRF files without CF grid_mapping carry MAP_PROJ / TRUELAT1 ... in the global attributes."""
    target = make_lambert_grid(12, 10, 2000.0, 23.5, 121.0, standard_parallels=(10.0, 40.0), earth_radius=6370000.0)
    ds = xr.Dataset(
        {"XLAT": (("south_north", "west_east"), target.lat.values), "XLONG": (("south_north", "west_east"), target.lon.values)},
        attrs={"MAP_PROJ": 1, "TRUELAT1": 10.0, "TRUELAT2": 40.0, "STAND_LON": 121.0, "MOAD_CEN_LAT": 23.5},
    )
    g = find_grid(ds)
    assert g.crs is not None and g.x is not None
    np.testing.assert_allclose(np.diff(g.x), 2000.0, atol=1e-3)


def test_duplicate_and_non_monotonic_coordinates_raise(era5_like):
    lat = era5_like.latitude.values.copy()
    lat[3] = lat[2]
    with pytest.raises(CoordinateError, match="duplicates"):
        find_grid(era5_like.assign_coords(latitude=lat))
    with pytest.raises(CoordinateError, match="what to do"):
        make_latlon_grid([0, 1, 0.5], [0, 1])


def test_no_coordinates_raise_grid_error():
    with pytest.raises(GridError, match="latitude"):
        find_grid(xr.Dataset({"a": (("p", "q"), np.zeros((2, 2)))}))


def test_dataarray_accessor(era5_like):
    g = era5_like["2t"].kmcast.grid
    assert g.shape == (era5_like.sizes["latitude"], era5_like.sizes["longitude"])


def test_to_dataset_is_cf():
    ds = make_lambert_grid(8, 6, 1000.0, 45.0, 10.0)
    assert ds.cf["latitude"].shape == (6, 8)
    assert ds.cf.axes["X"] == ["x"] and ds.cf.axes["Y"] == ["y"]
    assert ds["crs"].attrs["grid_mapping_name"] == "lambert_conformal_conic"


#: the grid mapping of Daymet's Lambert conformal grid (as in R stars' lcc_km.nc, a Daymet subset)
DAYMET_LCC = {"grid_mapping_name": "lambert_conformal_conic", "latitude_of_projection_origin": 42.5,
              "longitude_of_central_meridian": -100.0, "standard_parallel": [25.0, 60.0], "false_easting": 0.0,
              "false_northing": 0.0, "semi_major_axis": 6378137.0, "inverse_flattening": 298.257223563}


@pytest.mark.parametrize("with_latlon", [False, True], ids=["xy-only", "xy-and-latlon"])
def test_projection_coordinates_in_km(with_latlon):
    """Daymet gives its Lambert conformal x / y in km: lat / lon are pyproj's at x, y * 1000 m (not
    1000 times closer to the origin), the spacing is in metres, and the grid's own dataset keeps km."""
    x_km, y_km = np.arange(-778.25, -770.0, 1.0), np.arange(-120.0, -126.0, -1.0)
    xx, yy = np.meshgrid(x_km * 1e3, y_km * 1e3)
    lon, lat = Transformer.from_crs(CRS.from_cf(DAYMET_LCC), "EPSG:4326", always_xy=True).transform(xx, yy)
    coords = {"x": ("x", x_km, {"units": "km", "standard_name": "projection_x_coordinate"}),
              "y": ("y", y_km, {"units": "km", "standard_name": "projection_y_coordinate"})}
    if with_latlon:
        coords.update(lat=(("y", "x"), lat, {"units": "degrees_north"}), lon=(("y", "x"), lon, {"units": "degrees_east"}))
    ds = xr.Dataset({"prcp": (("y", "x"), np.ones(xx.shape), {"grid_mapping": "lambert_conformal_conic"}),
                     "lambert_conformal_conic": ((), 0, DAYMET_LCC)}, coords=coords)
    g = find_grid(ds)
    np.testing.assert_allclose(g.lat, lat, atol=1e-9)
    np.testing.assert_allclose(g.lon, lon, atol=1e-9)
    assert 36 < g.lat.min() < g.lat.max() < 41  # Colorado, not the projection origin
    np.testing.assert_allclose(g.spacing_m(), (1000.0, 1000.0))
    assert g.xy_km and g.model_info()["xy_km"]
    out = g.to_dataset()
    np.testing.assert_allclose(out["x"].values, x_km)
    assert out["x"].attrs["units"] == "km" and out["y"].attrs["units"] == "km"


def test_a_model_trained_on_a_km_grid_labels_its_results_in_km():
    """The grid a model records (model_info) keeps km: its results carry the x / y the user's truth has."""
    from _tiny import tiny_corrdiff
    from xkmcast.fields.downscale import model_grid

    metres = make_lambert_grid(20, 16, 4000.0, 24.0, 121.0)
    km = metres.assign_coords(x=metres["x"] / 1000, y=metres["y"] / 1000)
    km["x"].attrs.update(metres["x"].attrs, units="km")
    km["y"].attrs.update(metres["y"].attrs, units="km")
    g, g_m = find_grid(km), find_grid(metres)
    np.testing.assert_allclose(g.lat, g_m.lat)
    np.testing.assert_allclose(g.x, g_m.x)  # metres inside
    pipe = tiny_corrdiff()
    pipe.set_grid(g.lat, g.lon, **g.model_info())
    out = model_grid(pipe)
    np.testing.assert_allclose(out["x"].values, km["x"].values)
    assert out["x"].attrs["units"] == "km"
