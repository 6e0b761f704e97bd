"""One-command CPU recipes: `xkmcast train corrdiff-cpu data.source=FINE data.coarse=COARSE ...`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

import xkmcast
from xkmcast.cli import app
from xkmcast.train.config import load_config
from xkmcast.train.recipe import WINDOW_PIXELS, auto_window, available_variables

runner = CliRunner()


def test_available_variables_name_what_the_sample_holds():
    fine = xkmcast.open_dataset("sample", part="target")
    assert available_variables(fine) == [v for v in available_variables(fine) if v not in ("orog", "lsm")]
    assert {"t2m", "u10m", "v10m"} <= set(available_variables(fine))
    assert set(available_variables(fine, static=True)) == {"orog", "lsm"}


def _z_on_a_level(level_dim: bool) -> xr.Dataset:
    """NCEP's winter 500 hPa heights as the eofs package ships them: z (time, pressure=1, lat, lon), or
    z (time, lat, lon) without the level dim (then it is surface geopotential by its name)."""
    rng = np.random.default_rng(3)
    z = 5500 + rng.normal(0, 50, (4, 1, 3, 5))
    coords = {"time": pd.date_range("1948-01-15", periods=4, freq="365D"),
              "latitude": ("latitude", [60.0, 62.5, 65.0], {"units": "degrees_north"}),
              "longitude": ("longitude", np.arange(0.0, 12.5, 2.5), {"units": "degrees_east"})}
    if level_dim:
        coords["pressure"] = ("pressure", [500.0], {"units": "hPa"})
        z_var = (("time", "pressure", "latitude", "longitude"), z, {"units": "m", "standard_name": "geopotential_height"})
    else:
        z_var = (("time", "latitude", "longitude"), z[:, 0] * 9.80665, {"units": "m2 s-2"})
    return xr.Dataset({"z": z_var}, coords=coords)


def test_a_variable_on_a_level_dimension_is_named_by_its_level():
    """z on a pressure dim holding 500 hPa is z500 (found, the level selected, heights to geopotential),
    not the surface geopotential its name alone would say; without the dim it is the surface z."""
    from xkmcast.fields.variables import get_variable

    ds = _z_on_a_level(True)
    assert available_variables(ds) == ["z500"]
    z500 = get_variable(ds, "z500")
    assert z500.dims == ("time", "latitude", "longitude")
    np.testing.assert_allclose(z500.values, ds["z"].values[:, 0] * 9.80665)
    with pytest.raises(xkmcast.errors.MissingVariableError):
        get_variable(ds, "z")
    assert available_variables(_z_on_a_level(False)) == ["z"]


def test_cmor_near_surface_fields_with_their_height_dim_are_the_surface_variables():
    """CMOR writes tas (time, height=2 m, y, x) and uas (time, height=10 m, y, x) (EURO-CORDEX): the size-1
    height dim (standard_name height) is the field's own height, dropped, not a level that hides it; a
    height dim of two values stays a level dim (the surface name is then not found)."""
    from xkmcast.fields.variables import get_variable, select_variables

    rng = np.random.default_rng(0)

    def cmor(name, standard, height, heights=1):
        coords = {"height": ("height", [height] * heights if heights == 1 else [2.0, 10.0],
                             {"standard_name": "height", "units": "m", "positive": "up", "axis": "Z"}),
                  "time": ("time", pd.date_range("2006-01-16T12", periods=2, freq="MS"))}
        values = rng.normal(280 if name == "tas" else 0, 3, (2, heights, 3, 4))
        return xr.Dataset({name: (("time", "height", "rlat", "rlon"), values, {"standard_name": standard, "units": "K" if name == "tas" else "m s-1"})}, coords=coords)

    tas, uas = cmor("tas", "air_temperature", 2.0), cmor("uas", "eastward_wind", 10.0)
    assert available_variables(tas) == ["t2m"]
    t2m = get_variable(tas, "t2m")
    assert t2m.dims == ("time", "rlat", "rlon") and "height" not in t2m.coords
    np.testing.assert_array_equal(t2m.values, tas.tas.values[:, 0])
    # the two files merged (their heights as two dims): each its own surface field, no height left
    got = select_variables(xr.merge([tas.rename(height="height2"), uas.rename(height="height10")]), ["t2m", "u10m"])
    assert got.t2m.dims == got.u10m.dims == ("time", "rlat", "rlon")
    np.testing.assert_array_equal(got.u10m.values, uas.uas.values[:, 0])
    with pytest.raises(xkmcast.errors.MissingVariableError):
        get_variable(cmor("tas", "air_temperature", 2.0, heights=2), "t2m")


def test_the_recipe_presets_validate_without_variables():
    cfg = load_config("corrdiff-cpu", ["data.source=x.nc", "data.coarse=y.nc", "training.time_budget=10m"])
    assert cfg.training.stages == ["regression", "diffusion"] and cfg.training.time_budget == 600
    assert cfg.data.output_vars == [] and cfg.model.input_skip is True


@pytest.mark.slow
def test_corrdiff_cpu_trains_both_stages_into_one_bundle(tmp_path):
    fine = xkmcast.open_dataset("sample", part="target")
    coarse = xkmcast.open_dataset("sample", part="input")
    (tmp_path / "fine").mkdir()  # the fine source as a folder of daily files (not a zarr store)
    for day, part in fine.groupby("time.day"):
        part.to_netcdf(tmp_path / "fine" / f"fine_{day:02d}.nc")
    coarse.to_netcdf(tmp_path / "coarse.nc")
    torch.set_num_threads(1)
    args = ["train", "corrdiff-cpu", f"data.source={tmp_path / 'fine'}", f"data.coarse={tmp_path / 'coarse.nc'}",
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
    # a downscaling run has no rollouts: its log says nothing of their step gains
    assert "members' spread calibrated on the validation times" in result.output and "rollout" not in result.output
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
@pytest.mark.parametrize("window", [[], ["data.patch=[24,32]", "model.sampler={num_steps: 4}"]], ids=["whole", "windows"])
def test_stormcast_cpu_trains_a_state_only_forecaster(tmp_path, window):
    """``windows``: the regression on windows and the diffusion on patches, as the recipe does on a large
    grid (its empty background cut too); its export calibrates with a 4-step sampler (12 patches per
    denoising step: the calibration was most of the test's 80 s)."""
    state = xkmcast.open_dataset("sample", part="target")[["t2m", "u10m", "v10m", "orog", "lsm"]]
    state.to_netcdf(tmp_path / "state.nc")
    torch.set_num_threads(1)
    result = runner.invoke(app, ["train", "stormcast-cpu", f"data.source={tmp_path / 'state.nc'}",
                                 "training.time_budget=6", f"training.outdir={tmp_path / 'runs'}", *window, "--quiet"])
    assert result.exit_code == 0, result.output
    model = xkmcast.load_model(tmp_path / "runs" / "stormcast-cpu" / "0" / "model")
    regression = xkmcast.load_model(tmp_path / "runs" / "stormcast-cpu" / "0" / "regression" / "0" / "model")
    assert regression.spec.extra.get("regression_patch", {}).get("shape") == ([24, 32] if window else None)
    assert model.spec.patch == ([24, 32] if window else None)  # the diffusion patched too
    assert set(model.stages) == {"regression", "diffusion"} and model.spec.background_vars == []
    assert model.spec.time_step == "1h" and model.spec.extra["input_skip"] is True
    # the spread is calibrated at each of the first 3 steps of rollouts along the validation times
    gains = model.spec.extra["step_spread_gain"]
    assert len(gains) == 3 and gains[0] == [1.0] * 3 and all(g >= 0 for row in gains for g in row)
    # and scaled by the initial state's change over the hour before it (model.spread_by_activity)
    reference = model.spec.extra["spread_by_activity"]
    assert len(reference) == 3 and all(r > 0 for r in reference) and model.history == 2
    with pytest.warns(UserWarning, match="lack the state"):  # one initial state: forecast, unscaled
        out = state.isel(time=[0]).kmcast.forecast(model, steps=3, members=2, num_steps=2)
    assert out["t2m"].sizes["member"] == 2 and np.isfinite(out["t2m"].values).all()


@pytest.mark.parametrize("shape, window", [((200, 400), [112, 144]), ((180, 360), [96, 128]), ((100, 1000), [32, 512]),
                                           ((448, 448), [96, 96]), ((20, 4000), [16, 1008]), ((10, 5000), [10, 1008]),
                                           ((70, 144), None), ((181, 181), None), ((118, 87), None)])
def test_auto_window_keeps_whole_fields_up_to_twice_its_pixels_and_tiles_the_grid_with_the_fewest_pixels(shape, window):
    from xkmcast.diffusion.patching import GridPatching

    got = auto_window(shape)
    assert got == window
    if got is None:
        assert shape[0] * shape[1] <= 2 * WINDOW_PIXELS
        return
    # inside the grid, sides multiples of 16 (or a whole side under 16), about WINDOW_PIXELS pixels
    assert all(g <= n and (g % 16 == 0 or g == n < 16) for g, n in zip(got, shape))
    assert WINDOW_PIXELS / 2 < got[0] * got[1] <= WINDOW_PIXELS

    def evaluated(patch):  # pixels a denoising step evaluates on the patches the sampler cuts
        return GridPatching(shape, patch).num_patches * patch[0] * patch[1]

    others = [(h, w) for h in range(16, shape[0] + 1, 16) for w in range(16, shape[1] + 1, 16)
              if WINDOW_PIXELS / 2 < h * w <= WINDOW_PIXELS]
    assert all(evaluated(got) <= evaluated(o) for o in others)
    if shape == (200, 400):  # 6 patches, where the grid's aspect (80 x 192) needs 9
        assert GridPatching(shape, got).num_patches == 6 and GridPatching(shape, (80, 192)).num_patches == 9


def _grid_files(root, ny, nx, factor=4):
    """A fine (ny, nx) and a coarse (ny / factor, nx / factor) t2m on a regional lat / lon grid, 3 times."""
    root.mkdir(exist_ok=True)
    times = pd.date_range("2024-01-01", periods=3, freq="1h")

    def ds(n_y, n_x, d):
        lat = 20 + d * np.arange(n_y)
        lon = -120 + d * np.arange(n_x)
        t2m = 280 + np.zeros((3, n_y, n_x), "float32")
        return xr.Dataset({"t2m": (("time", "latitude", "longitude"), t2m, {"units": "K"})},
                          coords={"time": times, "latitude": ("latitude", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                                  "longitude": ("longitude", lon, {"standard_name": "longitude", "units": "degrees_east"})})

    ds(ny, nx, 0.03).to_netcdf(root / "fine.nc")
    ds(ny // factor, nx // factor, 0.03 * factor).to_netcdf(root / "coarse.nc")
    return [f"data.source={root / 'fine.nc'}", f"data.coarse={root / 'coarse.nc'}"]


@pytest.mark.parametrize("recipe", ["corrdiff-cpu", "stormcast-cpu"])
def test_a_recipe_on_a_large_grid_trains_on_windows_unless_told_otherwise(tmp_path, recipe):
    """A 200 x 400 grid trains on 112 x 144 windows (both stages of both recipes: the regression's windows
    and the spec's patch of the diffusion); data.patch of the whole grid keeps whole fields."""
    from xkmcast.models.regression_windows import training_window
    from xkmcast.models.specs import spec_from_config
    from xkmcast.train.recipe import _fill_variables

    files = _grid_files(tmp_path / "large", 200, 400)
    cfg = _fill_variables(load_config(recipe, files))
    assert cfg.data.patch == [112, 144]
    spec = spec_from_config(cfg.model.model_copy(update={"stage": "regression"}), cfg.data, (200, 400))
    assert training_window(spec, "regression", (200, 400)) == [112, 144]
    spec = spec_from_config(cfg.model.model_copy(update={"stage": "diffusion"}), cfg.data, (200, 400))
    assert training_window(spec, "diffusion", (200, 400)) == [112, 144] and spec.patch == [112, 144]
    whole = _fill_variables(load_config(recipe, [*files, "data.patch=[200, 400]"]))
    assert whole.data.patch == [200, 400]
    spec = spec_from_config(whole.model.model_copy(update={"stage": "regression"}), whole.data, (200, 400))
    assert training_window(spec, "regression", (200, 400)) is None
    small = _fill_variables(load_config(recipe, _grid_files(tmp_path / "small", 64, 128)))
    assert small.data.patch is None


def test_a_recipe_takes_the_invariants_the_fine_source_holds_and_refuses_named_ones_it_lacks(tmp_path):
    """Empty data.invariants: the fine source's orog / lsm (here HSURF, COSMO's orography name, alone);
    a named invariant the source lacks is a ConfigError naming it, not silently dropped."""
    from xkmcast.errors import ConfigError
    from xkmcast.train.recipe import _fill_variables

    files = _grid_files(tmp_path, 32, 48)
    with xr.open_dataset(tmp_path / "fine.nc") as ds:
        fine = ds.load()
    fine["HSURF"] = (("latitude", "longitude"), np.linspace(0, 2000, 32 * 48).reshape(32, 48), {"units": "m"})
    fine.to_netcdf(tmp_path / "fine2.nc")
    files = [f"data.source={tmp_path / 'fine2.nc'}", files[1]]
    cfg = _fill_variables(load_config("corrdiff-cpu", files))
    assert cfg.data.invariants == ["orog"] and cfg.data.output_vars == ["t2m"]
    assert "invariant" in cfg.model.regression_conditions
    assert _fill_variables(load_config("corrdiff-cpu", [*files, "data.invariants=[orog]"])).data.invariants == ["orog"]
    with pytest.raises(ConfigError, match=r"data.invariants names \['lsm'\]"):
        _fill_variables(load_config("corrdiff-cpu", [*files, "data.invariants=[orog, lsm]"]))
