"""Runs inside the peer venv (earth2studio 0.19.0, nvidia-physicsnemo 2.2.2, torch 2.13.0): Earth2Studio's
CorrDiffTaiwan, StormCast and CorrDiffCosmoEra5 wrappers on the local packages written by
peer_earth2studio.py (COSMO-REA only when natten imports: the wrapper refuses to load without it).

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
    folders = {"taiwan": "taiwan_ngc", "stormcast": "stormcast", "cosmo": "cosmo"}
    for name, run in (("taiwan", taiwan), ("stormcast", stormcast), ("cosmo", cosmo)):
        if (work / folders[name]).exists():
            result.update(run(work, members, steps))
    (work / "e2s.json").write_text(json.dumps(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
