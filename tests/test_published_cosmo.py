"""CorrDiff COSMO-REA packages (``nvidia/corrdiff-cosmo-era5``, rea6/ and rea2/) by folder and by name,
against a reference that follows Earth2Studio's ``CorrDiffCosmoEra5`` step by step with PhysicsNeMo's
modules (DiT, EDMPreconditioner, EDMNoiseScheduler, ``sample``, ``cos_zenith_angle``)."""

from __future__ import annotations

import datetime
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from _http import http_server  # noqa: F401  (pytest fixture)
from _packages import (COSMO_ERA5, COSMO_OUTPUTS, COSMO_POST, COSMO_PRE, build_cosmo_package, hugging_face_mirror,
                       sha256)
from test_published_corrdiff_taiwan import _bilinear_regular

import xkmcast
from xkmcast.diffusion.seeds import row_seed
from xkmcast.errors import BundleError, ConfigError, IntegrityError
from xkmcast.fields.solar import cos_zenith_window_max

pytestmark = pytest.mark.reference
UNITS = {"u10m": "m s-1", "v10m": "m s-1", "t2m": "K", "z500": "m2 s-2"}
LEVEL = {"u10m": 2.0, "v10m": -1.0, "t2m": 285.0, "z500": 55500.0}
TIMES = np.array(["2021-07-14T12:00", "2021-07-14T03:00"], "datetime64[ns]")  # noon, and dawn (solar gate ramps)
NAMES = ["u10m", "t2m", "tp", "tcc", "aswdir_s", "aswdifd_s"]  # Earth2Studio's public names


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return build_cosmo_package(tmp_path_factory.mktemp("cosmo") / "pkg")


def era5(root):
    with xr.open_dataset(root / "rea6/grids.nc") as g:
        lat, lon = g["lat_input"].values.astype(float), g["lon_input"].values.astype(float)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    rng = np.random.default_rng(5)
    data = {v: (("time", "lat", "lon"), (LEVEL[v] + 3 * np.sin(la * (k + 1)) * np.cos(lo / (k + 2))
                                         * (300 if v == "z500" else 1) + rng.normal(0, 1, (len(TIMES), *la.shape))
                                         ).astype(np.float32), {"units": UNITS[v]})
            for k, v in enumerate(COSMO_ERA5)}
    return xr.Dataset(data, coords={"time": TIMES, "lat": ("lat", lat, {"units": "degrees_north"}),
                                    "lon": ("lon", lon, {"units": "degrees_east"})})


# ------------------------------------------------------------------ Earth2Studio's steps, PhysicsNeMo's modules
def _physicsnemo_cos_zenith(when, lat, lon):
    from physicsnemo.utils.zenith_angle import cos_zenith_angle

    t = datetime.datetime.fromisoformat(str(np.datetime64(when, "s"))).replace(tzinfo=datetime.timezone.utc)
    return np.maximum(cos_zenith_angle(t - datetime.timedelta(hours=1), lon, lat), cos_zenith_angle(t, lon, lat)
                      ).astype(np.float32)


def background(root, x, when, zenith="physicsnemo"):
    """CorrDiffCosmoEra5.preprocess_input: [ERA5 z-scored | pre | cos_zenith | post] (1, C, H, W)."""
    folder = root / "rea6"
    stats = json.loads((folder / "stats.json").read_text())
    with xr.open_dataset(folder / "grids.nc") as g:
        lat0, lon0 = (torch.as_tensor(g[k].values) for k in ("lat_input", "lon_input"))
        lat2, lon2 = (torch.as_tensor(g[k].values) for k in ("lat_output", "lon_output"))
    with xr.open_dataset(folder / "invariants.nc") as inv:
        static = {n: torch.as_tensor(inv[n].values) for n in inv.data_vars}
    era = _bilinear_regular(torch.as_tensor(x), lat0, lon0, lat2, lon2)[None]
    c = torch.tensor([stats["era5"][v]["mean"] for v in COSMO_ERA5]).view(1, -1, 1, 1)
    s = torch.tensor([stats["era5"][v]["std"] for v in COSMO_ERA5]).view(1, -1, 1, 1)
    era = (era - c) / s
    rl, ro = torch.deg2rad(lat2), torch.deg2rad(lon2)
    pos = dict(sin_lat=torch.sin(rl), cos_lat=torch.cos(rl), sin_lon=torch.sin(ro), cos_lon=torch.cos(ro))
    stack = lambda names: torch.stack([pos[n] if n in pos else static[n] for n in names])[None]  # noqa: E731
    cz = _cos_zenith(when, lat2, lon2, zenith)
    return torch.cat([era, stack(COSMO_PRE), torch.as_tensor(cz)[None, None], stack(COSMO_POST)], 1).float(), lat2, lon2


