"""Data on a climate model's calendar (CESM / GFDL ``noleap``, HadGEM ``360_day``, ``julian``): xarray
decodes its times to ``cftime`` dates, and downscaling, forecasting, the training samples and the
published time-window package work in that calendar and keep its labels.

Independent references: a ``cftime`` date of the proleptic Gregorian calendar is the same instant as
its ``datetime64``, so every result (members included, their seeds hashed from the time) equals the
``datetime64`` one bitwise; J2000.0 is 1999-12-19 12:00 of the Julian calendar; in a ``noleap`` year
2024-02-28 18:00 + 6 h is 2024-03-01 00:00.
"""

from __future__ import annotations

import cftime
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _tiny import coarse_dataset, state_dataset, tiny_corrdiff, tiny_stormcast

import xkmcast  # noqa: F401
from xkmcast.diffusion.seeds import row_seed, time_key
from xkmcast.fields.calendar import as_gregorian, is_calendar_time, time_index


def on_calendar(ds: xr.Dataset, calendar: str) -> xr.Dataset:
    """``ds`` with its time axis as ``cftime`` dates of ``calendar`` (the same labels)."""
    date_type = {"noleap": cftime.DatetimeNoLeap, "360_day": cftime.Datetime360Day,
                 "proleptic_gregorian": cftime.DatetimeProlepticGregorian}[calendar]  # as xarray decodes them
    dates = [date_type(*t.timetuple()[:6]) for t in pd.DatetimeIndex(ds.time.values)]
    return ds.assign_coords(time=xr.CFTimeIndex(dates))


@pytest.fixture(scope="module")
def corrdiff():
    return tiny_corrdiff(seed=3)


@pytest.fixture(scope="module")
def stormcast():
    return tiny_stormcast(seed=4)


def test_time_keys_of_cftime_dates():
    t = np.datetime64("2005-03-01T06:00", "ns")
    assert time_key(cftime.DatetimeProlepticGregorian(2005, 3, 1, 6)) == time_key(t) == int(t.astype(np.int64))
    # noleap counts no Feb 29 since 1970 (9 of them up to 2005): another number, another sample
    assert time_key(cftime.DatetimeNoLeap(2005, 3, 1, 6)) == time_key(t) - 9 * 86_400 * 10**9
    assert row_seed(0, 1, cftime.Datetime360Day(2005, 2, 30)) != row_seed(0, 1, cftime.Datetime360Day(2005, 2, 29))
    with pytest.raises(TypeError, match="integer or a time"):
        time_key(object())


def test_as_gregorian_keeps_date_and_hour_or_the_instant():
    got = as_gregorian([cftime.DatetimeJulian(1999, 12, 19, 12), cftime.Datetime360Day(2001, 2, 30, 6),
                        cftime.DatetimeNoLeap(2004, 3, 1, 18), cftime.DatetimeAllLeap(2001, 2, 29)])
    np.testing.assert_array_equal(got, np.array(["2000-01-01T12:00", "2001-02-28T06:00", "2004-03-01T18:00",
                                                 "2001-02-28T00:00"], "datetime64[ns]"))
    # the last Julian day of 1582 was followed by Gregorian 15 October; a control run's year 1 fits too
    np.testing.assert_array_equal(as_gregorian([cftime.DatetimeJulian(1582, 10, 4), cftime.DatetimeNoLeap(1, 6, 21, 18)]),
                                  np.array(["1582-10-14", "0001-06-21T18:00"], "datetime64[us]"))
    dt64 = np.array(["2024-05-01T03"], "datetime64[ns]")
    np.testing.assert_array_equal(as_gregorian(dt64), dt64)
    assert not is_calendar_time(dt64)
    assert is_calendar_time(time_index(on_calendar(coarse_dataset(2), "noleap").time.values))


