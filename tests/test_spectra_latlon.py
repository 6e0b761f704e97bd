"""Spectra on latitude / longitude grids: plane waves of known wavelength, the Nyquist limit of the
radial axis, and zonal spectra of global fields (Parseval with area weights)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xkmcast.fields import metrics as M
from xkmcast.errors import GridError
from xkmcast.fields.grid import EARTH_RADIUS_M
from xkmcast.fields.zonal import zonal_spectrum

R_KM = EARTH_RADIUS_M / 1000.0  # the sphere of Grid.spacing_m


def latlon_field(values, lat, lon, lat_name="lat", lon_name="lon"):
    dims = ("time", lat_name, lon_name)[-values.ndim:]
    return xr.DataArray(values, dims=dims, name="t2m", attrs={"units": "K"}, coords={
        lat_name: (lat_name, lat, {"standard_name": "latitude", "units": "degrees_north"}),
        lon_name: (lon_name, lon, {"standard_name": "longitude", "units": "degrees_east"})})


def test_plane_wave_on_a_latlon_grid_peaks_at_its_wavelength_and_stops_at_nyquist():
    lat = np.arange(10.0, -10.01, -0.25)  # descending, near the equator: spacing ~27.8 km
    lon = np.arange(100.0, 120.0, 0.25)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    for wavelength, along in ((400.0, "y"), (250.0, "x")):
        dist = R_KM * np.deg2rad(la) if along == "y" else R_KM * np.cos(np.deg2rad(la)) * np.deg2rad(lo)
        spec = M.power_spectrum(latlon_field(np.cos(2 * np.pi * dist / wavelength), lat, lon))
        peak = float(spec.wavenumber[int(np.argmax(spec.values))])
        assert abs(peak - 1 / wavelength) <= spec.attrs["dk"], (along, peak, 1 / wavelength)
        assert spec.attrs["dy_km"] == pytest.approx(R_KM * np.deg2rad(0.25), rel=1e-6)
        assert spec.attrs["dx_km"] == pytest.approx(R_KM * np.deg2rad(0.25) * np.cos(np.deg2rad(la)).mean(), rel=1e-3)
        k = spec.wavenumber.values
        assert k[-1] <= spec.attrs["nyquist"] < k[-1] + spec.attrs["dk"]  # no corner wavenumbers


LAT = np.arange(89.0, -89.1, -2.0)  # descending, global
LON = np.arange(0.0, 360.0, 2.5)


def test_zonal_spectrum_of_a_zonal_wave_and_parseval():
    rng = np.random.default_rng(0)
    la, lo = np.meshgrid(LAT, LON, indexing="ij")
    amp = 1.0 + np.sin(np.deg2rad(la)) ** 2
    wave = amp * np.cos(np.deg2rad(7 * lo) + 0.3) + 280.0 + rng.normal(size=(LAT.size, 1))  # row means vary
    spec = zonal_spectrum(latlon_field(wave, LAT, LON))
    w = np.cos(np.deg2rad(LAT))
    assert int(np.argmax(spec.values)) == 7 and spec.attrs["nyquist"] == LON.size // 2
    np.testing.assert_allclose(float(spec.sel(zonal_wavenumber=7)), np.sum(w * amp[:, 0] ** 2 / 2) / w.sum(), rtol=1e-12)
    np.testing.assert_allclose(spec.drop_sel(zonal_wavenumber=7).values, 0.0, atol=1e-20)
    # Parseval on noise, with times averaged; the longitude convention and order do not matter
    noise = rng.normal(size=(3, LAT.size, LON.size))
    f = latlon_field(noise, LAT, LON)
    spec = zonal_spectrum(f)
    row_var = f.var("lon").weighted(xr.DataArray(w, dims="lat")).mean("lat").mean("time")
    np.testing.assert_allclose(float(spec.sum()), float(row_var), rtol=1e-12)
    shifted = f.assign_coords(lon=np.where(LON >= 180, LON - 360, LON)).sortby("lon").sortby("lat")
    np.testing.assert_allclose(zonal_spectrum(shifted).values, spec.values, rtol=1e-12, atol=1e-20)
    assert spec.attrs["units"] == "(K)^2"


def test_zonal_spectrum_refuses_a_regional_or_uneven_grid():
    with pytest.raises(GridError, match="whole circle"):
        zonal_spectrum(latlon_field(np.zeros((LAT.size, 40)), LAT, np.arange(0.0, 100.0, 2.5)))
    with pytest.raises(GridError, match="rectilinear"):
        zonal_spectrum(xr.DataArray(np.zeros((4, 5)), dims=("y", "x")))


def test_spacing_of_a_rotated_grid_without_xy_is_the_great_circle_distance():
    """A 3 km Lambert grid placed ~25 degrees of longitude east of its central meridian is rotated by
    ~16 degrees against north; given as 2-D lat / lon only (dims y / x without values), differences of
    latitude along y and of longitude along x alone underestimate its spacing."""
    from pyproj import Transformer

    lcc = "+proj=lcc +lat_1=40 +lat_2=40 +lat_0=40 +lon_0=-125 +R=6371229"
    x0, y0 = Transformer.from_crs("EPSG:4326", lcc, always_xy=True).transform(-100.0, 40.0)
    xs, ys = x0 + (np.arange(40) - 19.5) * 3000.0, y0 + (np.arange(30) - 14.5) * 3000.0
    lon, lat = Transformer.from_crs(lcc, "EPSG:4326", always_xy=True).transform(*np.meshgrid(xs, ys))
    field = xr.DataArray(np.random.default_rng(0).normal(size=(30, 40)), dims=("y", "x"), coords={
        "lat": (("y", "x"), lat, {"standard_name": "latitude"}),
        "lon": (("y", "x"), lon, {"standard_name": "longitude"})})
    spec = M.power_spectrum(field)
    # 3 km times the map factor of the projection at 40 N on its standard parallel (1 within 1e-4 here)
    assert spec.attrs["dx_km"] == pytest.approx(3.0, rel=1e-3)
    assert spec.attrs["dy_km"] == pytest.approx(3.0, rel=1e-3)
