"""Tests of xkmcast.fields.scoring: scores per variable checked against xskillscore / numpy, truth selection,
the CorrDiff generate.py NetCDF layout (written here with netCDF4 the way generate.py writes it:
root lat/lon (y, x) and time in hours since 1990-01-01, groups truth (time, y, x), prediction
(ensemble, time, y, x), input (time, y, x)), score_files on NetCDF and zarr, and the table renderings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xkmcast.fields import scoring
from xkmcast.errors import InvalidDataError, MissingVariableError, TimeCoverageError

xs = pytest.importorskip("xskillscore", reason="xskillscore is a test extra")

TIMES = pd.date_range("2021-02-01", periods=3, freq="6h")


def make(seed=0, m=5, nt=3, ny=6, nx=7):
    rng = np.random.default_rng(seed)
    coords = {"time": TIMES[:nt]}
    truth = xr.Dataset(
        {
            "t2m": (("time", "y", "x"), 280 + rng.normal(size=(nt, ny, nx)), {"units": "K"}),
            "u10m": (("time", "y", "x"), rng.normal(size=(nt, ny, nx)), {"units": "m s-1"}),
        },
        coords=coords,
    )
    pred = xr.Dataset(
        {name: (("member", *da.dims), da.values + rng.normal(size=(m, *da.shape)), da.attrs) for name, da in truth.items()},
        coords=coords,
    )
    return pred, truth


def test_scores_per_variable_agree_with_xskillscore():
    pred, truth = make()
    s = scoring.score(pred, truth)
    assert list(s["variable"].values) == ["t2m", "u10m"]
    assert list(s["units"].values) == ["K", "m s-1"]
    assert set(s.data_vars) == {"crps", "mae", "rmse", "bias", "spread", "spread_skill"}
    for name in ("t2m", "u10m"):
        row = s.sel(variable=name)
        mean = pred[name].mean("member")
        assert abs(float(row.crps) - float(xs.crps_ensemble(truth[name], pred[name]))) < 1e-10
        assert abs(float(row.rmse) - float(xs.rmse(mean, truth[name], dim=list(mean.dims)))) < 1e-10
        assert abs(float(row.mae) - float(xs.mae(mean, truth[name], dim=list(mean.dims)))) < 1e-10
        spread = np.sqrt(pred[name].var("member", ddof=1).mean())
        assert float(row.spread) == pytest.approx(float(spread), rel=1e-12)
        assert float(row.spread_skill) == pytest.approx(float(np.sqrt(6 / 5) * spread / row.rmse), rel=1e-12)


def test_keep_time_and_deterministic_prediction_and_baseline():
    pred, truth = make()
    s = scoring.score(pred, truth, keep="time")
    assert s.crps.dims == ("variable", "time")
    det = scoring.score(pred.mean("member"), truth, baseline=truth + 1.0)
    assert "spread" not in det and "spread_skill" not in det
    np.testing.assert_allclose(det.crps, det.mae, rtol=1e-12)  # one-member CRPS = MAE
    np.testing.assert_allclose(det.baseline_mae, 1.0, rtol=1e-12)
    np.testing.assert_allclose(det.baseline_rmse, 1.0, rtol=1e-12)


def test_truth_is_selected_at_the_prediction_times_or_an_error_says_what_is_missing():
    pred, truth = make()
    sub = pred.isel(time=[0, 2])
    s = scoring.score(sub, truth)
    ref = scoring.score(sub, truth.isel(time=[0, 2]))
    xr.testing.assert_allclose(s, ref)
    with pytest.raises(TimeCoverageError):
        scoring.score(pred, truth.isel(time=[0, 1]))
    with pytest.raises(MissingVariableError):
        scoring.score(pred[["t2m"]], truth[["u10m"]])


def test_lead_time_forecast_is_scored_against_truth_at_valid_times():
    pred, truth = make(nt=3)
    fc = pred.isel(time=[1, 2]).rename(time="lead_time").assign_coords(
        lead_time=pd.to_timedelta([6, 12], unit="h"), valid_time=("lead_time", TIMES[1:3])
    )
    s = scoring.score(fc, truth, keep="lead_time")
    assert s.crps.dims == ("variable", "lead_time")
    direct = scoring.score(pred.isel(time=[1, 2]), truth.isel(time=[1, 2]), keep="time")
    np.testing.assert_allclose(s.crps.values, direct.crps.values, rtol=1e-12)


def test_dask_input_stays_lazy():
    import dask

    pred, truth = make()
    calls = []

    def scheduler(dsk, keys, **kwargs):
        calls.append(1)
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=scheduler):
        lazy = scoring.score(pred.chunk({"time": 1}), truth.chunk({"time": 1}), keep="time")
        assert not calls and lazy.crps.chunks is not None
    xr.testing.assert_allclose(lazy.compute(), scoring.score(pred, truth, keep="time"))


def test_tables_show_every_variable_and_score():
    from rich.console import Console

    pred, truth = make()
    s = scoring.score(pred, truth)
    table = scoring.format_table(s)
    assert table.row_count == 2
    assert [c.header for c in table.columns][:2] == ["variable", "crps"]
    console = Console(record=True, width=160)
    console.print(table)
    rendered = console.export_text()
    text = scoring.format_text(s)
    for out in (rendered, text):
        assert "t2m" in out and "u10m" in out and "spread_skill" in out
        assert f"{float(s.crps.sel(variable='t2m')):.4g}" in out
    assert len(text.splitlines()) == 4  # header, rule, two variables
    kept = scoring.format_text(scoring.score(pred, truth, keep="time"))
    assert len(kept.splitlines()) == 2 + 2 * 3
    assert "2021-02-01T06:00" in kept


def write_corrdiff_file(path, pred, truth, inp):
    """A file laid out as CorrDiff's generate.py writes it (netCDF4, groups, unlimited time/ensemble)."""
    import netCDF4

    m, nt, ny, nx = pred["t2m"].shape
    with netCDF4.Dataset(path, "w") as f:
        f.createDimension("time")
        f.createDimension("ensemble")
        f.createDimension("x", nx)
        f.createDimension("y", ny)
        lat = f.createVariable("lat", "f", ("y", "x"))
        lat[:] = np.linspace(20, 22, ny)[:, None] * np.ones((1, nx))
        lat.standard_name, lat.units = "latitude", "degrees_north"
        lon = f.createVariable("lon", "f", ("y", "x"))
        lon[:] = np.linspace(120, 122, nx)[None, :] * np.ones((ny, 1))
        lon.standard_name, lon.units = "longitude", "degrees_east"
        t = f.createVariable("time", "i8", ("time",))
        t.calendar, t.units = "standard", "hours since 1990-01-01 00:00:00"
        groups = {g: f.createGroup(g) for g in ("truth", "prediction", "input")}
        for name in pred.data_vars:
            groups["truth"].createVariable(name, "f", ("time", "y", "x"))
            groups["prediction"].createVariable(name, "f", ("ensemble", "time", "y", "x"))
        for name in inp.data_vars:
            groups["input"].createVariable(name, "f", ("time", "y", "x"))
        hours = (pd.DatetimeIndex(truth.time.values) - pd.Timestamp("1990-01-01")) / pd.Timedelta("1h")
        for ti in range(nt):  # written one time at a time, as generate.py does
            t[ti] = int(hours[ti])
            for name in pred.data_vars:
                groups["truth"][name][ti] = truth[name].values[ti]
                for e in range(m):
                    groups["prediction"][name][e, ti] = pred[name].values[e, ti]
            for name in inp.data_vars:
                groups["input"][name][ti] = inp[name].values[ti]