@pytest.mark.parametrize("calendar", ["noleap", "360_day"])
def test_downscale_keeps_the_calendar(corrdiff, calendar):
    coarse = coarse_dataset(2)
    ref = coarse.kmcast.downscale(corrdiff, members=2, seed=1, include_mean=True)
    got = on_calendar(coarse, calendar).kmcast.downscale(corrdiff, members=2, seed=1, include_mean=True)
    assert isinstance(got.indexes["time"], xr.CFTimeIndex) and got.indexes["time"].calendar == calendar
    assert [t.isoformat() for t in got.time.values] == [str(t)[:19] for t in coarse.time.values]
    # the regression mean does not depend on the calendar; the members are drawn (seeded by the date)
    np.testing.assert_array_equal(got["t2m_regression"].values, ref["t2m_regression"].values)
    assert np.isfinite(got["t2m"].values).all()
    assert not np.array_equal(got["t2m"].values, ref["t2m"].values)
    again = on_calendar(coarse, calendar).kmcast.downscale(corrdiff, members=2, seed=1)
    np.testing.assert_array_equal(again["t2m"].values, got["t2m"].values)


def test_downscale_of_gregorian_cftime_equals_datetime64(corrdiff):
    coarse = coarse_dataset(2)
    ref = coarse.kmcast.downscale(corrdiff, members=2, seed=1)
    got = on_calendar(coarse, "proleptic_gregorian").kmcast.downscale(corrdiff, members=2, seed=1)
    np.testing.assert_array_equal(got["t2m"].values, ref["t2m"].values)


@pytest.mark.parametrize("calendar", ["noleap", "360_day"])
def test_forecast_in_a_model_calendar(stormcast, calendar, tmp_path):
    state = on_calendar(state_dataset(2), calendar)
    bg = on_calendar(coarse_dataset(5), calendar)
    out = state.kmcast.forecast(stormcast, steps=3, background=bg, members=2, seed=2)
    valid = out.valid_time.values
    assert is_calendar_time(valid) and valid[1, 3] == state.time.values[1] + pd.Timedelta("3h").to_pytimedelta()
    assert np.isfinite(out.t2m.values).all()
    streamed = state.kmcast.forecast(stormcast, steps=3, background=bg, members=2, seed=2, output=tmp_path / "f.zarr")
    np.testing.assert_allclose(streamed.t2m.values, out.t2m.values, rtol=1e-5, atol=1e-4)
    assert streamed.indexes["init_time"].calendar == calendar and streamed.valid_time.values[1, 3] == valid[1, 3]
    # a background without the last step's time is named in the calendar of the data
    with pytest.raises(xkmcast.errors.TimeCoverageError, match="2024-05-01 03:00:00"):
        state.kmcast.forecast(stormcast, steps=3, background=bg.isel(time=slice(0, 3)), members=1)
    with pytest.raises(xkmcast.errors.TimeCoverageError, match=f"(?s)another calendar.*{calendar}.*found: +standard"):
        state.kmcast.forecast(stormcast, steps=3, background=coarse_dataset(5), members=1)


def test_forecast_of_gregorian_cftime_equals_datetime64(stormcast):
    state, bg = state_dataset(2), coarse_dataset(5)
    ref = state.kmcast.forecast(stormcast, steps=2, background=bg, members=2, seed=2)
    got = on_calendar(state, "proleptic_gregorian").kmcast.forecast(
        stormcast, steps=2, background=on_calendar(bg, "proleptic_gregorian"), members=2, seed=2)
    np.testing.assert_array_equal(got.t2m.values, ref.t2m.values)


def test_forecast_pairs_step_in_the_calendar():
    """6-hourly times over the end of February 2024: noleap has no Feb 29, so 28 Feb 18:00 + 6 h is
    1 March 00:00, one step; on the standard calendar those two are a day and 6 h apart."""
    from xkmcast.data.samples import ForecastSamples

    noleap = xr.date_range("2024-02-28T12:00", periods=4, freq="6h", calendar="noleap", use_cftime=True)
    standard = pd.DatetimeIndex(["2024-02-28T12:00", "2024-02-28T18:00", "2024-03-01T00:00", "2024-03-01T06:00"])
    for times, pairs in ((noleap, 3), (standard, 2)):
        ds = xr.Dataset({"t2m": (("time", "y", "x"), np.zeros((4, 4, 4), "f4"))}, coords={"time": times})
        samples = ForecastSamples(ds, ["t2m"], step="6h")
        assert len(samples.pairs) == pairs
    by_count = ForecastSamples(ds.assign_coords(time=noleap), ["t2m"], step=1)
    assert by_count.step == pd.Timedelta("6h").to_pytimedelta() and len(by_count.pairs) == 3


