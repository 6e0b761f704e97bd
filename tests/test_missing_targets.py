"""Fine targets with missing values (NaN outside an analysis's domain, a land-only product's sea).

The real case: the 1996 blizzard analyses of ../shared (NCL's example data) are NaN outside a conic
domain (a trapezoid in latitude / longitude). A user who downscales to such a target trains on the
values there are, and gets the output missing where the target never had one; missing inputs are
refused with what to do, never trained on.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

import xkmcast
from xkmcast.cli import app
from xkmcast.data.prepare import MISSING_ATTR, prepare
from xkmcast.data.samples import DownscalingSamples, ForecastSamples
from xkmcast.errors import InvalidDataError

from conftest import NCL_STORM

FILES = {"t2m": ("Tstorm", "t", "K"), "u10m": ("Ustorm", "u", "m s-1")}


@pytest.fixture(scope="module")
def conic() -> xr.Dataset:
    """t2m and u10m of the blizzard on their whole 33 x 36 grid, NaN outside the conic domain (and at the
    one time t2m is missing entirely), the first 24 six-hourly times."""
    if not NCL_STORM.is_dir():
        pytest.skip(f"real test data not found at {NCL_STORM} (../shared is not beside this clone)")
    out = {}
    for name, (stem, var, units) in FILES.items():
        raw = xr.open_dataset(NCL_STORM / f"{stem}.cdf", decode_times=False)[var].isel(timestep=slice(0, 24))
        out[name] = raw.rename({"timestep": "time", "lat": "latitude", "lon": "longitude"}).assign_attrs(units=units)
    ds = xr.Dataset(out).load()
    ds = ds.assign_coords(time=pd.Timestamp("1996-01-05") + pd.to_timedelta(ds["time"].values.astype(int), "h"))
    ds["latitude"].attrs.update(standard_name="latitude", units="degrees_north")
    ds["longitude"].attrs.update(standard_name="longitude", units="degrees_east")
    return ds


def _filled_coarse(fine: xr.Dataset) -> xr.Dataset:
    """The 3 x 3 block means of ``fine``, NaN cells filled from the nearest cell of their row and a
    whole missing field from the times beside it: a coarse input with a value everywhere."""
    coarse = fine.coarsen(latitude=3, longitude=3, boundary="trim").mean()
    coarse = coarse.interpolate_na("longitude", method="nearest", fill_value="extrapolate")
    return coarse.interpolate_na("time", method="nearest", fill_value="extrapolate")


def test_prepare_counts_missing_targets_and_refuses_missing_inputs(conic, tmp_path):
    coarse = _filled_coarse(conic)
    store = prepare(conic, coarse, tmp_path / "store.zarr", input_vars=["t2m", "u10m"], output_vars=["t2m", "u10m"],
                    regrid_options={"allow_outside": "nearest"})
    ds = xr.open_zarr(store, consolidated=False)
    counts = json.loads(ds.attrs[MISSING_ATTR])
    assert counts == {f"target_{v}": int(conic[v].isnull().sum()) for v in ("t2m", "u10m")}
    assert counts["target_t2m"] > 24 * 100  # the domain's corners at every time, and one whole field
    stats = json.loads(ds.attrs["xkmcast_stats"])  # the statistics of the values there are
    np.testing.assert_allclose([stats["target_t2m"]["mean"], stats["target_t2m"]["std"]],
                               [np.nanmean(conic["t2m"].values.astype(np.float64)),
                                np.nanstd(conic["t2m"].values.astype(np.float64))], rtol=1e-6)
    # a coarse input with the fine field's holes: refused, nothing written
    holes = conic.coarsen(latitude=3, longitude=3, boundary="trim").mean()
    with pytest.raises(InvalidDataError, match="coarse input t2m has missing values") as err:
        prepare(conic, holes, tmp_path / "bad.zarr", input_vars=["t2m"], output_vars=["t2m"],
                regrid_options={"allow_outside": "nearest"})
    assert "fill the coarse source" in str(err.value) and "interpolate_na" in str(err.value)
    assert not (tmp_path / "bad.zarr").exists() and not list(tmp_path.glob(".tmp-*"))
    # an invariant with the target's holes: refused with its own fix
    orog = conic["t2m"].isel(time=0, drop=True).rename("orog").assign_attrs(units="m") * 0 + 100.0
    with pytest.raises(InvalidDataError, match="invariant orog has missing values") as err:
        prepare(conic.assign(orog=orog), coarse, tmp_path / "inv.zarr", input_vars=["t2m"], output_vars=["t2m"],
                invariants=["orog"], regrid_options={"allow_outside": "nearest"})
    assert "fill the invariant" in str(err.value)
    # a target with no value at all
    empty = conic.assign(u10m=conic["u10m"] * np.nan)
    with pytest.raises(InvalidDataError, match="no value at all"):
        prepare(empty, coarse, tmp_path / "empty.zarr", input_vars=["t2m"], output_vars=["u10m"],
                regrid_options={"allow_outside": "nearest"})


def test_samples_mask_the_missing_target_values(conic, tmp_path):
    coarse = _filled_coarse(conic)
    store = prepare(conic, coarse, tmp_path / "store.zarr", input_vars=["t2m", "u10m"], output_vars=["t2m", "u10m"],
                    regrid_options={"allow_outside": "nearest"})
    samples = DownscalingSamples(store, ["t2m", "u10m"], ["t2m", "u10m"], times=list(range(20)))
    assert samples.masked
    for i in (0, 17):  # t2m is missing entirely at time 17
        item = samples[i]
        truth = conic[["t2m", "u10m"]].isel(time=i).to_array().values
        np.testing.assert_array_equal(item["mask"].numpy(), np.isfinite(truth).astype(np.float32))
        assert torch.isfinite(item["target"]).all() and torch.isfinite(item["input"]).all()
        assert (item["target"][item["mask"] == 0] == 0).all()
        ok = np.isfinite(truth)
        expected = (truth - samples.stats.mean["target_t2m"]) / samples.stats.std["target_t2m"]
        np.testing.assert_allclose(item["target"][0].numpy()[ok[0]], expected[0][ok[0]], rtol=1e-5, atol=1e-5)
    assert samples[17]["mask"][0].sum() == 0 and samples[17]["mask"][1].sum() > 0
    np.testing.assert_array_equal(samples.valid_pixels(), conic[["t2m", "u10m"]].isel(time=slice(0, 20)).to_array()
                                  .notnull().any("time").values)
    # a complete target: no mask
    full = conic.isel(latitude=slice(24, 33), longitude=slice(6, 30))
    assert int(full.to_array().isel(time=slice(0, 12)).isnull().sum()) == 0
    whole = prepare(full.isel(time=slice(0, 12)), _filled_coarse(conic).isel(time=slice(0, 12)), tmp_path / "full.zarr",
                    input_vars=["t2m"], output_vars=["t2m"], regrid_options={"allow_outside": "nearest"})
    complete = DownscalingSamples(whole, ["t2m"], ["t2m"])
    assert not complete.masked and "mask" not in complete[0]


def test_a_forecast_state_with_missing_values_is_refused(conic, tmp_path):
    """A state is the next step's input: refused when the store is prepared for a forecaster (the state as
    the coarse input too, as a state-only recipe prepares it), or read from a store prepared for
    downscaling."""
    with pytest.raises(InvalidDataError, match="state variable t2m has missing values") as err:
        prepare(conic, conic, tmp_path / "state.zarr", input_vars=["t2m"], output_vars=["t2m"], states=True)
    assert "fillna" in str(err.value) and not (tmp_path / "state.zarr").exists()
    store = prepare(conic, _filled_coarse(conic), tmp_path / "store.zarr", input_vars=["t2m"], output_vars=["t2m"],
                    regrid_options={"allow_outside": "nearest"})
    with pytest.raises(InvalidDataError, match="state variable t2m has missing values"):
        ForecastSamples(store, ["t2m"], step="6h")


def test_the_losses_do_not_see_the_values_under_the_mask():
    """A CorrDiff with real (random, not near-zero) weights: the regression and diffusion losses of a
    batch do not change when the target changes where it is masked, and do change where it is not."""
    from _tiny import FINE_SHAPE, tiny_corrdiff

    pipe = tiny_corrdiff(invariants=False)
    torch.manual_seed(1)
    for p in pipe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    pipe.spec.extra["input_skip"] = True
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(2, 3, *FINE_SHAPE, generator=g)
    target = torch.randn(2, 2, *FINE_SHAPE, generator=g)
    mask = torch.ones_like(target)
    mask[:, :, :, :7] = 0  # the western third of the grid is missing
    batch = {"input": cond, "target": target * mask, "mask": mask}

    def losses(b):
        return [pipe.loss(stage, b, generator=torch.Generator().manual_seed(3)).loss for stage in ("regression", "diffusion")]

    base = losses(batch)
    assert all(torch.isfinite(v).all() for v in base)
    hidden = losses({**batch, "target": batch["target"] + 50.0 * (1 - mask)})
    for a, b in zip(base, hidden):
        torch.testing.assert_close(a, b)
    shown = losses({**batch, "target": batch["target"] + 0.5 * mask})
    assert all(not torch.allclose(a, b) for a, b in zip(base, shown))


runner = CliRunner()


def test_the_recipe_trains_on_a_target_with_missing_values(conic, tmp_path):
    """corrdiff-cpu on the conic domain (no hand edits): finite losses and calibrations, and the output is
    missing exactly where the target has no value at any training time."""
    conic.to_netcdf(tmp_path / "fine.nc")
    coarse = _filled_coarse(conic)
    coarse.to_netcdf(tmp_path / "coarse.nc")
    torch.set_num_threads(1)
    args = ["train", "corrdiff-cpu", f"data.source={tmp_path / 'fine.nc'}", f"data.coarse={tmp_path / 'coarse.nc'}",
            "data.train_times={start: '1996-01-05', end: '1996-01-09T18'}", "data.regrid_options={allow_outside: nearest}",
            "training.time_budget=6", f"training.outdir={tmp_path / 'runs'}", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "targets with missing values: left out of the losses" in result.output
    model = xkmcast.load_model(tmp_path / "runs" / "corrdiff-cpu" / "0" / "model")
    extra = model.spec.extra
    assert np.isfinite(extra["residual_scale"]).all() and np.isfinite(extra["sample_scale"]).all()
    for table in extra["spread_by_scale"]:
        assert np.isfinite(table["gains"]).all()
    never = conic[["t2m", "u10m"]].sel(time=slice("1996-01-05", "1996-01-09T18")).to_array().isnull().all("time")
    np.testing.assert_array_equal(model.output_valid.numpy() == 0, never.values)
    out = coarse.isel(time=[-1]).kmcast.downscale(model, members=2, num_steps=2)
    for i, v in enumerate(["t2m", "u10m"]):
        values = out[v].values  # (member, time, y, x)
        np.testing.assert_array_equal(np.isnan(values), np.broadcast_to(never.values[i], values.shape))
    # scored against the truth at the pixels it has
    truth = conic.isel(time=[-1])
    error = abs(out["t2m"].mean("member") - truth["t2m"])
    assert int(error.count()) == int((truth["t2m"].notnull() & ~never.sel(variable="t2m")).sum()) > 0


def _masked_case(weights_seed: int, data_seed: int):
    """A tiny CorrDiff with O(1) random weights, and 4 samples (normalised by 0 / 1) whose targets miss
    their western third: ``(pipe, store Dataset, DownscalingSamples)``."""
    from _tiny import FINE_SHAPE, INPUT_VARS, OUTPUT_VARS, tiny_corrdiff
    from xkmcast.data.stats import Stats

    pipe = tiny_corrdiff(invariants=False)
    torch.manual_seed(weights_seed)
    for p in pipe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    rng = np.random.default_rng(data_seed)
    dims = ("time", "y", "x")
    data = {f"input_{v}": (dims, rng.normal(0, 1, (4, *FINE_SHAPE)).astype(np.float32)) for v in INPUT_VARS}
    for v in OUTPUT_VARS:
        y = rng.normal(0, 1, (4, *FINE_SHAPE)).astype(np.float32)
        y[:, :, :7] = np.nan
        data[f"target_{v}"] = (dims, y)
    ds = xr.Dataset(data, coords={"time": pd.date_range("2020-01-01", periods=4, freq="6h")})
    zero_one = Stats.from_dict({n: {"mean": 0.0, "std": 1.0} for n in ds.data_vars})
    return pipe, ds, DownscalingSamples(ds, INPUT_VARS, OUTPUT_VARS, stats=zero_one)


def test_the_calibrations_weigh_only_the_pixels_with_a_target():
    """The training scale and the members' sampling scale of a CorrDiff (random weights) on samples with a
    missing western third equal the same ratios summed over the pixels with a value only (selected by
    index here, not zeroed); at the missing pixels the residual is the regression mean's negative,
    which would weigh in otherwise."""
    from xkmcast.train.spread import calibrated_sample_scale, residual_scale

    pipe, ds, samples = _masked_case(2, 0)
    assert samples.masked
    valid = np.isfinite(ds["target_t2m"].values[0])

    items = [samples[i] for i in range(4)]
    cond = torch.stack([it["input"] for it in items])
    with torch.no_grad():
        mean = pipe.regression_mean(pipe.condition(cond))
    truth = torch.stack([it["target"] for it in items])
    r = (truth - mean).numpy()[:, :, valid]  # (B, C, valid pixels)
    sd = float(pipe.stages["diffusion"].sigma_data)
    np.testing.assert_allclose(residual_scale(pipe, samples), np.sqrt((r ** 2).mean(axis=(0, 2))) / sd, rtol=1e-5)

    pipe.spec.extra["residual_scale"] = [1.0, 1.0]
    got = calibrated_sample_scale(pipe, samples, members=3, max_samples=4)
    batch = {"input": cond, "target": truth, "mask": torch.stack([it["mask"] for it in items])}
    from xkmcast.train.spread import draw_seeds

    draws, residual, _ = pipe.calibration_draws(batch, [draw_seeds(0, 3, i) for i in range(4)])
    res = residual.double().numpy()[:, :, valid]
    var = draws.double().var(dim=0, unbiased=True).numpy()[:, :, valid]
    np.testing.assert_allclose(got, np.sqrt((res ** 2).sum(axis=(0, 2)) / var.sum(axis=(0, 2))), rtol=1e-5)


def test_the_gains_by_value_group_only_the_pixels_with_a_target():
    """Spread by value on samples with a missing western third: the groups of the mean's values, their
    knots and gains, are those of the pixels with a value (selected by index here), not shifted by the
    missing ones (whose draws and residual are zeroed)."""
    from xkmcast.train.spread import (_gains_by_value, calibrated_value_gains, draw_seeds, member_split,
                                      spread_balance)

    pipe, ds, samples = _masked_case(3, 1)
    pipe.spec.extra["residual_scale"] = [1.0, 1.0]
    table = calibrated_value_gains(pipe, samples, [0], members=3, max_samples=4, classes=4)

    items = [samples[i] for i in range(4)]
    batch = {"input": torch.stack([it["input"] for it in items]), "target": torch.stack([it["target"] for it in items]),
             "mask": torch.stack([it["mask"] for it in items])}
    draws, residual, base = pipe.calibration_draws(batch, [draw_seeds(0, 3, i) for i in range(4)])
    shared, spread = member_split(pipe, draws)
    valid = torch.from_numpy(np.isfinite(ds["target_t2m"].values))  # (time, y, x)
    b, sh, r = (t[:, 0][valid].double() for t in (base, shared, residual))
    var = spread[:, :, 0][:, valid].double().var(dim=0, unbiased=True)
    error2 = (r - sh) ** 2
    expected = _gains_by_value(b, lambda idx, g: (float(error2[idx].sum()), g * g * float(var[idx].sum())),
                               spread_balance(pipe, 3), 4, linear=True)
    np.testing.assert_allclose(table[0]["knots"], expected["knots"], rtol=1e-6)
    np.testing.assert_allclose(table[0]["gains"], expected["gains"], rtol=1e-6)


def test_the_prepare_command_reports_the_missing_target_values(conic, tmp_path):
    conic.to_netcdf(tmp_path / "fine.nc")
    _filled_coarse(conic).to_netcdf(tmp_path / "coarse.nc")
    result = runner.invoke(app, ["prepare", str(tmp_path / "fine.nc"), str(tmp_path / "store.zarr"), "--coarse",
                                 str(tmp_path / "coarse.nc"), "--input", "t2m", "--output", "t2m,u10m", "--allow-outside"])
    assert result.exit_code == 0, result.output
    shares = {v: 100 * float(conic[v].isnull().mean()) for v in ("t2m", "u10m")}
    assert f"targets with missing values (left out of training): t2m {shares['t2m']:.1f} %, " \
           f"u10m {shares['u10m']:.1f} %" in result.output
    states = runner.invoke(app, ["prepare", str(tmp_path / "fine.nc"), str(tmp_path / "states.zarr"), "--coarse",
                                 str(tmp_path / "coarse.nc"), "--input", "t2m", "--output", "t2m", "--allow-outside",
                                 "--states"])  # a forecaster's states: refused now, nothing written
    assert states.exit_code != 0 and "state variable t2m has missing values" in states.output
    assert not (tmp_path / "states.zarr").exists()


def test_scoring_a_prediction_with_the_targets_footprint_is_quiet_and_skips_it():
    """A masked model's output is NaN in every member where the target never has a value: the lazy
    scores warn of nothing (no 0/0 in dask's variance) and cover the pixels with a value."""
    import warnings

    from xkmcast.fields.scoring import score

    rng = np.random.default_rng(0)
    members = rng.normal(280.0, 1.0, (4, 3, 5, 6)).astype("f4")
    truth = rng.normal(280.0, 1.0, (3, 5, 6)).astype("f4")
    members[..., :2], truth[..., :2] = np.nan, np.nan
    dims = ("time", "y", "x")
    pred = xr.Dataset({"t2m": (("member", *dims), members, {"units": "K"})}).chunk({"time": 1})
    obs = xr.Dataset({"t2m": (dims, truth, {"units": "K"})})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = score(pred, obs).compute()
    ok = np.isfinite(truth)
    np.testing.assert_allclose(float(got["spread"].sel(variable="t2m")),
                               np.sqrt(members.var(axis=0, ddof=1)[ok].mean()), rtol=1e-5)
    np.testing.assert_allclose(float(got["mae"].sel(variable="t2m")),
                               np.abs(members.mean(axis=0) - truth)[ok].mean(), rtol=1e-5)
