"""Scoring on grids: a truth on the same points under other dim names is aligned; a truth on other
dims is refused with the dims named, before anything is broadcast (issue 15: a (lat, lon) truth
against a (y, x) output asked for 250 GiB)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xkmcast.fields import scoring
from xkmcast.errors import GridError

TIMES = pd.date_range("2021-02-01", periods=2, freq="6h")
LAT = np.arange(89.5, -90.0, -1.0)
LON = np.arange(0.5, 360.0, 1.0)


def truth_latlon(rng):
    return xr.Dataset({"t2m": (("time", "latitude", "longitude"), 280 + rng.normal(size=(2, LAT.size, LON.size)))},
                      coords={"time": TIMES, "latitude": ("latitude", LAT, {"standard_name": "latitude"}),
                              "longitude": ("longitude", LON, {"standard_name": "longitude"})})


def test_latlon_truth_against_a_yx_output_raises_without_allocating():
    rng = np.random.default_rng(0)
    truth = truth_latlon(rng)
    pred = xr.Dataset({"t2m": (("member", "time", "y", "x"), 280 + rng.normal(size=(2, 2, LAT.size, LON.size)))},
                      coords={"time": TIMES})  # y / x without coordinate values: the grid is unknown
    with pytest.raises(GridError) as err:
        scoring.score(pred, truth)  # broadcasting would need 2*2*180*360*180*360*8 B = 134 GB
    msg = str(err.value)
    assert "['latitude', 'longitude'] not in the prediction" in msg and "['y', 'x'] not in the truth" in msg
    with pytest.raises(GridError, match="baseline"):
        scoring.score(pred, pred.isel(member=0, drop=True), baseline=truth)


def test_same_grid_under_other_dim_names_is_aligned():
    rng = np.random.default_rng(1)
    truth = truth_latlon(rng).isel(latitude=slice(0, 30), longitude=slice(0, 40))
    lon2, lat2 = np.meshgrid(truth.longitude.values, truth.latitude.values)
    values = truth.t2m.values[None] + rng.normal(size=(3, 2, 30, 40))
    pred = xr.Dataset({"t2m": (("member", "time", "y", "x"), values)}, coords={
        "time": TIMES, "lat": (("y", "x"), lat2, {"standard_name": "latitude"}),
        "lon": (("y", "x"), lon2 - 360.0, {"standard_name": "longitude"})})  # another longitude convention
    got = scoring.score(pred, truth)
    ref = scoring.score(pred, truth.rename(latitude="y", longitude="x").drop_vars(["y", "x"]))
    xr.testing.assert_allclose(got, ref)
    assert float(got.mae.sel(variable="t2m")) == pytest.approx(np.abs(values.mean(0) - truth.t2m.values).mean())
    shifted = pred.assign_coords(lat=pred.lat + 0.5)  # other points: refused, not broadcast
    with pytest.raises(GridError, match="regrid"):
        scoring.score(shifted, truth)
