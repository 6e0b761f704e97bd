"""The coordinate-criteria table: how xkmcast recognises latitude, longitude, time and projected x / y.

One table, :data:`COORDINATES`: for each coordinate key, the CF attributes that identify it (and that
xkmcast writes on the coordinates it creates) and the names the published datasets use, in order of
preference (ERA5 ``latitude``, WRF / CWA ``XLAT``, HRRR ``gridlat_0``, NEMO ``nav_lat`` ...).
:data:`CRITERIA` is the same table in cf_xarray's ``custom_criteria`` format (``{key: {attribute:
regex}}``, ``"name"`` matching the variable name), so ``cf_xarray.set_options(custom_criteria=CRITERIA)``
lets ``ds.cf["latitude"]`` find the aliases too. Grid detection (:mod:`xkmcast.fields.grid`), the layout
readers (:mod:`xkmcast.data.layouts`) and scoring (:mod:`xkmcast.fields.scoring`) read names from here.
"""

from __future__ import annotations

import re

__all__ = ["COORDINATES", "CRITERIA", "coordinate_attrs", "coordinate_key", "coordinate_names"]

#: key -> {"attrs": CF attributes identifying (and written on) the coordinate, "names": aliases in order}
COORDINATES: dict[str, dict] = {
    "latitude": {
        "attrs": {"standard_name": "latitude", "units": "degrees_north", "long_name": "latitude"},
        "names": ("latitude", "lat", "XLAT", "XLAT_M", "gridlat_0", "nav_lat", "LAT", "lats"),
    },
    "longitude": {
        "attrs": {"standard_name": "longitude", "units": "degrees_east", "long_name": "longitude"},
        "names": ("longitude", "lon", "XLONG", "XLONG_M", "gridlon_0", "nav_lon", "LON", "lons"),
    },
    "time": {
        "attrs": {"standard_name": "time", "axis": "T"},
        "names": ("time", "Time", "valid_time", "XTIME", "Times", "t"),
    },
    "X": {
        "attrs": {"standard_name": "projection_x_coordinate", "axis": "X"},
        "names": ("x", "west_east", "xgrid_0", "projection_x_coordinate", "easting"),
    },
    "Y": {
        "attrs": {"standard_name": "projection_y_coordinate", "axis": "Y"},
        "names": ("y", "south_north", "ygrid_0", "projection_y_coordinate", "northing"),
    },
}

#: :data:`COORDINATES` in cf_xarray ``custom_criteria`` form (regular expressions, anchored).
CRITERIA: dict[str, dict[str, str]] = {
    key: {
        **{a: f"^{re.escape(v)}$" for a, v in entry["attrs"].items() if a in ("standard_name", "units")},
        "name": "^(" + "|".join(re.escape(n) for n in entry["names"]) + ")$",
    }
    for key, entry in COORDINATES.items()
}


def coordinate_names(key: str) -> tuple[str, ...]:
    """The dataset names of coordinate ``key`` (``"latitude"``, ``"longitude"``, ``"time"``, ``"X"``, ``"Y"``)."""
    return COORDINATES[key]["names"]


def coordinate_attrs(key: str) -> dict[str, str]:
    """The CF attributes xkmcast writes on a ``key`` coordinate (a fresh dict: callers may extend it)."""
    return dict(COORDINATES[key]["attrs"])


def coordinate_key(name, *, prefix: str = "") -> str | None:
    """The key whose names include ``name`` (case-insensitive; ``prefix`` such as ``era5_`` stripped first)."""
    lname = str(name).removeprefix(prefix).lower()
    return next((k for k, e in COORDINATES.items() if lname in {n.lower() for n in e["names"]}), None)
