"""The members' spread by activity: the initial state's change over the step before it, over the
validation times' RMS change (:mod:`xkmcast.train.spread_activity`), applied by the forecast path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from _nets import randomise
from _tiny import FINE_SHAPE, STATE_VARS, tiny_stormcast

from xkmcast.data.samples import ForecastSamples
from xkmcast.models.stormcast import activity_factor, state_activity
from xkmcast.train.spread_activity import activity_reference


def test_activity_is_the_rms_change_and_the_factor_its_ratio_to_the_reference():
    g = torch.Generator().manual_seed(0)
    state = torch.randn(2, 3, 5, 4, generator=g)
    change = torch.tensor([0.5, -2.0, 0.0]).reshape(1, 3, 1, 1) * torch.ones(2, 3, 5, 4)
    change[1, 0] = torch.arange(20.0).reshape(5, 4)  # RMS sqrt(mean k^2), k = 0..19
    previous = state - change
    previous[0, 1, 2, 3] = float("nan")  # left out: the other 19 points
    got = state_activity(state, previous).numpy()
    np.testing.assert_allclose(got[0], [0.5, 2.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(got[1], [np.sqrt(np.mean(np.arange(20.0) ** 2)), 2.0, 0.0], rtol=1e-6)
    f = activity_factor(state, previous, [0.25, 4.0, 0.0])  # a reference 0: factor 1
    assert f.shape == (2, 3, 1, 1) and f.dtype == state.dtype
    np.testing.assert_allclose(f[0, :, 0, 0].numpy(), [2.0, 0.5, 1.0], rtol=1e-6)


def _states(times: list[int], seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    t = pd.Timestamp("2024-01-01") + pd.to_timedelta(times, "h")
    data = {v: (("time", "y", "x"), rng.normal(scale=1 + i, size=(len(t), *FINE_SHAPE)).astype(np.float32))
            for i, v in enumerate(STATE_VARS)}
    return xr.Dataset(data, coords={"time": t})


def test_the_reference_is_the_rms_change_over_the_samples_with_a_predecessor():
    """Hours 0, 1, 2, 4, 5, 6: pairs 0-1, 1-2, 4-5, 5-6; those starting at 1 and 5 have the state an
    hour before them (the gap at 3 breaks the chain), so r_c = sqrt(mean(a_c(1, 0)^2, a_c(5, 4)^2))."""
    ds = _states([0, 1, 2, 4, 5, 6])
    data = ForecastSamples(ds, STATE_VARS, stats=False, step="1h")
    x = np.stack([ds[v].values for v in STATE_VARS], axis=1).astype(np.float64)  # (T, C, H, W)
    a2 = [((x[i] - x[i - 1]) ** 2).mean(axis=(1, 2)) for i in (1, 4)]  # positions of hours 1 and 5
    np.testing.assert_allclose(activity_reference(data), np.sqrt(np.mean(a2, axis=0)), rtol=1e-6)
    assert activity_reference(ForecastSamples(ds.isel(time=[0, 1, 2]), STATE_VARS, stats=False, step="1h")) is None


def _spread_model(seed: int):
    pipe = tiny_stormcast()
    randomise(pipe, seed=seed)  # real weights: the members spread
    pipe.spec.extra["centre_members"] = True
    return pipe


def test_a_step_multiplies_the_members_spread_by_the_factor():
    pipe = _spread_model(31)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, len(STATE_VARS), *FINE_SHAPE, generator=g).expand(4, -1, -1, -1)
    bg = torch.randn(1, 1, *FINE_SHAPE, generator=g).expand(4, -1, -1, -1)
    base, spread = pipe.step_parts(x, bg, seeds=[1, 2, 3, 4])
    assert spread.abs().mean() > 1e-3
    f = torch.tensor([0.5, 3.0, 1.0]).reshape(1, 3, 1, 1)
    got = pipe.step(x, bg, seeds=[1, 2, 3, 4], spread_factor=f)
    torch.testing.assert_close(got, base + f * spread, rtol=1e-5, atol=1e-6)


def test_the_forecast_reads_the_state_before_and_scales_every_step():
    """A model with a spread by activity scales the members of each initial time that has the state one
    step before by the factor of those two states (computed here from the normalised states): the same
    seeds without the reference give the unscaled members; an initial time without that state is
    forecast unscaled, with a warning."""
    from _tiny import coarse_dataset, state_dataset

    pipe = _spread_model(32)
    ds, bg = state_dataset(3, seed=4), coarse_dataset(4)
    plain = ds.kmcast.forecast(pipe, steps=2, background=bg, members=4, regrid_method="nearest")
    reference = [0.3, 2.0, 1.0]
    pipe.spec.extra["spread_by_activity"] = reference
    assert pipe.history == 2
    with pytest.warns(UserWarning, match="1 of 3 initial times lack the state"):
        scaled = ds.kmcast.forecast(pipe, steps=2, background=bg, members=4, regrid_method="nearest")
    np.testing.assert_array_equal(scaled["init_time"].values, ds["time"].values)
    xr.testing.assert_allclose(scaled.isel(init_time=0), plain.isel(init_time=0))  # hour 0: nothing before it
    stats = pipe.stats_for("output")
    norm = lambda f: torch.from_numpy(stats.normalise(np.stack([f[v].values for v in STATE_VARS], axis=-3),  # noqa: E731
                                                      STATE_VARS, axis=-3).astype(np.float32))
    for i, t0 in enumerate(scaled["init_time"].values[1:], start=1):
        x0, before = norm(ds.sel(time=t0)), norm(ds.sel(time=t0 - np.timedelta64(1, "h")))
        f = activity_factor(x0[None], before[None], reference)
        s, p = norm(scaled.isel(init_time=i, lead_time=1)), norm(plain.sel(init_time=t0).isel(lead_time=1))
        # the same draws: the scaled members' departures from their mean are f times the plain ones'
        torch.testing.assert_close(s - s.mean(0), f * (p - p.mean(0)), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(s, p)


def test_a_resumed_stream_keeps_each_initial_times_factor(tmp_path):
    """Streamed to zarr and interrupted after lead 1, the resumed forecast takes the factor from the
    input's states again and equals the uninterrupted one."""
    from _tiny import coarse_dataset, state_dataset

    pipe = _spread_model(33)
    pipe.spec.extra["spread_by_activity"] = [0.3, 2.0, 1.0]
    ds, bg = state_dataset(3, seed=5).isel(time=[1, 2]), coarse_dataset(5)
    with pytest.warns(UserWarning, match="lack the state"):  # hour 1's state before is not in ds
        whole = ds.kmcast.forecast(pipe, steps=3, background=bg, members=3, regrid_method="nearest")
    store = tmp_path / "fc.zarr"
    with pytest.warns(UserWarning, match="lack the state"):
        ds.kmcast.forecast(pipe, steps=3, background=bg, members=3, regrid_method="nearest", output=store)
    xr.Dataset({"completed": (("init_time", "lead_time"), np.zeros((2, 2), np.int8))}).to_zarr(
        store, region={"init_time": slice(0, 2), "lead_time": slice(2, 4)}, consolidated=False)
    with pytest.warns(UserWarning, match="lack the state"):
        resumed = ds.kmcast.forecast(pipe, steps=3, background=bg, members=3, regrid_method="nearest", output=store)
    xr.testing.assert_allclose(resumed[list(whole.data_vars)].load(), whole, rtol=1e-5, atol=1e-5)
    plain = dict(pipe.spec.extra)
    plain.pop("spread_by_activity")
    pipe.spec.extra = plain
    unscaled = ds.kmcast.forecast(pipe, steps=3, background=bg, members=3, regrid_method="nearest")
    assert not np.allclose(unscaled["t2m"].isel(init_time=1).values, whole["t2m"].isel(init_time=1).values)


