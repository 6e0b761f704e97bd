"""StormCast v1: Hugging Face ``nvidia/stormcast-v1-era5-hrrr`` (Pathak et al. 2024).

Layout::

    model.yaml                data.invariants (names, in order), sampler_args (sigma_min, sigma_max, rho,
                              S_churn, S_min, S_max, S_noise; may be null)
    StormCastUNet.0.0.mdlus   regression network
    EDMPrecond.0.0.mdlus      diffusion network
    metadata.zarr.zip         variable (99), conditioning_variable (26), means, stds, conditioning_means,
                              conditioning_stds, invariants (invariant, y, x)

One step (Earth2Studio's ``StormCast``, reproduced here): with ``x = (state - means) / stds``,
``c = (background - conditioning_means) / conditioning_stds`` (the background regridded onto the
state grid, bilinear) and ``inv`` the invariants as stored (not normalised)::

    mean    = StormCastUNet(cat(x, c, inv))
    r       ~ EDM Heun (sigma_max .. sigma_min, rho, churn from sampler_args; 18 steps) with
              D(r; sigma) = EDMPrecond(r, sigma, condition=cat(x, mean, inv))
    x_next  = (mean + r) * stds + means                         (1 h later)

The grid: the HRRR Lambert conformal grid (lon_0 262.5, lat_0 = lat_1 = lat_2 = 38.5, sphere R 6371229 m;
x = linspace(-2697520.14..., 2696479.86..., 1799), y = linspace(-1587306.15..., 1586693.85..., 1059)),
rows 273:785 and columns 579:1219 (512 x 640).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import BundleError, explain

__all__ = ["NAME", "detect", "load", "HRRR_WINDOW", "hrrr_subgrid"]

NAME = "stormcast_v1"
FILES = ("model.yaml", "StormCastUNet.0.0.mdlus", "EDMPrecond.0.0.mdlus", "metadata.zarr.zip")
HRRR_X = (-2697520.1425219304, 2696479.8574780696, 1799)
HRRR_Y = (-1587306.1525566636, 1586693.8474433364, 1059)
#: (rows, columns) of the HRRR grid StormCast v1 covers
HRRR_WINDOW = ((273, 785), (579, 1219))
SAMPLER_DEFAULTS = {"sigma_min": 0.002, "sigma_max": 800.0, "rho": 7.0, "S_churn": 0.0, "S_min": 0.0,
                    "S_max": float("inf"), "S_noise": 1.0}
SAMPLER_STEPS = 18
TIME_STEP = "1h"


def detect(folder: Path) -> Path | None:
    return folder if folder.is_dir() and all((folder / f).is_file() for f in FILES) else None


def hrrr_subgrid(window=HRRR_WINDOW) -> dict:
    """x, y (m), 2-D lat / lon (lon in [0, 360) as Earth2Studio) and the CF grid_mapping of a HRRR window."""
    from pyproj import CRS, Transformer

    from ...fields.grid import HRRR_CRS_CF

    (r0, r1), (c0, c1) = window
    x = np.linspace(*HRRR_X[:2], HRRR_X[2])[c0:c1]
    y = np.linspace(*HRRR_Y[:2], HRRR_Y[2])[r0:r1]
    xx, yy = np.meshgrid(x, y)
    lon, lat = Transformer.from_crs(CRS.from_cf(HRRR_CRS_CF), "EPSG:4326", always_xy=True).transform(xx, yy)
    return {"x": x, "y": y, "lat": lat, "lon": np.where(lon < 0, lon + 360.0, lon), "grid_mapping": dict(HRRR_CRS_CF)}


def _config(root: Path) -> tuple[list[str], dict]:
    import yaml

    config = yaml.safe_load((root / "model.yaml").read_text(encoding="utf-8")) or {}
    invariants = (config.get("data") or {}).get("invariants")
    sampler = config.get("sampler_args") or {}
    for what, value in (("data.invariants", invariants), ("sampler_args", sampler)):
        if "${" in str(value):
            raise BundleError(explain(f"model.yaml: {what} uses an interpolation xkmcast does not evaluate",
                                      found=value, fix="write the values out in model.yaml"))
    if not isinstance(invariants, list) or not invariants:
        raise BundleError(explain("model.yaml lacks data.invariants", expected="a list of invariant names", found=invariants))
    unknown = sorted(set(sampler) - set(SAMPLER_DEFAULTS))
    if unknown:
        raise BundleError(explain("model.yaml: sampler_args xkmcast cannot honour", expected=sorted(SAMPLER_DEFAULTS),
                                  found=unknown))
    return [str(v) for v in invariants], {**SAMPLER_DEFAULTS, **{k: float(v) for k, v in sampler.items()}}


def _metadata(root: Path, invariant_names: list[str]) -> dict:
    import xarray as xr
    import zarr

    store = zarr.storage.ZipStore(str(root / "metadata.zarr.zip"), mode="r")
    try:
        meta = xr.open_zarr(store, zarr_format=2, consolidated=None).load()
    finally:
        store.close()
    need = ("variable", "conditioning_variable", "means", "stds", "conditioning_means", "conditioning_stds", "invariants")
    missing = [k for k in need if k not in meta.variables]
    if missing:
        raise BundleError(explain("metadata.zarr.zip lacks what StormCast needs", expected=list(need), found=missing))
    names = [n for n in meta["invariants"].coords.get("invariant", meta["invariants"][meta["invariants"].dims[0]]).values.tolist()]
    absent = [n for n in invariant_names if n not in names]
    if absent:
        raise BundleError(explain("model.yaml names invariants metadata.zarr.zip lacks", expected=names, found=absent))
    inv = meta["invariants"].sel({meta["invariants"].dims[0]: invariant_names}).values.astype(np.float32)
    return {"variables": [str(v) for v in meta["variable"].values], "conditioning": [str(v) for v in meta["conditioning_variable"].values],
            "means": meta["means"].values, "stds": meta["stds"].values, "cmeans": meta["conditioning_means"].values,
            "cstds": meta["conditioning_stds"].values, "invariants": inv}


def _stats(names, mean, std) -> dict:
    mean, std = np.asarray(mean, float).reshape(-1), np.asarray(std, float).reshape(-1)
    if mean.size != len(names) or std.size != len(names):
        raise BundleError(explain("statistics and variable lists differ in length", expected=len(names), found=(mean.size, std.size)))
    return {n: {"mean": float(m), "std": float(s)} for n, m, s in zip(names, mean, std)}


def load(root: Path, *, device="cpu", hrrr_window=HRRR_WINDOW):
    """The StormCast pipeline of the package at ``root`` (``hrrr_window``: rows, columns of the HRRR grid)."""
    from ..importer import assemble_pipeline, condition_channels, mdlus_stage

    invariant_names, sampler = _config(root)
    meta = _metadata(root, invariant_names)
    reg_entry, reg_net, _ = mdlus_stage(root / "StormCastUNet.0.0.mdlus")
    dif_entry, dif_net, dif_ckpt = mdlus_stage(root / "EDMPrecond.0.0.mdlus")
    if reg_entry["class"] != "StormCastUNet" or dif_ckpt is None or dif_entry["precond"]["class"] != "EDMPrecond":
        raise BundleError(explain("The StormCast checkpoints hold other networks",
                                  expected="StormCastUNet and EDMPrecond", found=[reg_entry["class"], dif_entry.get("precond")]))
    n_state, n_bg, n_inv = len(meta["variables"]), len(meta["conditioning"]), len(invariant_names)
    grid = hrrr_subgrid(hrrr_window)
    shape = grid["lat"].shape
    if tuple(meta["invariants"].shape[1:]) != shape:
        raise BundleError(explain("The invariants are not on the HRRR window", expected=list(shape), found=list(meta["invariants"].shape[1:])))
    checks = [("regression input", condition_channels(reg_net), n_state + n_bg + n_inv),
              ("regression output", reg_net.img_out_channels, n_state),
              ("diffusion condition", condition_channels(dif_net, dif_ckpt), n_state + n_state + n_inv),
              ("diffusion output", dif_ckpt.img_out_channels, n_state)]
    for what, found, expected in checks:
        if found != expected:
            raise BundleError(explain(f"StormCast's {what} channels do not match metadata.zarr.zip", expected=expected, found=found))
    for what, entry in (("regression", reg_entry), ("diffusion", dif_entry)):
        res = entry["kwargs"]["img_resolution"]
        res = (res, res) if isinstance(res, int) else tuple(res)
        if res != shape:
            raise BundleError(explain(f"The {what} network's img_resolution does not match the HRRR window",
                                      expected=list(shape), found=list(res)))
    stats = _stats(meta["variables"], meta["means"], meta["stds"])
    spec = {
        "kind": "stormcast",
        "input_vars": meta["variables"], "output_vars": meta["variables"],
        "background_vars": meta["conditioning"], "invariant_vars": invariant_names,
        "stats": {"input": stats, "output": stats, "background": _stats(meta["conditioning"], meta["cmeans"], meta["cstds"])},
        "conditions": {"regression": ["state", "background", "invariant"], "diffusion": ["state", "regression", "invariant"]},
        "sampler": {"sampler": "heun", "num_steps": SAMPLER_STEPS, **sampler},
        "time_step": TIME_STEP,
        "extra": {"package": "stormcast-v1", "conditions_as_listed": True, "invariants_normalised": False},
        "lat": grid["lat"], "lon": grid["lon"], "x": grid["x"], "y": grid["y"], "grid_mapping": grid["grid_mapping"],
        "invariants": meta["invariants"],
    }
    return assemble_pipeline(spec, {"regression": (reg_entry, reg_net), "diffusion": (dif_entry, dif_net)}, device=device)
