"""Earth2Studio 0.19 and xkmcast side by side on the same local published-layout packages (not CI).

    python bench/peer_earth2studio.py [--venv .peer-venv] [--members 2] [--steps 8] [--width 16]
                                      [--taiwan-size 450] [--stormcast-window small|published]
                                      [--skip-cmip6] [--skip-stormscope] [--skip-cosmo] [--cosmo-shape 32 48]

1. Builds a CorrDiff-Taiwan package (the NGC zip), a StormCast v1 folder and a CorrDiff CMIP6 -> ERA5
   package (tiny 25 x 48 output grid, time window) with PhysicsNeMo 2.2.2's classes (``--width`` channels, random O(1) weights) in ``--workdir``, and the inputs.
2. Creates ``--venv`` once (``earth2studio==0.19.0 nvidia-physicsnemo==2.2.2 torch==2.13.0``; it pins
   netCDF4 < 1.7.3, so it cannot share xkmcast's venv) and runs ``bench/_peer_e2s.py`` in it:
   Earth2Studio's ``CorrDiffTaiwan`` / ``StormCast`` / ``CorrDiffCMIP6.load_model`` on the local packages.
3. Runs xkmcast on the same packages and inputs (``load_model(PATH)`` and the accessor), and prints
   the maximum difference of the deterministic parts (the regression means, physical units) and the
   time per ensemble member at the same number of sampler steps, one thread each.

StormScope GOES (``--skip-stormscope`` to leave it out): the package layout with two sigma-range experts
whose DiTs use dense attention, so Earth2Studio's ``StormScopeGOES`` runs on CPU. Its
``load_model`` refuses to start without NATTEN (the published experts use ``natten2d``, GPU only); when
NATTEN is absent the peer script assembles the model with the class's own loading steps instead (the same
calls minus that check). Its deterministic part is the condition and one expert call D(x; sigma).
CorrDiff COSMO-REA (``rea6/``, mean and diffusion DiTs with PhysicsNeMo's ``natten2d`` attention, since
Earth2Studio's wrapper passes ``latent_hw`` that the dense backend rejects) runs only when ``natten``
installs in the peer venv: PyPI has it as a source distribution only (no CPU wheel), so the venv tries
it and the Earth2Studio side prints why it skipped COSMO-REA when it could not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
#: StormScope: the valid time of the input window's newest state and the noise level of the compared expert call
SCOPE_TIME, SCOPE_SIGMA = "2024-05-01T18:20", 5.0
PEER = ["torch==2.13.0", "nvidia-physicsnemo==2.2.2", "earth2studio==0.19.0"]


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER], check=True)
        # Earth2Studio's COSMO-REA wrapper imports natten (sdist only on PyPI); a failed build only skips COSMO-REA
        subprocess.run([str(python), "-m", "pip", "install", "-q", "natten"], check=False)
    return python


def build(work: Path, args) -> dict:
    import _packages as P
    import xarray as xr

    P.SONG_TINY.update(model_channels=args.width, channel_mult=[1, 2, 2], num_blocks=1)
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    if not (work / "taiwan_ngc" / "corrdiff_inference_package.zip").exists():
        root = P.build_taiwan(work / "taiwan_src", n=args.taiwan_size)
        (work / "taiwan_ngc").mkdir(exist_ok=True)
        P.zip_taiwan(root, work / "taiwan_ngc" / "corrdiff_inference_package.zip")
    lat, lon = np.linspace(19.25, 28, 36), np.linspace(116, 126, 40, endpoint=False)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    x = np.stack([np.sin(la / (3 + k)) * np.cos(lo / (2 + k)) * (10 + k) for k in range(12)]).astype(np.float32)
    np.save(work / "taiwan_input.npy", x)
    names = ["tcwv", "z500", "t500", "u500", "v500", "z850", "t850", "u850", "v850", "t2m", "u10m", "v10m"]
    units = ["kg m-2", "m2 s-2", "K", "m s-1", "m s-1", "m2 s-2", "K", "m s-1", "m s-1", "K", "m s-1", "m s-1"]
    out["taiwan"] = xr.Dataset({n: (("time", "lat", "lon"), x[k][None], {"units": u}) for k, (n, u) in enumerate(zip(names, units))},
                               coords={"time": np.array(["2024-01-01"], "datetime64[ns]"), "lat": lat, "lon": lon})
    if not args.skip_stormcast:
        window = ((273, 785), (579, 1219)) if args.stormcast_window == "published" else ((400, 432), (800, 840))
        shape = (window[0][1] - window[0][0], window[1][1] - window[1][0])
        if not (work / "stormcast" / "model.yaml").exists():
            P.build_stormcast(work / "stormcast", shape=shape, sampler_args={"S_churn": 0.0})
        rng = np.random.default_rng(0)
        np.save(work / "stormcast_state.npy", rng.normal(0, 3, (len(P.STATE_VARS), *shape)).astype(np.float32) + 5)
        np.save(work / "stormcast_background.npy", rng.normal(0, 3, (len(P.BACKGROUND_VARS), *shape)).astype(np.float32) + 5)
        out["window"] = window
    if not args.skip_cmip6:
        if not (work / "cmip6" / "metadata.json").exists():
            P.build_cmip6_package(work / "cmip6")
        days = P.cmip6_days()
        np.save(work / "cmip6_window.npy", np.stack([np.stack([days[v].values[i] for v in P.CMIP6_INPUTS])
                                                     for i in range(3)]).astype(np.float32))
        valid = days.time.values[1] - np.timedelta64(12, "h")  # Earth2Studio's default lead time
        (work / "cmip6_time.json").write_text(json.dumps({"valid": str(valid.astype("datetime64[s]"))}))
        out["cmip6"] = days
    if not args.skip_stormscope:
        if not (work / "stormscope" / "registry.json").exists():
            P.build_stormscope(work / "stormscope", image_size=(32, 48), window=3)
        rng = np.random.default_rng(1)
        np.save(work / "stormscope_window.npy", rng.normal(250, 10, (3, len(P.SCOPE_VARS), 32, 48)).astype(np.float32))
        np.save(work / "stormscope_probe.npy", rng.normal(0, 3, (1, len(P.SCOPE_VARS), 32, 48)).astype(np.float32))
    if not args.skip_cosmo:
        out["cosmo"] = build_cosmo(work, tuple(args.cosmo_shape))
    return out


COSMO_TIME = "2021-07-14T12:00"


def build_cosmo(work: Path, shape: tuple[int, int]):
    """The COSMO-REA package (natten2d DiTs) and one ERA5 frame on its input grid (also saved as .npy)."""
    import _packages as P
    import xarray as xr

    if not (work / "cosmo" / "rea6" / "metadata.json").exists():
        P.build_cosmo_package(work / "cosmo", shape=shape, backend="natten2d")
    with xr.open_dataset(work / "cosmo" / "rea6" / "grids.nc") as g:
        lat, lon = g["lat_input"].values.astype(float), g["lon_input"].values.astype(float)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    level = {"u10m": 2.0, "v10m": -1.0, "t2m": 285.0, "z500": 55500.0}
    units = {"u10m": "m s-1", "v10m": "m s-1", "t2m": "K", "z500": "m2 s-2"}
    x = np.stack([level[v] + 3 * np.sin(la * (k + 1)) * np.cos(lo / (k + 2)) * (300 if v == "z500" else 1)
                  for k, v in enumerate(P.COSMO_ERA5)]).astype(np.float32)
    np.save(work / "cosmo_input.npy", x)
    return xr.Dataset({v: (("time", "lat", "lon"), x[k][None], {"units": units[v]}) for k, v in enumerate(P.COSMO_ERA5)},
                      coords={"time": np.array([COSMO_TIME], "datetime64[ns]"), "lat": lat, "lon": lon})


def xkmcast_side(work: Path, built: dict, args) -> dict:
    import torch

    import _packages as P
    import xkmcast

    torch.set_num_threads(args.threads)
    res = {}
    model = xkmcast.load_model(work / "taiwan_ngc" / "corrdiff_inference_package.zip")
    era5 = built["taiwan"]
    mean = era5.kmcast.downscale(model, members=1, num_steps=1, include_mean=True)
    res["taiwan_mean"] = np.stack([mean[f"{v}_regression"].values[0] for v in ("refc", "t2m", "u10m", "v10m")])
    era5.kmcast.downscale(model, members=1, num_steps=1)  # warm the regridding weights cache
    t0 = time.perf_counter()
    era5.kmcast.downscale(model, members=args.members, num_steps=args.steps)
    res["taiwan_seconds_per_member"] = (time.perf_counter() - t0) / args.members
    if "window" in built:
        sc = xkmcast.load_model(work / "stormcast", package_options={"hrrr_window": built["window"]})
        x = np.load(work / "stormcast_state.npy")
        bg = np.load(work / "stormcast_background.npy")
        xn = torch.as_tensor(sc.stats_for("input").normalise(x, P.STATE_VARS), dtype=torch.float32)[None]
        bn = torch.as_tensor(sc.stats_for("background").normalise(bg, P.BACKGROUND_VARS), dtype=torch.float32)[None]
        with torch.no_grad():
            m = sc._regression_mean(xn, bn, sc.batch_invariant(1, xn), {})
        res["stormcast_mean"] = sc.stats_for("output").denormalise(m.numpy(), P.STATE_VARS, axis=1)[0]
        t0 = time.perf_counter()
        sc.step(xn.expand(args.members, -1, -1, -1), bn.expand(args.members, -1, -1, -1),
                seeds=list(range(args.members)), num_steps=args.steps)
        res["stormcast_seconds_per_member"] = (time.perf_counter() - t0) / args.members
    if "cmip6" in built:
        cm = xkmcast.load_model(work / "cmip6")
        days = built["cmip6"]
        mean = days.kmcast.downscale(cm, members=1, num_steps=1, include_mean=True)
        res["cmip6_mean"] = np.stack([mean[f"{v}_regression"].values[0] for v in cm.spec.output_vars])
        t0 = time.perf_counter()
        days.kmcast.downscale(cm, members=args.members, num_steps=args.steps)
        res["cmip6_seconds_per_member"] = (time.perf_counter() - t0) / args.members
    if (work / "stormscope" / "registry.json").exists():
        scope = xkmcast.load_model(work / "stormscope")
        win = np.load(work / "stormscope_window.npy")
        xn = torch.as_tensor(scope.stats_for("input").normalise(win, P.SCOPE_VARS, axis=1), dtype=torch.float32)[None]
        cond = scope.condition(xn, np.datetime64(SCOPE_TIME))
        probe = torch.from_numpy(np.load(work / "stormscope_probe.npy")).double()
        with torch.no_grad():
            res["stormscope_mean"] = scope.stages["diffusion"].for_level(SCOPE_SIGMA)(
                probe, torch.full((1,), SCOPE_SIGMA, dtype=torch.float64), condition=cond.double()).float().numpy()
        t0 = time.perf_counter()
        scope.step(xn.expand(args.members, -1, -1, -1, -1), seeds=list(range(args.members)), valid_time=np.datetime64(SCOPE_TIME),
                   num_steps=args.steps)
        res["stormscope_seconds_per_member"] = (time.perf_counter() - t0) / args.members
    if "cosmo" in built:
        names = ["u10m", "t2m", "tp", "tcc", "aswdir_s", "aswdifd_s"]  # Earth2Studio's names, its channel order
        era5 = built["cosmo"]
        mean = era5.kmcast.downscale(xkmcast.load_model(work / "cosmo"), members=1)
        res["cosmo_mean"] = np.stack([mean[v].values[0, 0] for v in names])
        diffusion = xkmcast.load_model(work / "cosmo", package_options={"mode": "diffusion"})
        era5.kmcast.downscale(diffusion, members=1, num_steps=2)  # warm the regridding weights cache
        t0 = time.perf_counter()
        era5.kmcast.downscale(diffusion, members=args.members, num_steps=args.steps)
        res["cosmo_seconds_per_member"] = (time.perf_counter() - t0) / args.members
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, default=HERE.parent / ".peer-venv")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "xkmcast-peer")
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--taiwan-size", type=int, default=450)
    p.add_argument("--stormcast-window", choices=["small", "published"], default="small")
    p.add_argument("--skip-stormcast", action="store_true")
    p.add_argument("--skip-cmip6", action="store_true")
    p.add_argument("--skip-stormscope", action="store_true")
    p.add_argument("--skip-cosmo", action="store_true")
    p.add_argument("--cosmo-shape", type=int, nargs=2, default=[32, 48])
    args = p.parse_args()
    built = build(args.workdir, args)
    python = ensure_venv(args.venv)
    subprocess.run([str(python), str(HERE / "_peer_e2s.py"), str(args.workdir), str(args.members), str(args.steps),
                    str(args.threads)], check=True)
    e2s = json.loads((args.workdir / "e2s.json").read_text())
    ours = xkmcast_side(args.workdir, built, args)
    print(f"members {args.members}, sampler steps {args.steps}, U-Net width {args.width}, {args.threads} thread(s)")
    print(f"{'model':12s} {'max |mean diff|':>16s} {'E2S s/member':>13s} {'xkmcast s/member':>17s} {'ratio':>6s}")
    if "cosmo_skipped" in e2s:
        print(f"cosmo        skipped by Earth2Studio's side: {e2s['cosmo_skipped']}")
    for name in ("taiwan", "stormcast", "cmip6", "cosmo"):
        if f"{name}_seconds_per_member" not in e2s or f"{name}_mean" not in ours:
            continue
        ref = np.load(args.workdir / f"e2s_{name}_mean.npy")
        diff = float(np.abs(ours[f"{name}_mean"] - ref).max())
        a, b = e2s[f"{name}_seconds_per_member"], ours[f"{name}_seconds_per_member"]
        print(f"{name:12s} {diff:16.3g} {a:13.2f} {b:17.2f} {b / a:6.2f}")
    if "stormscope_seconds_per_member" in e2s:  # its deterministic part: one expert call D(x; sigma) on the same condition
        diff = float(np.abs(ours["stormscope_mean"] - np.load(args.workdir / "e2s_stormscope_mean.npy")).max())
        a, b = e2s["stormscope_seconds_per_member"], ours["stormscope_seconds_per_member"]
        print(f"{'stormscope':12s} {diff:16.3g} {a:13.2f} {b:17.2f} {b / a:6.2f}   (max |D diff|; {e2s.get('stormscope_note', '')})")


if __name__ == "__main__":
    main()
