"""StormCast v1 by name (Hugging Face resolve URLs on 127.0.0.1) and by folder, against a reference
following Earth2Studio's ``StormCast._forward`` with PhysicsNeMo 2.2.2's modules and sampler.

The HRRR window is taken from an option so the test runs on 16 x 24 points (the published 512 x 640
with 99 channels costs minutes per step on this CPU); the window's rows / columns and the Lambert
grid are the published ones otherwise, and checked against Earth2Studio's construction.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from _http import http_server  # noqa: F401  (pytest fixture)
from _packages import BACKGROUND_VARS, STATE_VARS, build_stormcast, physicsnemo_classes, hugging_face_mirror

import xkmcast
from xkmcast.errors import BundleError, IntegrityError
from xkmcast.diffusion.seeds import row_seed

REPO, REVISION = "nvidia/stormcast-v1-era5-hrrr", "6c89a0877a0d6b231033d3b0d8b9828a6f833ed8"
WINDOW = ((400, 416), (800, 824))
SHAPE = (16, 24)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return build_stormcast(tmp_path_factory.mktemp("stormcast") / "pkg", shape=SHAPE,
                           sampler_args={"sigma_max": 400.0, "sigma_min": 0.01, "rho": 7, "S_churn": 0.0})


def e2s_hrrr_grid():
    """Earth2Studio's HRRR.grid(): corners -> Lambert eastings / northings -> linspace -> lat / lon."""
    import pyproj

    p1 = pyproj.CRS("proj=lcc lon_0=262.5 lat_0=38.5 lat_1=38.5 lat_2=38.5 a=6371229 b=6371229")
    p2 = pyproj.CRS("latlon")
    fwd, inv = pyproj.Transformer.from_proj(p2, p1), pyproj.Transformer.from_proj(p1, p2)
    lat = np.array([21.138123, 47.83862349881542, 47.84219502248866, 21.140546625419148])
    lon = np.array([237.280472, 225.90452026573686, 299.0828072281622, 287.71028150897075])
    e, n = fwd.transform(lat, lon)
    E, N = np.meshgrid(np.linspace(e[0], e[2], 1799), np.linspace(n[0], n[1], 1059))
    la, lo = inv.transform(E, N)
    return la, np.where(lo < 0, lo + 360, lo)


#: physically plausible levels per unit (downscale and forecast check value ranges)
LEVEL = {"K": 280.0, "Pa": 100000.0, "kg m-2": 30.0, "m2 s-2": 55000.0, "dBZ": 20.0}


def datasets(model, times=("2024-05-01T00", "2024-05-01T01", "2024-05-01T02"), seed=0):
    rng = np.random.default_rng(seed)
    lat, lon = model.grid_lat.numpy(), model.grid_lon.numpy()
    coords = {"time": np.array(times, dtype="datetime64[ns]"), "y": model.spec.grid["y"], "x": model.spec.grid["x"],
              "lat": (("y", "x"), lat), "lon": (("y", "x"), lon)}
    units = {"u10m": "m s-1", "v10m": "m s-1", "t2m": "K", "msl": "Pa", "refc": "dBZ", "tcwv": "kg m-2", "sp": "Pa",
             "u1000": "m s-1", "z500": "m2 s-2"}

    def make(names, n):
        return xr.Dataset({v: (("time", "y", "x"), rng.normal(0, 3, (n, *lat.shape)).astype(np.float32) + 10 * k
                               + LEVEL.get(units.get(v, "1"), 0.0),
                               {"units": units.get(v, "1")}) for k, v in enumerate(names)},
                          coords={k: v for k, v in coords.items() if k != "time"} | {"time": coords["time"][:n]})

    return make(STATE_VARS, 1), make(BACKGROUND_VARS, len(times))


