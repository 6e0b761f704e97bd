"""GRIB 2 messages written with ecCodes on a regular lat/lon grid (rows as ``lat`` gives them), for
the GRIB tests: an ERA5-like analysis, or an NWP forecast file that mixes level types."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def write_message(out, values: np.ndarray, lat: np.ndarray, lon: np.ndarray, *, short_name: str,
                  type_of_level: str = "isobaricInhPa", level: int | None = None, time="2017-01-01",
                  step_hours: int = 0) -> None:
    """One message of ``short_name`` at ``type_of_level`` / ``level``, initial time ``time`` and lead
    ``step_hours``, appended to the open binary file ``out`` (values on ``lat`` x ``lon``, 1-degree
    multiples of the spacings)."""
    eccodes = pytest.importorskip("eccodes")
    t = pd.Timestamp(time)
    sample = "regular_ll_pl_grib2" if type_of_level == "isobaricInhPa" else "regular_ll_sfc_grib2"
    handle = eccodes.codes_grib_new_from_samples(sample)
    eccodes.codes_set_key_vals(handle, {
        "Ni": lon.size, "Nj": lat.size,
        "latitudeOfFirstGridPointInDegrees": float(lat[0]), "latitudeOfLastGridPointInDegrees": float(lat[-1]),
        "longitudeOfFirstGridPointInDegrees": float(lon[0]), "longitudeOfLastGridPointInDegrees": float(lon[-1]),
        "iDirectionIncrementInDegrees": float(abs(lon[1] - lon[0])),
        "jDirectionIncrementInDegrees": float(abs(lat[1] - lat[0])),
        "dataDate": int(t.strftime("%Y%m%d")), "dataTime": int(t.strftime("%H%M"))})
    eccodes.codes_set(handle, "typeOfLevel", type_of_level)
    if level is not None:
        eccodes.codes_set(handle, "level", level)
    if step_hours:
        eccodes.codes_set(handle, "stepUnits", 1)
        eccodes.codes_set(handle, "step", step_hours)
    eccodes.codes_set(handle, "shortName", short_name)
    eccodes.codes_set_values(handle, np.asarray(values, dtype=np.float64).ravel())
    eccodes.codes_write(handle, out)
    eccodes.codes_release(handle)
