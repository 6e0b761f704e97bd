"""xkmcast.data.synthetic and the shipped sample (xkmcast.data.make_sample)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from xkmcast.data.make_sample import SAMPLE_PATH, _DIGITS, build_sample, open_sample, split_sample
from xkmcast.data.synthetic import SyntheticWeather, block_mean, synthetic_pair
from xkmcast.fields.grid import find_grid, make_lambert_grid, make_latlon_grid

FACTOR = 8


@pytest.fixture(scope="module")
def pair():
    """Seed 5: a coast and hills; 48 x 48 at 3 km, coarse 6 x 6 (24 km), 16 hourly times."""
    return synthetic_pair(nx=48, ny=48, dx=3000.0, factor=FACTOR, times=16, seed=5)


def _blocks(a: np.ndarray, f: int) -> np.ndarray:
    """Independent block mean with numpy reshapes."""
    s = a.shape
    return a.reshape(*s[:-2], s[-2] // f, f, s[-1] // f, f).mean(axis=(-3, -1))


def _upsample_bilinear(coarse: xr.Dataset, fine: xr.Dataset, values: np.ndarray) -> np.ndarray:
    """Bilinear interpolation in projection x/y from the coarse block centres (linear extrapolation
    at the edges), scipy's RegularGridInterpolator."""
    vals = np.moveaxis(np.asarray(values, float), (-2, -1), (0, 1))
    f = RegularGridInterpolator((coarse.y.values, coarse.x.values), vals, bounds_error=False, fill_value=None)
    yy, xx = np.meshgrid(fine.y.values, fine.x.values, indexing="ij")
    return np.moveaxis(f(np.stack([yy, xx], axis=-1)), (0, 1), (-2, -1))


def test_same_seed_same_data_other_seed_other_data():
    a = synthetic_pair(nx=16, ny=16, factor=4, times=2, seed=3)
    b = synthetic_pair(nx=16, ny=16, factor=4, times=2, seed=3)
    for x, y in zip(a, b):
        xr.testing.assert_identical(x, y)
    lat, lon, t = a[1].lat.values, a[1].lon.values, a[1].time.values
    same, other = SyntheticWeather(3), SyntheticWeather(4)
    np.testing.assert_allclose(same.fields(lat, lon, t, ("t2m",))["t2m"], a[1].t2m.values, rtol=1e-6)
    assert not np.allclose(other.fields(lat, lon, t, ("t2m",))["t2m"], a[1].t2m.values, rtol=1e-3)
    assert not np.allclose(other.invariants(lat, lon)["orog"], a[1].orog.values)


