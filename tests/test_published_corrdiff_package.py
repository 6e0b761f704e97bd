"""The generic CorrDiff package (PhysicsNeMo recipe export; Hugging Face CMIP6 layout) by folder and by
name, against a reference following Earth2Studio's ``CorrDiff`` steps with PhysicsNeMo's modules."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from _http import http_server  # noqa: F401  (pytest fixture)
from _packages import GEN_INPUTS, GEN_OUTPUTS, build_corrdiff_package, physicsnemo_classes, hugging_face_mirror

import xkmcast
from xkmcast.errors import BundleError
from xkmcast.diffusion.seeds import row_seed

SHAPE = (20, 28)
UNITS = {"t2m": "K", "u10m": "m s-1", "v10m": "m s-1", "z500": "m2 s-2", "tcwv": "kg m-2"}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return build_corrdiff_package(tmp_path_factory.mktemp("corrdiff") / "pkg", shape=SHAPE)


def coarse(root, times=1):
    with xr.open_dataset(root / "input_latlon_grid.nc") as g:
        lat, lon = g["lat"].values, g["lon"].values
    rng = np.random.default_rng(1)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    level = {"K": 280.0, "Pa": 100000.0, "kg m-2": 30.0, "m2 s-2": 55000.0}  # plausible values: ranges are checked
    data = {v: (("time", "lat", "lon"), (np.sin(la * (k + 1)) * np.cos(lo / (k + 2)) * 10 + rng.normal(0, 1, (times, *la.shape))
                                         + level.get(UNITS[v], 0.0)).astype(np.float32), {"units": UNITS[v]})
            for k, v in enumerate(GEN_INPUTS)}
    return xr.Dataset(data, coords={"time": np.array(["2030-01-01T12"] * times, "datetime64[ns]")[:times],
                                    "lat": ("lat", lat, {"units": "degrees_north"}), "lon": ("lon", lon, {"units": "degrees_east"})})


def reference(root, x, latents):
    """Earth2Studio's CorrDiff._forward (inference_mode both, stochastic sampler) with the given latents."""
    cls = physicsnemo_classes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from physicsnemo.diffusion.generate.legacy_generate import regression_step
        from physicsnemo.diffusion.samplers.legacy_stochastic_sampler import stochastic_sampler

        residual = cls["EDMPrecondSuperResolution"].from_checkpoint(str(root / "diffusion.mdlus")).eval()
        regression = cls["UNet"].from_checkpoint(str(root / "regression.mdlus")).eval()
    meta = json.loads((root / "metadata.json").read_text())
    stats = json.loads((root / "stats.json").read_text())
    col = lambda role, names, k: torch.tensor([stats[role][n][k] for n in names])[None, :, None, None]  # noqa: E731
    inv_names = meta["invariant_variables"]
    in_c = torch.cat([col("input", GEN_INPUTS, "mean"), col("invariants", inv_names, "mean")], 1)
    in_s = torch.cat([col("input", GEN_INPUTS, "std"), col("invariants", inv_names, "std")], 1)
    with xr.open_dataset(root / "input_latlon_grid.nc") as g:
        lat0, lon0 = torch.as_tensor(g["lat"].values), torch.as_tensor(g["lon"].values)
    with xr.open_dataset(root / "output_latlon_grid.nc") as g:
        lat1, lon1 = torch.meshgrid(torch.as_tensor(g["lat"].values), torch.as_tensor(g["lon"].values), indexing="ij")
    with xr.open_dataset(root / "invariants.nc") as inv:
        invariants = torch.stack([torch.as_tensor(inv[n].values) for n in inv_names])
    from test_published_corrdiff_taiwan import _bilinear_regular

    xi = _bilinear_regular(torch.as_tensor(x, dtype=torch.float64), lat0, lon0, lat1, lon1)
    img_lr = ((torch.cat([xi, invariants])[None] - in_c) / in_s).to(torch.float32)
    m, c = latents.shape[0], len(GEN_OUTPUTS)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean = regression_step(net=regression, img_lr=img_lr, latents_shape=(1, c, *SHAPE))
        res = torch.cat([stochastic_sampler(residual, latents[i:i + 1].to(torch.float32), img_lr, mean_hr=mean[:1],
                                            num_steps=meta["number_of_steps"], sigma_min=meta["sigma_min"],
                                            sigma_max=meta["sigma_max"]) for i in range(m)])
    out_c, out_s = col("output", GEN_OUTPUTS, "mean"), col("output", GEN_OUTPUTS, "std")
    return (mean + res) * out_s + out_c, mean[0] * out_s[0] + out_c[0]


