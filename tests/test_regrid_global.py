"""Global grids in regridding: polar rows beyond the coarse cell centres, longitude wrap, descending
latitude and readable coverage errors, checked against analytic fields on the sphere."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xkmcast.errors import DomainCoverageError
from xkmcast.fields.regrid import Regridder, regrid


def latlon(lat, lon, fields=None):
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    data = {k: (("latitude", "longitude"), f(la, lo)) for k, f in (fields or {}).items()}
    return xr.Dataset(data, coords={
        "latitude": ("latitude", lat, {"standard_name": "latitude", "units": "degrees_north"}),
        "longitude": ("longitude", lon, {"standard_name": "longitude", "units": "degrees_east"})})


def cart(la, lo):
    la, lo = np.deg2rad(la), np.deg2rad(lo)
    return np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)


def scalar(la, lo):
    """A smooth field on the sphere (degree <= 2 in Cartesian coordinates): single-valued at the poles."""
    x, y, z = cart(la, lo)
    return 1.0 + x + 2.0 * y + 3.0 * z + x * z


def wind_u(la, lo):
    """East component of a solid-body rotation about the equatorial x axis: a flow across the poles,
    u = -sin(lat) cos(lon), which is -cos(lon) at the north pole (not single-valued as a scalar)."""
    return -np.sin(np.deg2rad(la)) * np.cos(np.deg2rad(lo))


FIELDS = {"s": scalar, "u": wind_u}
COARSE = latlon(np.arange(-88.0, 88.1, 4.0), np.arange(2.0, 360.0, 4.0), FIELDS)  # cell centres of 4 deg, 0..360
FINE = latlon(np.arange(89.5, -89.6, -1.0), np.arange(-179.5, 180.0, 1.0))  # 1 deg, descending, -180..180


def test_global_target_beyond_the_coarse_centres_is_covered_and_accurate():
    out = regrid(COARSE, FINE, "bilinear")
    la, lo = np.meshgrid(FINE["latitude"].values, FINE["longitude"].values, indexing="ij")
    polar = np.abs(la) > 88.0
    for name, f in FIELDS.items():
        err = np.abs(out[name].values - f(la, lo))
        assert np.isfinite(err).all()
        inner = err[~polar].max()
        # bilinear error on a 4-degree mesh is ~ h^2/8 |f''| ~ 2e-3 here; extrapolating up to 0.375 of a
        # spacing along the meridian costs at most a few times that, and keeps u's longitude dependence
        assert inner < 5e-3, (name, inner)
        assert err[polar].max() < 3.0 * inner, (name, err[polar].max(), inner)
    # the north polar row of u follows -cos(lon) (a ring mean would give ~0)
    row = out["u"].values[0]
    assert np.corrcoef(row, -np.cos(np.deg2rad(FINE["longitude"].values)))[0, 1] > 0.999


def test_exact_poles_and_seam_columns():
    tgt = latlon([90.0, 45.0, 0.0, -90.0], [-0.5, 0.0, 0.5, 179.0, 180.0, 359.5])
    out = regrid(COARSE, tgt, "bilinear")["s"].values
    la, lo = np.meshgrid(tgt["latitude"].values, tgt["longitude"].values, indexing="ij")
    np.testing.assert_allclose(out, scalar(la, lo), atol=1e-2)
    np.testing.assert_allclose(out[:, 0], out[:, -1], atol=1e-12)  # -0.5 and 359.5 are one meridian


def test_regional_band_is_not_extrapolated_to_the_pole():
    band = latlon(np.arange(-60.0, 60.1, 4.0), np.arange(2.0, 360.0, 4.0), FIELDS)
    with pytest.raises(DomainCoverageError) as err:
        Regridder(band, FINE)
    assert "lon -179.500..179.500 (global)" in str(err.value)
    assert "lat -60.000..60.000, lon 2.000..358.000 (global)" in str(err.value)
    out = Regridder(band, FINE, allow_outside=True)(band)["s"].values
    la = FINE["latitude"].values
    assert np.isnan(out[np.abs(la) > 60]).all() and np.isfinite(out[np.abs(la) <= 60]).all()


def test_coverage_error_names_longitudes_in_the_data_convention():
    src = latlon(np.arange(30.0, 50.1, 1.0), np.arange(350.0, 370.1, 1.0) % 360, {"s": scalar})  # across 0
    tgt = latlon(np.arange(20.0, 40.1, 1.0), np.arange(-5.0, 5.1, 1.0))
    with pytest.raises(DomainCoverageError) as err:
        Regridder(src, tgt)
    msg = str(err.value)
    assert "lon 350.000..10.000 (across 0/360)" in msg and "lon -5.000..5.000" in msg