def test_corrdiff_file_is_read_and_scored(tmp_path):
    pred, truth = make(m=4)
    pred, truth = pred.astype("float32"), truth.astype("float32")
    inp = xr.Dataset({"t2m_era5": truth["t2m"] + 1.0})
    path = tmp_path / "corrdiff_output.nc"
    write_corrdiff_file(path, pred, truth, inp)

    p, t, i = scoring.open_corrdiff_netcdf(path)
    assert p["t2m"].dims == ("member", "time", "y", "x") and p.sizes["member"] == 4
    assert t["u10m"].dims == ("time", "y", "x") and list(i.data_vars) == ["t2m_era5"]
    assert p["lat"].dims == ("y", "x") and float(p["lat"][-1, 0]) == pytest.approx(22.0)
    np.testing.assert_array_equal(p.time.values, TIMES.values)
    np.testing.assert_array_equal(p["t2m"].values, pred["t2m"].values)

    expected = scoring.score(pred, truth)
    for out in (tmp_path / "scores.nc", tmp_path / "scores.zarr"):
        s = scoring.score_files(path, out=out)
        xr.testing.assert_allclose(s.reset_coords(drop=True), expected.reset_coords(drop=True))
        back = scoring.open_any(out).load()
        np.testing.assert_allclose(back.crps.values, expected.crps.values, rtol=1e-6)
        assert list(back.variable.values) == ["t2m", "u10m"]


def test_score_files_with_a_separate_truth_store(tmp_path):
    pred, truth = make(m=3)
    pred.rename(member="ensemble").to_netcdf(tmp_path / "pred.nc")
    truth.to_zarr(tmp_path / "truth.zarr", consolidated=False)
    s = scoring.score_files(tmp_path / "pred.nc", tmp_path / "truth.zarr", keep="time")
    xr.testing.assert_allclose(s.reset_coords(drop=True), scoring.score(pred, truth, keep="time").reset_coords(drop=True))
    with pytest.raises(InvalidDataError):
        scoring.score_files(tmp_path / "pred.nc")


def test_a_truth_under_other_names_and_units_is_scored_as_the_prediction_names_it():
    """CMIP's ``tas`` in degC (CF standard_name air_temperature) is the prediction's ``t2m`` in K, for
    the truth and for a baseline; the scores equal those of the truth renamed and converted by hand."""
    pred, truth = make()
    cmip = truth.rename(t2m="tas")
    cmip["tas"] = (cmip["tas"] - 273.15).assign_attrs(units="degC", standard_name="air_temperature")
    got = scoring.score(pred, cmip, baseline=cmip + 0.5)
    want = scoring.score(pred, truth, baseline=truth + 0.5)
    xr.testing.assert_allclose(got, want, rtol=1e-10)
    assert float(got.baseline_mae.sel(variable="t2m")) == pytest.approx(0.5, rel=1e-9)
    with pytest.raises(MissingVariableError, match="share no variable"):  # a name the table does not know
        scoring.score(pred[["u10m"]].rename(u10m="wind"), truth.rename(u10m="gust"))


def test_a_truth_without_units_is_scored_as_it_is():
    pred, truth = make()
    bare = truth.copy()
    for name in bare.data_vars:
        bare[name].attrs = {}
    xr.testing.assert_allclose(scoring.score(pred, bare), scoring.score(pred, truth), rtol=1e-12)
