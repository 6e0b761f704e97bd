"""The cosine of the solar zenith angle, the time feature of CorrDiff CMIP6 and COSMO-REA packages.

``cos_zenith(time, lat, lon)`` follows the Astronomical Almanac's low-precision solar coordinates
(accurate to ~0.01 deg from 1950 to 2050): with ``n`` the days since J2000.0 (2000-01-01 12:00 UTC),

* mean longitude ``L = 280.460 + 0.9856474 n`` and mean anomaly ``g = 357.528 + 0.9856003 n`` [deg];
* ecliptic longitude ``lambda = L + 1.915 sin g + 0.020 sin 2g``, obliquity ``eps = 23.439 - 4e-7 n``;
* right ascension ``alpha = atan2(cos eps sin lambda, cos lambda)``, declination
  ``delta = asin(sin eps sin lambda)``;
* Greenwich mean sidereal time ``GMST = 280.46061837 + 360.98564736629 n`` and local hour angle
  ``h = GMST + lon - alpha``;

``cos(zenith) = sin(lat) sin(delta) + cos(lat) cos(delta) cos(h)``; negative at night, not clipped.
NumPy only (times as anything :func:`numpy.datetime64` reads, naive = UTC); no torch, no xarray.
"""

from __future__ import annotations

import numpy as np

__all__ = ["J2000", "days_since_j2000", "solar_declination_right_ascension", "cos_zenith", "cos_zenith_window_max"]

#: the J2000.0 epoch (UTC)
J2000 = np.datetime64("2000-01-01T12:00:00", "us")


def days_since_j2000(time) -> np.ndarray:
    """Days (float64) from J2000.0 to ``time`` (a datetime, numpy datetime64 or an array of them)."""
    t = np.asarray(time, dtype="datetime64[us]")
    return (t - J2000) / np.timedelta64(1, "D")


def solar_declination_right_ascension(n) -> tuple[np.ndarray, np.ndarray]:
    """(declination, right ascension) of the Sun [rad] at ``n`` days since J2000.0."""
    n = np.asarray(n, dtype=np.float64)
    mean_longitude = np.deg2rad(280.460 + 0.9856474 * n)
    anomaly = np.deg2rad(357.528 + 0.9856003 * n)
    ecliptic = mean_longitude + np.deg2rad(1.915 * np.sin(anomaly) + 0.020 * np.sin(2 * anomaly))
    obliquity = np.deg2rad(23.439 - 4e-7 * n)
    declination = np.arcsin(np.sin(obliquity) * np.sin(ecliptic))
    right_ascension = np.arctan2(np.cos(obliquity) * np.sin(ecliptic), np.cos(ecliptic))
    return declination, right_ascension


def cos_zenith(time, lat, lon) -> np.ndarray:
    """cos of the solar zenith angle at ``time`` (UTC) for latitudes / longitudes ``lat``, ``lon`` [deg].

    ``lat`` and ``lon`` broadcast against each other; ``time`` is a scalar (the result has their shape)
    or an array, whose dimensions come first."""
    n = days_since_j2000(time)
    lat = np.deg2rad(np.asarray(lat, dtype=np.float64))
    lon = np.deg2rad(np.asarray(lon, dtype=np.float64))
    n_b = n.reshape(n.shape + (1,) * np.broadcast(lat, lon).ndim)
    declination, right_ascension = solar_declination_right_ascension(n_b)
    gmst = np.deg2rad(280.46061837 + 360.98564736629 * n_b)
    hour_angle = gmst + lon - right_ascension
    return np.sin(lat) * np.sin(declination) + np.cos(lat) * np.cos(declination) * np.cos(hour_angle)


def cos_zenith_window_max(time, lat, lon, hours: float = 1.0) -> np.ndarray:
    """``max(cos_zenith(t - hours), cos_zenith(t))``: the sunniest end of the window ending at ``t``
    (the solar feature of models whose targets are means over the preceding ``hours``, e.g. COSMO-REA).
    Same broadcasting as :func:`cos_zenith`."""
    t = np.asarray(time, dtype="datetime64[us]")
    before = t - np.timedelta64(int(round(hours * 3600e6)), "us")
    return np.maximum(cos_zenith(before, lat, lon), cos_zenith(t, lat, lon))
