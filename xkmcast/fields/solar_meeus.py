"""The cos of the solar zenith angle as PhysicsNeMo's ``cos_zenith_angle`` computes it (Meeus' series).

Models trained with that feature (NVIDIA's StormScope packages) must see the same numbers; it differs
from :func:`xkmcast.fields.solar.cos_zenith` (Astronomical Almanac) by up to ~5e-4. With ``T`` the
Julian centuries since J2000.0 (2000-01-01 12:00 UTC, days / 36525):

* mean anomaly ``M = 357.52910 + 35999.05030 T - 0.0001559 T^2 - 4.8e-7 T^3`` and mean longitude
  ``L0 = 280.46645 + 36000.76983 T + 0.0003032 T^2`` [deg]; true longitude
  ``lambda = L0 + (1.914600 - 0.004817 T - 1.4e-5 T^2) sin M + (0.019993 - 0.000101 T) sin 2M + 0.000290 sin 3M``;
* obliquity ``eps = 23 deg 26' 21.406" - (46.836769 T - 1.831e-4 T^2 + 2.0034e-3 T^3 - 5.76e-7 T^4 - 4.34e-8 T^5)"``;
* ``z = sin eps sin lambda``, ``r = sqrt(1 - z^2)``: declination ``delta = atan2(z, r)``, right
  ascension ``alpha = 2 atan2(cos eps sin lambda, cos lambda + r)``;
* Greenwich mean sidereal time ``theta = (67310.54841 + T (876600 * 3600 + 8640184.812866 +
  T (0.093104 - 6.2e-6 T))) / 240`` [deg], mod 2 pi in radians; hour angle ``h = theta + lon - alpha``;

``cos(zenith) = sin(lat) sin(delta) + cos(lat) cos(delta) cos(h)``. As PhysicsNeMo with NumPy inputs,
lat / lon are turned into radians in float32 and the rest is float64. NumPy only.
"""

from __future__ import annotations

import numpy as np

from .solar import days_since_j2000

__all__ = ["julian_centuries", "cos_zenith_meeus"]


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


def cos_zenith_meeus(time, lat, lon) -> np.ndarray:
    """cos of the solar zenith angle at one ``time`` (UTC) on ``lat`` / ``lon`` [deg] (float64 result)."""
    T = julian_centuries(time)
    if np.ndim(T):
        raise ValueError("cos_zenith_meeus takes one time")
    ra, dec, gmst = _sun(np.float64(T))
    lat_r = np.deg2rad(np.asarray(lat), dtype=np.float32)
    lon_r = np.deg2rad(np.asarray(lon), dtype=np.float32)
    hour_angle = gmst + lon_r.astype(np.float64) - ra
    return (np.sin(lat_r).astype(np.float64) * np.sin(dec)
            + np.cos(lat_r).astype(np.float64) * np.cos(dec) * np.cos(hour_angle))
