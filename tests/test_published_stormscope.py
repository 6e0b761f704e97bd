"""StormScope GOES (Hugging Face ``nvidia/stormscope-goes-mrms``) by name (resolve URLs on 127.0.0.1) and by
folder, against a reference that follows Earth2Studio's ``StormScopeBase`` (``load_model``, ``build_condition``,
``_forward``, ``_edm_sampler``, ``_select_expert``) with PhysicsNeMo 2.2.2's modules and ``cos_zenith_angle``.

The package is the published layout at a 16 x 24 image size (a centre crop of the full HRRR lat / lon),
with two sigma-range experts EDMPreconditioner(ConcatConditionWrapper(DiT)) using dense attention.
"""

from __future__ import annotations

import datetime
import json
import math

import numpy as np
import pytest
import torch
import xarray as xr
from _http import http_server  # noqa: F401  (pytest fixture)
from _packages import SCOPE_EXPERTS, SCOPE_VARS, build_stormscope, hugging_face_mirror, sha256

import xkmcast
from xkmcast.diffusion.seeds import row_seed
from xkmcast.errors import BundleError, IntegrityError, TimeCoverageError

pytestmark = pytest.mark.reference
REPO, REVISION = "nvidia/stormscope-goes-mrms", "62f0fd2fa52c3cff67c931daac18cdc0d9f58d2a"
SIZE, WINDOW = (16, 24), 3
TIMES = np.array(["2024-05-01T18:00", "2024-05-01T18:10", "2024-05-01T18:20"], dtype="datetime64[ns]")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return build_stormscope(tmp_path_factory.mktemp("stormscope") / "pkg", image_size=SIZE, window=WINDOW)


@pytest.fixture(scope="module")
def model(package):
    return xkmcast.load_model(package)


