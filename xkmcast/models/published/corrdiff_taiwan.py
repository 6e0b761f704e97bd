"""CorrDiff-Taiwan: NGC ``nvidia/modulus/corrdiff_inference_package`` version 1 (Mardani et al. 2023).

Layout (``corrdiff_inference_package.zip``, possibly inside another zip)::

    corrdiff_inference_package/
      checkpoints/regression.mdlus      CorrDiff regression U-Net (PhysicsNeMo ``UNet``)
      checkpoints/diffusion.mdlus       ``EDMPrecondSR`` residual diffusion model
      dataset/2023-01-24-cwb-4years_5times.zarr
          XLAT, XLONG (450 x 450)       the CWA 2 km grid
          era5_center / era5_scale      input normalisation; channels 0,1,2,3,4,9,10,11,12,17,18,19
          cwb_center / cwb_scale        output normalisation; channels 0,17,18,19

What the model sees (Earth2Studio's ``CorrDiffTaiwan``, reproduced here):

1. the 12 ERA5 inputs (tcwv, z500, t500, u500, v500, z850, t850, u850, v850, t2m, u10m, v10m) on the
   0.25 deg grid lat ``linspace(19.25, 28, 36)`` x lon ``linspace(116, 126, 40, endpoint=False)``;
   other inputs are first regridded onto it (``spec.extra["input_grid"]``);
2. bilinear onto the 450 x 450 grid, cropped ``[1:-1, 1:-1]`` to 448 x 448 (the model grid is the
   cropped XLAT / XLONG, so bilinear onto it is the same);
3. ``(x - era5_center) / era5_scale``;
4. regression on zero latents with condition ``cat(inputs, 4 sinusoidal grid channels)``
   (:mod:`xkmcast.nn.fixed_inputs`);
5. residual diffusion conditioned on ``cat(regression mean, inputs)``, Euler, 8 steps, sigma 0.002 .. 80,
   rho 7 (the network's own sigma range clips it);
6. ``mean + residual``, denormalised with cwb_center / cwb_scale: radar reflectivity (``refc``), t2m,
   u10m, v10m.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import BundleError, explain

__all__ = ["NAME", "detect", "load", "INPUTS", "OUTPUTS"]

NAME = "corrdiff_taiwan"
ZIP = "corrdiff_inference_package.zip"
STORE = "dataset/2023-01-24-cwb-4years_5times.zarr"
CHECKPOINTS = ("checkpoints/regression.mdlus", "checkpoints/diffusion.mdlus")
INPUTS = ["tcwv", "z500", "t500", "u500", "v500", "z850", "t850", "u850", "v850", "t2m", "u10m", "v10m"]
OUTPUTS = ["refc", "t2m", "u10m", "v10m"]  # the package calls the radar channel "mrr"
ERA5_CHANNELS = [0, 1, 2, 3, 4, 9, 10, 11, 12, 17, 18, 19]
CWB_CHANNELS = [0, 17, 18, 19]
INPUT_LAT = np.linspace(19.25, 28, 36)
INPUT_LON = np.linspace(116, 126, 40, endpoint=False)
CROP = 1
SAMPLER = {"sampler": "euler", "num_steps": 8, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}
GRID_CHANNELS = "sinusoidal"


def _is_root(folder: Path) -> bool:
    return all((folder / c).is_file() for c in CHECKPOINTS) and (folder / STORE).is_dir()


def detect(folder: Path) -> Path | None:
    """The package root (holding checkpoints/ and dataset/) in ``folder``; unpacks the package zip once."""
    if not folder.is_dir():
        return None
    for cand in (folder, folder / "corrdiff_inference_package"):
        if _is_root(cand):
            return cand
    if (folder / ZIP).is_file():
        from ...data.archive import extract
        from ...data.download import sha256_of

        dest = folder / f".unpacked-{sha256_of(folder / ZIP)[:16]}"  # a new zip is never read from an old unpacking
        if not dest.exists():
            extract(folder / ZIP, dest, nested=True)
        for cand in (dest, dest / "corrdiff_inference_package"):
            if _is_root(cand):
                return cand
    return None


def _read_store(root: Path) -> dict[str, np.ndarray]:
    import zarr

    group = zarr.open_group(str(root / STORE), mode="r")
    need = ("XLAT", "XLONG", "era5_center", "era5_scale", "cwb_center", "cwb_scale")
    missing = [k for k in need if k not in group]
    if missing:
        raise BundleError(explain(f"{root / STORE} lacks what CorrDiff-Taiwan needs", expected=list(need), found=missing))
    out = {k: np.asarray(group[k][:]) for k in need}
    for key, idx in (("era5", ERA5_CHANNELS), ("cwb", CWB_CHANNELS)):
        for part in ("center", "scale"):
            arr = out[f"{key}_{part}"].reshape(-1)
            if arr.size <= max(idx):
                raise BundleError(explain(f"{key}_{part} has too few channels", expected=f"> {max(idx)}", found=arr.size))
            out[f"{key}_{part}"] = arr[idx].astype(np.float64)
    if out["XLAT"].ndim != 2 or out["XLAT"].shape != out["XLONG"].shape:
        raise BundleError(explain("XLAT / XLONG must be 2-D of one shape", found=(out["XLAT"].shape, out["XLONG"].shape)))
    return out


def _stats(names, center, scale) -> dict:
    return {n: {"mean": float(c), "std": float(s)} for n, c, s in zip(names, center, scale)}


def _check_channels(stage: str, found: int, expected: int, what: str) -> None:
    if found != expected:
        raise BundleError(
            explain(
                f"CorrDiff-Taiwan's {stage} network does not take the condition Earth2Studio gives it",
                expected=f"{expected} condition channels ({what})", found=found,
                fix="this checkpoint is not the published CorrDiff-Taiwan package; load it as a generic package",
            )
        )


def _check_resolution(stage: str, kwargs: dict, shape: tuple[int, int]) -> None:
    res = kwargs.get("img_resolution")
    res = (res, res) if isinstance(res, int) else tuple(res or ())
    if res != tuple(shape):
        raise BundleError(explain(f"The {stage} network's img_resolution does not match the cropped XLAT grid",
                                  expected=list(shape), found=list(res)))


def load(root: Path, *, device="cpu"):
    """The CorrDiff pipeline of the package at ``root``."""
    from ..importer import assemble_pipeline, condition_channels, mdlus_stage

    store = _read_store(root)
    lat = store["XLAT"][CROP:-CROP, CROP:-CROP].astype(np.float64)
    lon = store["XLONG"][CROP:-CROP, CROP:-CROP].astype(np.float64)
    reg_entry, reg_net, _ = mdlus_stage(root / CHECKPOINTS[0])
    dif_entry, dif_net, dif_ckpt = mdlus_stage(root / CHECKPOINTS[1])
    if dif_ckpt is None or dif_entry["precond"]["class"] != "EDMPrecondSuperResolution":
        raise BundleError(explain("checkpoints/diffusion.mdlus is not a super-resolution EDM model",
                                  expected="EDMPrecondSR or EDMPrecondSuperResolution", found=dif_entry["class"]))
    if reg_entry["class"] != "RegressionUNet":
        raise BundleError(explain("checkpoints/regression.mdlus is not the CorrDiff regression U-Net",
                                  expected="UNet / CorrDiffRegressionUNet", found=reg_entry["class"]))
    n_grid = 4
    _check_channels("regression", condition_channels(reg_net), len(INPUTS) + n_grid, f"{len(INPUTS)} inputs + {n_grid} grid")
    _check_channels("diffusion", condition_channels(dif_net, dif_ckpt), len(OUTPUTS) + len(INPUTS),
                    f"{len(OUTPUTS)} regression means + {len(INPUTS)} inputs")
    for stage, entry in (("regression", reg_entry), ("diffusion", dif_entry)):
        _check_resolution(stage, entry["kwargs"], lat.shape)
    reg_entry["append_grid"] = {"kind": GRID_CHANNELS, "shape": list(lat.shape)}
    spec = {
        "kind": "corrdiff",
        "input_vars": list(INPUTS),
        "output_vars": list(OUTPUTS),
        "stats": {"input": _stats(INPUTS, store["era5_center"], store["era5_scale"]),
                  "output": _stats(OUTPUTS, store["cwb_center"], store["cwb_scale"])},
        "sampler": dict(SAMPLER),
        "loss": {"condition_on_mean": True},
        "extra": {"package": "corrdiff-taiwan", "input_grid": {"lat": INPUT_LAT.tolist(), "lon": INPUT_LON.tolist()}},
        "lat": lat,
        "lon": lon,
    }
    return assemble_pipeline(spec, {"regression": (reg_entry, reg_net), "diffusion": (dif_entry, dif_net)}, device=device)