def reference(root, state, background, latents, sampler, num_steps):
    """Earth2Studio's StormCast._forward with the given standard-normal latents."""
    cls = physicsnemo_classes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from physicsnemo.diffusion.noise_schedulers import EDMNoiseScheduler
        from physicsnemo.diffusion.samplers import sample

        regression = cls["StormCastUNet"].from_checkpoint(str(root / "StormCastUNet.0.0.mdlus")).eval()
        diffusion = cls["EDMPrecond"].from_checkpoint(str(root / "EDMPrecond.0.0.mdlus")).eval()
    import zarr

    meta = xr.open_zarr(zarr.storage.ZipStore(str(root / "metadata.zarr.zip"), mode="r"), zarr_format=2)
    t = lambda a: torch.from_numpy(np.asarray(a, np.float32))[None, :, None, None]  # noqa: E731
    means, stds = t(meta["means"].values), t(meta["stds"].values)
    cmeans, cstds = t(meta["conditioning_means"].values), t(meta["conditioning_stds"].values)
    inv = torch.from_numpy(meta["invariants"].sel(invariant=["lsm", "orography"]).values).repeat(1, 1, 1, 1)
    x = (torch.as_tensor(state)[None] - means) / stds
    cond = (torch.as_tensor(background)[None] - cmeans) / cstds
    with torch.inference_mode():
        out = regression(torch.cat((x, cond, inv), dim=1))
        condition = torch.cat((x, out, inv), dim=1)
        scheduler = EDMNoiseScheduler(sigma_min=sampler["sigma_min"], sigma_max=sampler["sigma_max"], rho=sampler["rho"])
        denoiser = scheduler.get_denoiser(x0_predictor=lambda lx, tt: diffusion(lx, tt, condition=condition))
        edm = sample(denoiser, sampler["sigma_max"] * latents.to(torch.float32), noise_scheduler=scheduler,
                     num_steps=num_steps, solver="edm_stochastic_heun",
                     solver_options={k: sampler[k] for k in ("S_churn", "S_min", "S_max", "S_noise")})
    return (out + edm) * stds + means, out * stds + means


@pytest.mark.slow
def test_by_name_from_hugging_face_pinned_revision(package, tmp_path, http_server, monkeypatch):
    server = hugging_face_mirror(tmp_path, http_server, monkeypatch, package, REPO, REVISION)
    with pytest.raises(IntegrityError, match="trust_host_hashes"):  # strict: only the registry's hashes
        xkmcast.load_model("stormcast-v1", trust_host_hashes=False)
    options = {"hrrr_window": WINDOW}
    model = xkmcast.load_model("stormcast-v1", package_options=options)  # default: the host's checksums
    assert all(f"/{REPO}/resolve/{REVISION}/" in r for r in server.requests if "/resolve/" in r)
    n_requests = len(server.requests)
    again = xkmcast.load_model("stormcast-v1", trust_host_hashes=True, package_options=options)  # cached
    assert len(server.requests) == n_requests + 1  # only the checksum listing, no file download
    assert torch.equal(next(model.parameters()), next(again.parameters()))
    # a tampered cache file is detected, removed and downloaded again
    cached = tmp_path / "cache" / "models" / "stormcast-v1" / REVISION / "EDMPrecond.0.0.mdlus"
    cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")
    xkmcast.load_model("stormcast-v1", trust_host_hashes=True, package_options=options)
    assert cached.read_bytes() == (package / "EDMPrecond.0.0.mdlus").read_bytes()


@pytest.mark.slow
def test_grid_is_the_published_hrrr_window():
    from xkmcast.models.published.stormcast_v1 import HRRR_WINDOW, hrrr_subgrid

    assert HRRR_WINDOW == ((273, 785), (579, 1219))
    grid = hrrr_subgrid()
    lat, lon = e2s_hrrr_grid()
    assert grid["lat"].shape == (512, 640)
    np.testing.assert_allclose(grid["lat"], lat[273:785, 579:1219], atol=1e-6)
    np.testing.assert_allclose(grid["lon"], lon[273:785, 579:1219], atol=1e-6)
    assert grid["grid_mapping"]["longitude_of_central_meridian"] == 262.5


