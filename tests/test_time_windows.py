"""Training and validation times as lists of windows (``data.train_times`` / ``data.valid_times``) or
a recurring validation window: validation spread over the record, never trained on, and the statistics
of exactly the training times."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xkmcast.errors import TimeCoverageError
from xkmcast.models.kinds import get_kind
from xkmcast.train.config import time_windows
from xkmcast.train.time_split import time_split

from test_train_trainer import prepared_store, tiny_config

HOURS = pd.date_range("2024-07-01", periods=20, freq="h")


def _iso(i: int) -> str:
    return str(HOURS[i])[:19].replace(" ", "T")


def _split(tmp_path, *overrides, times=HOURS):
    cfg = tiny_config(tmp_path / "store.zarr", tmp_path, *overrides)
    ds = xr.Dataset(coords={"time": times})
    return cfg, time_split(ds.indexes["time"], cfg.data, get_kind(cfg.model.kind).forecast)


def test_a_list_of_validation_windows_is_taken_out_of_the_training_times(tmp_path):
    cfg, (train, valid) = _split(
        tmp_path, f"data.valid_times=[{{start: '{_iso(3)}', end: '{_iso(4)}'}}, {{start: '{_iso(12)}', end: '{_iso(14)}'}}]")
    assert len(time_windows(cfg.data.valid_times)) == 2
    assert valid == [3, 4, 12, 13, 14]
    assert train == [i for i in range(20) if i not in valid]  # no training window: every other time trains


def test_validation_windows_inside_the_training_window_are_never_trained_on(tmp_path):
    _, (train, valid) = _split(tmp_path, f"data.train_times={{start: '{_iso(2)}', end: '{_iso(15)}'}}",
                               f"data.valid_times=[{{start: '{_iso(6)}', end: '{_iso(7)}'}}, {{start: '{_iso(15)}'}}]")
    assert valid == [6, 7, 15, 16, 17, 18, 19]
    assert train == [2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14]


def test_bare_times_are_windows_of_themselves(tmp_path):
    """``data.valid_times=[T1, T2]`` (times, not windows) validates on exactly those times; a bare partial
    time is its whole span (a day here), as ``{start: it, end: it}``."""
    _, (train, valid) = _split(tmp_path, f"data.valid_times=[{_iso(3)}, '{_iso(12)}']")
    assert valid == [3, 12] and train == [i for i in range(20) if i not in (3, 12)]
    _, (train, valid) = _split(tmp_path, f"data.valid_times={_iso(7)[:16]}")  # minutes: a YAML string
    assert valid == [7]
    days = pd.date_range("2024-07-01", periods=72, freq="h")
    _, (train, valid) = _split(tmp_path, "data.train_times=2024-07-02", "data.valid_times=[2024-07-02T23:00]",
                               times=days)
    assert train == list(range(24, 47)) and valid == [47]


def test_training_windows_alone_give_their_last_times_to_validation(tmp_path):
    """Two training windows and valid_fraction 0.2: the union's last fifth validates (as for one window)."""
    _, (train, valid) = _split(tmp_path, f"data.train_times=[{{start: '{_iso(0)}', end: '{_iso(4)}'}}, "
                                         f"{{start: '{_iso(10)}', end: '{_iso(14)}'}}]")
    assert train == [0, 1, 2, 3, 4, 10, 11, 12] and valid == [13, 14]


def test_a_recurring_validation_window_is_the_same_split_as_its_days_listed(tmp_path):
    """16 days of 6-hourly times, training on the first 12: {every: 4D, length: 1D} validates days 4, 8
    and 12 of the training days (the last of every four, counted from the first training time), exactly
    as the three windows written out; a later first training time moves the periods with it."""
    six_hourly = pd.date_range("1996-01-05", periods=64, freq="6h")
    def day(d: int) -> str:
        return f"{{start: '{six_hourly[4 * d]:%Y-%m-%dT%H:%M}', end: '{six_hourly[4 * d + 3]:%Y-%m-%dT%H:%M}'}}"

    train = f"data.train_times={{start: '1996-01-05', end: '{six_hourly[47]:%Y-%m-%dT%H:%M}'}}"
    _, recurring = _split(tmp_path, train, "data.valid_times={every: 4D, length: 1D}", times=six_hourly)
    _, listed = _split(tmp_path, train, f"data.valid_times=[{day(3)}, {day(7)}, {day(11)}]", times=six_hourly)
    assert recurring == listed
    assert recurring[1] == [*range(12, 16), *range(28, 32), *range(44, 48)]
    assert recurring[0] == [i for i in range(48) if i not in recurring[1]]
    _, (_, valid) = _split(tmp_path, "data.train_times={start: '1996-01-06'}",
                           "data.valid_times={every: 4D, length: 12h}", times=six_hourly)
    assert valid == [4 + k for k in range(60) if k % 16 in (14, 15)]


