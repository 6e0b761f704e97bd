"""xkmcast.fields.coords: the one coordinate-criteria table, read by grid detection, layouts and scoring."""

from __future__ import annotations

import cf_xarray
import numpy as np
import xarray as xr

from xkmcast.fields import grid, scoring
from xkmcast.fields.coords import COORDINATES, CRITERIA, coordinate_attrs, coordinate_key, coordinate_names
from xkmcast.data import layouts


def _wrf_like() -> xr.Dataset:
    lat, lon = np.meshgrid(np.linspace(20, 22, 4), np.linspace(120, 123, 5), indexing="ij")
    return xr.Dataset({"T2": (("Time", "south_north", "west_east"), np.zeros((2, 4, 5)))},
                      coords={"XLAT": (("south_north", "west_east"), lat), "XLONG": (("south_north", "west_east"), lon)})


def test_criteria_are_accepted_by_cf_xarray_and_find_the_aliases():
    ds = _wrf_like()
    assert "latitude" not in ds.cf.coordinates  # no CF attributes: cf_xarray alone finds nothing
    with cf_xarray.set_options(custom_criteria=CRITERIA):
        assert ds.cf["latitude"].name == "XLAT" and ds.cf["longitude"].name == "XLONG"
    # attribute criteria work too: a coordinate with an unknown name but CF units
    other = xr.Dataset(coords={"phi": ("p", [1.0, 2.0], {"units": "degrees_north"})})
    with cf_xarray.set_options(custom_criteria=CRITERIA):
        assert other.cf["latitude"].name == "phi"


def test_the_readers_share_the_table():
    assert grid.LAT_ALIASES == coordinate_names("latitude") == COORDINATES["latitude"]["names"]
    assert scoring.TIME_NAMES == coordinate_names("time")
    assert grid.find_grid(_wrf_like()).lat_name == "XLAT"
    ds = layouts.read_cf(xr.Dataset({"t2m": (("nav_lat", "nav_lon"), np.zeros((2, 3)))},
                                    coords={"nav_lat": [1.0, 2.0], "nav_lon": [3.0, 4.0, 5.0]}))["data"]
    assert ds["nav_lat"].attrs == coordinate_attrs("latitude") and ds["nav_lon"].attrs["units"] == "degrees_east"


def test_coordinate_key_is_case_insensitive_and_strips_prefixes():
    assert coordinate_key("LAT") == "latitude" and coordinate_key("era5_longitude", prefix="era5_") == "longitude"
    assert coordinate_key("south_north") == "Y" and coordinate_key("t2m") is None
    attrs = coordinate_attrs("latitude")
    attrs["axis"] = "Y"  # a fresh copy: the table is not changed
    assert "axis" not in COORDINATES["latitude"]["attrs"]