# ----------------------------------------------------------------------------------- the reference
class E2S:
    """Earth2Studio's StormScopeGOES steps, written out with the PhysicsNeMo modules."""

    def __init__(self, root):
        from physicsnemo import Module

        registry = json.loads((root / "registry.json").read_text())
        pkg = registry["goes"]["models"]["3km_10min"]
        loc = {n: (g, i) for g in registry["normalization"].values() for i, n in enumerate(g["order"])}
        means, stds = [], []
        for n in pkg["variables"]:
            group, i = loc[n]
            means.append(np.load(root / f"{group['file_prefix']}_means.npy")[i])
            stds.append(np.load(root / f"{group['file_prefix']}_stds.npy")[i])
        self.means = torch.tensor(np.array(means, np.float32))[None, :, None, None]
        self.stds = torch.tensor(np.array(stds, np.float32))[None, :, None, None]
        self.spec = sorted([{"model": Module.from_checkpoint(str(root / c["path"])).eval(), "sigma_min": float(c["sigma_min"]),
                             "sigma_max": float(c["sigma_max"])} for c in pkg["checkpoints"]],
                           key=lambda s: s["sigma_max"], reverse=True)
        size, ds = pkg["image_size"], pkg["spatial_downsample"]

        def crop(a):
            y0, x0 = int((a.shape[0] - size[0]) / 2), int((a.shape[1] - size[1]) / 2)
            return a[y0:y0 + size[0], x0:x0 + size[1]][::ds, ::ds]

        self.lat = crop(torch.from_numpy(np.load(root / "lat.npy"))).to(torch.float32)
        self.lon = crop((torch.from_numpy(np.load(root / "lon.npy")) + 360.0) % 360.0).to(torch.float32)
        self.fixed = [crop(torch.from_numpy(np.load(root / f"{k}.npy")).float()) for k in ("nexrad_proximity", "topo")]
        hrrr_x = np.linspace(-2697520.1425219304, 2696479.8574780696, 1799)
        hrrr_y = np.linspace(-1587306.1525566636, 1586693.8474433364, 1059)
        y0, x0 = int((1059 - size[0]) / 2), int((1799 - size[1]) / 2)
        self.y, self.x = hrrr_y[y0:y0 + size[0]][::ds], hrrr_x[x0:x0 + size[1]][::ds]
        self.dt = np.timedelta64(pkg["step_interval"], "m")
        self.start_sigma, self.end_sigma = self.spec[-1]["sigma_min"], self.spec[0]["sigma_max"]
        self.used = []

    def condition(self, x_norm, valid_time):
        """build_condition for one batch row: x_norm (1, n, C, H, W) normalised, valid time of its newest state."""
        from physicsnemo.utils.zenith_angle import cos_zenith_angle

        b, n = x_norm.shape[:2]
        parts = [x_norm.reshape(b, -1, *x_norm.shape[-2:])]
        lon = ((self.lon + 180.0) % 360.0 - 180.0 - 262.5) / 36
        parts.append(torch.cat(((self.lat - 38.5)[None, None] / 15, lon[None, None]), dim=1).repeat(b, 1, 1, 1))
        for t in (valid_time, valid_time + self.dt):
            when = datetime.datetime.fromtimestamp(np.datetime64(t, "s").astype(int), tz=datetime.timezone.utc)
            cz = cos_zenith_angle(when, self.lon.numpy(), self.lat.numpy())
            parts.append(torch.from_numpy(cz).to(torch.float32)[None, None].repeat(b, 1, 1, 1))
        parts += [f[None, None].repeat(b, 1, 1, 1) for f in self.fixed]
        return torch.cat(parts, dim=1)

    def select(self, t_cur):
        for i, stage in enumerate(self.spec):
            if t_cur >= stage["sigma_min"] - 1e-7 and t_cur < stage["sigma_max"] + 1e-7:
                self.used.append(i)
                return stage["model"]
        raise ValueError(t_cur)

    def sampler(self, latents, condition, randn_like, num_steps=100, rho=7, S_churn=10.0):
        """_edm_sampler (S_min 0, S_max inf, S_noise 1), amp off."""
        sigma_max, sigma_min = self.end_sigma, self.start_sigma
        i = torch.arange(num_steps, dtype=torch.float64)
        t_steps = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])
        x_next = latents.to(torch.float64) * t_steps[0]
        for k, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
            x_cur = x_next
            net = self.select(t_cur)
            gamma = min(S_churn / num_steps, np.sqrt(2) - 1)
            t_hat = torch.as_tensor(t_cur + gamma * t_cur)
            x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * randn_like(x_cur)
            bs = x_hat.shape[0]
            denoised = net(x_hat.float(), t_hat.reshape(1).expand(bs).float(), condition=condition).double()
            d_cur = (x_hat - denoised) / t_hat
            x_next = x_hat + (t_next - t_hat) * d_cur
            if k < num_steps - 1:
                net = self.select(t_next)
                denoised = net(x_next.float(), t_next.reshape(1).expand(bs).float(), condition=condition).double()
                x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * (x_next - denoised) / t_next)
        return x_next

    def step(self, window_phys, valid_time, generator, num_steps):
        """_forward for one member: (n, C, H, W) physical -> (C, H, W) physical, noise from ``generator``."""
        x_norm = (torch.as_tensor(window_phys)[None] - self.means[:, None]) / self.stds[:, None]
        cond = self.condition(x_norm, valid_time)
        latents = torch.randn((1, *x_norm.shape[2:]), generator=generator, dtype=torch.float64)
        with torch.inference_mode():
            out = self.sampler(latents, cond, lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype),
                               num_steps=num_steps).to(torch.float32)
        return (out * self.stds + self.means)[0]


def goes_dataset(model, times=TIMES, seed=0):
    rng = np.random.default_rng(seed)
    stats = model.stats_for("input")
    lat, lon = model.grid_lat.numpy(), model.grid_lon.numpy()
    data = {v: (("time", "y", "x"), (stats.mean[v] + stats.std[v] * rng.normal(0, 1, (len(times), *SIZE))).astype(np.float32),
                {"units": "K"}) for v in SCOPE_VARS}
    return xr.Dataset(data, coords={"time": times, "y": model.spec.grid["y"], "x": model.spec.grid["x"],
                                    "lat": (("y", "x"), lat), "lon": (("y", "x"), lon)})


# ---------------------------------------------------------------------------------------- tests
def test_grid_spec_and_statistics_as_earth2studio(package, model):
    ref = E2S(package)
    assert np.array_equal(model.grid_lat.numpy(), ref.lat.double().numpy())
    assert np.array_equal(model.grid_lon.numpy(), ref.lon.double().numpy())
    assert np.array_equal(model.spec.grid["y"], ref.y) and np.array_equal(model.spec.grid["x"], ref.x)
    stats = model.stats_for("input")
    assert np.array_equal(np.float32([stats.mean[v] for v in SCOPE_VARS]), ref.means.flatten().numpy())
    assert np.array_equal(np.float32([stats.std[v] for v in SCOPE_VARS]), ref.stds.flatten().numpy())
    assert model.spec.time_step == "10min" and model.input_window == WINDOW
    s = model.spec.sampler
    assert (s["num_steps"], s["S_churn"], s["rho"], s["sigma_min"], s["sigma_max"]) == (100, 10.0, 7.0, 0.002, 400.0)
    assert xkmcast.load_model(package, package_options={"variant": "3km_10min_natten_goes"}).input_window == WINDOW  # alias


