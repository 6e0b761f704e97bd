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
