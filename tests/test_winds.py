"""Grid-relative winds (HRRR / NAM GRIB, raw WRF on a Lambert grid) turned to east / north, against
pyproj's meridian convergence of the projection (an independent computation of the same angle)."""

from __future__ import annotations

import warnings

import numpy as np
import pyproj
import pytest
import xarray as xr

import xkmcast  # noqa: F401
from xkmcast.fields.grid import find_grid, make_lambert_grid, make_latlon_grid
from xkmcast.fields.winds import grid_angle, wind_pairs


def lambert(nx=60, ny=40, dx=30000.0):
    return make_lambert_grid(nx, ny, dx, 38.5, -97.5, standard_parallels=(33.0, 45.0))


def convergence(grid) -> np.ndarray:
    """pyproj's meridian convergence [deg] at every point: the angle of grid north from true north."""
    g = find_grid(grid)
    return pyproj.Proj(g.crs).get_factors(g.lon, g.lat).meridian_convergence


def test_grid_angle_is_minus_the_meridian_convergence():
    grid = lambert()
    g = find_grid(grid)
    theta = np.rad2deg(grid_angle(g.lat, g.lon))
    np.testing.assert_allclose(theta, -convergence(grid), atol=1e-3)
    assert np.abs(theta).max() > 6  # the edges of a 1800 km domain are turned by several degrees
    assert np.abs(grid_angle(*np.meshgrid(np.arange(30.0, 40), np.arange(-100.0, -90), indexing="ij"))).max() < 1e-12


def on_grid(grid, u, v, **attrs) -> xr.Dataset:
    g = find_grid(grid)
    dims = ("time", g.y_dim, g.x_dim)
    wind = {"units": "m s-1", **attrs}
    return grid.assign(u10m=(dims, u[None].astype("f4"), wind), v10m=(dims, v[None].astype("f4"), wind),
                       t2m=(dims, np.full((1, *g.shape), 280.0, "f4"), {"units": "K"}))


def test_a_westerly_written_along_the_grid_comes_back_westerly():
    """A uniform 10 m/s west wind, written in grid components with pyproj's convergence, turned back."""
    grid = lambert()
    gamma = np.deg2rad(convergence(grid))  # grid north is gamma clockwise... of true north: x = east turned by -gamma
    ue, ve = 10.0, 0.0
    ug, vg = ue * np.cos(gamma) - ve * np.sin(gamma), ue * np.sin(gamma) + ve * np.cos(gamma)
    ds = on_grid(grid, ug, vg, GRIB_uvRelativeToGrid=1, GRIB_gridType="lambert")
    out = ds.kmcast.earth_relative_winds()
    np.testing.assert_allclose(out["u10m"].values, 10.0, atol=2e-3)
    np.testing.assert_allclose(out["v10m"].values, 0.0, atol=2e-3)
    assert np.abs(vg).max() > 1  # the input was turned: up to ~1.1 m/s of north component at the edges
    assert out["u10m"].attrs["GRIB_uvRelativeToGrid"] == 0 and out["t2m"].identical(ds["t2m"])
    again = out.kmcast.earth_relative_winds()  # turned once only
    np.testing.assert_array_equal(again["u10m"].values, out["u10m"].values)


def test_only_winds_known_to_be_along_a_turned_grid_are_turned_by_default():
    grid = lambert(20, 16)
    g = find_grid(grid)
    u, v = np.ones(g.shape), np.zeros(g.shape)
    plain = on_grid(grid, u, v)  # no flag: a CMOR uas is eastward
    assert plain.kmcast.earth_relative_winds() is plain
    named = plain.kmcast.earth_relative_winds(pairs=[("u10m", "v10m")])
    assert np.abs(named["v10m"].values).max() > 0.02  # sin(2 degrees) at the edges of a 600 km domain
    wrf = plain.assign_attrs(MAP_PROJ=1)  # raw WRF on a Lambert grid
    np.testing.assert_array_equal(wrf.kmcast.earth_relative_winds()["v10m"].values, named["v10m"].values)
    assert plain.assign_attrs(MAP_PROJ=3).kmcast.earth_relative_winds()["v10m"].values.max() == 0  # Mercator
    assert wind_pairs(xr.Dataset({n: ("x", [0.0]) for n in ("u10m", "v10m", "u850", "v850", "u", "t2m")})) == \
        [("u10m", "v10m"), ("u850", "v850")]
    with pytest.raises(xkmcast.errors.ConfigError, match="not in the dataset"):
        plain.kmcast.earth_relative_winds(pairs=[("u100m", "v100m")])


def latlon_target() -> xr.Dataset:
    """A 0.25 degree fine target (t2m) inside the 24 x 24 12 km Lambert grid, on 2024-01-01."""
    fine = make_latlon_grid(np.arange(39.5, 37.45, -0.25), np.arange(-99.0, -95.95, 0.25),
                            lat_name="latitude", lon_name="longitude")
    fine = fine.assign(t2m=(("time", "latitude", "longitude"), np.full((1, 9, 13), 280.0), {"units": "K"}))
    return fine.assign_coords(time=[np.datetime64("2024-01-01", "ns")])


def flagged_lambert(seed: int) -> xr.Dataset:
    """Random winds marked along a 24 x 24 12 km Lambert grid (as cfgrib marks HRRR's), on 2024-01-01."""
    grid = lambert(24, 24, 12000.0)
    g = find_grid(grid)
    rng = np.random.default_rng(seed)
    return on_grid(grid, rng.normal(size=g.shape), rng.normal(size=g.shape), GRIB_uvRelativeToGrid=1,
                   GRIB_gridType="lambert").assign_coords(time=[np.datetime64("2024-01-01", "ns")])


def test_regridding_grid_relative_winds_warns(tmp_path):
    """A coarse input whose winds are along its Lambert grid, regridded onto a latitude / longitude
    target: ``prepare`` warns and says what to do; once turned, it does not."""
    from xkmcast.data.prepare import prepare

    ds = flagged_lambert(0)
    fine = latlon_target()
    kw = dict(input_vars=["u10m", "v10m"], output_vars=["t2m"], regrid_options={"allow_outside": "nearest"})
    with pytest.warns(UserWarning, match=r"u10m, v10m of the coarse input are along its grid.*earth_relative_winds"):
        prepare(fine, ds, tmp_path / "s.zarr", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        prepare(fine, ds.kmcast.earth_relative_winds(), tmp_path / "t.zarr", **kw)


def test_block_means_on_the_same_projection_keep_their_axes_quietly(tmp_path):
    """The coarse input made of the grid's own block means is on the same projection: its grid-relative
    winds are along the fine grid's axes too, so regridding them is right and does not warn."""
    from xkmcast.data.prepare import prepare

    ds = flagged_lambert(1)
    coarse = ds.coarsen(x=2, y=2).mean(keep_attrs=True)
    assert find_grid(coarse).crs == find_grid(ds).crs and coarse["u10m"].attrs["GRIB_uvRelativeToGrid"] == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare(ds, coarse, tmp_path / "s.zarr", input_vars=["u10m", "v10m"], output_vars=["u10m"],
                regrid_options={"allow_outside": "nearest"})
    assert not [w for w in caught if "along its grid" in str(w.message)]
    with pytest.warns(UserWarning, match="along its grid"):  # onto a latitude / longitude grid: warned
        prepare(latlon_target(), coarse, tmp_path / "t.zarr", input_vars=["u10m", "v10m"], output_vars=["t2m"],
                regrid_options={"allow_outside": "nearest"})
