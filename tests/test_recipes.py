"""One-command CPU recipes: `xkmcast train corrdiff-cpu data.source=FINE data.coarse=COARSE ...`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import xkmcast
from xkmcast.cli import app
from xkmcast.train.config import load_config
from xkmcast.train.recipe import available_variables

runner = CliRunner()


def test_available_variables_name_what_the_sample_holds():
    fine = xkmcast.open_dataset("sample", part="target")
    assert available_variables(fine) == [v for v in available_variables(fine) if v not in ("orog", "lsm")]
    assert {"t2m", "u10m", "v10m"} <= set(available_variables(fine))
    assert set(available_variables(fine, static=True)) == {"orog", "lsm"}


def test_the_recipe_presets_validate_without_variables():
    cfg = load_config("corrdiff-cpu", ["data.source=x.nc", "data.coarse=y.nc", "training.time_budget=10m"])
    assert cfg.training.stages == ["regression", "diffusion"] and cfg.training.time_budget == 600
    assert cfg.data.output_vars == [] and cfg.model.input_skip is True


@pytest.mark.slow
def test_corrdiff_cpu_trains_both_stages_into_one_bundle(tmp_path):
    fine = xkmcast.open_dataset("sample", part="target")
    coarse = xkmcast.open_dataset("sample", part="input")
    fine.to_netcdf(tmp_path / "fine.nc")
    coarse.to_netcdf(tmp_path / "coarse.nc")
    torch.set_num_threads(1)
    args = ["train", "corrdiff-cpu", f"data.source={tmp_path / 'fine.nc'}", f"data.coarse={tmp_path / 'coarse.nc'}",
            "data.train_times={start: '2024-07-01T00:00', end: '2024-07-02T11:00'}", "training.time_budget=6",
            f"training.outdir={tmp_path / 'runs'}", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "corrdiff-cpu" / "0"
    assert f"model bundle: {root / 'model'}" in result.output
    model = xkmcast.load_model(root / "model")
    regression = xkmcast.load_model(root / "regression" / "0" / "model")
    assert set(model.stages) == {"regression", "diffusion"} and set(regression.stages) == {"regression"}
    for a, b in zip(model.stages["regression"].state_dict().values(), regression.stages["regression"].state_dict().values()):
        assert torch.equal(a, b)
    assert model.spec.output_vars == available_variables(fine)
    assert model.spec.input_vars == [v for v in available_variables(coarse) if v not in ("orog", "lsm")]
    assert model.spec.invariant_vars == ["orog", "lsm"]
    assert len(model.spec.extra["residual_scale"]) == len(model.spec.output_vars)
    # members are drawn with the scale of the regression's error on the validation times: the last
    # 10 % of the training window (4 of its 36 hours) validate
    assert len(model.spec.extra["sample_scale"]) == len(model.spec.output_vars)
    # the normalisation is that of the training times
    t2m = fine["t2m"].sel(time=slice("2024-07-01T00:00", "2024-07-02T07:00")).values.astype(np.float64)
    got = model.spec.stats["output"]["t2m"]
    np.testing.assert_allclose([got["mean"], got["std"]], [t2m.mean(), t2m.std()], rtol=1e-5)
    out = coarse.isel(time=[-1]).kmcast.downscale(model, members=2, num_steps=2)
    assert out["t2m"].sizes["member"] == 2 and np.isfinite(out["t2m"].values).all()
    # the same command again resumes: both stages are finished, the bundle is exported again
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output


@pytest.mark.slow
def test_stormcast_cpu_trains_a_state_only_forecaster(tmp_path):
    state = xkmcast.open_dataset("sample", part="target")[["t2m", "u10m", "v10m", "orog", "lsm"]]
    state.to_netcdf(tmp_path / "state.nc")
    torch.set_num_threads(1)
    result = runner.invoke(app, ["train", "stormcast-cpu", f"data.source={tmp_path / 'state.nc'}",
                                 "training.time_budget=6", f"training.outdir={tmp_path / 'runs'}", "--quiet"])
    assert result.exit_code == 0, result.output
    model = xkmcast.load_model(tmp_path / "runs" / "stormcast-cpu" / "0" / "model")
    assert set(model.stages) == {"regression", "diffusion"} and model.spec.background_vars == []
    assert model.spec.time_step == "1h" and model.spec.extra["input_skip"] is True
    # the spread is calibrated at each of the first 3 steps of rollouts along the validation times
    gains = model.spec.extra["step_spread_gain"]
    assert len(gains) == 3 and gains[0] == [1.0] * 3 and all(g >= 0 for row in gains for g in row)
    out = state.isel(time=[0]).kmcast.forecast(model, steps=3, members=2, num_steps=2)
    assert out["t2m"].sizes["member"] == 2 and np.isfinite(out["t2m"].values).all()
