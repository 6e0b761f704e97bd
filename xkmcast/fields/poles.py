"""One value at a pole: the rows of a latitude / longitude grid at latitude +-90 are one point each.

A network sees such a row as any other row of pixels, so its outputs vary along it (a StormCast
rollout of winter 500 hPa heights on a grid with 90 N: one member's pole row spread over 311 m where the
truth has one value). For a scalar field the model output is made single-valued there, every pole row
replaced by its mean over longitude:

    x(pole, lon) <- mean over lon of x(pole, lon)

Wind components are left as they are: eastward / northward components of one vector at the pole vary
with longitude (``u(lon) = U cos(lon - a)`` for a wind towards ``a``), so their mean is not the
pole's value. A channel counts as scalar when the variable table knows its CF standard_name and it is
not an ``eastward_`` / ``northward_`` component; names the table does not know are left as they are.
Published packages (CorrDiff CMIP6 -> ERA5 on a grid with both poles) keep their outputs as their
publishers' code gives them (:func:`xkmcast.fields.downscale.pole_values`).
numpy (and dask) only; no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["POLE_TOLERANCE_DEG", "pole_rows", "scalar_channels", "single_valued_poles"]

#: a row is a pole row when all its latitudes are within this of +-90 degrees
POLE_TOLERANCE_DEG = 1e-6


def pole_rows(lat: np.ndarray) -> np.ndarray:
    """Indices of the rows of the 2-D latitudes ``lat`` (y, x) that lie wholly at a pole (none for a
    projected grid, whose pole is one point of a row at most)."""
    lat = np.asarray(lat, float)
    return np.flatnonzero((np.abs(np.abs(lat) - 90.0) <= POLE_TOLERANCE_DEG).all(axis=1)) if lat.shape[1] > 1 \
        else np.array([], dtype=int)


def scalar_channels(names: Sequence[str]) -> np.ndarray:
    """Indices of ``names`` (canonical variable names) that are scalar fields (module docstring)."""
    from .variables import cf_attrs

    standard = [cf_attrs(name).get("standard_name") for name in names]
    return np.array([c for c, sn in enumerate(standard) if sn and not sn.startswith(("eastward_", "northward_"))],
                    dtype=int)


def single_valued_poles(data, rows: np.ndarray, channels: np.ndarray, channel_axis: int = -3):
    """``data`` (..., C, y, x), numpy or dask, with each pole row of each scalar channel replaced by its
    mean over x; ``data`` itself when there is no pole row or no scalar channel."""
    if len(rows) == 0 or len(channels) == 0:
        return data
    if not isinstance(data, np.ndarray):  # dask: one pass over blocks whole in (C, y, x)
        whole = {data.ndim + channel_axis: -1, data.ndim - 2: -1, data.ndim - 1: -1}
        return data.rechunk(whole).map_blocks(single_valued_poles, rows, channels, channel_axis, dtype=data.dtype)
    out = np.array(data, copy=True)
    picked = np.moveaxis(out, channel_axis, -3)  # a view: writes reach out
    for c in channels:
        for r in rows:
            picked[..., c, r, :] = picked[..., c, r, :].mean(axis=-1, keepdims=True)
    return out
