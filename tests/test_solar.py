"""The solar zenith angle against PhysicsNeMo's implementation and against astronomical facts."""

import datetime

import numpy as np
import pytest

from xkmcast.fields.solar import cos_zenith, solar_declination_right_ascension


def test_declination_at_solstices_and_equinox():
    # the Sun's declination is +-23.44 deg at the solstices and ~0 at the March equinox
    for when, expected in [("2021-06-21T04:00", 23.44), ("2021-12-21T16:00", -23.44), ("2021-03-20T10:00", 0.0)]:
        dec, _ = solar_declination_right_ascension(np.datetime64(when))
        assert np.rad2deg(dec) == pytest.approx(expected, abs=0.05)


def test_sun_overhead_at_subsolar_point_and_noon_symmetry():
    # at the March equinox the Sun is near the zenith at the equator at local solar noon; the
    # longitude of the subsolar point moves 15 deg per hour westwards
    t = np.datetime64("2021-03-20T12:00")
    lon = np.linspace(-180, 179, 360)
    c = cos_zenith(t, 0.0, lon)
    assert c.max() > 0.9995
    assert abs(lon[c.argmax()]) < 3  # equation of time at the equinox: ~ -7.5 min -> ~1.9 deg
    c_later = cos_zenith(t + np.timedelta64(1, "h"), 0.0, lon)
    assert lon[c_later.argmax()] == pytest.approx(lon[c.argmax()] - 15, abs=1)
    # the night side: the antipode of the subsolar point
    assert cos_zenith(t, 0.0, lon[c.argmax()] + 180) < -0.999


def test_broadcasts_times_first():
    times = np.array(["2020-01-01T00", "2020-07-01T06"], dtype="datetime64[h]")
    lat, lon = np.meshgrid(np.linspace(-60, 60, 5), np.linspace(0, 300, 4), indexing="ij")
    out = cos_zenith(times, lat, lon)
    assert out.shape == (2, 5, 4)
    np.testing.assert_allclose(out[1], cos_zenith(times[1], lat, lon))


def test_equals_physicsnemo():
    """The feature the published packages were trained with: PhysicsNeMo's numbers, not close ones."""
    zen = pytest.importorskip("physicsnemo.utils.zenith_angle", reason="PhysicsNeMo (the reference extra) not installed")

    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-90, 90, (20, 30)).astype(np.float32), rng.uniform(0, 360, (20, 30)).astype(np.float32)
    for when in ("2024-05-01T18:10", "1999-12-31T23:59:59", "2031-06-21T06:00"):
        t = np.datetime64(when, "s")
        ref = zen.cos_zenith_angle(datetime.datetime.fromtimestamp(t.astype(int), tz=datetime.timezone.utc), lon, lat)
        np.testing.assert_allclose(cos_zenith(t, lat, lon), ref, rtol=0, atol=1e-12)
