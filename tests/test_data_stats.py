"""xkmcast.data.stats: statistics against numpy, one dask compute, log transform, JSON."""

from __future__ import annotations

import json

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback

from xkmcast.data.stats import (
    Stats,
    as_stats,
    compute_stats,
    denormalise,
    denormalise_array,
    normalise,
    normalise_array,
)
from xkmcast.errors import InvalidDataError, MissingVariableError


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    t2m = 280 + 5 * rng.normal(size=(6, 8, 10))
    tp = rng.gamma(0.3, 2.0, size=(6, 8, 10)) * (rng.random((6, 8, 10)) > 0.6)
    orog = rng.uniform(0, 2000, size=(8, 10))
    ds = xr.Dataset({"t2m": (("time", "y", "x"), t2m), "tp": (("time", "y", "x"), tp),
                     "orog": (("y", "x"), orog), "lsm": (("y", "x"), np.ones((8, 10)))})
    return ds.chunk({"time": 2})


class _CountComputes(Callback):
    def __init__(self):
        super().__init__()
        self.n = 0

    def _start(self, dsk):
        self.n += 1


def test_stats_equal_numpy_in_one_compute(data):
    with _CountComputes() as counter:
        stats = compute_stats(data, log_vars=["tp"], eps=0.5)
    assert counter.n == 1
    t2m = data.t2m.values
    assert stats.mean["t2m"] == pytest.approx(np.mean(t2m), rel=1e-12)
    assert stats.std["t2m"] == pytest.approx(np.std(t2m), rel=1e-10)  # population std, ddof=0
    z = np.log1p(data.tp.values / 0.5)
    assert stats.mean["tp"] == pytest.approx(z.mean(), rel=1e-12)
    assert stats.std["tp"] == pytest.approx(z.std(), rel=1e-10)
    assert stats.mean["orog"] == pytest.approx(data.orog.values.mean(), rel=1e-12)
    assert stats.std["lsm"] == 0.0


def test_stats_over_chosen_dims(data):
    stats = compute_stats(data, ["t2m"], dims=["time", "y", "x"])
    assert stats.names == ["t2m"]
    with pytest.raises(MissingVariableError):
        compute_stats(data, ["nope"])
    with pytest.raises(MissingVariableError):
        compute_stats(data, ["t2m"], log_vars=["tp"])


def test_normalise_dataset_is_lazy_and_standardises(data):
    stats = compute_stats(data, log_vars=["tp"])
    with _CountComputes() as counter:
        normed = normalise(data, stats)
    assert counter.n == 0 and isinstance(normed.t2m.data, da.Array)
    n = normed.compute()
    for v in ("t2m", "tp", "orog"):
        assert float(n[v].mean()) == pytest.approx(0.0, abs=1e-9)
        assert float(n[v].std()) == pytest.approx(1.0, rel=1e-9)
    np.testing.assert_array_equal(n.lsm.values, 0.0)  # constant: x - mean, divided by 1
    back = denormalise(n, stats)
    for v in data.data_vars:
        np.testing.assert_allclose(back[v].values, data[v].values, rtol=1e-10, atol=1e-10)


def test_log_transform_formula_and_round_trip():
    x = np.array([0.0, 1e-4, 0.05, 0.1, 1.0, 10.0, 250.0])
    stats = Stats({"tp": 0.3}, {"tp": 0.7}, {"tp": 0.1})
    n = normalise_array(x[None], ["tp"], stats)
    np.testing.assert_allclose(n[0], (np.log1p(x / 0.1) - 0.3) / 0.7, rtol=1e-12)
    np.testing.assert_allclose(denormalise_array(n, ["tp"], stats)[0], x, rtol=1e-12, atol=1e-15)
    # small negative values (interpolation artefacts) map like zero
    assert normalise_array(np.array([[-0.01]]), ["tp"], stats)[0, 0] == pytest.approx(-0.3 / 0.7)


def test_array_channel_axis_and_dtype():
    stats = Stats({"a": 1.0, "b": -2.0}, {"a": 2.0, "b": 4.0})
    arr = np.arange(2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 4)  # (member, time, channel, x)
    n = normalise_array(arr, ["a", "b"], stats, channel_axis=2)
    assert n.dtype == np.float32 and n.shape == arr.shape
    np.testing.assert_allclose(n[:, :, 0], (arr[:, :, 0] - 1.0) / 2.0)
    np.testing.assert_allclose(n[:, :, 1], (arr[:, :, 1] + 2.0) / 4.0)
    np.testing.assert_allclose(denormalise_array(n, ["a", "b"], stats.to_dict(), channel_axis=2), arr, rtol=1e-6)
    with pytest.raises(InvalidDataError):
        normalise_array(arr, ["a"], stats, channel_axis=2)


def test_dataarray_by_name(data):
    stats = compute_stats(data)
    out = normalise(data.t2m, stats)
    np.testing.assert_allclose(out.values, (data.t2m.values - stats.mean["t2m"]) / stats.std["t2m"])
    assert out.name == "t2m"


def test_json_round_trip(tmp_path, data):
    stats = compute_stats(data, log_vars={"tp": 0.2})
    text = stats.to_json(tmp_path / "stats.json")
    doc = json.loads(text)
    assert doc["tp"] == {"mean": stats.mean["tp"], "std": stats.std["tp"], "transform": "log1p", "eps": 0.2}
    assert doc["t2m"] == {"mean": stats.mean["t2m"], "std": stats.std["t2m"]}
    for again in (Stats.from_json(text), Stats.from_json(tmp_path / "stats.json"), as_stats(doc),
                  as_stats(str(tmp_path / "stats.json"))):
        assert again == stats
    with pytest.raises(InvalidDataError):
        Stats.from_dict({"t2m": {"mean": 1.0}})
    with pytest.raises(InvalidDataError):
        Stats.from_dict({"t2m": {"mean": 1.0, "std": 1.0, "transform": "cube"}})


def test_subset_rename_merge_and_missing():
    s = Stats({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 1.0}, {"b": 0.1})
    assert s.subset(["b"]).to_dict() == {"b": {"mean": 2.0, "std": 1.0, "transform": "log1p", "eps": 0.1}}
    r = s.rename({"b": "input_b"})
    assert r.names == ["a", "input_b"] and r.log_eps == {"input_b": 0.1}
    assert s.merge(Stats({"c": 3.0}, {"c": 1.0})).names == ["a", "b", "c"]
    with pytest.raises(MissingVariableError):
        s.arrays(["a", "zzz"])


def test_works_without_dask():
    ds = xr.Dataset({"v": ("x", np.array([1.0, 2.0, 3.0, 4.0]))})
    stats = compute_stats(ds)
    assert stats.mean["v"] == 2.5 and stats.std["v"] == pytest.approx(np.std([1, 2, 3, 4]))
    with dask.config.set(scheduler="sync"):
        assert compute_stats(ds.chunk({"x": 2})) == stats
