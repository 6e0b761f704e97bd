"""The cosine of the solar zenith angle: the time feature of CorrDiff CMIP6, COSMO-REA and StormScope.

Meeus' series for the Sun, as PhysicsNeMo's ``cos_zenith_angle`` computes it (the packages were trained
with those numbers, so they are matched exactly, not approximately). With ``T`` the Julian centuries
since J2000.0 (2000-01-01 12:00 UTC; days / 36525):

* mean anomaly ``M = 357.52910 + 35999.05030 T - 0.0001559 T^2 - 4.8e-7 T^3`` and mean longitude
  ``L0 = 280.46645 + 36000.76983 T + 0.0003032 T^2`` [deg]; true longitude
  ``lambda = L0 + (1.914600 - 0.004817 T - 1.4e-5 T^2) sin M + (0.019993 - 0.000101 T) sin 2M + 0.000290 sin 3M``;
* obliquity ``eps = 23 deg 26' 21.406" - (46.836769 T - 1.831e-4 T^2 + 2.0034e-3 T^3 - 5.76e-7 T^4 - 4.34e-8 T^5)"``;
* ``z = sin eps sin lambda``, ``r = sqrt(1 - z^2)``: declination ``delta = atan2(z, r)``, right
  ascension ``alpha = 2 atan2(cos eps sin lambda, cos lambda + r)``;
* Greenwich mean sidereal time ``theta = (67310.54841 + T (876600 * 3600 + 8640184.812866 +
  T (0.093104 - 6.2e-6 T))) / 240`` [deg], mod 360; local hour angle ``h = theta + lon - alpha``;

``cos(zenith) = sin(lat) sin(delta) + cos(lat) cos(delta) cos(h)``; negative at night, not clipped. As
PhysicsNeMo with NumPy inputs, lat / lon become radians in float32 and the rest is float64.
NumPy only (times as anything :func:`numpy.datetime64` reads, naive = UTC); no torch, no xarray.
"""

from __future__ import annotations

import numpy as np

__all__ = ["J2000", "days_since_j2000", "julian_centuries", "solar_declination_right_ascension", "cos_zenith",
           "cos_zenith_window_max"]

#: the J2000.0 epoch (UTC)
J2000 = np.datetime64("2000-01-01T12:00:00", "us")


def days_since_j2000(time) -> np.ndarray:
    """Days (float64) from J2000.0 to ``time`` (a datetime, numpy datetime64 or an array of them)."""
    t = np.asarray(time, dtype="datetime64[us]")
    return (t - J2000) / np.timedelta64(1, "D")


def julian_centuries(time) -> np.ndarray:
    """Julian centuries (float64) from J2000.0 to ``time``."""
    return days_since_j2000(time) / 36525.0


def _sun(T: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right ascension, declination, Greenwich mean sidereal time) [rad] at Julian centuries ``T``."""
    anomaly = np.deg2rad(357.52910 + 35999.05030 * T - 0.0001559 * T * T - 0.00000048 * T * T * T)
    mean_longitude = np.deg2rad(280.46645 + 36000.76983 * T + 0.0003032 * T**2)
    true_longitude = mean_longitude + np.deg2rad(
        (1.914600 - 0.004817 * T - 0.000014 * T**2) * np.sin(anomaly)
        + (0.019993 - 0.000101 * T) * np.sin(2 * anomaly) + 0.000290 * np.sin(3 * anomaly))
    obliquity = np.deg2rad(23.0 + 26.0 / 60 + 21.406 / 3600.0 - (
        46.836769 * T - 0.0001831 * T**2 + 0.00200340 * T**3 - 0.576e-6 * T**4 - 4.34e-8 * T**5) / 3600.0)
    x = np.cos(true_longitude)
    y = np.cos(obliquity) * np.sin(true_longitude)
    z = np.sin(obliquity) * np.sin(true_longitude)
    r = np.sqrt(1.0 - z * z)
    theta = 67310.54841 + T * (876600 * 3600 + 8640184.812866 + T * (0.093104 - T * 6.2e-6))
    return 2 * np.arctan2(y, x + r), np.arctan2(z, r), np.deg2rad(theta / 240.0) % (2 * np.pi)


def solar_declination_right_ascension(time) -> tuple[np.ndarray, np.ndarray]:
    """(declination, right ascension) of the Sun [rad] at ``time``."""
    ra, dec, _ = _sun(julian_centuries(time))
    return dec, ra


def cos_zenith(time, lat, lon) -> np.ndarray:
    """cos of the solar zenith angle at ``time`` (UTC) for latitudes / longitudes ``lat``, ``lon`` [deg].

    ``lat`` and ``lon`` broadcast against each other; ``time`` is a scalar (the result has their shape)
    or an array, whose dimensions come first. float64."""
    T = julian_centuries(time)
    lat_r = np.deg2rad(np.asarray(lat), dtype=np.float32)  # sin / cos of lat in float32, as PhysicsNeMo
    lon_r = np.deg2rad(np.asarray(lon), dtype=np.float32).astype(np.float64)
    T = T.reshape(T.shape + (1,) * np.broadcast(lat_r, lon_r).ndim)
    ra, dec, gmst = _sun(T)
    sin_lat, cos_lat = np.sin(lat_r).astype(np.float64), np.cos(lat_r).astype(np.float64)
    return sin_lat * np.sin(dec) + cos_lat * np.cos(dec) * np.cos(gmst + lon_r - ra)


def cos_zenith_window_max(time, lat, lon, hours: float = 1.0) -> np.ndarray:
    """``max(cos_zenith(t - hours), cos_zenith(t))``: the sunniest end of the window ending at ``t``
    (the solar feature of models whose targets are means over the preceding ``hours``, e.g. COSMO-REA).
    Same broadcasting as :func:`cos_zenith`."""
    t = np.asarray(time, dtype="datetime64[us]")
    before = t - np.timedelta64(int(round(hours * 3600e6)), "us")
    return np.maximum(cos_zenith(before, lat, lon), cos_zenith(t, lat, lon))
