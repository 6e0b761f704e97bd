"""Runs inside the peer venv (earth2studio 0.19.0, nvidia-physicsnemo 2.2.2, torch 2.13.0): Earth2Studio's
CorrDiffTaiwan, StormCast, CorrDiffCMIP6, StormScopeGOES and CorrDiffCosmoEra5 wrappers on the local
packages written by peer_earth2studio.py (COSMO-REA only when natten imports: the wrapper refuses to
load without it).

    python _peer_e2s.py WORKDIR MEMBERS STEPS

Writes WORKDIR/e2s.json (timings) and WORKDIR/e2s_*.npy (regression means, physical units). Never
imports xkmcast.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def _torchvision_schemas():
    """CPU machines: declare torchvision::nms / qnms before torchvision is imported (see xkmcast._reference)."""
    lib = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        except RuntimeError:
            lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return lib


def taiwan(work: Path, members: int, steps: int) -> dict:
    from earth2studio.models.auto import Package
    from earth2studio.models.dx import CorrDiffTaiwan

    model = CorrDiffTaiwan.load_model(Package(str(work / "taiwan_ngc")))
    model.number_of_samples, model.number_of_steps, model.seed = members, steps, 0
    x = torch.from_numpy(np.load(work / "taiwan_input.npy"))
    with torch.inference_mode():
        xi = (model._interpolate(x).unsqueeze(0) - model.in_center) / model.in_scale
        h, w = xi.shape[-2:]
        s, c = np.sin(np.linspace(0, 2 * np.pi, h)), np.cos(np.linspace(0, 2 * np.pi, h))
        g1, g2 = np.meshgrid(s, s), np.meshgrid(c, c)
        grid = torch.as_tensor(np.stack((g1[0], g1[1], g2[0], g2[1]))[None], dtype=torch.float32)
        mean = model.unet_regression(model.regression_model, img_lr=torch.cat((xi, grid), 1), output_channels=4,
                                     number_of_samples=1)
    np.save(work / "e2s_taiwan_mean.npy", (mean[0] * model.out_scale + model.out_center).numpy())
    t0 = time.perf_counter()
    model._forward(x)
    return {"taiwan_seconds_per_member": (time.perf_counter() - t0) / members}


def stormcast(work: Path, members: int, steps: int) -> dict:
    from earth2studio.models.auto import Package
    from earth2studio.models.px import StormCast

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = StormCast.load_model(Package(str(work / "stormcast")), conditioning_data_source=None, sampler_steps=steps)
    x = torch.from_numpy(np.load(work / "stormcast_state.npy"))[None]
    cond = torch.from_numpy(np.load(work / "stormcast_background.npy"))[None]
    with torch.inference_mode():
        xn = (x - model.means) / model.stds
        cn = (cond - model.conditioning_means) / model.conditioning_stds
        out = model.regression_model(torch.cat((xn, cn, model.invariants.repeat(1, 1, 1, 1)), 1))
    np.save(work / "e2s_stormcast_mean.npy", (out * model.stds + model.means)[0].numpy())
    t0 = time.perf_counter()
    for _ in range(members):  # Earth2Studio steps one ensemble member per call
        model._forward(x, cond)
    return {"stormcast_seconds_per_member": (time.perf_counter() - t0) / members}


def cmip6(work: Path, members: int, steps: int) -> dict:
    """CorrDiffCMIP6 on the window WORKDIR/cmip6_window.npy (3, C, h, w) at the valid time of cmip6_time.json."""
    from datetime import datetime

    from earth2studio.models.auto import Package
    from earth2studio.models.dx import CorrDiffCMIP6
    from physicsnemo.diffusion.generate.legacy_generate import regression_step

    valid = datetime.fromisoformat(json.loads((work / "cmip6_time.json").read_text())["valid"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CorrDiffCMIP6.load_model(Package(str(work / "cmip6")))
    model.number_of_samples, model.number_of_steps, model.seed = members, steps, 0
    model.sampler = model._setup_sampler(model.sampler_type)  # the sampler holds the number of steps
    x = torch.from_numpy(np.load(work / "cmip6_window.npy"))[None]
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img_lr = model.preprocess_input(x.clone(), valid)
        mean = regression_step(net=model.regression_model, img_lr=img_lr,
                               latents_shape=(1, len(model.output_variables), *img_lr.shape[-2:]))
        np.save(work / "e2s_cmip6_mean.npy", model.postprocess_output(mean)[0].numpy())
        t0 = time.perf_counter()
        model._forward(x.clone(), valid)
    return {"cmip6_seconds_per_member": (time.perf_counter() - t0) / members}
SCOPE_TIME, SCOPE_SIGMA = "2024-05-01T18:20", 5.0  # as peer_earth2studio.py


def _stormscope_model(package):
    """StormScopeGOES.load_model, or, without NATTEN (its load_model refuses to start; these experts use dense
    attention), the same loading steps of the class without that check."""
    from earth2studio.models.px.stormscope import StormScopeGOES

    try:
        return StormScopeGOES.load_model(package, conditioning_data_source=None, amp=False), "load_model"
    except ImportError as exc:
        note = f"assembled without NATTEN ({exc.__class__.__name__})"
    cls = StormScopeGOES
    registry = cls._load_registry(package)
    _, pkg = cls._resolve_model_entry(package, "3km_10min")
    lat, lon, y, x, tin, tout, ds = cls._build_grid_and_times(package, pkg)
    variables = np.array(pkg["variables"])
    means, stds, glm = cls._build_normalization(package, registry, variables)
    inv = {k: cls._load_invariant(package, f"{k}.npy", pkg) if pkg.get(k) else None for k in ("topo", "nexrad_proximity")}
    model = cls(model_spec=cls._load_checkpoints(package, pkg), means=means, stds=stds, variables=variables,
                latitudes=lat.to(torch.float32), longitudes=lon.to(torch.float32), conditioning_variables=np.array([]),
                glm_mask=glm, y_coords=y, x_coords=x, input_times=tin, output_times=tout, amp=False, **inv)
    return model, note


def stormscope(work: Path, members: int, steps: int) -> dict:
    from collections import OrderedDict

    from earth2studio.models.auto import Package

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, note = _stormscope_model(Package(str(work / "stormscope")))
    model.sampler_args = {"num_steps": steps, "S_churn": 10}
    win = torch.from_numpy(np.load(work / "stormscope_window.npy"))[None, None]  # [B, T, L, C, H, W]
    coords = OrderedDict(batch=np.arange(1), time=np.array([np.datetime64(SCOPE_TIME) - model.input_times[-1]]),
                         lead_time=model.input_times, variable=model.variables, y=model.y, x=model.x)
    with torch.inference_mode():
        cond = model.build_condition(model._normalize_state(win), coords)
        probe = torch.from_numpy(np.load(work / "stormscope_probe.npy"))
        d = model._select_expert(torch.tensor(SCOPE_SIGMA, dtype=torch.float64))(probe, torch.full((1,), SCOPE_SIGMA), condition=cond)
    np.save(work / "e2s_stormscope_mean.npy", d.numpy())
    t0 = time.perf_counter()
    for _ in range(members):  # one ensemble member per call
        model._forward(win, coords)
    return {"stormscope_seconds_per_member": (time.perf_counter() - t0) / members, "stormscope_note": note}
def cosmo(work: Path, members: int, steps: int) -> dict:
    """CorrDiffCosmoEra5 (rea6): the mean mode's physical output, and diffusion seconds per member."""
    import datetime

    try:
        import natten  # noqa: F401
    except ImportError as exc:
        return {"cosmo_skipped": f"natten does not import ({exc}); Earth2Studio's CorrDiffCosmoEra5 needs it to load, "
                                 "and PyPI has natten as a source distribution only (no CPU wheel)"}
    from earth2studio.models.auto import Package
    from earth2studio.models.dx import CorrDiffCosmoEra5

    x = torch.from_numpy(np.load(work / "cosmo_input.npy"))
    when = datetime.datetime(2021, 7, 14, 12, tzinfo=datetime.timezone.utc)  # peer_earth2studio.COSMO_TIME
    mean = CorrDiffCosmoEra5.load_model(Package(str(work / "cosmo")), device="cpu", mode="mean", resolution="rea6")
    out = mean._forward(x, when, mean.lat_output_grid, mean.lon_output_grid)
    np.save(work / "e2s_cosmo_mean.npy", out[0].numpy())
    model = CorrDiffCosmoEra5.load_model(Package(str(work / "cosmo")), device="cpu", mode="diffusion", resolution="rea6")
    model.number_of_samples, model.number_of_steps, model.seed = members, steps, 0
    t0 = time.perf_counter()
    model._forward(x, when, model.lat_output_grid, model.lon_output_grid)
    return {"cosmo_seconds_per_member": (time.perf_counter() - t0) / members}


def main() -> None:
    work, members, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    keep = _torchvision_schemas()  # noqa: F841 (the library object must stay alive)
    torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    result = {}
    folders = {"taiwan": "taiwan_ngc", "stormcast": "stormcast", "cmip6": "cmip6", "cosmo": "cosmo"}
    for name, run in (("taiwan", taiwan), ("stormcast", stormcast), ("cmip6", cmip6), ("cosmo", cosmo)):
        if (work / folders[name]).exists():
            result.update(run(work, members, steps))
    if (work / "stormscope" / "registry.json").exists():
        result.update(stormscope(work, members, steps))
    (work / "e2s.json").write_text(json.dumps(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
