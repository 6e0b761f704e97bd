"""Tests of xkmcast.fields.regrid against analytic cases, conservation laws and two other libraries.

References used: exactness of bilinear / linear interpolation on (bi)linear fields, spherical cell
areas computed here from the cell bounds we build, xarray's own ``Dataset.interp`` and the
``xarray-regrid`` package (linear and conservative).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xkmcast.errors import ConfigError, DomainCoverageError, GridError, OptionalDependencyError
from xkmcast.fields.regrid import Regridder, regrid

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------ helpers


def latlon_ds(lat, lon, data=None, name="f", lat_name="latitude", lon_name="longitude"):
    """A rectilinear dataset with CF attributes; ``data`` has shape (lat, lon) or is random."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if data is None:
        data = RNG.standard_normal((lat.size, lon.size))
    return xr.Dataset(
        {name: ((lat_name, lon_name), data)},
        coords={
            lat_name: (lat_name, lat, {"standard_name": "latitude", "units": "degrees_north"}),
            lon_name: (lon_name, lon, {"standard_name": "longitude", "units": "degrees_east"}),
        },
    )


def lambert_target(lat0, lon0, n=24, dx=20_000.0):
    """A Lambert conformal n x n grid with 2-D lat/lon, built with pyproj directly."""
    from pyproj import CRS, Transformer

    cf = {"grid_mapping_name": "lambert_conformal_conic", "standard_parallel": [lat0, lat0],
          "longitude_of_central_meridian": lon0, "latitude_of_projection_origin": lat0, "earth_radius": 6371229.0}
    x = (np.arange(n) - (n - 1) / 2) * dx
    xx, yy = np.meshgrid(x, x * 0.8)
    lon, lat = Transformer.from_crs(CRS.from_cf(cf), "EPSG:4326", always_xy=True).transform(xx, yy)
    return xr.Dataset(
        coords={
            "y": ("y", x * 0.8, {"standard_name": "projection_y_coordinate", "units": "m"}),
            "x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "m"}),
            "lat": (("y", "x"), lat, {"standard_name": "latitude", "units": "degrees_north"}),
            "lon": (("y", "x"), lon, {"standard_name": "longitude", "units": "degrees_east"}),
            "crs": ((), 0, cf),
        }
    )


def wrap(lon, center):
    """Longitude made continuous around ``center`` (the field's own convention)."""
    return center + np.mod(np.asarray(lon) - center + 180.0, 360.0) - 180.0


def cell_areas(lat_b, lon_b):
    """Exact spherical-rectangle areas (unit sphere) from 1-D bounds."""
    return np.outer(np.diff(np.sin(np.deg2rad(lat_b))), np.deg2rad(np.diff(lon_b)))


# ------------------------------------------------------------------------- bilinear exactness


@pytest.mark.parametrize(
    "lat, lon, lat0, lon0, center",
    [
        (np.arange(20.0, 50.01, 0.5), np.arange(-20.0, 20.01, 0.5), 35.0, 0.0, 0.0),  # ascending
        (np.arange(50.0, 19.99, -0.5), np.arange(-20.0, 20.01, 0.5), 35.0, 0.0, 0.0),  # descending (ERA5)
        (np.arange(50.0, 19.99, -0.5), np.mod(np.arange(-20.0, 20.01, 0.5), 360), 35.0, 0.0, 0.0),  # 0..360 across 0
        (np.arange(20.0, 50.01, 0.5), np.arange(160.0, 200.01, 0.5), 35.0, -178.0, 180.0),  # across the dateline
        (np.arange(90.0, -90.01, -2.0), np.arange(0.0, 360.0, 2.0), 35.0, 0.0, 0.0),  # global: wrap cell 358..360
    ],
    ids=["ascending", "descending", "lon0-360-greenwich", "dateline", "global-0-360"],
)
def test_bilinear_reproduces_linear_fields_on_lambert_target(lat, lon, lat0, lon0, center):
    tgt = lambert_target(lat0, lon0)
    a, b, c, d = RNG.standard_normal(4)
    la, lo = np.meshgrid(lat, wrap(lon, center), indexing="ij")
    src = latlon_ds(lat, lon, a + b * la + c * lo + 0.01 * d * la * lo)  # bilinear fields are exact too
    out = regrid(src, tgt, "bilinear")["f"]
    tla, tlo = tgt["lat"].values, wrap(tgt["lon"].values, center)
    np.testing.assert_allclose(out.values, a + b * tla + c * tlo + 0.01 * d * tla * tlo, rtol=0, atol=1e-10)
    assert out.dims == ("y", "x") and out.attrs["grid_mapping"] == "crs"


