"""Canonical names, CF standard names, aliases and unit conversion."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xkmcast.errors import MissingVariableError, UnitError
from xkmcast.fields.variables import G, convert_units, deaccumulate, find_variable, get_variable, select_variables, variable_info


def test_era5_aliases_levels_and_units(era5_like):
    ds = select_variables(era5_like, ["t2m", "u10m", "msl", "t850", "z500"])
    assert list(ds.data_vars) == ["t2m", "u10m", "msl", "t850", "z500"]
    np.testing.assert_allclose(ds.msl, era5_like.msl * 100.0)  # hPa -> Pa
    np.testing.assert_allclose(ds.t850, era5_like.t.sel(level=850))
    assert ds.z500.attrs["standard_name"] == "geopotential"
    assert ds.msl.attrs["units"] == "Pa" and ds.t2m.attrs["standard_name"] == "air_temperature"
    assert ds.t850.dims == ("time", "latitude", "longitude")


def test_wrf_aliases_and_deaccumulated_precipitation(guam):
    assert find_variable(guam, "t2m") == "T2_present"
    with pytest.raises(UnitError, match="deaccumulate"):
        get_variable(guam, "tp")
    tp = get_variable(guam, "tp", deaccumulate_time=True)
    raw = guam.RAINNC_present.values
    np.testing.assert_allclose(tp.values, raw[1:] - raw[:-1])  # mm == kg m-2
    assert tp.sizes["Time"] == 2 and tp.attrs["units"] == "kg m-2"


def test_deaccumulate_bucket_reset():
    da = xr.DataArray([0.0, 1.0, 3.0, 0.5, 1.5], dims="time")
    np.testing.assert_allclose(deaccumulate(da).values, [1.0, 2.0, 0.5, 1.0])


def test_standard_name_lookup_and_level_in_pa():
    ds = xr.Dataset(
        {
            "air": (("plev", "y"), np.ones((2, 3)), {"standard_name": "air_temperature", "units": "degC"}),
            "wind_e": (("y",), np.ones(3), {"standard_name": "eastward_wind", "units": "knots"}),
        },
        coords={"plev": ("plev", [85000.0, 50000.0], {"units": "Pa"})},
    )
    np.testing.assert_allclose(get_variable(ds, "t500").values, 274.15)
    np.testing.assert_allclose(get_variable(ds, "u10m").values, 1852 / 3600)


@pytest.mark.parametrize(
    ("units", "to", "sn", "value", "expected"),
    [
        ("degC", "K", None, 0.0, 273.15),
        ("mb", "Pa", None, 1013.25, 101325.0),
        ("m", "kg m-2", "precipitation_amount", 0.001, 1.0),  # ERA5 tp: metres of water
        ("gpm", "m2 s-2", "geopotential", 5500.0, 5500.0 * G),
        ("kg/m2", "kg m-2", None, 2.0, 2.0),
    ],
)
def test_convert_units(units, to, sn, value, expected):
    da = xr.DataArray(value, attrs={"units": units}, name="v")
    assert float(convert_units(da, to, standard_name=sn)) == pytest.approx(expected)


def test_ambiguous_or_unknown_units_raise():
    with pytest.raises(UnitError, match="unambiguously"):
        convert_units(xr.DataArray(1.0, attrs={"units": "m"}, name="h"), "kg m-2", standard_name="surface_altitude")
    with pytest.raises(UnitError, match="unknown units"):
        convert_units(xr.DataArray(1.0, attrs={"units": "furlongs"}, name="h"), "m")
    with pytest.raises(UnitError, match="no units"):
        convert_units(xr.DataArray(1.0, name="h"), "K")


def test_missing_variables_listed_together(era5_like):
    with pytest.raises(MissingVariableError) as err:
        select_variables(era5_like, ["t2m", "refc", "q700"])
    msg = str(err.value)
    assert "refc" in msg and "q700" in msg and "2t" in msg  # what is missing and what is there


def test_unknown_canonical_name():
    with pytest.raises(MissingVariableError, match="canonical"):
        variable_info("temperature_at_the_top")


def test_lazy_conversion_stays_lazy(era5_like):
    ds = era5_like.chunk({"time": 1})
    out = select_variables(ds, ["msl"])
    assert out.msl.chunks is not None


def test_layout_names_and_attributes_come_from_the_variables_table():
    from xkmcast.data.layouts import canonical_name, variable_attrs
    from xkmcast.fields.variables import _table, canonical_alias, variable_info

    surface, levels = _table()
    for canon, info in surface.items():  # every alias in variables.yaml maps back to its name
        for alias in info.aliases:
            assert canonical_alias(alias) in (canon, *[c for c, i in surface.items() if alias in i.aliases])
    assert canonical_name("10U") == "u10m" and canonical_name("temperature", 850) == "t850"
    assert canonical_name("z_500") == "z500" and canonical_name("my_channel") == "my_channel"
    assert variable_attrs("t850", "T850") == {**variable_info("t850").attrs, "xkmcast_channel": "T850"}
    assert "units" not in variable_attrs("tp") and variable_attrs("unknown") == {}
    assert set(levels) and canonical_alias("temperature", pressure_level=True) == "t"


def test_cmor_short_names_without_standard_names():
    """CMOR's short names name the canonical variables when a file has no standard_name (gridded
    observations: tas in degC, pr as monthly sums in mm); CMOR's own pr, a rate, is not an amount."""
    values = np.array([[[12.5, np.nan], [3.0, 20.0]]], dtype="f4")
    ds = xr.Dataset({"tas": (("time", "y", "x"), values, {"units": "C"}),
                     "pr": (("time", "y", "x"), values * 10, {"units": "mm"}),
                     "uas": (("time", "y", "x"), values, {"units": "m s-1"}),
                     "psl": (("time", "y", "x"), values + 1000, {"units": "hPa"})})
    got = select_variables(ds, ["t2m", "tp", "u10m", "msl"])
    np.testing.assert_allclose(got["t2m"].values, values + 273.15, rtol=1e-6)  # NaN kept
    np.testing.assert_array_equal(got["tp"].values, values * 10)
    np.testing.assert_allclose(got["msl"].values, (values + 1000) * 100, rtol=1e-6)
    assert got["tp"].attrs["units"] == "kg m-2" and find_variable(ds, "u10m") == "uas"
    rate = ds.assign(pr=ds["pr"].assign_attrs(units="kg m-2 s-1"))
    with pytest.raises(UnitError, match=r"'pr' is a precipitation rate \('kg m-2 s-1'\)"):
        select_variables(rate, ["tp"])