def _cos_zenith(when, lat2, lon2, zenith):
    """Earth2Studio's max(cos_zenith(t - 1 h), cos_zenith(t)) with PhysicsNeMo's formula, or with xkmcast's."""
    if zenith == "physicsnemo":
        return _physicsnemo_cos_zenith(when, lat2.numpy(), lon2.numpy())
    return cos_zenith_window_max(when, lat2.numpy().astype(float), lon2.numpy().astype(float)).astype(np.float32)


def postprocess(root, y, mode, when, lat2, lon2, zenith):
    """CorrDiffCosmoEra5.postprocess_output (physical_clamp on), written again in torch."""
    meta = json.loads((root / "rea6/metadata.json").read_text())
    stats = json.loads((root / "rea6/stats.json").read_text())
    key = meta["modes"][mode]["stats"]
    c = torch.tensor([stats[key][v]["mean"] for v in COSMO_OUTPUTS]).view(1, -1, 1, 1)
    s = torch.tensor([stats[key][v]["std"] for v in COSMO_OUTPUTS]).view(1, -1, 1, 1)
    x = y * s + c
    tr = meta["channel_transforms"] if meta["modes"][mode].get("channel_transforms", True) else {}
    i = COSMO_OUTPUTS.index
    for name, t in tr.items():
        k, eps = i(name), t["eps"]
        if t["transform"] == "log_eps":
            x[:, k] = (eps * torch.expm1(x[:, k])).clamp(min=0)
        elif t["transform"] == "asinh":
            x[:, k] = eps * torch.sinh(x[:, k])
        else:
            x[:, k] = (((torch.sigmoid(x[:, k]) - eps) / (1 - 2 * eps)) * t["scale"]).clamp(0, t["scale"])
    for name, b in meta["constraints"]["bounds"].items():
        x[:, i(name)] = x[:, i(name)].clamp(min=b["min"], max=b["max"])
    cz = torch.as_tensor(_cos_zenith(when, lat2, lon2, zenith))
    gate = meta["constraints"]["sza_gate"]
    for name, g in gate["channels"].items():
        th, hw = g["threshold"], g.get("half_width", gate["half_width"])
        x[:, i(name)] = (x[:, i(name)] * ((cz - th + hw) / (2 * hw)).clamp(0, 1)).clamp(min=0)
    x[:, i("CLCT")] *= 0.01
    x[:, i("TOT_PRECIP")] *= 1e-3
    return x


def reference(root, x, when, mode, latents=None, zenith="physicsnemo"):
    from physicsnemo.diffusion.noise_schedulers import EDMNoiseScheduler
    from physicsnemo.diffusion.preconditioners import EDMPreconditioner
    from physicsnemo.diffusion.samplers import sample
    from physicsnemo.models.dit import DiT

    meta = json.loads((root / "rea6/metadata.json").read_text())
    bg, lat2, lon2 = background(root, x, when, zenith)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        if mode == "mean":  # dense attention takes no latent_hw, so no attn_kwargs
            net = DiT.from_checkpoint(str(root / "rea6" / meta["checkpoints"]["rea6_mean"])).eval()
            return postprocess(root, net(bg, bg.new_zeros(1), condition=None).float(), mode, when, lat2, lon2,
                               zenith)
        net = EDMPreconditioner.from_checkpoint(str(root / "rea6" / meta["checkpoints"]["rea6_diffusion"])).eval()
        smp = meta["sampler"]
        scheduler = EDMNoiseScheduler(sigma_min=smp["sigma_min"], sigma_max=smp["sigma_max"], rho=smp["rho"])
        denoiser = scheduler.get_denoiser(
            x0_predictor=lambda z, t: net(z.float(), t.to(torch.float32).reshape(-1), condition=bg).double())
        outs = [sample(denoiser, lat.double()[None] * smp["sigma_max"], scheduler, num_steps=smp["num_steps"],
                       solver=smp["solver"]).float() for lat in latents]
    return torch.cat([postprocess(root, o, mode, when, lat2, lon2, zenith) for o in outs])


def _got(fine, t):
    return np.stack([fine[v].values[:, t] for v in NAMES], axis=1)  # (member, C, H, W)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


