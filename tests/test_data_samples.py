"""xkmcast.data.samples: shapes, normalisation, workers, distributed sampling, forecast pairs."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from xkmcast.data.prepare import open_store, prepare
from xkmcast.data.samples import DownscalingSamples, ForecastSamples
from xkmcast.data.stats import Stats
from xkmcast.data.synthetic import SyntheticWeather
from xkmcast.errors import ConfigError, MissingVariableError, TimeCoverageError
from xkmcast.fields.grid import find_grid, make_lambert_grid, make_latlon_grid

IN, OUT, INV = ["t2m", "u10m", "msl"], ["t2m", "tp"], ["orog", "lsm"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A prepared zarr store: 24 x 20 fine grid, 8 hourly times."""
    w = SyntheticWeather(5)
    times = pd.date_range("2024-07-01", periods=8, freq="1h")
    fine = w.dataset(find_grid(make_lambert_grid(20, 24, 3000.0, 38.5, -97.5)), times, ("t2m", "u10m", "tp"))
    latlon = make_latlon_grid(np.arange(39.0, 37.9, -0.25), np.arange(-98.25, -96.6, 0.25))
    coarse = w.dataset(latlon, times, ("t2m", "u10m", "msl"))
    out = tmp_path_factory.mktemp("samples") / "train.zarr"
    return prepare(fine, coarse, out, input_vars=IN, output_vars=OUT, invariants=INV, log_vars=["tp"])


@pytest.fixture(scope="module")
def raw(store):
    with open_store(store) as ds:
        return ds.load()


def _batches(loader):
    return [{k: v for k, v in b.items()} for b in loader]


def test_items_shapes_dtypes_and_values(store, raw):
    s = DownscalingSamples(store, IN, OUT, INV)
    assert len(s) == 8 and s.image_shape() == (24, 20)
    assert s.input_channels == [*IN, *INV] and s.output_channels == OUT
    item = s[3]
    assert item["input"].shape == (5, 24, 20) and item["input"].dtype == torch.float32
    assert item["target"].shape == (2, 24, 20) and item["target"].dtype == torch.float32
    assert item["time"] == 3
    # denormalising gives back the stored physical values (independent read through xarray)
    stats = Stats.from_attrs(raw)
    names = ["input_t2m", "input_u10m", "input_msl", "orog", "lsm"]
    back = stats.denormalise(item["input"].numpy(), names)
    np.testing.assert_allclose(back, np.stack([raw[n].isel(time=3).values if "time" in raw[n].dims else raw[n].values
                                               for n in names]), rtol=1e-5, atol=1e-3)
    tp = stats.denormalise(item["target"].numpy(), ["target_t2m", "target_tp"])[1]
    np.testing.assert_allclose(tp, raw.target_tp.isel(time=3).values, rtol=1e-4, atol=1e-5)


def test_normalised_over_the_set(store):
    s = DownscalingSamples(store, IN, OUT, INV[:1])
    x = torch.stack([s[i]["input"] for i in range(len(s))]).double()
    y = torch.stack([s[i]["target"] for i in range(len(s))]).double()
    for arr in (x, y):
        np.testing.assert_allclose(arr.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-5)
        np.testing.assert_allclose(arr.std(dim=(0, 2, 3), unbiased=False).numpy(), 1.0, atol=1e-5)


def test_explicit_stats_and_no_normalisation(store, raw):
    plain = DownscalingSamples(store, ["t2m"], ["t2m"], stats=False)
    np.testing.assert_array_equal(plain[1]["target"][0].numpy(), raw.target_t2m.isel(time=1).values)
    given = Stats({"input_t2m": 300.0, "target_t2m": 290.0}, {"input_t2m": 2.0, "target_t2m": 5.0})
    s = DownscalingSamples(store, ["t2m"], ["t2m"], stats=given.to_json())
    np.testing.assert_allclose(s[1]["target"][0].numpy(), (raw.target_t2m.isel(time=1).values - 290.0) / 5.0,
                               rtol=1e-6)


def test_in_memory_dataset_without_stats_computes_them(raw):
    ds = raw.copy()
    ds.attrs = {}
    s = DownscalingSamples(ds, ["t2m"], ["t2m"])
    x = torch.stack([s[i]["input"] for i in range(len(s))]).double()
    assert abs(float(x.mean())) < 1e-5 and float(x.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)