def test_coarse_is_the_exact_block_mean_of_fine(pair):
    coarse, fine = pair
    for name in ("t2m", "u10m", "v10m", "tp", "orog", "lsm"):
        np.testing.assert_allclose(coarse[name].values, _blocks(fine[name].values.astype(float), FACTOR),
                                   rtol=2e-6, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(coarse.x.values, _blocks(fine.x.values[None, :].repeat(FACTOR, 0), FACTOR)[0])
    # lat/lon of the coarse cells are those of the block centres through the grid's CRS
    g = find_grid(coarse)
    assert g.crs is not None and g.shape == (48 // FACTOR, 48 // FACTOR)
    np.testing.assert_allclose(coarse.lat.values, _blocks(fine.lat.values, FACTOR), atol=1e-3)


def test_cf_annotations(pair):
    coarse, fine = pair
    expected = {"t2m": ("air_temperature", "K"), "u10m": ("eastward_wind", "m s-1"),
                "v10m": ("northward_wind", "m s-1"), "tp": ("precipitation_amount", "kg m-2"),
                "refc": ("equivalent_reflectivity_factor", "dBZ"), "orog": ("surface_altitude", "m"),
                "msl": ("air_pressure_at_mean_sea_level", "Pa"), "z500": ("geopotential", "m2 s-2")}
    for name, (sn, units) in expected.items():
        da = fine[name] if name in fine else coarse[name]
        assert (da.attrs["standard_name"], da.attrs["units"]) == (sn, units), name
        assert da.attrs["grid_mapping"] == "crs"
    assert fine["crs"].attrs["grid_mapping_name"] == "lambert_conformal_conic"
    assert fine.x.attrs["units"] == "m" and fine.lat.dims == ("y", "x")
    assert fine.t2m.dims == ("time", "y", "x") and fine.t2m.dtype == np.float32
    assert coarse.lsm.attrs["standard_name"] == "land_area_fraction"


def test_physical_ranges(pair):
    coarse, fine = pair
    orog, lsm = fine.orog.values, fine.lsm.values
    assert 0.0 <= orog.min() and orog.max() <= 2500.0 and orog.max() > 800.0
    assert set(np.unique(lsm)) == {0.0, 1.0}
    assert np.all(orog[lsm == 0] == 0.0)  # sea has zero height
    tp = fine.tp.values
    assert tp.min() >= 0.0
    assert 0.03 < (tp > 0).mean() < 0.7  # intermittent
    assert 250 < fine.t2m.min() and fine.t2m.max() < 320
    assert 95000 < coarse.msl.min() and coarse.msl.max() < 106000


def test_reflectivity_is_marshall_palmer_of_rain_rate(pair):
    _, fine = pair
    tp, refc = fine.tp.values.astype(float), fine.refc.values.astype(float)
    wet = tp > 0.05
    np.testing.assert_allclose(refc[wet], 10 * np.log10(200 * tp[wet] ** 1.6), atol=1e-3)
    assert np.all(refc[tp == 0] == -10.0)


def test_lapse_rate_is_recovered_by_regression(pair):
    """Within each coarse block, t2m deviations regress on orography deviations with -6.5 K/km."""
    _, fine = pair
    t2m = fine.t2m.values.astype(float)
    orog, lsm = fine.orog.values.astype(float), fine.lsm.values.astype(float)

    def anomaly(a):
        return a - np.repeat(np.repeat(_blocks(a, FACTOR), FACTOR, -2), FACTOR, -1)

    ta = anomaly(t2m)
    x = np.stack([np.broadcast_to(anomaly(orog), ta.shape).ravel(), np.broadcast_to(anomaly(lsm), ta.shape).ravel()], 1)
    slope = np.linalg.lstsq(x, ta.ravel(), rcond=None)[0][0]
    assert slope * 1000 == pytest.approx(-6.5, rel=0.08)


def test_boundary_layer_steepens_the_lapse_rate_by_day_and_drives_slope_winds():
    """boundary_layer=1: the within-block lapse rate is near dry adiabatic on a (partly cloudy) afternoon,
    inversion-like (-2.5 K/km) at night; the wind blows up the slopes by day, down them at night."""
    day_night = np.array(["2024-07-01T21:30", "2024-07-02T09:30"], dtype="datetime64[ns]")  # solar 15 h, 3 h
    _, fine = synthetic_pair(nx=48, ny=48, dx=3000.0, factor=FACTOR, times=day_night, seed=5, boundary_layer=1)
    orog, lsm = fine.orog.values.astype(float), fine.lsm.values.astype(float)

    def anomaly(a):
        return a - np.repeat(np.repeat(_blocks(a, FACTOR), FACTOR, -2), FACTOR, -1)

    dhdy, dhdx = np.gradient(orog, 3000.0)
    slope = np.hypot(dhdx, dhdy)
    steep = (slope > 0.03) & (lsm > 0)
    x = np.stack([anomaly(orog).ravel(), anomaly(lsm).ravel()], 1)
    lapse, upslope = [], []
    for i in range(2):
        lapse.append(np.linalg.lstsq(x, anomaly(fine.t2m.values[i].astype(float)).ravel(), rcond=None)[0][0] * 1000)
        wind_up = (fine.u10m.values[i] * dhdx + fine.v10m.values[i] * dhdy) / np.maximum(slope, 1e-12)
        upslope.append(float(wind_up[steep].mean()))
    assert steep.sum() > 100
    assert -9.8 < lapse[0] < -8.0, lapse  # dry adiabatic under a clear sky, less under cloud
    assert lapse[1] == pytest.approx(-2.5, abs=0.3), lapse
    assert upslope[0] > 1.5 and upslope[1] < -0.5, upslope


def test_fine_detail_is_partly_predictable(pair):
    """(interpolated coarse, orography anomaly) -> fine t2m beats interpolation alone on held-out times."""
    coarse, fine = pair
    t2m = fine.t2m.values.astype(float)
    t_int = _upsample_bilinear(coarse, fine, coarse.t2m.values)
    o_anom = fine.orog.values - _upsample_bilinear(coarse, fine, coarse.orog.values)
    l_anom = fine.lsm.values - _upsample_bilinear(coarse, fine, coarse.lsm.values)

    def design(sl):
        shape = t2m[sl].shape
        cols = [t_int[sl].ravel(), np.broadcast_to(o_anom, shape).ravel(), np.broadcast_to(l_anom, shape).ravel()]
        return np.column_stack([*cols, np.ones(t2m[sl].size)]), t2m[sl].ravel()

    train, test = slice(0, 10), slice(10, None)
    coef = np.linalg.lstsq(*design(train), rcond=None)[0]
    a, b = design(test)
    rmse_model = np.sqrt(np.mean((a @ coef - b) ** 2))
    rmse_interp = np.sqrt(np.mean((t_int[test].ravel() - b) ** 2))
    assert rmse_model < 0.6 * rmse_interp, (rmse_model, rmse_interp)
    assert rmse_model > 0.1  # and not perfectly predictable: the noise remains


def test_area_mean_on_projected_grid_equals_block_mean_of_points():
    """supersample=n on a grid n times coarser samples exactly the fine grid's points."""
    w = SyntheticWeather(2)
    times = np.array(["2024-07-01T12"], dtype="datetime64[ns]")
    fine = w.dataset(make_lambert_grid(16, 16, 3000.0, 38.5, -97.5), times, ("t2m", "tp"), dtype="float64")
    coarse = w.dataset(make_lambert_grid(4, 4, 12000.0, 38.5, -97.5), times, ("t2m", "tp"), supersample=4,
                       dtype="float64")
    for name in ("t2m", "tp", "orog"):
        np.testing.assert_allclose(coarse[name].values, _blocks(fine[name].values, 4), rtol=1e-9, atol=1e-9)


def test_area_mean_on_latlon_grid_is_cos_weighted():
    w = SyntheticWeather(2)
    grid = make_latlon_grid([38.75, 38.5], [-97.75, -97.5], lat_name="latitude", lon_name="longitude")
    ds = w.dataset(grid, np.array(["2024-07-01T12"], dtype="datetime64[ns]"), ("t2m",), supersample=4,
                   dtype="float64")
    off = (np.arange(4) + 0.5) / 4 * 0.25 - 0.125  # sub-points of each 0.25 deg cell
    lat = 38.75 + off
    lon = -97.75 + off
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    pts = w.fields(la, lo, ds.time.values, ("t2m",))["t2m"][0]
    wgt = np.cos(np.deg2rad(la))
    assert ds.t2m.dims == ("time", "latitude", "longitude")
    assert float(ds.t2m[0, 0, 0]) == pytest.approx((pts * wgt).sum() / wgt.sum(), rel=1e-12)


def test_block_mean_rejects_non_multiple():
    _, fine = synthetic_pair(nx=12, ny=12, factor=4, times=1)
    with pytest.raises(ValueError, match="multiple"):
        block_mean(fine, 5)


# ------------------------------------------------------------------------------------ the sample


def test_sample_file_layout_and_size():
    assert SAMPLE_PATH.exists(), "regenerate with: python -m xkmcast.data.make_sample"
    assert SAMPLE_PATH.stat().st_size < 3e6
    ds = open_sample()
    assert ds.sizes["time"] == 48 and (ds.sizes["y"], ds.sizes["x"]) == (64, 64)
    assert ds.t2m.dims == ("time", "y", "x") and ds.era5_t2m.dims == ("time", "latitude", "longitude")
    coarse, fine = split_sample(ds)
    assert set(fine.data_vars) == {"t2m", "u10m", "v10m", "tp", "refc", "orog", "lsm"}
    assert {"t2m", "u10m", "v10m", "tp", "msl", "tcwv", "z500", "t850", "orog", "lsm"} == set(coarse.data_vars)
    gc, gf = find_grid(coarse), find_grid(fine)
    assert gc.rectilinear and gc.lat[0, 0] > gc.lat[-1, 0]  # ERA5-like descending latitude
    assert np.allclose(np.diff(gc.lon[0]), 0.25)
    # the coarse grid covers the fine grid with at least one cell to spare
    assert gc.lat.min() < gf.lat.min() - 0.2 and gc.lat.max() > gf.lat.max() + 0.2
    assert gc.lon.min() < gf.lon.min() - 0.2 and gc.lon.max() > gf.lon.max() + 0.2
    assert 0.2 < float(fine.lsm.mean()) < 0.9  # a coast in the domain
    ds.close()


@pytest.mark.slow
def test_sample_file_regenerates_identically():
    """The shipped file equals a fresh build to within the precision it is stored with."""
    fresh = build_sample()
    with open_sample() as shipped:
        assert set(shipped.data_vars) == set(fresh.data_vars)
        for name in fresh.data_vars:
            atol = 10.0 ** -_DIGITS.get(name.removeprefix("era5_"), 2)
            np.testing.assert_allclose(shipped[name].values, fresh[name].values, atol=atol, rtol=0, err_msg=name)
        for c in ("lat", "lon", "latitude", "longitude", "x", "y", "time"):
            np.testing.assert_array_equal(shipped[c].values, fresh[c].values)