def test_precipitation_rates_are_refused_with_the_line_that_makes_an_amount():
    """A rate (CMIP's pr, IMERG's mm/hr, CPC's mm/day) is not an amount per record until it is multiplied
    by the record's length; the error gives that line, and following it gives the amount (1e-5 kg m-2
    s-1 over January: 26.784 mm; 2 mm/hr over an hour: 2 mm)."""
    time = xr.DataArray(np.array(["2005-01-16T12:00"], "datetime64[ns]"), dims="time")
    monthly = xr.Dataset({"pr": (("time", "y", "x"), np.full((1, 2, 2), 1e-5), {"units": "kg m-2 s-1"})},
                         coords={"time": time})
    with pytest.raises(UnitError, match=r"monthly means: ds\['pr'\] \* 86400 \* ds.time.dt.days_in_month"):
        select_variables(monthly, ["tp"])
    fixed = monthly.assign(pr=(monthly["pr"] * 86400 * monthly.time.dt.days_in_month).assign_attrs(units="mm"))
    np.testing.assert_allclose(select_variables(fixed, ["tp"])["tp"].values, 26.784)
    for units, line in (("mm/hr", r"ds\['pr'\] \* H, H the hours of a record"),
                        ("mm/day", r"ds\['pr'\] \* D, D the days of a record")):
        with pytest.raises(UnitError, match=line):
            select_variables(monthly.assign(pr=monthly["pr"].assign_attrs(units=units)), ["tp"])


@pytest.mark.parametrize("units, to, value, expected", [
    ("degrees Celsius", "K", 20.0, 293.15), ("deg C", "K", 20.0, 293.15), ("degree_C", "K", 20.0, 293.15),
    ("Kelvins", "K", 280.0, 280.0), ("m/sec", "m s-1", 3.0, 3.0), ("mph", "m s-1", 10.0, 4.4704),
    ("hectopascals", "Pa", 1013.25, 101325.0), ("kg/m**2", "kg m-2", 2.5, 2.5),
])
def test_unit_spellings_of_real_files(units, to, value, expected):
    """Spellings met in real files (UDUNITS' degree_C, NCL's m/sec, US observations' mph: 0.44704 m/s
    by definition) convert as their canonical units do."""
    out = convert_units(xr.DataArray([value], dims="x", attrs={"units": units}), to)
    np.testing.assert_allclose(out.values, expected, rtol=1e-9)


def test_geopotential_height_in_decametres():
    """Charts' geopotential height in dam: 558 dam = 5580 m, and as geopotential 5580 m x g."""
    gh = xr.DataArray([558.0], dims="x", attrs={"units": "dam"})
    np.testing.assert_allclose(convert_units(gh, "m", standard_name="geopotential_height").values, 5580.0)
    np.testing.assert_allclose(convert_units(gh, "m2 s-2", standard_name="geopotential").values, 5580.0 * 9.80665)
