"""GRIB files as ERA5 comes from the Climate Data Store: recognised as CF by their suffix, read by xarray's
cfgrib engine, pressure levels selected by name; the CLI's ``prepare`` takes them as it takes NetCDF. The
files are written here with ecCodes (GRIB 2 on a regular lat/lon grid, latitude descending as ERA5's)
and the values read back are compared with those written (to the packing precision)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from _grib import write_message
from typer.testing import CliRunner

import xkmcast
from xkmcast.cli import app
from xkmcast.data.layouts import detect_layout
from xkmcast.data.prepare import open_store
from xkmcast.errors import InvalidDataError

LAT = np.arange(60.0, 29.9, -2.0)  # 16 rows, north first
LON = np.arange(0.0, 39.9, 2.0)  # 20 columns
TIMES = pd.date_range("2017-01-01", periods=3, freq="6h")
LEVELS = (850, 500)


def _temperature(time_index: int, level: int) -> np.ndarray:
    return 250.0 + level / 50.0 + time_index + np.add.outer(LAT / 10.0, np.sin(np.deg2rad(LON)) * 3.0)


def _write_grib(path) -> None:
    with open(path, "wb") as out:
        for i, time in enumerate(TIMES):
            for level in LEVELS:
                write_message(out, _temperature(i, level), LAT, LON, short_name="t", level=level, time=time)


@pytest.fixture(scope="module")
def grib(tmp_path_factory):
    pytest.importorskip("cfgrib")
    path = tmp_path_factory.mktemp("grib") / "era5-pl.grib2"
    _write_grib(path)
    return path


def test_a_grib_file_is_cf_and_its_levels_are_selected_by_name(grib):
    assert detect_layout(grib) == ("cf", grib)
    ds = xkmcast.open_dataset(grib)
    assert ds["t"].dims == ("time", "isobaricInhPa", "latitude", "longitude")
    chosen = ds.kmcast.variables(["t850", "t500"]).load()
    assert chosen["t850"].attrs["units"] == "K"
    np.testing.assert_array_equal(chosen["time"].values, TIMES.values)
    for name, level in (("t850", 850), ("t500", 500)):
        for i in range(len(TIMES)):
            np.testing.assert_allclose(chosen[name].isel(time=i).values, _temperature(i, level), atol=2e-3)


def test_prepare_takes_a_grib_path_like_a_netcdf_one(grib, tmp_path):
    """``xkmcast prepare FINE.grib2 OUT --coarsen 2``: the store holds the GRIB file's t850 as target and
    its 2 x 2 block means, regridded back, as input."""
    out = tmp_path / "train.zarr"
    result = CliRunner().invoke(app, ["prepare", str(grib), str(out), "--coarsen", "2", "--input", "t850",
                                      "--output", "t850", "--allow-outside"])
    assert result.exit_code == 0, result.output
    store = open_store(out)
    assert store.sizes["time"] == len(TIMES)
    target, coarse = (store[f"{role}_t850"].isel(time=2).values for role in ("target", "input"))
    np.testing.assert_allclose(target, _temperature(2, 850), atol=2e-3)
    blocks = _temperature(2, 850).reshape(8, 2, 10, 2).mean(axis=(1, 3))  # the 2 x 2 block means
    # the 4 fine points around an interior block centre, interpolated bilinearly from the block centres,
    # average to that block's mean up to the field's curvature (linear in latitude, smooth in longitude:
    # under 2e-3 K here); a regridding that missed a row or a column would be off by 0.1-1 K
    centres = coarse.reshape(8, 2, 10, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(centres[1:-1, 1:-1], blocks[1:-1, 1:-1], atol=2e-3)
    assert np.abs(coarse - target).max() > 1e-2  # the input is the coarse field, not the target again


def test_without_cfgrib_a_grib_file_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "era5.grib"
    path.write_bytes(b"GRIB")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cfgrib" else real(name, *a))
    with pytest.raises(InvalidDataError, match=r"(?s)cfgrib engine, which is not installed.*pip install cfgrib"):
        xkmcast.open_dataset(path)
