"""Bootstrap intervals of scores (xkmcast.fields.resampling): coverage of known values, the width
law, moving blocks, and errors a user can act on."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xkmcast.errors import InvalidDataError
from xkmcast.fields import metrics
from xkmcast.fields.resampling import bootstrap_interval, resample_positions


def _fields(rng, n: int, members: int | None = None, shape=(3, 4)):
    dims = ("time", *("y", "x")[:len(shape)])
    truth = xr.DataArray(rng.normal(size=(n, *shape)), dims=dims, coords={"time": np.arange(n)})
    if members is None:
        return truth
    centre = rng.normal(size=(n, *shape))  # what the ensemble knows; truth and members are draws about it
    truth = truth + centre
    ens = xr.DataArray(centre[None] + rng.normal(size=(members, n, *shape)), dims=("member", *dims),
                       coords={"time": np.arange(n)})
    return ens, truth


def test_the_90_percent_interval_of_an_mae_covers_its_expectation_nine_times_in_ten():
    """Forecast 0 against N(0, 1) truth: E|y| = sqrt(2 / pi). Over 120 independent samples of 40
    times, the percentile interval holds it in 80-96 % of them (the bootstrap's nominal 90 %)."""
    rng = np.random.default_rng(1)
    expected = np.sqrt(2 / np.pi)
    hits = []
    for k in range(120):
        truth = _fields(rng, 40, shape=(2,))
        forecast = xr.zeros_like(truth)
        lo, hi = bootstrap_interval(metrics.mae, forecast, truth, resamples=200, seed=k).values
        hits.append(lo <= expected <= hi)
    assert 0.80 <= np.mean(hits) <= 0.96, np.mean(hits)


def test_spread_skill_of_an_exchangeable_ensemble_holds_one_and_narrows_as_one_over_root_n():
    rng = np.random.default_rng(2)
    widths = {}
    for n in (8, 32):
        ens, truth = _fields(rng, n, members=8)
        interval = bootstrap_interval(metrics.spread_skill, ens, truth, resamples=400, seed=0)
        assert list(interval.dims) == ["quantile"]
        lo, hi = interval.values
        assert lo < 1 < hi, (n, lo, hi)
        widths[n] = hi - lo
    assert 1.4 < widths[8] / widths[32] < 2.8, widths  # sqrt(32 / 8) = 2


def test_moving_blocks_are_runs_of_consecutive_positions():
    idx = resample_positions(10, 500, block=3, seed=0)
    assert idx.shape == (500, 10) and idx.min() >= 0 and idx.max() <= 9
    runs = idx[:, :9].reshape(500, 3, 3)
    assert (np.diff(runs, axis=-1) == 1).all()
    single = resample_positions(10, 2000, seed=0)
    np.testing.assert_allclose(np.bincount(single.ravel(), minlength=10) / 2000, 1.0, atol=0.08)


def test_kept_dimensions_stay_and_bad_requests_are_refused():
    rng = np.random.default_rng(3)
    ens, truth = _fields(rng, 12, members=4)
    per_y = bootstrap_interval(metrics.crps, ens, truth, dim=["time", "x"], resamples=50)
    assert dict(per_y.sizes) == {"quantile": 2, "y": 3}
    both = bootstrap_interval(metrics.mae, ens.to_dataset(name="t2m"), truth.to_dataset(name="t2m"), resamples=50)
    np.testing.assert_allclose(both["t2m"].values, bootstrap_interval(metrics.mae, ens, truth, resamples=50).values)
    with pytest.raises(InvalidDataError, match="keeps the resampled dimension"):
        bootstrap_interval(metrics.mae, ens.mean("member"), truth, dim=["x", "y"], resamples=5)
    with pytest.raises(InvalidDataError, match="no dimension 'lead_time'"):
        bootstrap_interval(metrics.mae, ens, truth, over="lead_time")
    with pytest.raises(InvalidDataError, match="differ in length"):
        bootstrap_interval(metrics.mae, ens, truth.isel(time=slice(1, None)))
    with pytest.raises(InvalidDataError, match="block"):
        resample_positions(5, 10, block=6)


def _dataset(rng, n=10, members=5):
    ens, truth = _fields(rng, n, members=members)
    times = np.datetime64("2021-02-01T00") + np.arange(n) * np.timedelta64(6, "h")
    pred = ens.assign_coords(time=times).to_dataset(name="t2m")
    pred["t2m"].attrs["units"] = "K"
    return pred, truth.assign_coords(time=times).to_dataset(name="t2m")


def test_score_intervals_equal_a_resampling_loop_scored_by_xskillscore():
    """score(interval=0.9): each <score>_low / _high is the percentile interval of the score over the
    resamples of resample_positions; recomputed here one resample at a time with xskillscore's CRPS and
    numpy's MAE (another library, not the vectorised path)."""
    xs = pytest.importorskip("xskillscore", reason="xskillscore is a test extra")
    from xkmcast.fields import scoring

    pred, truth = _dataset(np.random.default_rng(4))
    s = scoring.score(pred, truth, interval=0.9, resamples=300, seed=7)
    crps, mae = [], []
    for idx in resample_positions(10, 300, seed=7):
        p, t = pred["t2m"].isel(time=idx).drop_vars("time"), truth["t2m"].isel(time=idx).drop_vars("time")
        crps.append(float(xs.crps_ensemble(t, p, member_dim="member", dim=None)))
        mae.append(float(np.abs(p.mean("member") - t).mean()))
    for key, values in (("crps", crps), ("mae", mae)):
        got = [float(s[f"{key}_{b}"].sel(variable="t2m")) for b in ("low", "high")]
        np.testing.assert_allclose(got, np.quantile(values, [0.05, 0.95]), rtol=1e-9)
    assert float(s.spread_skill_low.sel(variable="t2m")) < 1 < float(s.spread_skill_high.sel(variable="t2m"))
    lazy = scoring.score(pred.chunk({"time": 3}), truth.chunk({"time": 3}), interval=0.9, resamples=300, seed=7)
    xr.testing.assert_allclose(lazy.compute(), s)  # dask input: the same intervals
    assert "bootstrap interval of the spread-skill" in s.spread_skill_low.attrs["long_name"]
    header, _, row = scoring.format_text(s).splitlines()
    low, high = (float(s[f"crps_{b}"].sel(variable="t2m")) for b in ("low", "high"))
    assert header.split()[:2] == ["variable", "crps"] and f"[{low:.3g}, {high:.3g}]" in row  # in the score's cell
    with pytest.raises(InvalidDataError, match="keeps the resampled dimension"):
        scoring.score(pred, truth, keep="time", interval=0.9)


def test_xkmcast_score_prints_the_intervals(tmp_path):
    from typer.testing import CliRunner

    from xkmcast.cli import app

    pred, truth = _dataset(np.random.default_rng(5))
    pred.to_netcdf(tmp_path / "pred.nc")
    truth.to_netcdf(tmp_path / "truth.nc")
    result = CliRunner().invoke(app, ["score", str(tmp_path / "pred.nc"), str(tmp_path / "truth.nc"),
                                      "--interval", "0.9", "-o", str(tmp_path / "scores.nc")])
    assert result.exit_code == 0, result.output
    written = xr.open_dataset(tmp_path / "scores.nc")
    assert {"spread_skill_low", "spread_skill_high", "crps_low"} <= set(written.data_vars)
    low, mae, high = (float(written[k].sel(variable="t2m")) for k in ("mae_low", "mae", "mae_high"))
    assert low <= mae <= high and "[" in result.output  # the table's cells carry the intervals
