"""CorrDiff-Taiwan by name (NGC files API on 127.0.0.1), by folder and by archive, against a reference
that follows Earth2Studio's ``CorrDiffTaiwan`` steps with PhysicsNeMo 2.2.2's modules.

The package's grid size is taken from its XLAT (the grid channels too), so the main test uses a
66 x 66 XLAT (64 x 64 after the crop): at the published 450 x 450 one member of 8 Euler steps costs
~15 s with the tiniest U-Net on this 2-core CPU (x2 for the reference). ``test_published_grid_450``
(slow) runs the published size with 1 member and 2 steps.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from _http import http_server  # noqa: F401  (pytest fixture)
from _packages import build_taiwan, ngc_mirror, physicsnemo_classes, sha256, zip_taiwan

import xkmcast
from xkmcast.errors import IntegrityError
from xkmcast.diffusion.seeds import row_seed

INPUTS = ["tcwv", "z500", "t500", "u500", "v500", "z850", "t850", "u850", "v850", "t2m", "u10m", "v10m"]
UNITS = {"tcwv": "kg m-2", "z": "m2 s-2", "t": "K", "u": "m s-1", "v": "m s-1"}
IN_LAT, IN_LON = np.linspace(19.25, 28, 36), np.linspace(116, 126, 40, endpoint=False)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return build_taiwan(tmp_path_factory.mktemp("taiwan"), n=66)


def era5_on_input_grid(times=2, seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    lat2, lon2 = np.meshgrid(IN_LAT, IN_LON, indexing="ij")
    data = {}
    offset = {"tcwv": 30.0, "z500": 55000.0, "z850": 14000.0, "t500": 250.0, "t850": 270.0, "t2m": 285.0}
    for k, name in enumerate(INPUTS):  # physically plausible values: downscale checks ranges
        field = np.sin(lat2 / (3 + k) + k) * np.cos(lon2 / (2 + k)) * (10 + k) + rng.normal(0, 1, (times, 36, 40))
        field = field + offset.get(name, 0.0)
        units = UNITS.get(name, UNITS.get(name.rstrip("0123456789m")[:1], "1"))
        if name in ("t2m",):
            units = "K"
        if name in ("u10m", "v10m"):
            units = "m s-1"
        data[name] = (("time", "lat", "lon"), field.astype(np.float32), {"units": units})
    coords = {"time": np.array(["2024-01-01T00", "2024-01-01T06"][:times], dtype="datetime64[ns]"),
              "lat": ("lat", IN_LAT, {"units": "degrees_north", "standard_name": "latitude"}),
              "lon": ("lon", IN_LON, {"units": "degrees_east", "standard_name": "longitude"})}
    return xr.Dataset(data, coords=coords)


# ------------------------------------------------------------------------------------ reference
def _bilinear_regular(values, lat0, lon0, lat1, lon1):
    """Earth2Studio's latlon_interpolation_regular (bilinear on a regular grid), written here in torch."""
    shape = lat1.shape
    lat1, lon1 = lat1.flatten(), lon1.flatten()
    i = torch.clamp(torch.searchsorted(lat0, lat1) - 1, 0, lat0.numel() - 2)
    j = torch.clamp(torch.searchsorted(lon0, lon1) - 1, 0, lon0.numel() - 2)
    a = (lat1 - lat0[i]) / (lat0[1] - lat0[0])
    b = (lon1 - lon0[j]) / (lon0[1] - lon0[0])
    out = (values[..., i, j] * (1 - a) * (1 - b) + values[..., i, j + 1] * (1 - a) * b
           + values[..., i + 1, j] * a * (1 - b) + values[..., i + 1, j + 1] * a * b)
    return out.reshape(*values.shape[:-2], *shape)