@pytest.mark.slow
def test_by_folder_matches_earth2studio_steps(package):
    model = xkmcast.load_model(package)
    assert model.spec.sampler == {"sampler": "heun", "num_steps": 6, "rho": 7.0, "sigma_min": 0.002, "sigma_max": 400.0}
    ds = coarse(package)
    fine = ds.kmcast.downscale(model, members=2, seed=4, include_mean=True)
    with xr.open_dataset(package / "output_latlon_grid.nc") as g:
        np.testing.assert_array_equal(fine["lat"].values[:, 0], g["lat"].values)
        np.testing.assert_array_equal(fine["lon"].values[0], g["lon"].values)
    x = np.stack([ds[v].values[0] for v in GEN_INPUTS])
    seeds = [row_seed(4, k, ds.time.values[0]) for k in range(2)]
    latents = torch.stack([torch.randn((len(GEN_OUTPUTS), *SHAPE), generator=torch.Generator().manual_seed(s),
                                       dtype=torch.float64) for s in seeds])
    ref, ref_mean = reference(package, x, latents)
    got_mean = np.stack([fine[f"{v}_regression"].values[0] for v in GEN_OUTPUTS])
    got = np.stack([fine[v].values[:, 0] for v in GEN_OUTPUTS], axis=1)
    assert np.abs(got_mean - ref_mean.numpy()).max() / np.abs(ref_mean.numpy()).max() < 1e-5
    res, ref_res = got - got_mean, (ref - ref_mean).numpy()
    assert np.abs(res - ref_res).max() / np.abs(ref_res).max() < 1e-4
    assert np.abs(res).mean() > 1e-2  # the diffusion does something


def test_by_name_with_a_registry_file(package, tmp_path, http_server, monkeypatch):
    repo, rev = "nvidia/corrdiff-cmip6-era5", "f756fad5b85efec64df4868aead14dda698b8aea"
    server = hugging_face_mirror(tmp_path, http_server, monkeypatch, package, repo, rev, with_api=False,
                                 registry_entry=("my-corrdiff", "corrdiff_package"))
    assert {"my-corrdiff", "corrdiff-cmip6-era5", "stormcast-v1", "corrdiff-taiwan"} <= set(xkmcast.published_models())
    model = xkmcast.load_model("my-corrdiff")
    direct = xkmcast.load_model(package)
    x = torch.randn(1, len(GEN_INPUTS), *SHAPE, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.sample(x, seeds=[[1]], num_steps=2)[0], direct.sample(x, seeds=[[1]], num_steps=2)[0])


@pytest.mark.parametrize("change, match", [
    ({"metadata_extra": {"time_window": [-24, 0, 24]}}, "cannot honour"),
    ({"metadata_extra": {"inference_mode": "diffusion"}}, "inference_mode"),
    ({"metadata_extra": {"sampler_type": "deterministic"}}, "hr_mean_conditioning"),
])
def test_refuses_what_it_cannot_honour(tmp_path, change, match):
    root = build_corrdiff_package(tmp_path / "pkg", shape=(8, 8), **change)
    with pytest.raises(BundleError, match=match):
        xkmcast.load_model(root)


def test_refuses_a_condition_of_another_size(package, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    meta = json.loads((bad / "metadata.json").read_text())
    meta["invariant_variables"] = ["orog"]  # the networks were trained with two invariants
    (bad / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="time-window"):
        xkmcast.load_model(bad)
