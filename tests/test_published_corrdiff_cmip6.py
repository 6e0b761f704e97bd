"""CorrDiff CMIP6 -> ERA5 (the generic package layout with time-window inputs and time features) by folder
and by name, against a reference that follows Earth2Studio's ``CorrDiffCMIP6`` step by step with
PhysicsNeMo's modules (its cos_zenith_angle, regression_step and stochastic sampler)."""

from __future__ import annotations

import json
import shutil
import warnings
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from _http import http_server  # noqa: F401  (pytest fixture)
from _packages import CMIP6_DAYS as DAYS
from _packages import CMIP6_INPUTS as INPUTS
from _packages import CMIP6_INVARIANTS as INVARIANTS
from _packages import CMIP6_LAT_OUT as LAT_OUT
from _packages import CMIP6_LON_OUT as LON_OUT
from _packages import CMIP6_OUTPUTS as OUTPUTS
from _packages import CMIP6_PADDED as PADDED
from _packages import CMIP6_STEPS as STEPS
from _packages import build_cmip6_package, cmip6_days, physicsnemo_classes, hugging_face_mirror

import xkmcast
from xkmcast.diffusion.seeds import row_seed
from xkmcast.errors import BundleError, ConfigError, TimeCoverageError
from xkmcast.fields.solar import cos_zenith


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return build_cmip6_package(tmp_path_factory.mktemp("cmip6") / "pkg")


def e2s_condition(root, window, valid_time: datetime, sza_fn):
    """Earth2Studio's CorrDiffCMIP6.preprocess_input for one window (3, C, h, w); ``sza_fn(time, lon, lat)``."""
    meta, stats = json.loads((root / "metadata.json").read_text()), json.loads((root / "stats.json").read_text())
    inv_names = meta["invariant_variables"]
    center = torch.cat([torch.tensor([stats["input"][v]["mean"] for v in INPUTS]).repeat_interleave(3),
                        torch.tensor([stats["invariants"][v]["mean"] for v in inv_names]),
                        torch.tensor([stats["input"]["sza"]["mean"], stats["input"]["hod"]["mean"]])]).view(1, -1, 1, 1)
    scale = torch.cat([torch.tensor([stats["input"][v]["std"] for v in INPUTS]).repeat_interleave(3),
                       torch.tensor([stats["invariants"][v]["std"] for v in inv_names]),
                       torch.tensor([stats["input"]["sza"]["std"], stats["input"]["hod"]["std"]])]).view(1, -1, 1, 1)
    with xr.open_dataset(root / "invariants.nc") as ds:
        invariants = torch.stack([torch.as_tensor(ds[n].values) for n in inv_names]).to(torch.float32)
    x = torch.tensor(window, dtype=torch.float32)[None].transpose(1, 2)  # [B, C, L, H, W] (a copy: sai is in place)
    kernel = x.new_ones((1, 1, 3, 3)) / 9.0
    isic, isnc = INPUTS.index("siconc"), INPUTS.index("snc")
    for i in range(3):
        sai = torch.clip(torch.nan_to_num(x[:, isic, i], nan=0.0).unsqueeze(1)
                         + torch.nan_to_num(x[:, isnc, i], nan=0.0).unsqueeze(1), 0.0, 100.0)
        sai = F.pad(F.pad(sai, (1, 1, 0, 0), mode="circular"), (0, 0, 1, 1), mode="replicate")
        x[:, isic, i] = F.conv2d(sai, kernel, padding="valid").squeeze(1)
    b, c, l, h, w = x.shape
    x = F.interpolate(x.contiguous().view(b, -1, h, w), (LAT_OUT.size, LON_OUT.size), mode="bilinear")
    x = torch.concat([x, torch.flip(invariants.unsqueeze(0), [-2])], dim=1)
    lon_grid, lat_grid = np.meshgrid(LON_OUT, LAT_OUT)
    sza = torch.from_numpy(np.asarray(sza_fn(valid_time, lon_grid, lat_grid)).astype(np.float32))[None, None]
    x = torch.concat([x, sza], dim=1)
    hour = torch.full_like(sza, float(valid_time.hour))
    n_in, n_inv = 3 * len(INPUTS), len(inv_names)
    x[:, n_in + n_inv - 1] = hour.squeeze()
    x = torch.concat([x, hour], dim=1)
    x = (x - center) / scale
    x = F.pad(F.pad(torch.flip(x, [2]), (0, 0, 23, 24), mode="reflect"), (48, 48, 0, 0), mode="circular")
    order = list(range(n_in)) + [n_in + n_inv] + list(range(n_in, n_in + n_inv - 1)) + [n_in + n_inv - 1, n_in + n_inv + 1]
    return x[:, order]