def test_time_selection(store, raw):
    assert DownscalingSamples(store, IN, OUT, times=slice(2, 5)).times.tolist() == [2, 3, 4]
    labels = DownscalingSamples(store, IN, OUT, times=slice("2024-07-01T01", "2024-07-01T03"))
    assert labels.times.tolist() == [1, 2, 3]
    assert DownscalingSamples(store, IN, OUT, times=[raw.time.values[6], raw.time.values[0]]).times.tolist() == [6, 0]
    with pytest.raises(TimeCoverageError):
        DownscalingSamples(store, IN, OUT, times=[np.datetime64("2030-01-01")])


def test_missing_variables_are_reported(store):
    with pytest.raises(MissingVariableError, match="refc"):
        DownscalingSamples(store, IN, ["refc"])


def test_training_patches_are_cut_from_the_whole_field_batch(store):
    """The one patch path: whole fields from the store, patches cut by diffusion.patching.random_patches."""
    from xkmcast.diffusion.patching import random_patches

    s = DownscalingSamples(store, IN, OUT, INV)
    assert s.image_shape() == (24, 20) and len(s) == 8
    batch = next(iter(DataLoader(s, batch_size=4)))
    cut = random_patches(batch["target"], batch["input"], (8, 12), 3, generator=torch.Generator().manual_seed(7))
    for p, (oy, ox) in enumerate(cut.offsets.tolist()):
        assert 0 <= oy <= 24 - 8 and 0 <= ox <= 20 - 12
        for b in range(4):  # patch-major rows: the pixels of item b of the batch at the offset
            torch.testing.assert_close(cut.target[p * 4 + b], s[b]["target"][:, oy:oy + 8, ox:ox + 12])
            torch.testing.assert_close(cut.condition[p * 4 + b], s[b]["input"][:, oy:oy + 8, ox:ox + 12])
        assert cut.global_index[p, 0, :, 0].tolist() == list(range(oy, oy + 8))


@pytest.mark.parametrize("context", [None, pytest.param("spawn", marks=pytest.mark.slow)])
def test_workers_give_the_same_batches(store, context):
    s = DownscalingSamples(store, IN, OUT, INV)
    s[0]  # opened in the parent before forking: workers must reopen, not share the handle
    ref = _batches(DataLoader(s, batch_size=4, num_workers=0))
    got = _batches(DataLoader(s, batch_size=4, num_workers=2, multiprocessing_context=context))
    assert len(ref) == len(got) == 2
    for a, b in zip(ref, got):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k])


def test_netcdf_store_with_workers(store, tmp_path):
    nc = tmp_path / "train.nc"
    with open_store(store) as ds:
        ds.to_netcdf(nc)
    z = DownscalingSamples(store, IN, OUT, INV)
    n = DownscalingSamples(nc, IN, OUT, INV)
    n[0]
    got = _batches(DataLoader(n, batch_size=3, num_workers=2))
    ref = _batches(DataLoader(z, batch_size=3, num_workers=0))
    for a, b in zip(ref, got):
        torch.testing.assert_close(a["input"], b["input"])
    clone = pickle.loads(pickle.dumps(n))
    assert clone._ds is None
    torch.testing.assert_close(clone[2]["target"], z[2]["target"])