@pytest.mark.slow
def test_forecast_matches_earth2studio_steps(package):
    model = xkmcast.load_model(package, package_options={"hrrr_window": WINDOW})
    assert model.spec.sampler["sigma_max"] == 400.0 and model.spec.sampler["num_steps"] == 18
    state, background = datasets(model)
    fc = state.kmcast.forecast(model, steps=2, background=background, members=2, seed=3, num_steps=4)
    assert fc["t2m"].dims[:2] == ("member", "init_time") and fc.sizes["lead_time"] == 3
    assert str(fc["lead_time"].values[1].astype("timedelta64[h]")) == "1 hours"
    x = np.stack([state[v].values[0] for v in STATE_VARS])
    init = state.time.values[0]
    sampler = dict(model.spec.sampler)
    for k in range(2):
        latents = torch.randn((1, len(STATE_VARS), *SHAPE), generator=torch.Generator().manual_seed(row_seed(3, k, init, 0)),
                              dtype=torch.float64)
        bg = np.stack([background[v].values[0] for v in BACKGROUND_VARS])
        ref, ref_mean = reference(package, x, bg, latents, sampler, num_steps=4)
        got = np.stack([fc[v].values[k, 0, 1] for v in STATE_VARS])
        scale = np.abs(ref.numpy()).max()
        assert np.abs(got - ref[0].numpy()).max() / scale < 1e-4
    # the deterministic part: regression only
    from xkmcast.models.published.stormcast_v1 import load as load_sc

    reg_only = load_sc(package, hrrr_window=WINDOW)
    del reg_only.stages["diffusion"]
    xn = (torch.as_tensor(x)[None] - torch.as_tensor(np.asarray(reg_only.stats_for("input").arrays(STATE_VARS)[0]), dtype=torch.float32)[None, :, None, None]) \
        / torch.as_tensor(reg_only.stats_for("input").arrays(STATE_VARS)[1], dtype=torch.float32)[None, :, None, None]
    bn = reg_only.stats_for("background").normalise(np.stack([background[v].values[0] for v in BACKGROUND_VARS]), BACKGROUND_VARS)
    mean = reg_only.step(xn, torch.as_tensor(bn, dtype=torch.float32)[None], seeds=[0])
    phys = reg_only.stats_for("output").denormalise(mean.numpy(), STATE_VARS, axis=1)[0]
    rel = np.abs(phys - ref_mean[0].numpy()).max() / np.abs(ref_mean.numpy()).max()
    assert rel < 1e-5


def test_refuses_what_it_cannot_honour(package, tmp_path):
    import shutil

    import yaml

    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    with pytest.raises(BundleError, match="img_resolution|invariants"):
        xkmcast.load_model(bad)  # the published 512 x 640 window does not fit this small package
    cfg = yaml.safe_load((bad / "model.yaml").read_text())
    cfg["sampler_args"] = {"sigma_max": "${eval:'2*400'}"}
    (bad / "model.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(BundleError, match="interpolation"):
        xkmcast.load_model(bad, package_options={"hrrr_window": WINDOW})
    cfg["sampler_args"] = {"solver": "dpm"}
    (bad / "model.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(BundleError, match="sampler_args"):
        xkmcast.load_model(bad, package_options={"hrrr_window": WINDOW})


@pytest.mark.slow
def test_forecast_with_an_era5_background_on_its_own_grid(package):
    """The documented call: the background on a 0.25 deg lat / lon grid (-180..180) is regridded onto HRRR."""
    model = xkmcast.load_model(package, package_options={"hrrr_window": WINDOW})
    state, on_grid = datasets(model, times=("2024-05-01T00",))
    lat, lon = np.arange(30.0, 45.0, 0.25), np.arange(-105.0, -85.0, 0.25)
    era5 = xr.Dataset({v: (("time", "latitude", "longitude"), np.full((1, lat.size, lon.size), 10.0 * k + 1
                                                                     + LEVEL.get(on_grid[v].attrs.get("units"), 0.0), np.float32),
                           dict(on_grid[v].attrs)) for k, v in enumerate(BACKGROUND_VARS)},
                      coords={"time": on_grid.time.values, "latitude": lat, "longitude": lon})
    assert model.grid_lat.numpy().min() > 30 and model.grid_lon.numpy().min() > 180  # HRRR lon in [0, 360)
    const = xr.Dataset({v: (("time", "y", "x"), np.full((1, *SHAPE), 10.0 * k + 1 + LEVEL.get(on_grid[v].attrs.get("units"), 0.0),
                                                    np.float32), dict(on_grid[v].attrs))
                        for k, v in enumerate(BACKGROUND_VARS)}, coords=on_grid.coords)
    a = state.kmcast.forecast(model, steps=1, background=era5, num_steps=2)
    b = state.kmcast.forecast(model, steps=1, background=const, num_steps=2)
    np.testing.assert_allclose(a["t2m"].values, b["t2m"].values, rtol=1e-5)  # a constant field regrids exactly