def reference(root, x, latents, num_steps=8):
    """Earth2Studio's CorrDiffTaiwan._forward for one input (12, 36, 40) with the given latents."""
    import zarr

    cls = physicsnemo_classes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from physicsnemo.diffusion.generate.legacy_generate import regression_step
        from physicsnemo.diffusion.samplers.legacy_deterministic_sampler import deterministic_sampler

        residual = cls["EDMPrecondSR"].from_checkpoint(str(root / "checkpoints/diffusion.mdlus")).eval()
        regression = cls["UNet"].from_checkpoint(str(root / "checkpoints/regression.mdlus")).eval()
    store = zarr.open_group(str(root / "dataset/2023-01-24-cwb-4years_5times.zarr"), mode="r")
    lat_full = torch.as_tensor(store["XLAT"][:], dtype=torch.float32)
    lon_full = torch.as_tensor(store["XLONG"][:], dtype=torch.float32)
    era5 = [0, 1, 2, 3, 4, 9, 10, 11, 12, 17, 18, 19]
    cwb = [0, 17, 18, 19]
    in_c = torch.as_tensor(store["era5_center"][era5], dtype=torch.float32)[:, None, None]
    in_s = torch.as_tensor(store["era5_scale"][era5], dtype=torch.float32)[:, None, None]
    out_c = torch.as_tensor(store["cwb_center"][cwb], dtype=torch.float32)[:, None, None]
    out_s = torch.as_tensor(store["cwb_scale"][cwb], dtype=torch.float32)[:, None, None]
    x = _bilinear_regular(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(IN_LAT, dtype=torch.float32),
                          torch.as_tensor(IN_LON, dtype=torch.float32), lat_full, lon_full)[..., 1:-1, 1:-1]
    x = ((x.unsqueeze(0) - in_c) / in_s)
    h, w = x.shape[-2:]
    s1, c1 = np.sin(np.linspace(0, 2 * np.pi, h)), np.cos(np.linspace(0, 2 * np.pi, h))
    gx1, gy1 = np.meshgrid(s1, s1)
    gx2, gy2 = np.meshgrid(c1, c1)
    grid = torch.as_tensor(np.stack((gx1, gy1, gx2, gy2))[None], dtype=torch.float32)
    m = latents.shape[0]
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean = regression_step(net=regression, img_lr=torch.cat((x, grid), dim=1), latents_shape=(m, 4, h, w))
        res = deterministic_sampler(residual, latents, x.expand(m, -1, -1, -1), mean_hr=mean[0:1],
                                    num_steps=num_steps, solver="euler")
    return (mean + res) * out_s + out_c, mean[0] * out_s + out_c


def latents_of(seeds, shape):
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
                        for s in seeds])


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ---------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_by_name_through_the_ngc_files_api_matches_earth2studio_steps(package, tmp_path, http_server, monkeypatch):
    server, archive = ngc_mirror(tmp_path, http_server, monkeypatch, package)
    assert "corrdiff-taiwan" in xkmcast.published_models()
    with pytest.raises(IntegrityError, match="known_hashes"):  # hash unknown in the packaged registry
        xkmcast.load_model("corrdiff-taiwan")
    with pytest.raises(IntegrityError, match="does not match"):
        xkmcast.load_model("corrdiff-taiwan", known_hashes={"corrdiff_inference_package.zip": "0" * 64})
    model = xkmcast.load_model("corrdiff-taiwan", known_hashes={"corrdiff_inference_package.zip": sha256(archive)})
    assert any("/files" in r for r in server.requests) and any("/direct/" in r for r in server.requests)

    era5 = era5_on_input_grid()
    fine = era5.kmcast.downscale(model, members=2, seed=5, include_mean=True)
    assert fine["refc"].dims == ("member", "time", "y", "x") and fine.sizes["y"] == 64
    assert fine["refc"].attrs["standard_name"] == "equivalent_reflectivity_factor"
    np.testing.assert_array_equal(fine["lat"].values, np.asarray(
        __import__("zarr").open_group(str(package / "dataset/2023-01-24-cwb-4years_5times.zarr"))["XLAT"][1:-1, 1:-1], float))
    names = ["refc", "t2m", "u10m", "v10m"]
    for t, time in enumerate(era5.time.values):
        x = np.stack([era5[v].values[t] for v in INPUTS])
        seeds = [row_seed(5, k, time) for k in range(2)]
        ref, ref_mean = reference(package, x, latents_of(seeds, (4, 64, 64)))
        got_mean = np.stack([fine[f"{v}_regression"].values[t] for v in names])
        assert _rel(got_mean, ref_mean.numpy()) < 1e-5
        got = np.stack([fine[v].values[:, t] for v in names], axis=1)
        assert _rel(got, ref.numpy()) < 1e-4
        assert _rel(got - got_mean, (ref - ref_mean).numpy()) < 1e-4  # the residual alone, same noise
        assert float(np.abs(got[0] - got[1]).mean()) > 1e-3  # members differ: the diffusion does something