# -------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_mean_mode_by_folder_matches_earth2studio_steps(package):
    model = xkmcast.load_model(package)
    ds = era5(package)
    fine = ds.kmcast.downscale(model, members=2)
    with xr.open_dataset(package / "rea6/grids.nc") as g:
        np.testing.assert_array_equal(fine["lat"].values, g["lat_output"].values.astype(np.float64))
        np.testing.assert_array_equal(fine["lon"].values, g["lon_output"].values.astype(np.float64))
        assert fine["crs"].attrs["grid_mapping_name"] == "rotated_latitude_longitude"
    assert list(fine.data_vars) == NAMES and fine["t2m"].attrs["units"] == "K"
    for t, when in enumerate(TIMES):
        x = np.stack([ds[v].values[t] for v in COSMO_ERA5])
        got = _got(fine, t)
        np.testing.assert_array_equal(got[0], got[1])  # the mean is one field for every member
        # with PhysicsNeMo's own cos zenith (xkmcast.fields.solar computes the same numbers; the dawn
        # gate's 1 / (2 hw) ramp would multiply any difference by 10 on the gated shortwave fluxes)
        ref = reference(package, x, when, "mean")[0].numpy()
        assert _rel(got[0], ref) < 1e-5
        assert np.abs(ref[COSMO_OUTPUTS.index("T_2M")] - 283).max() > 1.0  # the network does something
    # at 03:00 UTC the solar gate of ASWDIR_S is between 0.002 and 0.48 over the grid: a partial ramp
    assert set(model.spec.extra["output_recipe"]["sza_gate"]) == {"ASWDIR_S", "ASWDIFD_S"}


@pytest.mark.slow
def test_diffusion_mode_matches_earth2studio_steps(package):
    model = xkmcast.load_model(package, package_options={"mode": "diffusion"})
    assert model.spec.sampler == {"sampler": "heun", "num_steps": 4, "rho": 7.0, "sigma_min": 0.002, "sigma_max": 80.0}
    ds = era5(package).isel(time=[0])
    fine = ds.kmcast.downscale(model, members=2, seed=3)
    x = np.stack([ds[v].values[0] for v in COSMO_ERA5])
    shape = (len(COSMO_OUTPUTS), *fine["lat"].shape)
    latents = [torch.randn(shape, generator=torch.Generator().manual_seed(row_seed(3, k, TIMES[0])), dtype=torch.float64)
               for k in range(2)]
    ref = reference(package, x, TIMES[0], "diffusion", latents, zenith="xkmcast").numpy()
    got = _got(fine, 0)
    for c in range(len(NAMES)):  # channel by channel: tp is ~1e-3 of the others
        assert _rel(got[:, c], ref[:, c]) < 1e-4, NAMES[c]
    assert np.abs(got[0] - got[1]).max() > 1e-2  # members differ
    ref_pn = reference(package, x, TIMES[0], "diffusion", latents).numpy()
    assert _rel(got, ref_pn) < 1e-4  # with PhysicsNeMo's cos zenith


def test_by_name_through_the_registry(package, tmp_path, http_server, monkeypatch):
    """The packaged entry (folder rea6/ at Earth2Studio's pinned commit): files listed by the host's revision
    API, each verified against its LFS sha256 / git blob id (the default); refused with trust_host_hashes=False."""
    repo, rev = "nvidia/corrdiff-cosmo-era5", "44064f304158f863f6ae02948b1b8e08d523458e"
    server = hugging_face_mirror(tmp_path, http_server, monkeypatch, package, repo, rev)
    monkeypatch.delenv("XKMCAST_MODEL_REGISTRY", raising=False)
    with pytest.raises(IntegrityError, match="never uses an unverified download"):
        xkmcast.load_model("corrdiff-cosmo-rea6", trust_host_hashes=False)
    assert server.requests == []
    model = xkmcast.load_model("corrdiff-cosmo-rea6")
    fetched = sorted(r.rsplit("/", 1)[-1] for r in server.requests if "/resolve/" in r)
    assert fetched == sorted(p.name for p in (package / "rea6").iterdir())
    cached = tmp_path / "cache" / "models" / "corrdiff-cosmo-rea6" / rev / "rea6"
    assert all(sha256(cached / p.name) == sha256(p) for p in (package / "rea6").iterdir())
    direct = xkmcast.load_model(package / "rea6")
    assert model.spec.extra["resolution"] == direct.spec.extra["resolution"] == "rea6"
    x = torch.randn(1, len(COSMO_ERA5), *direct.grid_lat.shape, generator=torch.Generator().manual_seed(0))
    t = TIMES[:1]
    assert torch.equal(model.sample(x, seeds=[[1]], times=t)[0], direct.sample(x, seeds=[[1]], times=t)[0])
    with pytest.raises(ConfigError, match="valid times"):
        model.sample(x, seeds=[[1]])


