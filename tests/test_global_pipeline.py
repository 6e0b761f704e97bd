"""A model on a global latitude / longitude grid, end to end without training: the grid it records
(lat/lon dims, periodic longitude, how its inputs were regridded), circular padding in its networks
and patches, a result on (lat, lon) that scores against a (lat, lon) truth, and a bundle that
remembers its regridding (downscale, the accessor and the CLI use it by default)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from _nets import randomise
from _tiny import INPUT_VARS, OUTPUT_VARS, stats_for
from typer.testing import CliRunner

from xkmcast.fields.grid import find_grid, make_latlon_grid
from xkmcast.models import build_pipeline, corrdiff_spec
from xkmcast.models.bundle import load_bundle, save_bundle
from xkmcast.nn.layers import Conv2d

LAT = np.arange(84.375, -85.0, -11.25)  # 16 rows, descending, cell centres of an 11.25 degree grid
LON = np.arange(0.0, 360.0, 11.25)  # 32 columns, periodic
TIMES = pd.date_range("2024-01-01", periods=2, freq="6h")


def global_grid() -> xr.Dataset:
    return make_latlon_grid(LAT, LON, lat_name="latitude", lon_name="longitude")


def tiny_global(patch=None, regrid=None):
    torch.manual_seed(0)
    spec = corrdiff_spec(INPUT_VARS, OUTPUT_VARS, (LAT.size, LON.size), size="tiny", patch=patch,
                         sampler={"num_steps": 2})
    spec.stats = {"input": stats_for(INPUT_VARS), "output": stats_for(OUTPUT_VARS), "invariant": {}}
    pipe = randomise(build_pipeline(spec))  # non-trivial weights: the output depends on the input
    g = find_grid(global_grid())
    pipe.set_grid(g.lat, g.lon, **g.model_info(), **({"regrid": regrid} if regrid else {}))
    return pipe.eval()


def coarse_global(seed=0) -> xr.Dataset:
    """A 45 x 45 degree global input in the -180..180 convention (rows at +-67.5, +-22.5)."""
    rng = np.random.default_rng(seed)
    lat, lon = np.arange(-67.5, 68.0, 45.0), np.arange(-157.5, 180.0, 45.0)
    la = np.broadcast_to(lat[:, None], (lat.size, lon.size))
    data = {"2t": 280 + 20 * np.cos(np.deg2rad(la)) + rng.normal(size=(2, *la.shape)),
            "10u": rng.normal(size=(2, *la.shape)), "msl": 1010 + rng.normal(size=(2, *la.shape))}
    units = {"2t": "K", "10u": "m s**-1", "msl": "hPa"}
    return xr.Dataset({k: (("time", "latitude", "longitude"), v, {"units": units[k]}) for k, v in data.items()},
                      coords={"time": TIMES, "latitude": ("latitude", lat, {"standard_name": "latitude"}),
                              "longitude": ("longitude", lon, {"standard_name": "longitude"})})


def test_the_grid_a_global_model_records():
    info = find_grid(global_grid()).model_info()
    assert info["latlon_dims"] == ["latitude", "longitude"] and info["periodic_x"] is True
    regional = find_grid(make_latlon_grid(np.arange(30.0, 40.0), np.arange(0.0, 20.0))).model_info()
    assert regional["periodic_x"] is False


def test_networks_and_patches_of_a_global_model_wrap_around():
    pipe = tiny_global(patch=(16, 16))
    convs = [m for m in pipe.modules() if isinstance(m, Conv2d)]
    assert convs and all(m.periodic_x for m in convs)
    assert pipe.patched(pipe.stages["diffusion"], (LAT.size, LON.size), (16, 16)).patching.periodic_x
    reloaded = build_pipeline(pipe.spec)  # from the spec alone, as a bundle is loaded
    assert all(m.periodic_x for m in reloaded.modules() if isinstance(m, Conv2d))


def test_downscale_on_a_global_grid_keeps_latitude_longitude_and_scores():
    pipe = tiny_global()
    out = coarse_global().kmcast.downscale(pipe, members=2)
    assert out["t2m"].dims == ("member", "time", "latitude", "longitude")
    np.testing.assert_array_equal(out.latitude.values, LAT)
    np.testing.assert_array_equal(out.longitude.values, LON)
    assert out.latitude.attrs["units"] == "degrees_north"
    truth = out.mean("member") + 1.0
    scores = out.kmcast.score(truth)
    assert float(scores.bias.sel(variable="t2m")) == pytest.approx(-1.0, abs=1e-4)


def test_the_bundle_remembers_how_its_inputs_were_regridded(tmp_path):
    from xkmcast.cli import app

    pipe = tiny_global(regrid={"method": "nearest", "options": {}})
    save_bundle(pipe, tmp_path / "m")
    assert load_bundle(tmp_path / "m").spec.grid["regrid"] == {"method": "nearest", "options": {}}
    coarse = coarse_global()
    default = coarse.kmcast.downscale(str(tmp_path / "m"))
    nearest = coarse.kmcast.downscale(str(tmp_path / "m"), regrid_method="nearest")
    bilinear = coarse.kmcast.downscale(str(tmp_path / "m"), regrid_method="bilinear")
    xr.testing.assert_allclose(default, nearest)
    assert float(np.abs(default.t2m - bilinear.t2m).max()) > 1e-3
    coarse.to_netcdf(tmp_path / "coarse.nc")
    result = CliRunner().invoke(app, ["downscale", str(tmp_path / "m"), str(tmp_path / "coarse.nc"),
                                      str(tmp_path / "b.nc"), "--regrid", "bilinear", "--quiet"])
    assert result.exit_code == 0, result.output
    xr.testing.assert_allclose(xr.open_dataset(tmp_path / "b.nc").load().t2m, bilinear.t2m, atol=1e-5)


def test_allow_outside_in_downscale_gives_nan_where_the_input_does_not_reach():
    from xkmcast.errors import DomainCoverageError

    pipe = tiny_global()
    band = coarse_global().isel(latitude=[1, 2])  # +-22.5 only: the model grid's rows beyond are outside
    with pytest.raises(DomainCoverageError, match="allow_outside"):
        band.kmcast.downscale(pipe)
    # "nearest" fills an edge ring, not a region: rows 45 degrees beyond the band are refused, naming the grid
    with pytest.raises(DomainCoverageError, match="does not cover the model's grid.*farther than one source grid"):
        band.kmcast.downscale(pipe, regrid_options={"allow_outside": "nearest"})
    out = band.kmcast.downscale(pipe, members=2, regrid_options={"allow_outside": True})
    inside = np.abs(LAT) <= 22.5
    assert np.isnan(out.t2m.values[..., ~inside, :]).all() and np.isfinite(out.t2m.values[..., inside, :]).all()


def test_regrid_options_in_the_training_config_reach_the_store_and_the_bundle(tmp_path):
    from xkmcast.data.prepare import open_store
    from xkmcast.errors import ConfigError
    from xkmcast.train.config import load_config
    from xkmcast.train.setup import _store_regrid

    cfg = load_config("corrdiff-tiny-regression", ["data.regrid_options={allow_outside: true}"])
    assert cfg.data.regrid_options == {"allow_outside": True}
    with pytest.raises(ConfigError, match="allow_outsde"):
        load_config("corrdiff-tiny-regression", ["data.regrid_options={allow_outsde: true}"])
    # a store prepared with the options records them; the bundle's grid takes them from the store
    from xkmcast.data.prepare import prepare

    fine = coarse_global().rename({"2t": "t2m"})
    store = open_store(prepare(fine, fine.isel(latitude=[1, 2]), tmp_path / "s.zarr", input_vars=["t2m"],
                               output_vars=["t2m"], regrid_method="nearest", regrid_options={"allow_outside": True}))
    assert _store_regrid(store, cfg) == {"method": "nearest", "options": {"allow_outside": True}}


def test_forecast_on_a_global_grid_keeps_latitude_longitude_in_memory_and_on_disk(tmp_path):
    from xkmcast.models import stormcast_spec

    torch.manual_seed(0)
    state_vars = ["t2m", "u10m"]
    spec = stormcast_spec(state_vars, (LAT.size, LON.size), size="tiny", stages=("regression",))
    spec.stats = {"input": stats_for(state_vars), "output": stats_for(state_vars)}
    pipe = randomise(build_pipeline(spec))  # non-trivial weights: the output depends on the input
    g = find_grid(global_grid())
    pipe.set_grid(g.lat, g.lon, **g.model_info())
    pipe.eval()
    rng = np.random.default_rng(0)
    state = global_grid().assign(
        t2m=(("time", "latitude", "longitude"), 280 + rng.normal(size=(1, LAT.size, LON.size)), {"units": "K"}),
        u10m=(("time", "latitude", "longitude"), rng.normal(size=(1, LAT.size, LON.size)), {"units": "m s-1"}),
    ).assign_coords(time=TIMES[:1])
    fc = state.kmcast.forecast(pipe, steps=2)
    assert fc.t2m.dims[-2:] == ("latitude", "longitude")
    on_disk = state.kmcast.forecast(pipe, steps=2, output=tmp_path / "fc.zarr")
    assert on_disk.t2m.dims[-2:] == ("latitude", "longitude")
    np.testing.assert_allclose(on_disk.t2m.values, fc.t2m.values, rtol=1e-5)


def test_missing_preset_invariants_name_data_invariants(tmp_path):
    """A preset's default invariants (orog, lsm) absent from the user's data: the error says
    data.invariants=[] (not compute_stats), for a raw source and for a prepared store."""
    from xkmcast.data.prepare import prepare
    from xkmcast.errors import ConfigError
    from xkmcast.train import distributed as D
    from xkmcast.train.config import load_config
    from xkmcast.train.setup import build_datasets

    fine = coarse_global().rename({"2t": "t2m", "10u": "u10m"})
    fine.to_netcdf(tmp_path / "fine.nc")
    store = prepare(fine, fine, tmp_path / "store.zarr", input_vars=["t2m"], output_vars=["t2m"])
    for source in (tmp_path / "fine.nc", store):
        cfg = load_config("corrdiff-tiny-regression", [f"data.source={source}", "data.coarsen=1",
                                                        "data.input_vars=[t2m]", "data.output_vars=[t2m]",
                                                        f"training.outdir={tmp_path / 'runs'}"])
        with pytest.raises(ConfigError, match=r"data.invariants=\[\]") as err:
            build_datasets(cfg, None, D.DistEnv())
        assert "['orog', 'lsm']" in str(err.value) and "compute_stats" not in str(err.value)


def test_a_forecast_is_single_valued_at_the_poles_for_scalars_only(tmp_path, monkeypatch):
    """On a grid whose first and last rows are 90 N / 90 S, each pole row of t2m is the mean of that row
    of the network's output (the same output without the rule, in memory and on disk); u10m, a wind
    component, varies along the pole rows as a vector's components do and is left as it is."""
    import xkmcast.fields.downscale as downscale_module
    import xkmcast.fields.forecast as forecast_module
    from xkmcast.models import stormcast_spec

    lat, lon = np.linspace(90.0, -90.0, 16), np.arange(0.0, 360.0, 11.25)
    grid = make_latlon_grid(lat, lon, lat_name="latitude", lon_name="longitude")
    torch.manual_seed(0)
    spec = stormcast_spec(["t2m", "u10m"], (lat.size, lon.size), size="tiny", stages=("regression",))
    spec.stats = {"input": stats_for(["t2m", "u10m"]), "output": stats_for(["t2m", "u10m"])}
    pipe = randomise(build_pipeline(spec))
    g = find_grid(grid)
    pipe.set_grid(g.lat, g.lon, **g.model_info())
    pipe.eval()
    rng = np.random.default_rng(1)
    state = grid.assign(
        t2m=(("time", "latitude", "longitude"), 280 + rng.normal(size=(1, lat.size, lon.size)), {"units": "K"}),
        u10m=(("time", "latitude", "longitude"), rng.normal(size=(1, lat.size, lon.size)), {"units": "m s-1"}),
    ).assign_coords(time=TIMES[:1])
    fc = state.kmcast.forecast(pipe, steps=2)
    on_disk = state.kmcast.forecast(pipe, steps=2, output=tmp_path / "fc.zarr")
    for module in (downscale_module, forecast_module):
        monkeypatch.setattr(module, "pole_values", lambda pipeline, data, names: data)
    raw = state.kmcast.forecast(pipe, steps=2)
    poles, inside = [0, lat.size - 1], slice(1, lat.size - 1)
    for got in (fc, on_disk):
        t2m, want = got.t2m.values, raw.t2m.values
        np.testing.assert_allclose(t2m[..., poles, :], np.broadcast_to(
            want[..., poles, :].mean(axis=-1, keepdims=True), want[..., poles, :].shape), rtol=1e-6)
        np.testing.assert_allclose(t2m[..., inside, :], want[..., inside, :], rtol=1e-6)
        np.testing.assert_allclose(got.u10m.values, raw.u10m.values, rtol=1e-6)
    assert raw.t2m.values[:, :, 1:, 0, :].std(axis=-1).min() > 0  # the network's pole row did vary
    assert fc.u10m.values[:, :, 1:, 0, :].std(axis=-1).min() > 0