def test_each_denoiser_call_matches(package, model):
    """The condition (window, lat / lon, cos zenith pair, fixed fields) and each expert's D(x; sigma)."""
    ref = E2S(package)
    ds = goes_dataset(model)
    window = np.stack([ds[v].values for v in SCOPE_VARS], axis=1)  # (n, C, H, W)
    x_norm = (torch.as_tensor(window)[None] - ref.means[:, None]) / ref.stds[:, None]
    valid = TIMES[-1]
    want = ref.condition(x_norm, valid)
    ours = model.stats_for("input").normalise(window, SCOPE_VARS, axis=1)
    got = model.condition(torch.as_tensor(ours, dtype=torch.float32)[None], valid)
    assert got.shape == want.shape and (got - want).abs().max() < 1e-5
    x = torch.randn((2, len(SCOPE_VARS), *SIZE), generator=torch.Generator().manual_seed(1)) * 3
    for level, sigma in ((300.0, 330.0), (2.5, 2.75), (1.9, 2.09), (0.01, 0.011)):
        ref_net = ref.select(torch.tensor(level, dtype=torch.float64))
        sig = torch.full((2,), sigma)
        with torch.no_grad():
            expected = ref_net(x, sig, condition=want.expand(2, -1, -1, -1))
            found = model.stages["diffusion"].for_level(level)(x.double(), sig.double(), condition=got.expand(2, -1, -1, -1).double())
        assert expected.std() > 0.05 and (found.float() - expected).abs().max() < 1e-5
    assert ref.used == [0, 0, 1, 1]  # 1.9 -> the low expert even though it is evaluated at sigma 2.09


def test_expert_switches_by_the_grid_level_not_the_churned_sigma():
    """Two recording experts; grid 2.5 -> 1.9 -> 0.5 -> 0 with churn 1.1: the step at 1.9 is evaluated at 2.09
    (the high expert's range) yet uses the low one, as Earth2Studio's sampler does."""
    from xkmcast.diffusion.experts import SigmaExperts
    from xkmcast.diffusion.samplers import solve

    calls = []

    class Expert(torch.nn.Module):
        def __init__(self, name, scale):
            super().__init__()
            self.name, self.scale = name, scale

        def forward(self, x, sigma, condition=None):
            calls.append((self.name, round(float(sigma[0]), 3)))
            return self.scale * x / (1 + sigma[:, None, None, None] ** 2)

    mix = SigmaExperts([Expert("low", 0.5), Expert("high", 2.0)], [(0.002, 2.0), (2.0, 80.0)])
    sigmas = torch.tensor([2.5, 1.9, 0.5, 0.0], dtype=torch.float64)
    x = solve(mix, torch.ones(1, 1, 2, 2, dtype=torch.float64), sigmas, S_churn=0.3, generator=torch.Generator().manual_seed(0))
    assert [c[0] for c in calls] == ["high", "low", "low", "low", "low"]
    assert calls[2][1] == pytest.approx(2.09) and torch.isfinite(x).all()
    assert (mix.sigma_min, mix.sigma_max) == (0.002, 80.0)