def test_published_time_window_package_on_noleap_days(tmp_path_factory):
    """CorrDiff CMIP6 on a noleap record: the hour and solar features of the same dates, so the same
    regression mean as on the standard calendar; the valid times are noleap dates."""
    from _packages import build_cmip6_package, cmip6_days

    model = xkmcast.load_model(build_cmip6_package(tmp_path_factory.mktemp("cmip6") / "pkg"))
    ds = cmip6_days()
    ref = ds.kmcast.downscale(model, members=1, seed=5, lead_times=[-12, 5], include_mean=True, num_steps=1)
    got = on_calendar(ds, "noleap").kmcast.downscale(model, members=1, seed=5, lead_times=[-12, 5],
                                                      include_mean=True, num_steps=1)
    assert got.indexes["time"].calendar == "noleap"
    assert [t.isoformat() for t in got.time.values] == [str(t)[:19] for t in ref.time.values]
    np.testing.assert_array_equal(got["t2m_regression"].values, ref["t2m_regression"].values)
    gregorian = on_calendar(ds, "proleptic_gregorian").kmcast.downscale(model, members=1, seed=5, lead_times=[-12, 5],
                                                                         num_steps=1)
    np.testing.assert_array_equal(gregorian["t2m"].values, ref["t2m"].values)


def test_prepare_joins_times_in_a_model_calendar(tmp_path):
    """The training store of noleap sources: the times both hold, a window or a list of labels of
    them, the stored axis on noleap; sources on two calendars are refused with the conversion."""
    from xkmcast.data.prepare import open_store, prepare
    from xkmcast.data.synthetic import SyntheticWeather
    from xkmcast.errors import TimeCoverageError
    from xkmcast.fields.grid import find_grid, make_lambert_grid

    w = SyntheticWeather(5)
    fine = w.dataset(find_grid(make_lambert_grid(12, 12, 3000.0, 38.5, -97.5)),
                     pd.date_range("2023-02-28T12", periods=5, freq="6h"), ("t2m",))
    coarse = fine.coarsen(x=2, y=2).mean()
    fine_nl, coarse_nl = on_calendar(fine, "noleap"), on_calendar(coarse, "noleap").isel(time=slice(1, None))
    kw = dict(input_vars=["t2m"], output_vars=["t2m"], regrid_options={"allow_outside": "nearest"})
    store = open_store(prepare(fine_nl, coarse_nl, tmp_path / "a.zarr", **kw))
    assert store.indexes["time"].calendar == "noleap"
    assert [t.isoformat() for t in store.time.values] == [str(t)[:19] for t in fine.time.values[1:]]
    np.testing.assert_allclose(store["target_t2m"].values, fine["t2m"].values[1:], rtol=1e-6)
    window = open_store(prepare(fine_nl, coarse_nl, tmp_path / "b.zarr", times=slice("2023-03-01", None), **kw))
    assert len(window.time) == 3
    picked = open_store(prepare(fine_nl, coarse_nl, tmp_path / "c.zarr", times=["2023-03-01T06:00"], **kw))
    assert [t.isoformat() for t in picked.time.values] == ["2023-03-01T06:00:00"]
    with pytest.raises(TimeCoverageError, match=r"(?s)two calendars.*convert_calendar\('noleap'"):
        prepare(fine_nl, coarse, tmp_path / "d.zarr", **kw)
    assert not (tmp_path / "d.zarr").exists()