def test_extended_invariants_equal_the_stored_ones(package, tmp_path):
    """metadata "invariants": the physical extended file, native block by index, z-scored on load."""
    ext = build_cosmo_package(tmp_path / "ext", extended=True)
    a, b = xkmcast.load_model(package), xkmcast.load_model(ext)
    assert torch.allclose(a.invariant, b.invariant, atol=1e-6)
    assert a.invariant.shape == (len(COSMO_PRE) + len(COSMO_POST), *a.grid_lat.shape)


def test_rea2_folder_and_natten_backend(tmp_path):
    """A rea2/ package whose DiT uses PhysicsNeMo's natten2d backend runs on xkmcast's neighbourhood attention."""
    from xkmcast.nn.dit_attention import NeighborhoodSelfAttention

    root = build_cosmo_package(tmp_path / "pkg", resolution="rea2", backend="natten2d")
    model = xkmcast.load_model(root)
    assert model.spec.extra["resolution"] == "rea2"
    attn = [m for m in model.modules() if type(m).__name__.endswith("SelfAttention")]
    assert len(attn) == 2 and all(isinstance(m, NeighborhoodSelfAttention) for m in attn)
    x = torch.randn(1, len(COSMO_ERA5), *model.grid_lat.shape)
    mean = model.sample(x, seeds=[[0]], times=TIMES[:1])[1]
    assert torch.isfinite(mean).all() and mean.std() > 0.1


@pytest.mark.parametrize("change, match", [
    ({"checkpoints": {}}, "rea6_mean"),
    ({"modes": {"diffusion": {"stats": "output"}}}, "no entry for this mode"),
    ({"constraints": {"bounds": {"CLCT": {"min": 0, "max": 100, "mode": "sigmoid"}}}}, "sigmoid"),
    ({"channel_transforms": {"CLCT": {"transform": "boxcox", "eps": 1}}}, "Unsupported channel transform"),
    ({"constraints": {"sza_gate": {"channels": {"ASWDIR_S": {"threshold": 0.03}}}}}, "every shortwave"),
    ({"post_invariant_variables": []}, "does not take the channels"),
])
def test_refuses_what_it_cannot_honour(package, tmp_path, change, match):
    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    meta = json.loads((bad / "rea6/metadata.json").read_text())
    (bad / "rea6/metadata.json").write_text(json.dumps({**meta, **change}))
    options = {"mode": "diffusion"} if "channel_transforms" in change else {}
    with pytest.raises(BundleError, match=match):
        xkmcast.load_model(bad, package_options=options)


def test_refuses_bad_stats_and_grids(package, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    stats = json.loads((bad / "rea6/stats.json").read_text())
    stats["era5"]["t2m"]["std"] = 0.0
    (bad / "rea6/stats.json").write_text(json.dumps(stats))
    with pytest.raises(BundleError, match="invalid"):
        xkmcast.load_model(bad)
    shutil.copy(package / "rea6/stats.json", bad / "rea6/stats.json")
    with xr.open_dataset(package / "rea6/grids.nc") as g:
        g = g.load()
    g["lat_input"] = g["lat_input"][::-1]
    g.to_netcdf(bad / "rea6/grids.nc")
    with pytest.raises(BundleError, match="increasing"):
        xkmcast.load_model(bad)


def test_a_folder_entry_has_no_hash_of_its_own(tmp_path):
    from xkmcast.errors import CatalogError
    from xkmcast.models.published import registry

    path = tmp_path / "models.yaml"
    path.write_text("x:\n  family: corrdiff_cosmo\n  host: huggingface\n  repo: a/b\n  revision: '" + "0" * 40 + "'" +
                    "\n  files: {rea6/: " + "a" * 64 + "}\n")
    with pytest.raises(CatalogError, match="folder entry"):
        registry.entries(path)


def test_a_package_with_both_resolutions(package, tmp_path):
    """Like Earth2Studio's package: rea6/ and rea2/ side by side; rea6 unless the resolution is asked for."""
    both = tmp_path / "both"
    shutil.copytree(package, both)
    build_cosmo_package(both, resolution="rea2", shape=(8, 12))
    assert xkmcast.load_model(both).spec.extra["resolution"] == "rea6"
    rea2 = xkmcast.load_model(both, package_options={"resolution": "rea2", "mode": "diffusion"})
    assert rea2.spec.extra["resolution"] == "rea2" and tuple(rea2.grid_lat.shape) == (8, 12)
    with pytest.raises(BundleError, match="Unknown COSMO-REA mode"):
        xkmcast.load_model(both, package_options={"mode": "both"})