@pytest.mark.slow
def test_forecast_matches_earth2studio_steps(package, model):
    """goes.kmcast.forecast: two 10-min steps, two members, the same injected noise as the reference."""
    ds = goes_dataset(model)
    fc = ds.kmcast.forecast(model, steps=2, members=2, seed=3, num_steps=6)
    assert fc["abi13c"].dims == ("member", "init_time", "lead_time", "y", "x")
    assert fc.sizes["init_time"] == 1 and fc["init_time"].values[0] == TIMES[-1]  # the only time with its history
    assert list(fc["lead_time"].values.astype("timedelta64[m]").astype(int)) == [0, 10, 20]
    assert np.array_equal(fc["y"].values, model.spec.grid["y"]) and fc["abi13c"].attrs.get("grid_mapping") == "crs"
    ref = E2S(package)
    for k in range(2):
        gen = torch.Generator().manual_seed(row_seed(3, k, TIMES[-1], 0))
        window = np.stack([ds[v].values for v in SCOPE_VARS], axis=1)
        first = ref.step(window, TIMES[-1], gen, num_steps=6).numpy()
        got = np.stack([fc[v].values[k, 0, 1] for v in SCOPE_VARS])
        scale = np.abs(first - ref.means[0].numpy()).max()
        assert np.abs(got - first).max() / scale < 1e-4
        gen = torch.Generator().manual_seed(row_seed(3, k, TIMES[-1], 1))
        second = ref.step(np.concatenate([window[1:], first[None]]), TIMES[-1] + ref.dt, gen, num_steps=6).numpy()
        got = np.stack([fc[v].values[k, 0, 2] for v in SCOPE_VARS])
        assert np.abs(got - second).max() / scale < 1e-4
    assert set(ref.used) == {0, 1}  # both experts ran
    with pytest.raises(TimeCoverageError, match="last 3 states"):
        ds.isel(time=[0, 2]).kmcast.forecast(model, steps=1, num_steps=2)
    with pytest.raises(TimeCoverageError, match="1 of the initial times lack them"):  # named: none dropped
        ds.kmcast.forecast(model, steps=1, num_steps=2, init_times=[TIMES[0], TIMES[-1]])


@pytest.mark.slow
def test_by_name_from_hugging_face_pinned_revision(package, tmp_path, http_server, monkeypatch):
    server = hugging_face_mirror(tmp_path, http_server, monkeypatch, package, REPO, REVISION)
    with pytest.raises(IntegrityError, match="trust_host_hashes"):  # strict: only hashes the registry records
        xkmcast.load_model("stormscope-goes-mrms", trust_host_hashes=False)
    model = xkmcast.load_model("stormscope-goes-mrms")  # default: the host's checksums at the pinned commit
    fetched = {r.split(f"/resolve/{REVISION}/", 1)[1] for r in server.requests if "/resolve/" in r}
    assert fetched == {"registry.json", "lat.npy", "lon.npy", "goes_means.npy", "goes_stds.npy", "topo.npy",
                       "nexrad_proximity.npy", *[p for p, _, _ in SCOPE_EXPERTS]}  # what registry.json names
    known = {f: "sha256:" + sha256(package / f) for f in fetched}  # hashes from a trusted copy, no host listing
    again = xkmcast.load_model("stormscope-goes-mrms", known_hashes=known, cache_dir=tmp_path / "cache2")
    assert torch.equal(next(again.parameters()), next(model.parameters()))
    direct = xkmcast.load_model(package)
    for a, b in zip(model.state_dict().values(), direct.state_dict().values()):
        assert torch.equal(a, b)


def test_refuses_what_it_cannot_run(package, tmp_path):
    import shutil

    with pytest.raises(BundleError, match="conditioned on other sources"):
        xkmcast.load_model(package, package_options={"variant": "6km_1hr"})
    with pytest.raises(BundleError, match="conditioned on other sources"):
        xkmcast.load_model(package, package_options={"source": "mrms"})
    with pytest.raises(BundleError, match="Unknown StormScope goes variant"):
        xkmcast.load_model(package, package_options={"variant": "1km_1min"})
    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    registry = json.loads((bad / "registry.json").read_text())
    registry["goes"]["models"]["3km_10min"]["n_steps"] = 2  # the experts were trained on 3 input times
    (bad / "registry.json").write_text(json.dumps(registry))
    with pytest.raises(BundleError, match="channels do not match"):
        xkmcast.load_model(bad)
    np.save(bad / "lat.npy", np.zeros((100, 200), np.float32))
    with pytest.raises(BundleError, match="HRRR grid"):
        xkmcast.load_model(bad)
    assert math.isfinite(xkmcast.load_model(package).spec.sampler["sigma_max"])


@pytest.mark.slow
def test_streamed_forecast_equals_the_lazy_one(model, tmp_path):
    """``output=`` (what ``xkmcast forecast`` writes) runs the same windowed rollout; a resume is refused."""
    ds = goes_dataset(model, seed=1)
    lazy = ds.kmcast.forecast(model, steps=2, members=1, seed=4, num_steps=3)
    streamed = ds.kmcast.forecast(model, steps=2, members=1, seed=4, num_steps=3, output=tmp_path / "fc.zarr")
    for v in SCOPE_VARS:
        np.testing.assert_array_equal(streamed[v].values, lazy[v].values)
    np.testing.assert_array_equal(lazy["abi02c"].values[0, 0, 0], ds["abi02c"].values[-1])  # lead 0: the newest input