def test_a_recurring_window_without_times_and_bad_spans_are_refused(tmp_path):
    from xkmcast.errors import ConfigError

    six_hourly = pd.date_range("1996-01-05", periods=64, freq="6h")
    with pytest.raises(TimeCoverageError, match=r"selects none of the training times"):
        _split(tmp_path, "data.valid_times={every: 4D, length: 1h}", times=six_hourly)  # 23:00-24:00 holds none
    with pytest.raises(ConfigError, match=r"length \(5D\) must be positive and shorter than every"):
        _split(tmp_path, "data.valid_times={every: 4D, length: 5D}")
    with pytest.raises(ConfigError, match=r"every='4x' is not a time span"):
        _split(tmp_path, "data.valid_times={every: 4x, length: 1D}")


def test_a_window_without_store_times_and_a_split_without_training_times_are_refused(tmp_path):
    with pytest.raises(TimeCoverageError, match=r"data.valid_times window .*1990.* holds no time"):
        _split(tmp_path, "data.valid_times=[{start: '1990-01-01', end: '1990-01-02'}]")
    with pytest.raises(TimeCoverageError, match="No training time is left"):
        _split(tmp_path, f"data.train_times={{start: '{_iso(3)}', end: '{_iso(5)}'}}",
               f"data.valid_times={{start: '{_iso(2)}', end: '{_iso(6)}'}}")


def test_forecast_pairs_never_join_a_training_and_a_validation_time():
    """ForecastSamples on the positions of a split: a pair is formed within one set only, so no
    training target is a validation state (and the calibration's chains stop at the gaps)."""
    from xkmcast.data.samples import ForecastSamples
    from xkmcast.train.spread_steps import rollout_chains

    rng = np.random.default_rng(0)
    ds = xr.Dataset({"t2m": (("time", "y", "x"), rng.normal(size=(20, 4, 4)).astype("f4"))},
                    coords={"time": HOURS})
    valid = [3, 4, 5, 12, 13, 14, 15]
    train = [i for i in range(20) if i not in valid]
    tr, va = (ForecastSamples(ds, ["t2m"], times=t) for t in (train, valid))
    assert {(i, j) for i, j, _ in va.pairs} == {(3, 4), (4, 5), (12, 13), (13, 14), (14, 15)}
    assert all(i in train and j in train and j == i + 1 for i, j, _ in tr.pairs)
    assert len(tr.pairs) == 13 - 3  # 13 training times in 3 runs (0-2, 6-11, 16-19): one pair fewer each
    chains = [[va.pairs[k][0] for k in chain] for chain in rollout_chains(va, steps=3, max_chains=8)]
    # one chain of 3 pairs (12-15) is not enough (MIN_CHAINS): chains of 2 pairs, inside each window;
    # none crosses 5 -> 12
    assert chains == [[3, 4], [12, 13], [13, 14]]


def test_training_statistics_cover_the_training_windows_only(tmp_path_factory, tmp_path):
    """Validation days between training days: the run's normalisation is the numpy statistics of the
    times that remain (not of the span of the training windows, nor of the store)."""
    from xkmcast.data.prepare import open_store
    from xkmcast.train.setup import build_run

    store = prepared_store(tmp_path_factory)
    ds = open_store(store)
    iso = [str(t)[:19] for t in ds.time.values]
    cfg = tiny_config(store, tmp_path, f"data.valid_times=[{{start: '{iso[4]}', end: '{iso[6]}'}}, "
                                       f"{{start: '{iso[15]}', end: '{iso[16]}'}}]")
    pipeline, train_set, valid_set = build_run(cfg)
    kept = [i for i in range(ds.sizes["time"]) if i not in (4, 5, 6, 15, 16)]
    assert list(train_set.times) == kept and list(valid_set.times) == [4, 5, 6, 15, 16]
    got = pipeline.spec.stats["output"]["t2m"]
    values = ds["target_t2m"].isel(time=kept).values.astype(np.float64)
    np.testing.assert_allclose([got["mean"], got["std"]], [values.mean(), values.std()], rtol=1e-6)
    span = ds["target_t2m"].values.astype(np.float64)
    assert abs(got["std"] - span.std()) > 1e-4 * span.std()


def test_a_validation_of_single_times_has_no_forecast_pair_and_says_so():
    """A recurring window one time step long leaves every validation block a single time: no pair
    (t, t + step), refused with the times it was given and what to do."""
    from xkmcast.data.samples import ForecastSamples
    from xkmcast.train.config import RecurringWindow

    six_hourly = pd.date_range("1996-01-05", periods=32, freq="6h")
    valid = np.flatnonzero(RecurringWindow(every="2D", length="6h").mask(six_hourly)).tolist()
    assert valid == [7, 15, 23, 31]
    ds = xr.Dataset({"t2m": (("time", "y", "x"), np.zeros((32, 4, 4), "f4"))}, coords={"time": six_hourly})
    with pytest.raises(TimeCoverageError, match=r"(?s)No pair of times .*step 0 days 06:00:00; "
                                                 r"4 times from 1996-01-06 18:00:00.*length at least two time steps"):
        ForecastSamples(ds, ["t2m"], times=valid)