def test_distributed_sampler_partitions(store):
    s = DownscalingSamples(store, IN, OUT)  # 8 items
    parts = [list(DistributedSampler(s, num_replicas=2, rank=r, shuffle=True, seed=3)) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 4
    assert set(parts[0]).isdisjoint(parts[1]) and set(parts[0]) | set(parts[1]) == set(range(8))
    loader = DataLoader(s, batch_size=4, sampler=DistributedSampler(s, num_replicas=2, rank=1, shuffle=True, seed=3))
    first = next(iter(loader))
    torch.testing.assert_close(first["input"], torch.stack([s[i]["input"] for i in parts[1][:4]]))


# ------------------------------------------------------------------------------------ forecasts


def test_forecast_pairs_are_t_and_t_plus_step(store, raw):
    f = ForecastSamples(store, ["t2m", "tp"], ["t2m", "msl"], ["orog"])
    assert len(f) == 7 and f.state_channels() == ["t2m", "tp"] and f.background_channels() == ["t2m", "msl"]
    item = f[2]
    prev, nxt = item["state"]
    assert prev.shape == nxt.shape == (2, 24, 20) and item["background"].shape == (2, 24, 20)
    assert item["invariant"].shape == (1, 24, 20) and "lead_time_label" not in item
    stats = Stats.from_attrs(raw)
    t2m = lambda t: (raw.target_t2m.isel(time=t).values - stats.mean["target_t2m"]) / stats.std["target_t2m"]  # noqa: E731
    np.testing.assert_allclose(prev[0].numpy(), t2m(2), atol=1e-5)
    np.testing.assert_allclose(nxt[0].numpy(), t2m(3), atol=1e-5)
    bg = (raw.input_msl.isel(time=2).values - stats.mean["input_msl"]) / stats.std["input_msl"]
    np.testing.assert_allclose(item["background"][1].numpy(), bg, atol=1e-5)
    nxt_bg = ForecastSamples(store, ["t2m"], ["msl"], background_at="next")[2]["background"][0].numpy()
    np.testing.assert_allclose(nxt_bg, (raw.input_msl.isel(time=3).values - stats.mean["input_msl"])
                               / stats.std["input_msl"], atol=1e-5)
    batch = next(iter(DataLoader(f, batch_size=3)))
    assert batch["state"][0].shape == (3, 2, 24, 20) and batch["time"].tolist() == [0, 1, 2]


def test_forecast_step_and_gaps(raw):
    gappy = raw.isel(time=[0, 1, 2, 4, 5, 7])  # hours 3 and 6 are missing
    f1 = ForecastSamples(gappy, ["t2m"])
    times = gappy.time.values
    hours = [((times[i] - times[0]) // np.timedelta64(1, "h"), (times[j] - times[0]) // np.timedelta64(1, "h"))
             for i, j, _ in f1.pairs]
    assert hours == [(0, 1), (1, 2), (4, 5)]
    f2 = ForecastSamples(gappy, ["t2m"], step="2h")
    assert [(i, j) for i, j, _ in f2.pairs] == [(0, 2), (2, 3), (4, 5)]  # 0->2 h, 2->4 h, 5->7 h
    assert f2.pairs == ForecastSamples(gappy, ["t2m"], step=2).pairs
    plain = ForecastSamples(gappy, ["t2m"], step=2, stats=False)[1]["state"]
    np.testing.assert_array_equal(plain[0][0].numpy(), gappy.target_t2m.isel(time=2).values)  # 2 h
    np.testing.assert_array_equal(plain[1][0].numpy(), gappy.target_t2m.isel(time=3).values)  # 4 h
    with pytest.raises(TimeCoverageError) as gap:
        ForecastSamples(gappy, ["t2m"], step="12h")
    assert "not evenly spaced" not in str(gap.value)  # one of its spacings is a step: only too few times


def test_times_of_calendar_years_are_told_to_be_uneven(raw):
    """Winter means labelled at 365- and 366-day spacings (the median spacing as the step): no pair is
    one step apart, and the error says why and how to step one record time at a time."""
    years = pd.to_datetime(["1948-01-15", "1949-01-15", "1950-01-15", "1951-01-15", "1952-01-15", "1953-01-15"])
    yearly = raw.isel(time=range(6)).assign_coords(time=years)
    with pytest.raises(TimeCoverageError, match=r"(?s)not evenly spaced.*spacings from 365 days .* to 366 days"
                                                r".*label the times at a fixed spacing"):
        ForecastSamples(yearly, ["t2m"], step=pd.Timedelta("365D 06:00:00"))


def test_forecast_lead_time_labels(store):
    f = ForecastSamples(store, ["t2m"], lead_time_steps=3)
    assert len(f) == 7 + 6 + 5
    labels = [f[i]["lead_time_label"] for i in range(len(f))]
    assert sorted(set(labels)) == [0, 1, 2]
    for index, (i, j, k) in enumerate(f.pairs):
        assert j - i == k and labels[index] == k - 1
    assert f[0]["background"].shape == (0, 24, 20)


def test_a_small_store_is_read_into_memory_once_with_the_same_items(tmp_path):
    """Items of an in-memory store equal those read chunk by chunk (DownscalingSamples, ForecastSamples)."""
    from xkmcast.data.prepare import prepare
    from xkmcast.data.samples import DownscalingSamples, ForecastSamples
    from xkmcast.data.synthetic import synthetic_pair

    coarse, fine = synthetic_pair(nx=16, ny=16, factor=4, times=5, seed=3)
    path = prepare(fine, coarse, tmp_path / "s.zarr", input_vars=["t2m", "msl"], output_vars=["t2m"],
                   invariants=["orog"], regrid_method="nearest")
    for cls, args in ((DownscalingSamples, (["t2m", "msl"], ["t2m"], ["orog"])), (ForecastSamples, (["t2m"], ["msl"], ["orog"]))):
        fast, slow = cls(path, *args), cls(path, *args, in_memory=False)
        a, b = fast[1], slow[1]
        assert fast._open()["target_t2m"].variable._in_memory and not slow._open()["target_t2m"].variable._in_memory
        for key in a:
            left, right = (a[key], b[key]) if key != "state" else (torch.cat(a[key]), torch.cat(b[key]))
            assert torch.equal(torch.as_tensor(left), torch.as_tensor(right)), key