def test_by_folder_and_archive_give_the_same_model(package, tmp_path, monkeypatch):
    monkeypatch.setenv("XKMCAST_DATA_DIR", str(tmp_path / "cache"))
    by_folder = xkmcast.load_model(package)
    by_parent = xkmcast.load_model(package.parent)
    by_zip = xkmcast.load_model(zip_taiwan(package, tmp_path / "pkg.zip"))
    x = torch.randn(1, 12, 64, 64, generator=torch.Generator().manual_seed(0))
    outs = [m.sample(x, seeds=[[3]], num_steps=2)[0] for m in (by_folder, by_parent, by_zip)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert by_folder.spec.sampler["num_steps"] == 8 and by_folder.spec.sampler["sampler"] == "euler"


def test_any_input_covering_the_input_grid_is_regridded_onto_it_first(package):
    """A finer ERA5 (0.125 deg over a larger box) gives what its bilinear onto the 0.25 deg grid gives."""
    from xkmcast.fields.downscale import onto_input_grid
    from xkmcast.fields.regrid import regrid

    model = xkmcast.load_model(package)
    coarse = era5_on_input_grid(times=1)
    fine_in = coarse.interp(lat=np.arange(19.0, 28.3, 0.125), lon=np.arange(115.5, 126.4, 0.125),
                            kwargs={"fill_value": None})
    onto = regrid(fine_in, onto_input_grid(coarse, model.spec.extra["input_grid"]))
    a = fine_in.kmcast.downscale(model, members=1, num_steps=1, include_mean=True)
    b = onto.kmcast.downscale(model, members=1, num_steps=1, include_mean=True)
    np.testing.assert_allclose(a["t2m_regression"].values, b["t2m_regression"].values, rtol=1e-5)


def test_refuses_what_it_cannot_reproduce(package, tmp_path):
    import shutil

    from xkmcast.errors import BundleError

    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    shutil.copy(package / "checkpoints/regression.mdlus", bad / "checkpoints/diffusion.mdlus")
    with pytest.raises(BundleError, match="super-resolution"):
        xkmcast.load_model(bad)


@pytest.mark.slow
def test_published_grid_450(tmp_path):
    """The published 450 x 450 XLAT: regression mean and one 2-step member against the reference."""
    root = build_taiwan(tmp_path, n=450)
    model = xkmcast.load_model(root)
    era5 = era5_on_input_grid(times=1)
    fine = era5.kmcast.downscale(model, members=1, num_steps=2, seed=1, include_mean=True)
    assert fine.sizes["y"] == fine.sizes["x"] == 448
    x = np.stack([era5[v].values[0] for v in INPUTS])
    ref, ref_mean = reference(root, x, latents_of([row_seed(1, 0, era5.time.values[0])], (4, 448, 448)), num_steps=2)
    names = ["refc", "t2m", "u10m", "v10m"]
    assert _rel(np.stack([fine[f"{v}_regression"].values[0] for v in names]), ref_mean.numpy()) < 1e-5
    assert _rel(np.stack([fine[v].values[:, 0] for v in names], axis=1), ref.numpy()) < 1e-4


@pytest.mark.slow
def test_cli_downscale_by_name(package, tmp_path, http_server, monkeypatch):
    from typer.testing import CliRunner

    from xkmcast.cli import app

    server, archive = ngc_mirror(tmp_path, http_server, monkeypatch, package)
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "corrdiff-taiwan" in listed.output and "stormcast-v1" in listed.output
    era5 = era5_on_input_grid(times=1)
    era5.to_netcdf(tmp_path / "era5.nc")
    out = tmp_path / "fine.zarr"
    result = runner.invoke(app, ["downscale", "corrdiff-taiwan", str(tmp_path / "era5.nc"), str(out), "--members", "2",
                                 "--steps", "2", "--quiet", "--known-hash", f"corrdiff_inference_package.zip={sha256(archive)}"])
    assert result.exit_code == 0, result.output
    written = xr.open_zarr(out, consolidated=False)
    expected = era5.kmcast.downscale(xkmcast.load_model(package), members=2, num_steps=2)
    np.testing.assert_allclose(written["t2m"].values, expected["t2m"].values, rtol=1e-6)
    assert written["t2m"].attrs["units"] == "K" and written["lat"].shape == (64, 64)