def test_named_initial_times_read_the_states_before_them_from_the_input(tmp_path):
    """``init_times`` picks the initial times; the state before each comes from the input all the same
    (no warning), so the members equal those of the forecast from every time; ``--times`` of the command
    line is that selection; a time the input lacks is refused."""
    import warnings

    from _tiny import coarse_dataset, state_dataset
    from typer.testing import CliRunner

    from xkmcast.cli import app
    from xkmcast.errors import TimeCoverageError
    from xkmcast.models.bundle import save_bundle

    pipe = _spread_model(34)
    pipe.spec.extra["spread_by_activity"] = [0.3, 2.0, 1.0]
    ds, bg = state_dataset(3, seed=6), coarse_dataset(5)
    t = ds["time"].values
    with pytest.warns(UserWarning, match="1 of 3 initial times lack the state"):
        every = ds.kmcast.forecast(pipe, steps=2, background=bg, members=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # hours 1 and 2 have the hour before them
        named = ds.kmcast.forecast(pipe, steps=2, background=bg, members=3, init_times=[t[2]])
        sliced = ds.kmcast.forecast(pipe, steps=2, background=bg, members=3, init_times=slice(t[1], t[2]))
    xr.testing.assert_allclose(named, every.isel(init_time=[2]), rtol=1e-6, atol=1e-6)
    xr.testing.assert_allclose(sliced, every.isel(init_time=[1, 2]), rtol=1e-6, atol=1e-6)
    with pytest.warns(UserWarning, match="1 of 1 initial times lack the state"):  # not in the input: unscaled
        alone = ds.isel(time=[2]).kmcast.forecast(pipe, steps=2, background=bg, members=3)
    assert not np.allclose(alone["t2m"].values, named["t2m"].values)
    with pytest.raises(TimeCoverageError, match="not times of the input state"):
        ds.kmcast.forecast(pipe, steps=1, background=bg, init_times="2030-01-01T00")

    save_bundle(pipe, tmp_path / "model")
    ds.to_netcdf(tmp_path / "state.nc")
    bg.to_netcdf(tmp_path / "coarse.nc")
    out = tmp_path / "fc.nc"
    result = CliRunner().invoke(app, ["forecast", str(tmp_path / "model"), str(tmp_path / "state.nc"), str(out),
                                      "--background", str(tmp_path / "coarse.nc"), "--steps", "2", "--members", "3",
                                      "--times", str(t[2])[:16], "--quiet"])
    assert result.exit_code == 0, result.output
    with xr.open_dataset(out) as got:
        xr.testing.assert_allclose(got[list(named.data_vars)].load(), named, rtol=1e-5, atol=1e-5)
