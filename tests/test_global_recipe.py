"""A global latitude / longitude case end to end, as a user runs it: the `corrdiff-cpu` recipe on a
global fine grid (descending latitude reaching +-86, periodic longitude 0..356) and a coarse global
input in the -180..180 convention whose rows stop at +-78, then downscale, score and plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

import xkmcast
from xkmcast.cli import app

TIMES = pd.date_range("2024-01-01", periods=40, freq="6h")


def _field(lat, lon, times, seed):
    """t2m and u10m: a zonal mean, a travelling wave 3 and noise; the same law on both grids."""
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    phase = np.arange(times.size)[:, None, None] * 0.3
    rng = np.random.default_rng(seed)
    t2m = 260 + 35 * np.cos(la) + 4 * np.cos(la) * np.sin(3 * lo - phase) + 0.2 * rng.normal(size=(times.size, *la.shape))
    u10m = 8 * np.sin(2 * la) + 3 * np.cos(la) * np.cos(3 * lo - phase) + 0.2 * rng.normal(size=(times.size, *la.shape))
    return xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), t2m.astype("float32"), {"units": "K"}),
         "u10m": (("time", "latitude", "longitude"), u10m.astype("float32"), {"units": "m s-1"})},
        coords={"time": times, "latitude": ("latitude", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                "longitude": ("longitude", lon, {"standard_name": "longitude", "units": "degrees_east"})})


@pytest.mark.slow
@pytest.mark.parametrize("patch", [[], ["data.patch=[32,48]"]], ids=["whole", "patched"])
def test_a_global_case_runs_the_recipe_downscale_score_and_plot(tmp_path, patch):
    """``patched``: both stages train on patches (the regression on windows with a halo, wrapping
    around the dateline); inference is whole-field for the regression, patched for the diffusion."""
    fine = _field(np.arange(86.0, -87.0, -4.0), np.arange(0.0, 360.0, 4.0), TIMES, seed=1)  # 44 x 90
    coarse = _field(np.arange(-78.0, 79.0, 12.0), np.arange(-180.0, 180.0, 12.0), TIMES, seed=2)  # 14 x 30
    fine.to_netcdf(tmp_path / "fine.nc")
    coarse.to_netcdf(tmp_path / "coarse.nc")
    torch.set_num_threads(1)
    result = CliRunner().invoke(app, [
        "train", "corrdiff-cpu", f"data.source={tmp_path / 'fine.nc'}", f"data.coarse={tmp_path / 'coarse.nc'}",
        "data.train_times={start: '2024-01-01T00:00', end: '2024-01-08T00:00'}", "data.invariants=[]",
        "training.time_budget=8", f"training.outdir={tmp_path / 'runs'}", *patch, "--quiet"])
    assert result.exit_code == 0, result.output
    model = xkmcast.load_model(tmp_path / "runs" / "corrdiff-cpu" / "0" / "model")
    assert model.spec.grid["periodic_x"] is True
    if patch:  # the regression bundle it was trained from recorded its windows
        reg = xkmcast.load_model(tmp_path / "runs" / "corrdiff-cpu" / "0" / "regression" / "0" / "model")
        assert reg.spec.extra["regression_patch"]["shape"] == [32, 48]

    held_out = coarse.isel(time=slice(-3, None))
    out = held_out.kmcast.downscale(model, members=2, num_steps=2)
    # the polar rows (86 N / S lie beyond the coarse rows at 78) are filled, not refused or NaN
    assert out["t2m"].dims == ("member", "time", "latitude", "longitude")
    np.testing.assert_array_equal(out.latitude.values, fine.latitude.values)
    np.testing.assert_array_equal(out.longitude.values, fine.longitude.values)
    assert np.isfinite(out["t2m"].values).all() and np.isfinite(out["u10m"].values).all()

    truth = fine.sel(time=held_out.time)
    scores = out.kmcast.score(truth)
    assert set(scores.variable.values) >= {"t2m", "u10m"}
    mae = float(scores.mae.sel(variable="t2m"))
    assert np.isfinite(mae) and mae < 10.0  # K: a downscaled field, not a broadcast or a unit slip

    fig = out.kmcast.plot.map("t2m", member=0, time=0, path=tmp_path / "map.png")
    assert (tmp_path / "map.png").stat().st_size > 10_000 and fig is not None