def test_bilinear_from_curvilinear_source_reproduces_linear_fields():
    src = lambert_target(40.0, 10.0, n=40, dx=25_000.0)
    a, b, c = RNG.standard_normal(3)
    src["f"] = a + b * src["lat"] + c * src["lon"]
    tgt = latlon_ds(np.linspace(38.0, 42.0, 9), np.linspace(8.0, 12.0, 11))
    out = Regridder(src, tgt, "bilinear")(src)["f"]
    la, lo = np.meshgrid(tgt["latitude"].values, tgt["longitude"].values, indexing="ij")
    np.testing.assert_allclose(out.values, a + b * la + c * lo, rtol=0, atol=1e-10)


def test_bilinear_matches_xarray_interp():
    lat, lon = np.arange(60.0, 29.99, -0.25), np.arange(0.0, 40.0, 0.25)
    src = latlon_ds(lat, lon)
    tgt = latlon_ds(np.linspace(31.1, 58.7, 17), np.linspace(0.3, 39.2, 23))
    ours = regrid(src, tgt, "bilinear")["f"]
    ref = src["f"].interp(latitude=tgt["latitude"], longitude=tgt["longitude"], method="linear")
    np.testing.assert_allclose(ours.values, ref.values, rtol=0, atol=1e-10)


def test_bilinear_matches_xarray_regrid_linear():
    xarray_regrid = pytest.importorskip("xarray_regrid", reason="xarray-regrid (test extra) not installed")
    assert xarray_regrid
    src = latlon_ds(np.arange(30.0, 60.01, 0.5), np.arange(0.0, 40.0, 0.5), lat_name="lat", lon_name="lon")
    tgt = latlon_ds(np.linspace(31.1, 58.7, 17), np.linspace(0.3, 39.2, 23), lat_name="lat", lon_name="lon")
    ref = src.regrid.linear(tgt)["f"]
    ours = regrid(src, tgt, "bilinear")["f"]
    np.testing.assert_allclose(ours.values, ref.transpose("lat", "lon").values, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------- conservative


def bounded_grid(lat_b, lon_b, data=None, **kw):
    """A rectilinear grid whose midpoint bounds are exactly ``lat_b`` / ``lon_b`` (uniform spacing)."""
    lat = 0.5 * (lat_b[1:] + lat_b[:-1])
    lon = 0.5 * (lon_b[1:] + lon_b[:-1])
    return latlon_ds(lat, lon, data, **kw)


@pytest.mark.parametrize(
    "src_step, tgt_step",
    [(1.0, 0.25), (0.25, 1.0), (0.75, 1.2), (1.2, 0.75)],
    ids=["coarse-to-fine", "fine-to-coarse", "non-nested-down", "non-nested-up"],
)
def test_conservative_preserves_area_weighted_mean(src_step, tgt_step):
    lat_s, lon_s = np.linspace(10, 40, round(30 / src_step) + 1), np.linspace(-15, 15, round(30 / src_step) + 1)
    lat_t, lon_t = np.linspace(10, 40, round(30 / tgt_step) + 1), np.linspace(-15, 15, round(30 / tgt_step) + 1)
    src = bounded_grid(lat_s[::-1], lon_s)  # descending latitudes on the source
    tgt = bounded_grid(lat_t, lon_t)
    out = regrid(src, tgt, "conservative")["f"].values
    a_s, a_t = cell_areas(lat_s, lon_s)[::-1], cell_areas(lat_t, lon_t)
    mean_s = (a_s * src["f"].values).sum() / a_s.sum()
    mean_t = (a_t * out).sum() / a_t.sum()
    assert abs(mean_t - mean_s) < 1e-6
    assert np.isfinite(out).all()


def test_conservative_global_wraps_longitude():
    lat_b, lon_s = np.linspace(-90, 90, 37), np.linspace(0, 360, 73)  # 5 deg, 0..360
    src = bounded_grid(lat_b, lon_s)
    tgt = bounded_grid(np.linspace(-90, 90, 25), np.linspace(-180, 180, 49))  # 7.5 deg, -180..180
    out = regrid(src, tgt, "conservative")["f"].values
    a_s = cell_areas(lat_b, lon_s)
    a_t = cell_areas(np.linspace(-90, 90, 25), np.linspace(-180, 180, 49))
    assert abs((a_t * out).sum() / a_t.sum() - (a_s * src["f"].values).sum() / a_s.sum()) < 1e-6


def test_conservative_matches_xarray_regrid():
    pytest.importorskip("xarray_regrid", reason="xarray-regrid (test extra) not installed")
    lat_s, lon_s = np.linspace(10, 40, 31), np.linspace(-15, 15, 31)
    src = bounded_grid(lat_s, lon_s, lat_name="lat", lon_name="lon")
    # nested target (4 x 1 deg -> 3 deg blocks): xarray-regrid's per-cell latitude weights are exact here
    tgt = bounded_grid(np.linspace(10, 40, 11), np.linspace(-15, 15, 11), lat_name="lat", lon_name="lon")
    ref = src.regrid.conservative(tgt, latitude_coord="lat")["f"].transpose("lat", "lon").values
    ours = regrid(src, tgt, "conservative")["f"].values
    inside = np.isfinite(ref)  # xarray-regrid masks targets whose centre is beyond the source centres
    assert inside.sum() >= 0.6 * inside.size
    np.testing.assert_allclose(ours[inside], ref[inside], rtol=0, atol=1e-12)
    # non-nested target: xarray-regrid spreads a source cell's area uniformly in latitude inside the
    # cell, we use exact sin(lat) overlaps. For a field constant in latitude that cannot matter: equal.
    tgt = bounded_grid(np.linspace(10, 40, 26), np.linspace(-15, 15, 26), lat_name="lat", lon_name="lon")
    src["f"] = src["f"].isel(lat=0, drop=True).broadcast_like(src["f"])
    ref = src.regrid.conservative(tgt, latitude_coord="lat")["f"].transpose("lat", "lon").values
    ours = regrid(src, tgt, "conservative")["f"].values
    inside = np.isfinite(ref)
    np.testing.assert_allclose(ours[inside], ref[inside], rtol=0, atol=1e-12)
    # a random field: the split of a 1-deg cell differs by about tan(lat) * dlat / 2 < 0.6 % of a
    # cell's weight, times the field's range (< 8 here)
    src["f"] = src["f"].copy(data=RNG.standard_normal(src["f"].shape))
    ref = src.regrid.conservative(tgt, latitude_coord="lat")["f"].transpose("lat", "lon").values
    ours = regrid(src, tgt, "conservative")["f"].values
    inside = np.isfinite(ref)
    np.testing.assert_allclose(ours[inside], ref[inside], rtol=0, atol=0.05)
    print("max |ours - xarray_regrid| (non-nested, random):", np.abs(ours[inside] - ref[inside]).max())


def test_conservative_to_curvilinear_needs_subsample_and_is_close():
    lat_b, lon_b = np.linspace(25, 45, 81), np.linspace(-10, 10, 81)
    la = 0.5 * (lat_b[1:] + lat_b[:-1])
    src = bounded_grid(lat_b, lon_b, np.broadcast_to(np.sin(np.deg2rad(4 * la))[:, None], (80, 80)))
    tgt = lambert_target(35.0, 0.0, n=16, dx=50_000.0)
    with pytest.raises(GridError, match="subsample"):
        Regridder(src, tgt, "conservative")
    out = Regridder(src, tgt, "conservative", subsample=6)(src)["f"].values
    bil = regrid(src, tgt, "bilinear")["f"].values
    assert np.abs(out - bil).max() < 0.01  # smooth field: a cell average is close to the point value


# ---------------------------------------------------------------------- constant / nearest / NaN


@pytest.mark.parametrize(
    "method, kw, curvi_source",
    [("bilinear", {}, False), ("bilinear", {}, True), ("nearest", {}, False), ("nearest", {}, True),
     ("conservative", {}, False), ("conservative", {"subsample": 3}, False)],
)
def test_constant_field_is_preserved(method, kw, curvi_source):
    if curvi_source:
        src = lambert_target(40.0, 5.0, n=30, dx=30_000.0)
        src["f"] = xr.full_like(src["lat"], 273.15)
        tgt = latlon_ds(np.linspace(38, 42, 5), np.linspace(3, 7, 6))
    else:
        src = latlon_ds(np.arange(50.0, 19.99, -0.5), np.arange(340.0, 380.0, 0.5) % 360, np.full((61, 80), 273.15))
        tgt = latlon_ds(np.linspace(25, 45, 9), np.linspace(-15, 15, 7)) if method == "conservative" and not kw \
            else lambert_target(35.0, 0.0)
    out = Regridder(src, tgt, method, **kw)(src)["f"].values
    np.testing.assert_allclose(out, 273.15, rtol=0, atol=1e-10)


def test_nearest_returns_the_nearest_source_value():
    lat, lon = np.arange(50.0, 19.99, -0.5), np.arange(-20.0, 20.01, 0.5)
    src = latlon_ds(lat, lon)
    tgt = lambert_target(35.0, 0.0)
    out = regrid(src, tgt, "nearest")["f"].values
    assert np.isin(out, src["f"].values).all()
    # brute force: great-circle nearest point of a few targets
    la, lo = np.deg2rad(np.meshgrid(lat, lon, indexing="ij"))
    for k in RNG.choice(out.size, 20, replace=False):
        tla, tlo = np.deg2rad(tgt["lat"].values.ravel()[k]), np.deg2rad(tgt["lon"].values.ravel()[k])
        cosd = np.sin(la) * np.sin(tla) + np.cos(la) * np.cos(tla) * np.cos(lo - tlo)
        assert out.ravel()[k] == src["f"].values.ravel()[np.argmax(cosd)]


def test_nan_mask_bilinear():
    lat, lon = np.arange(20.0, 50.01, 1.0), np.arange(-20.0, 20.01, 1.0)
    data = np.full((lat.size, lon.size), 5.0)
    data[10:16, 12:20] = np.nan  # lat 30..35, lon -8..-1
    src = latlon_ds(lat, lon, data)
    tgt = latlon_ds(np.arange(22.3, 48, 0.5), np.arange(-18.3, 18, 0.5))
    out = regrid(src, tgt, "bilinear")["f"]
    tla, tlo = np.meshgrid(tgt["latitude"], tgt["longitude"], indexing="ij")
    all_nan = (tla > 30) & (tla < 35) & (tlo > -8) & (tlo < -1)  # all 4 corners NaN
    assert np.array_equal(np.isnan(out.values), all_nan)
    np.testing.assert_allclose(out.values[~all_nan], 5.0, rtol=0, atol=1e-12)  # renormalised weights


def test_nan_mask_conservative():
    lat_b, lon_b = np.linspace(10, 40, 31), np.linspace(-15, 15, 31)
    data = np.full((30, 30), 2.0)
    data[:6, :6] = np.nan  # cells lat 10..16, lon -15..-9
    src = bounded_grid(lat_b, lon_b, data)
    tgt = bounded_grid(np.linspace(10, 40, 11), np.linspace(-15, 15, 11))  # 3-deg cells
    out = regrid(src, tgt, "conservative")["f"].values
    expected_nan = np.zeros((10, 10), bool)
    expected_nan[:2, :2] = True
    assert np.array_equal(np.isnan(out), expected_nan)
    np.testing.assert_allclose(out[~expected_nan], 2.0, atol=1e-12)


# ---------------------------------------------------------------------- domain / backends / API


def test_outside_domain_raises_and_allow_outside_fills_nan():
    src = latlon_ds(np.arange(30.0, 40.01, 0.5), np.arange(0.0, 10.01, 0.5))
    tgt = lambert_target(35.0, 5.0, n=40, dx=40_000.0)  # 1560 km wide: sticks out
    with pytest.raises(DomainCoverageError, match="lat 30.000..40.000"):
        Regridder(src, tgt)
    out = Regridder(src, tgt, allow_outside=True)(src)["f"].values
    la, lo = tgt["lat"].values, tgt["lon"].values
    inside = (la >= 30) & (la <= 40) & (lo >= 0) & (lo <= 10)
    assert np.array_equal(np.isfinite(out), inside)
    # "nearest" fills an edge ring only: targets up to ~300 km out, the source spacing 55 km
    with pytest.raises(DomainCoverageError, match="farther than one source grid spacing"):
        Regridder(src, tgt, allow_outside="nearest")
    tgt = lambert_target(35.0, 5.0, n=40, dx=23_800.0)  # sticks out of the source by less than a spacing
    out = Regridder(src, tgt, allow_outside=True)(src)["f"].values
    la, lo = tgt["lat"].values, tgt["lon"].values
    inside = np.isfinite(out)
    assert 0 < (~inside).sum() < inside.size // 4
    # "nearest": the same inside, the nearest source value outside (brute force on the sphere)
    near = Regridder(src, tgt, allow_outside="nearest")(src)["f"].values
    np.testing.assert_allclose(near[inside], out[inside], rtol=1e-12)
    slat, slon = np.meshgrid(src["latitude"].values, src["longitude"].values, indexing="ij")
    f = src["f"].values
    for y, x in list(zip(*np.nonzero(~inside)))[::7]:
        hav = np.sin(np.radians(slat - la[y, x]) / 2) ** 2 + np.cos(np.radians(slat)) * np.cos(
            np.radians(la[y, x])) * np.sin(np.radians(slon - lo[y, x]) / 2) ** 2
        assert near[y, x] == f[np.unravel_index(np.argmin(hav), hav.shape)]
    with pytest.raises(ConfigError, match="allow_outside"):
        Regridder(src, tgt, allow_outside="nearst")


def test_xesmf_backend():
    src = latlon_ds(np.arange(30.0, 40.01, 1.0), np.arange(0.0, 10.01, 1.0))
    tgt = latlon_ds(np.arange(31.0, 39.0, 0.7), np.arange(1.0, 9.0, 0.7))
    try:
        import xesmf  # noqa: F401
    except Exception:
        with pytest.raises(OptionalDependencyError, match=r"xkmcast\[xesmf\]"):
            Regridder(src, tgt, backend="xesmf")
        assert Regridder(src, tgt, backend="auto").backend == "builtin"
    else:  # pragma: no cover - only where ESMF is installed
        ours = regrid(src, tgt, backend="builtin")["f"].values
        np.testing.assert_allclose(regrid(src, tgt, backend="xesmf")["f"].values, ours, atol=1e-6)


def test_conservative_from_curvilinear_source_is_refused():
    src = lambert_target(40.0, 5.0)
    src["f"] = xr.zeros_like(src["lat"])
    with pytest.raises(GridError, match="rectilinear"):
        Regridder(src, latlon_ds(np.linspace(39, 41, 3), np.linspace(4, 6, 3)), "conservative")


def four_d(chunks=None):
    lat, lon = np.arange(50.0, 19.99, -1.0), np.arange(-20.0, 20.01, 1.0)
    data = RNG.standard_normal((3, 2, lat.size, lon.size)).astype(np.float32)
    ds = xr.Dataset(
        {"t": (("time", "level", "latitude", "longitude"), data, {"units": "K"}),
         "p_level": (("level",), [850.0, 500.0])},
        coords={"time": np.arange(3), "level": [850, 500], "latitude": lat, "longitude": lon},
    )
    return ds.chunk(chunks) if chunks else ds


def test_four_d_input_keeps_coords_and_passes_through():
    ds = four_d()
    tgt = lambert_target(35.0, 0.0)
    out = regrid(ds, tgt)
    assert out["t"].dims == ("time", "level", "y", "x") and out["t"].dtype == np.float32
    assert out["t"].attrs["units"] == "K"
    assert list(out["level"].values) == [850, 500] and out["lat"].dims == ("y", "x") and "crs" in out.coords
    xr.testing.assert_identical(out["p_level"].drop_vars("crs"), ds["p_level"])  # scalar coords attach to all
    one = regrid(ds["t"].isel(time=1, level=0), tgt)  # a DataArray slice: same numbers
    np.testing.assert_allclose(out["t"].isel(time=1, level=0).values, one.values, rtol=0, atol=1e-6)
    from xkmcast.fields.grid import find_grid

    unnamed = regrid(ds["t"].isel(time=1, level=0).rename(None), find_grid(tgt))  # a Grid as target
    assert unnamed.name is None and {"lat", "lon", "crs"} <= set(unnamed.coords)
    np.testing.assert_array_equal(unnamed.values, one.values)
    moved = regrid(ds.transpose("latitude", "time", "longitude", "level"), tgt)["t"]
    assert moved.dims == ("y", "time", "x", "level")
    np.testing.assert_array_equal(moved.transpose(*out["t"].dims).values, out["t"].values)


def test_lazy_with_dask_and_same_as_numpy():
    from dask.callbacks import Callback

    calls = []

    class Count(Callback):
        def _pretask(self, key, dsk, state):
            calls.append(key)

    ds = four_d({"time": 1, "latitude": 10})  # chunked along the horizontal too: rechunked inside
    rg = Regridder(ds, lambert_target(35.0, 0.0))
    with Count():
        out = rg(ds)
        assert out["t"].chunks is not None
        assert calls == []
        values = out["t"].values
    assert calls
    np.testing.assert_array_equal(values, rg(ds.compute())["t"].values)


def test_save_and_load_give_identical_results(tmp_path):
    ds = four_d()
    for method, tgt in (("bilinear", lambert_target(35.0, 0.0)),
                        ("conservative", latlon_ds(np.linspace(25, 45, 9), np.linspace(-15, 15, 7)))):
        rg = Regridder(ds, tgt, method)
        rg.to_netcdf(tmp_path / f"{method}.nc")
        back = Regridder.from_file(tmp_path / f"{method}.nc")
        assert back.method == method and (back.weights != rg.weights).nnz == 0
        xr.testing.assert_identical(back(ds), rg(ds))


def test_wrong_grid_is_refused():
    rg = Regridder(four_d(), lambert_target(35.0, 0.0))
    other = latlon_ds(np.arange(50.0, 19.99, -1.0), np.arange(-10.0, 30.01, 1.0))
    with pytest.raises(GridError, match="differs"):
        rg(other)
    with pytest.raises(GridError, match="not on the grid"):
        rg(other.isel(latitude=slice(1, None)))
