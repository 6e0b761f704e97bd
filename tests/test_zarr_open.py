"""Zarr stores open with the consolidated= setting they need: no xarray warning about missing
consolidated metadata on unconsolidated stores (v2 and v3), consolidated ones still read."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xkmcast
from xkmcast.data.layouts import zarr_consolidated
from xkmcast.fields.scoring import open_any


@pytest.mark.parametrize("fmt, consolidated", [(2, False), (3, False), (2, True), (3, True)])
def test_zarr_stores_open_without_consolidation_warnings(tmp_path, fmt, consolidated):
    ds = xr.Dataset({"t2m": (("time", "lat", "lon"), np.arange(24.0).reshape(2, 3, 4), {"units": "K"})},
                    coords={"time": pd.date_range("2020-01-01", periods=2), "lat": [1.0, 2.0, 3.0],
                            "lon": [1.0, 2.0, 3.0, 4.0]})
    path = tmp_path / "s.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns that v3 consolidation is not in the spec
        ds.to_zarr(path, mode="w", consolidated=consolidated, zarr_format=fmt)
    assert zarr_consolidated(path) is consolidated
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for opened in (xkmcast.open_dataset(str(path)), open_any(path)):
            np.testing.assert_array_equal(opened["t2m"].values, ds["t2m"].values)