def e2s_forward(root, img_lr, latents):
    """Earth2Studio's CorrDiffCMIP6._forward after preprocessing: regression, stochastic sampler with the given
    latents (one per member), postprocess_output. Returns (members (M, C, H, W), mean (C, H, W))."""
    cls = physicsnemo_classes()
    meta, stats = json.loads((root / "metadata.json").read_text()), json.loads((root / "stats.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from physicsnemo.diffusion.generate.legacy_generate import regression_step
        from physicsnemo.diffusion.samplers.legacy_stochastic_sampler import stochastic_sampler

        residual = cls["EDMPrecondSuperResolution"].from_checkpoint(str(root / "diffusion.mdlus")).eval()
        regression = cls["UNet"].from_checkpoint(str(root / "regression.mdlus")).eval()
    out_c = torch.tensor([stats["output"][v]["mean"] for v in OUTPUTS]).view(1, -1, 1, 1)
    out_s = torch.tensor([stats["output"][v]["std"] for v in OUTPUTS]).view(1, -1, 1, 1)

    def post(y):
        y = y[:, :, 23:-24, 48:-48] * out_s + out_c
        keep = [OUTPUTS.index(v) for v in ("t2m", "sp")]  # Earth2Studio's non-negative outputs among ours
        y[:, keep] = y[:, keep].clamp(min=0)
        return torch.flip(y, [2])

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean = regression_step(net=regression, img_lr=img_lr, latents_shape=(1, len(OUTPUTS), *PADDED))
        members = [post(mean + stochastic_sampler(residual, latents[j:j + 1].to(torch.float32), img_lr, mean_hr=mean,
                                                  num_steps=meta["number_of_steps"], sigma_min=1, sigma_max=400))
                   for j in range(latents.shape[0])]
    return torch.cat(members), post(mean)[0]


def _window(ds):
    return np.stack([np.stack([ds[v].values[i] for v in INPUTS]) for i in range(3)])


def test_condition_matches_earth2studio_steps(package):
    from physicsnemo.utils.zenith_angle import cos_zenith_angle

    from xkmcast.models.published.cmip6_steps import window_condition

    model = xkmcast.load_model(package)
    ds = cmip6_days()
    window = _window(ds)
    valid = DAYS[1] + np.timedelta64(-7, "h")
    ours = window_condition(model, torch.as_tensor(window)[None], np.array([valid]))
    assert ours.shape == (1, 3 * len(INPUTS) + len(INVARIANTS) + 2, *PADDED)
    when = pd.Timestamp(valid).to_pydatetime()
    same_sza = e2s_condition(package, window, when, lambda t, lon, lat: cos_zenith(np.datetime64(t), lat, lon))
    assert torch.abs(ours - same_sza).max() < 2e-5
    theirs = e2s_condition(package, window, when, cos_zenith_angle)
    sza = 3 * len(INPUTS)  # the sza channel right after the inputs
    other = [i for i in range(ours.shape[1]) if i != sza]
    assert torch.abs(ours[:, other] - theirs[:, other]).max() < 2e-5
    sza_std = json.loads((package / "stats.json").read_text())["input"]["sza"]["std"]
    assert torch.abs(ours[:, sza] - theirs[:, sza]).max() * sza_std < 2e-4  # our Sun vs PhysicsNeMo's: ~1e-4
    assert torch.abs(ours[:, sza]).max() > 0.5  # the feature is there


@pytest.mark.slow
def test_by_folder_matches_earth2studio(package):
    model = xkmcast.load_model(package)
    assert model.spec.sampler == {"sampler": "heun", "num_steps": STEPS, "rho": 7.0, "sigma_min": 1.0, "sigma_max": 400.0}
    ds = cmip6_days()
    fine = ds.kmcast.downscale(model, members=2, seed=5, lead_times=[-12, 5], include_mean=True)
    np.testing.assert_array_equal(fine["lat"].values, LAT_OUT)
    np.testing.assert_array_equal(fine["lon"].values, LON_OUT)
    assert fine["t2m"].dims == ("member", "time", "lat", "lon") and fine["t2m"].attrs["units"] == "K"
    expect = DAYS[1] + np.array([-12, 5], "timedelta64[h]")
    np.testing.assert_array_equal(fine["time"].values, expect)
    np.testing.assert_array_equal(fine["window_centre"].values, [DAYS[1]] * 2)
    window = _window(ds)
    for i, valid in enumerate(expect):
        img_lr = e2s_condition(package, window, pd.Timestamp(valid).to_pydatetime(),
                               lambda t, lon, lat: cos_zenith(np.datetime64(t), lat, lon))
        latents = torch.stack([torch.randn((len(OUTPUTS), *PADDED), generator=torch.Generator().manual_seed(
            row_seed(5, k, valid)), dtype=torch.float64) for k in range(2)])
        ref, ref_mean = e2s_forward(package, img_lr, latents)
        got_mean = np.stack([fine[f"{v}_regression"].values[i] for v in OUTPUTS])
        got = np.stack([fine[v].values[:, i] for v in OUTPUTS], axis=1)
        scale = np.abs(ref_mean.numpy()).max(axis=(1, 2), keepdims=True)
        assert np.abs(got_mean - ref_mean.numpy()).max() < 1e-5 * scale.max()
        res, ref_res = got - got_mean, (ref - ref_mean).numpy()
        assert np.abs(res - ref_res).max() / np.abs(ref_res).max() < 1e-4
        assert np.abs(res).mean() > 1e-2  # the diffusion does something


def test_by_name_through_the_fetch_path(package, tmp_path, http_server, monkeypatch):
    repo, rev = "nvidia/corrdiff-cmip6-era5", "f756fad5b85efec64df4868aead14dda698b8aea"
    server = hugging_face_mirror(tmp_path, http_server, monkeypatch, package, repo, rev, with_api=False,
                                 registry_entry=("corrdiff-cmip6-era5", "corrdiff_package"))
    by_name = xkmcast.load_model("corrdiff-cmip6-era5")
    direct = xkmcast.load_model(package)
    ds = cmip6_days()
    a = ds.kmcast.downscale(by_name, members=1, num_steps=1)
    b = ds.kmcast.downscale(direct, members=1, num_steps=1)
    xr.testing.assert_identical(a, b)
    assert a["time"].values[0] == DAYS[1] - np.timedelta64(12, "h")  # the default lead time
    assert a["lead_time"].values[0] == -np.timedelta64(12, "h")


def test_missing_window_times_are_named(package):
    model = xkmcast.load_model(package)
    with pytest.raises(TimeCoverageError, match="day before and the day after"):
        cmip6_days(DAYS[[0, 2]]).kmcast.downscale(model, members=1, num_steps=1)
    with pytest.raises(ConfigError, match=r"\[-12, 11\]"):
        cmip6_days().kmcast.downscale(model, members=1, lead_times=[12])
    with pytest.raises(Exception, match="lacks 1 of the 4 variables"):
        cmip6_days().drop_vars("snc").kmcast.downscale(model, members=1)


@pytest.mark.parametrize("change, match", [
    ({"metadata_extra": {"time_window": [-12, 0, 12]}}, "time window"),
    ({"metadata_extra": {"time_window": "daily"}}, "list of offsets"),
    ({"metadata_extra": {"inference_mode": "diffusion"}}, "inference_mode"),
    ({"invariants": ["lsm"]}, "regression network does not take"),
])
def test_refuses_what_it_cannot_reproduce(tmp_path, change, match):
    root = build_cmip6_package(tmp_path / "pkg", **change)
    with pytest.raises(BundleError, match=match):
        xkmcast.load_model(root)


def test_generic_package_without_time_features_is_unchanged(package, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    stats = json.loads((bad / "stats.json").read_text())
    del stats["input"]["hod"]
    (bad / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(BundleError, match="cannot honour"):  # the generic loader: time_window is not its setting
        xkmcast.load_model(bad)


def test_cli_and_a_saved_bundle_give_the_same_result(package, tmp_path):
    from typer.testing import CliRunner

    from xkmcast.cli import app
    from xkmcast.models.bundle import save_bundle

    ds = cmip6_days(pd.date_range("2030-06-01T12", periods=4, freq="1D").values)  # two window centres
    ds.to_netcdf(tmp_path / "cmip6.nc")
    out = tmp_path / "era5.zarr"
    result = CliRunner().invoke(app, ["downscale", str(package), str(tmp_path / "cmip6.nc"), str(out), "--members", "1",
                                      "--steps", "1", "--lead-times=-12,3", "--quiet"])
    assert result.exit_code == 0, result.output
    written = xr.open_zarr(out, consolidated=False).load()
    assert written.sizes["time"] == 4 and list(written["lead_time"].values / np.timedelta64(1, "h")) == [-12, 3, -12, 3]
    save_bundle(xkmcast.load_model(package), tmp_path / "bundle")
    again = ds.kmcast.downscale(xkmcast.load_model(tmp_path / "bundle"), members=1, num_steps=1, lead_times=[-12, 3])
    np.testing.assert_allclose(written["t2m"].values, again["t2m"].values, rtol=1e-6)
    np.testing.assert_array_equal(written["time"].values, again["time"].values)
