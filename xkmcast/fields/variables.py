"""Canonical variable names <-> CF standard names <-> dataset aliases, and unit conversion.

The knowledge is data: ``variables.yaml`` beside this module lists each canonical variable with its CF
``standard_name``, canonical units and the names ERA5, HRRR, WRF, CWA and the published recipes use.
Pressure-level variables are written ``<base><level hPa>`` (``z500``, ``t850``, ``u250``): they are
found as a single variable of that name (or alias + level) or by selecting the level of a variable
with a vertical dimension.

Unit conversion is limited to conversions that are unambiguous: ``value_in_to = value * scale + offset``
with (scale, offset) from :data:`CONVERSIONS`, plus water-equivalent (m or mm of water -> kg m-2) and
geopotential-height (m -> m2 s-2, times g = 9.80665) conversions that apply only to the quantities
they make sense for.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

from ..errors import MissingVariableError, TimeCoverageError, UnitError, explain

__all__ = [
    "Variable",
    "variable_info",
    "cf_attrs",
    "known_variables",
    "find_variable",
    "get_variable",
    "select_variables",
    "convert_units",
    "normalise_units",
    "deaccumulate",
    "LEVEL_DIMS",
]

G = 9.80665  # standard gravity, m s-2
LEVEL_DIMS = ("level", "pressure_level", "isobaricInhPa", "plev", "lev", "levels", "pressure")

UNIT_ALIASES: dict[str, tuple[str, ...]] = {
    "K": ("K", "k", "kelvin", "Kelvin", "kelvins", "Kelvins", "degK", "deg_K", "degrees_K", "degree_K",
          "degrees_Kelvin"),
    "degC": ("degC", "C", "°C", "celsius", "Celsius", "deg_C", "deg C", "degree_C", "degrees_C", "degrees C",
             "degree_Celsius", "degrees_Celsius", "degree Celsius", "degrees Celsius"),
    "Pa": ("Pa", "pa", "pascal", "Pascal"),
    "hPa": ("hPa", "hpa", "mb", "mbar", "millibar", "millibars", "hectopascal", "hectopascals"),
    "kPa": ("kPa", "kpa"),
    "m s-1": ("m s-1", "m/s", "M/S", "m s**-1", "m s^-1", "m.s-1", "ms-1", "m*s-1", "meters/second", "metre/second",
              "m/sec", "m sec-1", "meter/sec", "meters/sec", "meters per second", "metres per second"),
    "mph": ("mph", "miles/hour", "mi/h", "miles per hour"),
    "knots": ("knots", "kt", "kts", "knot"),
    "km h-1": ("km h-1", "km/h", "kph"),
    "kg m-2": ("kg m-2", "kg m**-2", "kg/m2", "kg/m^2", "kg/m**2", "kg m^-2", "kg.m-2"),
    "kg m-2 s-1": ("kg m-2 s-1", "kg m**-2 s**-1", "kg/m2/s", "kg m^-2 s^-1", "mm s-1", "mm/s"),  # a rate
    "mm h-1": ("mm h-1", "mm/h", "mm/hr", "mm hr-1", "mm h**-1", "mm hr^-1", "mm/hour", "kg m-2 h-1"),  # a rate
    "mm day-1": ("mm day-1", "mm/day", "mm/d", "mm d-1", "mm d**-1", "mm day**-1", "kg m-2 day-1"),  # a rate
    "mm": ("mm", "millimeter", "millimetre", "mm of water"),
    "m": ("m", "meter", "metre", "meters", "metres", "gpm"),
    "km": ("km",),
    "dam": ("dam", "decameters", "decametres", "gpdam"),
    "m2 s-2": ("m2 s-2", "m**2 s**-2", "m^2/s^2", "m2/s2", "m^2 s^-2"),
    "dBZ": ("dBZ", "dbz", "dBz", "DBZ"),
    "1": ("1", "", "0-1", "(0 - 1)", "dimensionless", "fraction", "~", "-"),
    "kg kg-1": ("kg kg-1", "kg kg**-1", "kg/kg"),
    "g kg-1": ("g kg-1", "g/kg"),
    "%": ("%", "percent"),
    "Pa s-1": ("Pa s-1", "Pa s**-1", "Pa/s"),
}
_UNIT_LOOKUP = {alias: canon for canon, aliases in UNIT_ALIASES.items() for alias in aliases}

#: precipitation rates, by the seconds of their time unit: an amount per record is the rate times the
#: record's length, which xkmcast does not guess (an instantaneous rate is not an interval mean)
RATE_SECONDS = {"kg m-2 s-1": 1, "mm h-1": 3600, "mm day-1": 86400}

#: (from, to) -> (scale, offset): value_to = value_from * scale + offset
CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("degC", "K"): (1.0, 273.15),
    ("K", "degC"): (1.0, -273.15),
    ("hPa", "Pa"): (100.0, 0.0),
    ("kPa", "Pa"): (1000.0, 0.0),
    ("Pa", "hPa"): (0.01, 0.0),
    ("knots", "m s-1"): (1852.0 / 3600.0, 0.0),
    ("mph", "m s-1"): (0.44704, 0.0),
    ("dam", "m"): (10.0, 0.0),
    ("km h-1", "m s-1"): (1.0 / 3.6, 0.0),
    ("km", "m"): (1000.0, 0.0),
    ("g kg-1", "kg kg-1"): (1e-3, 0.0),
    ("%", "1"): (0.01, 0.0),
}
#: conversions that depend on the quantity: (standard_name, from, to) -> (scale, offset)
QUANTITY_CONVERSIONS: dict[tuple[str, str, str], tuple[float, float]] = {
    ("precipitation_amount", "m", "kg m-2"): (1000.0, 0.0),  # metres of water (ERA5 tp)
    ("precipitation_amount", "mm", "kg m-2"): (1.0, 0.0),
    ("atmosphere_mass_content_of_water_vapor", "mm", "kg m-2"): (1.0, 0.0),
    ("geopotential", "m", "m2 s-2"): (G, 0.0),  # geopotential height in gpm
    ("geopotential", "dam", "m2 s-2"): (10.0 * G, 0.0),  # ... in decametres (charts)
    ("geopotential_height", "m2 s-2", "m"): (1.0 / G, 0.0),
}


@dataclasses.dataclass(frozen=True)
class Variable:
    """One canonical variable: its name, CF standard name, canonical units and known aliases."""

    name: str
    standard_name: str
    units: str
    long_name: str
    aliases: tuple[str, ...] = ()
    accumulated_aliases: tuple[str, ...] = ()
    level: float | None = None  # hPa, for pressure-level variables
    base: str | None = None
    valid_range: tuple[float, float] | None = None  # plausible values in the canonical units
    valid_min: float | None = None  # physical range (CF valid_min / valid_max), None: unbounded
    valid_max: float | None = None

    @property
    def attrs(self) -> dict:
        attrs = {"standard_name": self.standard_name, "units": self.units, "long_name": self.long_name}
        if self.level is not None:
            attrs["long_name"] = f"{self.long_name} at {self.level:g} hPa"
        return attrs


@functools.cache
def _table() -> tuple[dict[str, Variable], dict[str, Variable]]:
    raw = yaml.safe_load(Path(__file__).with_name("variables.yaml").read_text())

    def build(section: dict) -> dict[str, Variable]:
        return {
            name: Variable(
                name=name,
                standard_name=e["standard_name"],
                units=e["units"],
                long_name=e["long_name"],
                aliases=tuple(e.get("aliases", ())),
                accumulated_aliases=tuple(e.get("accumulated_aliases", ())),
                valid_range=tuple(float(v) for v in e["valid_range"]) if "valid_range" in e else None,
                valid_min=None if e.get("valid_min") is None else float(e["valid_min"]),
                valid_max=None if e.get("valid_max") is None else float(e["valid_max"]),
            )
            for name, e in section.items()
        }

    return build(raw["surface"]), build(raw["pressure_levels"])


@functools.cache
def _alias_maps() -> tuple[dict[str, str], dict[str, str]]:
    """(surface alias -> canonical name, pressure-level alias -> base); first entry in the table wins."""
    maps = []
    for section in _table():
        alias: dict[str, str] = {}
        for canon, info in section.items():
            for name in (canon, *info.aliases):
                alias.setdefault(str(name), canon)
        maps.append(alias)
    return maps[0], maps[1]


def canonical_alias(label: str, *, pressure_level: bool = False) -> str | None:
    """The canonical surface name (or, with ``pressure_level=True``, the level base) listing ``label``
    among its aliases in ``variables.yaml``: exact match first, then case-insensitive; None if none."""
    table = _alias_maps()[1 if pressure_level else 0]
    label = str(label)
    if label in table:
        return table[label]
    return next((canon for alias, canon in table.items() if alias.lower() == label.lower()), None)


def cf_attrs(name: str) -> dict:
    """CF attributes (standard_name, units, long_name) of canonical ``name``; ``{"long_name": name}``
    for a name the table does not know (a user's own channel)."""
    try:
        return variable_info(name).attrs
    except MissingVariableError:
        return {"long_name": str(name)}


def known_variables() -> list[str]:
    """Canonical surface names and the pressure-level bases (written ``<base><hPa>``)."""
    surface, levels = _table()
    return sorted(surface) + [f"{b}<hPa>" for b in sorted(levels)]


def variable_info(name: str) -> Variable:
    """The :class:`Variable` for a canonical name (``t2m``, ``z500`` ...). Unknown -> MissingVariableError."""
    surface, levels = _table()
    if name in surface:
        return surface[name]
    m = re.fullmatch(r"([a-z]+)(\d+(?:\.\d+)?)", name)
    if m and m.group(1) in levels:
        return dataclasses.replace(levels[m.group(1)], name=name, level=float(m.group(2)), base=m.group(1))
    raise MissingVariableError(
        explain(
            f"{name!r} is not a canonical xkmcast variable",
            expected=known_variables(),
            found=name,
            fix="use one of the canonical names, or a pressure-level name such as 'z500' or 't850'",
        )
    )


def normalise_units(units: str | None) -> str | None:
    """The canonical spelling of a unit string, or None when it is unknown."""
    if units is None:
        return None
    return _UNIT_LOOKUP.get(str(units).strip())


def convert_units(da: xr.DataArray, to_units: str, *, standard_name: str | None = None) -> xr.DataArray:
    """Convert ``da`` (whose ``units`` attribute says what it is in) to ``to_units``.

    Raises :class:`UnitError` when the units are missing, unknown, or the conversion is ambiguous.
    Works lazily on dask arrays (one multiply-add).
    """
    src_raw = da.attrs.get("units")
    target = normalise_units(to_units) or to_units
    src = normalise_units(src_raw)
    sn = standard_name or da.attrs.get("standard_name")
    named = da.attrs.get("xkmcast_channel") or da.attrs.get("xkmcast_source") or da.name  # the name in the file
    if src_raw is None and target == "1":
        src = "1"
    if src is None:
        raise UnitError(
            explain(
                f"Variable {named!r} has {'no' if src_raw is None else 'unknown'} units",
                expected=f"units convertible to {to_units!r} (known spellings: {sorted(UNIT_ALIASES)})",
                found=repr(src_raw),
                fix=f"set ds[{named!r}].attrs['units'] to the units of the data",
            )
        )
    if src == target:
        out = da
    else:
        conv = QUANTITY_CONVERSIONS.get((sn, src, target)) or CONVERSIONS.get((src, target))
        if conv is None and src in RATE_SECONDS and target == "kg m-2":
            raise UnitError(_rate_message(named, src_raw, src))
        if conv is None:
            raise UnitError(
                explain(
                    f"Cannot convert {named!r} from {src_raw!r} to {to_units!r} unambiguously",
                    expected=f"one of the conversions {sorted(CONVERSIONS)}",
                    found=f"{src} -> {target} for standard_name {sn!r}",
                    fix="convert the variable yourself and set its units attribute",
                )
            )
        scale, offset = conv
        out = da * scale + offset if offset else da * scale
        out.attrs = dict(da.attrs)
    out = out.copy(deep=False)
    out.attrs["units"] = to_units
    return out


def _rate_message(named: str, src_raw: str, src: str) -> str:
    """Why a precipitation rate is not read as an amount, and the line that makes it one."""
    seconds = RATE_SECONDS[src]
    v = f"ds[{named!r}]"
    per_record, monthly = {
        1: (f"{v} * 3600 * H, H the hours of a record", f"{v} * 86400 * ds.time.dt.days_in_month"),
        3600: (f"{v} * H, H the hours of a record (1 for hourly data)", f"{v} * 24 * ds.time.dt.days_in_month"),
        86400: (f"{v} * D, D the days of a record (1 for daily data)", f"{v} * ds.time.dt.days_in_month"),
    }[seconds]
    return explain(
        f"{named!r} is a precipitation rate ({src_raw!r}), and xkmcast's tp is the amount of each record "
        "(kg m-2 = mm): the rate times the record's length if the rate is the record's mean (not if it is "
        "an instantaneous rate), which xkmcast does not guess",
        expected="an amount per record in kg m-2, mm or m", found=repr(src_raw),
        fix=f"for a mean rate: {per_record}; monthly means: {monthly}; then .assign_attrs(units='mm')")


# -------------------------------------------------------------------------------------- finding


def _surface_height_dim(da: xr.DataArray) -> str | None:
    """A dim of size 1 whose coordinate is a height above the surface (CF ``standard_name: height``):
    CMOR's ``tas (time, height=2 m, rlat, rlon)``, the near-surface field's own height, not a level."""
    for d in da.dims:
        if da.sizes[d] == 1 and d in da.coords and da[d].attrs.get("standard_name") == "height":
            return d
    return None


def _level_dim(da: xr.DataArray) -> str | None:
    for d in da.dims:
        if d == _surface_height_dim(da):
            continue
        if d in LEVEL_DIMS:
            return d
        if d in da.coords and da[d].attrs.get("axis") == "Z":
            return d
    return None


def _level_values_hpa(da: xr.DataArray, dim: str) -> np.ndarray:
    values = np.asarray(da[dim].values, float) if dim in da.coords else np.arange(da.sizes[dim], dtype=float)
    units = normalise_units(da[dim].attrs.get("units")) if dim in da.coords else None
    if units == "Pa" or (units is None and values.max(initial=0) > 2000):
        values = values / 100.0
    return values


def _candidates(info: Variable) -> list[str]:
    names = [info.name, *info.aliases]
    if info.level is not None:
        lev = f"{info.level:g}"
        names = [info.name] + [f"{a}{sep}{lev}" for a in (info.base, *info.aliases) for sep in ("", "_")]
    return names


def _locate(ds: xr.Dataset, info: Variable) -> tuple[str, str | None, bool]:
    """(variable name in ds, level dim to select or None, accumulated?)"""
    lower = {str(k).lower(): k for k in ds.data_vars}
    for cand in _candidates(info):
        for name in (cand if cand in ds.data_vars else None, lower.get(cand.lower())):
            # a surface name on a field with pressure levels (z (time, pressure, y, x)) is that field's, not the surface one
            if name is not None and (info.level is not None or _level_dim(ds[name]) is None):
                return name, None, False
    for cand in info.accumulated_aliases:
        if cand in ds.data_vars:
            return cand, None, True
    if info.level is not None:  # a 3-D variable with a vertical dimension
        for cand in (info.base, *info.aliases):
            for name in [n for n in ds.data_vars if n == cand or n.lower() == str(cand).lower()]:
                dim = _level_dim(ds[name])
                if dim and np.any(np.isclose(_level_values_hpa(ds[name], dim), info.level)):
                    return name, dim, False
        for name, da in ds.data_vars.items():
            dim = _level_dim(da)
            if da.attrs.get("standard_name") == info.standard_name and dim:
                if np.any(np.isclose(_level_values_hpa(da, dim), info.level)):
                    return name, dim, False
    else:
        by_sn = [n for n, da in ds.data_vars.items()
                 if da.attrs.get("standard_name") == info.standard_name and _level_dim(da) is None]
        if len(by_sn) == 1:
            return by_sn[0], None, False
    raise MissingVariableError(
        explain(
            f"Variable {info.name!r} ({info.standard_name}) is not in the dataset",
            expected=f"{info.name!r}, an alias {list(info.aliases)[:8]}, or standard_name {info.standard_name!r}"
            + (f" with a level {info.level:g} hPa" if info.level is not None else ""),
            found=list(ds.data_vars),
            fix="rename the variable to its canonical name or add its CF standard_name attribute",
        )
    )


def find_variable(ds: xr.Dataset, name: str) -> str:
    """The name in ``ds`` of the variable holding canonical ``name`` (MissingVariableError if none)."""
    return _locate(ds, variable_info(name))[0]


def get_variable(
    ds: xr.Dataset, name: str, *, convert: bool = True, deaccumulate_time: bool = False
) -> xr.DataArray:
    """The canonical variable ``name`` from ``ds``: level selected, units converted, CF attributes set.

    Precipitation stored accumulated since the model start (WRF ``RAINNC``) is only accepted with
    ``deaccumulate_time=True``, which differences it along time (see :func:`deaccumulate`).
    """
    try:
        info = variable_info(name)
    except MissingVariableError:
        if name in ds.data_vars:  # a channel the table does not know (a model's own name): taken as is
            return ds[name].rename(name)
        raise
    src, level_dim, accumulated = _locate(ds, info)
    da = ds[src]
    height = _surface_height_dim(da)
    if height is not None:
        da = da.isel({height: 0}, drop=True)
    if level_dim is not None:
        idx = int(np.flatnonzero(np.isclose(_level_values_hpa(da, level_dim), info.level))[0])
        da = da.isel({level_dim: idx}, drop=True)
    if accumulated:
        if not deaccumulate_time:
            raise UnitError(
                explain(
                    f"{src!r} holds precipitation accumulated since the start of the run, not per time step",
                    expected=f"a per-step {name!r}",
                    found=f"{src!r}: {da.attrs.get('description', da.attrs.get('long_name', ''))}",
                    fix="pass deaccumulate=True to difference it along time",
                )
            )
        da = deaccumulate(da)
    if convert:
        da = convert_units(da, info.units, standard_name=info.standard_name)
    da = da.rename(name)
    da.attrs.update(info.attrs)
    da.attrs["xkmcast_source"] = src
    return da


def select_variables(
    ds: xr.Dataset, names, *, convert_units: bool = True, deaccumulate: bool = False, keep_coords: bool = True
) -> xr.Dataset:
    """A Dataset of the canonical ``names`` taken from ``ds`` (renamed, converted, CF-annotated).

    All missing variables are reported together in one :class:`MissingVariableError`.
    """
    out, missing = {}, []
    for name in names:
        try:
            out[name] = get_variable(ds, name, convert=convert_units, deaccumulate_time=deaccumulate)
        except MissingVariableError:
            missing.append(name)
    if missing:
        raise MissingVariableError(
            explain(
                f"The dataset lacks {len(missing)} of the {len(list(names))} variables asked for",
                expected=list(names),
                found=f"missing {missing}; the dataset has {list(ds.data_vars)}",
                fix="add the missing variables (by canonical name, alias or CF standard_name) or drop them from the list",
            )
        )
    result = xr.Dataset(out, attrs=dict(ds.attrs))
    if keep_coords:
        extra = {k: v for k, v in ds.coords.items() if k not in result.coords and set(v.dims) <= set(result.dims)}
        result = result.assign_coords(extra)
        for var in ds.data_vars:  # keep grid_mapping variables referenced by the data
            if "grid_mapping_name" in ds[var].attrs:  # as an int32 container: CDO writes |S1, which zarr v3 has no type for
                result[var] = xr.DataArray(np.int32(0), attrs=dict(ds[var].attrs))
                result = result.set_coords(var)
    return result


def deaccumulate(da: xr.DataArray, time_dim: str | None = None) -> xr.DataArray:
    """Per-step amounts from a running total: ``a[t] - a[t-1]``; a decrease (bucket reset) keeps ``a[t]``.

    The first step has no predecessor and is dropped. Needs at least two times.
    """
    if time_dim is None:
        time_dim = next((d for d in da.dims if d in ("time", "Time", "valid_time")), da.dims[0])
    if da.sizes[time_dim] < 2:
        raise TimeCoverageError(
            explain(
                f"Cannot de-accumulate {da.name!r} over one time",
                expected=f"at least two times along {time_dim!r}",
                found=da.sizes[time_dim],
            )
        )
    step = da.diff(time_dim, label="upper")
    current = da.isel({time_dim: slice(1, None)})
    out = xr.where(step < 0, current, step)
    out.attrs = dict(da.attrs)
    return out
