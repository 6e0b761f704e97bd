"""The generic CorrDiff package (what PhysicsNeMo's CorrDiff recipe exports; Earth2Studio's ``CorrDiff``).

Layout::

    metadata.json          input_variables, output_variables, invariant_variables?, number_of_steps (18),
                           solver ("euler"), sampler_type ("stochastic"), inference_mode ("both"),
                           hr_mean_conditioning (true), sigma_min?, sigma_max?, latlon_res?, ...
    stats.json             {"input": {var: {mean, std}}, "output": {...}, "invariants": {...}}
    regression.mdlus       CorrDiff regression U-Net
    diffusion.mdlus        EDM super-resolution diffusion model
    output_latlon_grid.nc  lat, lon (1-D regular or 2-D)
    input_latlon_grid.nc   lat, lon (1-D regular); absent: built from metadata latlon_res
    invariants.nc          invariant fields on the output grid (optional)

Steps (reproduced): inputs bilinear from the input grid onto the output grid, invariants appended
(as stored), everything normalised with stats.json; regression on zero latents; residual diffusion
conditioned on ``cat(mean, inputs, invariants)`` (``hr_mean_conditioning``) or on the inputs alone;
``sampler_type`` "stochastic" is EDM Heun (S_churn 0, sigma 0.002 .. 800 unless metadata sets them,
rho 7), "deterministic" is ``solver`` (euler / heun, sigma 0.002 .. 80). ``inference_mode``
"regression" keeps the regression only. A package whose stats.json has the time features ``sza`` /
``hod`` (CorrDiff CMIP6 -> ERA5: time-window inputs) is loaded by :mod:`.corrdiff_cmip6`. Anything
else (a 2-D input grid, other modes) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import BundleError, explain

__all__ = ["NAME", "detect", "load"]

NAME = "corrdiff_package"
REQUIRED = ("metadata.json", "stats.json", "regression.mdlus", "diffusion.mdlus", "output_latlon_grid.nc")
KNOWN_METADATA = {"input_variables", "output_variables", "invariant_variables", "number_of_samples", "number_of_steps",
                  "solver", "sampler_type", "inference_mode", "hr_mean_conditioning", "seed", "sigma_min", "sigma_max",
                  "grid_spacing_tolerance", "grid_bounds_margin", "latlon_res"}
SIGMA_DEFAULTS = {"stochastic": (0.002, 800.0), "deterministic": (0.002, 80.0)}


def detect(folder: Path) -> Path | None:
    return folder if folder.is_dir() and all((folder / f).is_file() for f in REQUIRED) else None


def _json(path: Path) -> dict:
    """The JSON object in ``path`` (BundleError for unreadable, empty, invalid or non-object content)."""
    try:
        text = path.read_text(encoding="utf-8")
        doc = json.loads(text) if text.strip() else None
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(explain(f"{path.name} is not valid JSON", found=str(exc))) from exc
    if not isinstance(doc, dict):
        raise BundleError(explain(f"{path.name} must hold a JSON object", found=type(doc).__name__))
    return doc


def _stats(stats: dict, role: str, names: list[str]) -> dict:
    """``{name: {mean, std}}`` of ``names`` from the ``role`` table of stats.json (finite, std > 0)."""
    table = stats.get(role) or {}
    missing = [n for n in names if n not in table]
    if missing:
        raise BundleError(explain(f"stats.json lacks {role!r} statistics", expected=names, found=f"missing {missing}"))
    out = {n: {"mean": float(table[n]["mean"]), "std": float(table[n]["std"])} for n in names}
    bad = [n for n, s in out.items() if not (np.isfinite(s["mean"]) and np.isfinite(s["std"]) and s["std"] > 0)]
    if bad:
        raise BundleError(explain(f"stats.json {role!r} statistics are invalid", expected="finite, std > 0", found=bad))
    return out


def _grid(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    import xarray as xr

    with xr.open_dataset(path) as ds:
        if "lat" not in ds or "lon" not in ds:
            raise BundleError(explain(f"{path.name} lacks lat / lon", found=list(ds.variables)))
        lat, lon = np.asarray(ds["lat"].values, float), np.asarray(ds["lon"].values, float)
    if lat.ndim != lon.ndim or lat.ndim not in (1, 2):
        raise BundleError(explain(f"The {name} grid must be 1-D or 2-D lat / lon", found=(lat.shape, lon.shape)))
    if lat.ndim == 1 and (lat[0] > lat[-1] or lon[0] > lon[-1]):
        raise BundleError(explain(f"The {name} grid must increase (south to north, west to east)",
                                  found=f"lat {lat[0]}..{lat[-1]}, lon {lon[0]}..{lon[-1]}"))
    return lat, lon


def _input_grid(root: Path, meta: dict, lat_out, lon_out) -> dict:
    if (root / "input_latlon_grid.nc").is_file():
        lat, lon = _grid(root / "input_latlon_grid.nc", "input")
        if lat.ndim != 1:
            raise BundleError(explain("A 2-D (curvilinear) input grid is not supported",
                                      expected="1-D lat / lon in input_latlon_grid.nc", found=lat.shape,
                                      fix="regrid the inputs onto the output grid yourself and load the networks with mdlus="))
    elif "latlon_res" in meta:
        res = float(meta["latlon_res"])
        lat = np.arange(np.floor(lat_out.min() / res) - 1, np.ceil(lat_out.max() / res) + 1 + 1) * res
        lon = np.arange(np.floor(lon_out.min() / res) - 1, np.ceil(lon_out.max() / res) + 1 + 1) * res
    else:
        raise BundleError(explain("The package has no input grid", expected="input_latlon_grid.nc or metadata latlon_res"))
    return {"lat": lat.tolist(), "lon": lon.tolist()}


def _invariants(root: Path, meta: dict, stats: dict) -> tuple[list[str], np.ndarray | None, dict]:
    import xarray as xr

    names = meta.get("invariant_variables")
    path = root / "invariants.nc"
    if not path.is_file():
        if names:
            raise BundleError(explain("metadata.json names invariants but invariants.nc is missing", found=names))
        return [], None, {}
    with xr.open_dataset(path) as ds:
        names = list(ds.data_vars) if names is None else list(names)
        missing = [n for n in names if n not in ds.data_vars]
        if missing:
            raise BundleError(explain("invariants.nc lacks variables metadata.json names", expected=names, found=list(ds.data_vars)))
        raw = np.stack([np.asarray(ds[n].values, float) for n in names]) if names else None
    table = _stats(stats, "invariants", names)
    if raw is None:
        return [], None, {}
    mean = np.array([table[n]["mean"] for n in names])[:, None, None]
    std = np.array([table[n]["std"] for n in names])[:, None, None]
    return names, (raw - mean) / std, table


def _sampler(meta: dict, sigma_defaults: dict | None = None) -> dict:
    """The sampler of metadata.json; ``sigma_defaults`` {sampler_type: (sigma_min, sigma_max)} when it sets none."""
    kind = meta.get("sampler_type", "stochastic")
    if kind not in SIGMA_DEFAULTS:
        raise BundleError(explain("Unknown sampler_type in metadata.json", expected=sorted(SIGMA_DEFAULTS), found=kind))
    lo, hi = (sigma_defaults or SIGMA_DEFAULTS)[kind]
    if kind == "stochastic":
        method = "heun"  # PhysicsNeMo's stochastic sampler is Heun whatever `solver` says
    else:
        if meta.get("hr_mean_conditioning", True):
            raise BundleError(explain("The deterministic sampler with hr_mean_conditioning is not defined",
                                      fix="use sampler_type 'stochastic' (as Earth2Studio requires too)"))
        method = meta.get("solver", "euler")
        if method not in ("euler", "heun"):
            raise BundleError(explain("Unknown solver in metadata.json", expected=["euler", "heun"], found=method))
    return {"sampler": method, "num_steps": int(meta.get("number_of_steps", 18)), "rho": 7.0,
            "sigma_min": float(meta.get("sigma_min") if meta.get("sigma_min") is not None else lo),
            "sigma_max": float(meta.get("sigma_max") if meta.get("sigma_max") is not None else hi)}



def checked_stages(root: Path, mode: str, n_cond: int, n_out: int, hr_mean: bool, what: str,
                   check=lambda stage, entry: None) -> dict:
    """{stage: (entry, network)} of regression.mdlus (and diffusion.mdlus with ``mode == "both"``), their
    condition channels checked: ``n_cond`` (``what``) for the regression, plus the ``n_out`` regression
    means with ``hr_mean`` for the diffusion (an EDMPrecondSuperResolution); ``check(stage, entry)`` adds
    a family's own checks."""
    from ..importer import condition_channels, mdlus_stage

    reg_entry, reg_net, _ = mdlus_stage(root / "regression.mdlus")
    _check(condition_channels(reg_net), n_cond, "regression", what)
    check("regression", reg_entry)
    stages = {"regression": (reg_entry, reg_net)}
    if mode == "both":
        dif_entry, dif_net, ckpt = mdlus_stage(root / "diffusion.mdlus")
        if ckpt is None or dif_entry["precond"]["class"] != "EDMPrecondSuperResolution":
            raise BundleError(explain("diffusion.mdlus is not a super-resolution EDM model",
                                      expected="EDMPrecondSuperResolution / EDMPrecondSR", found=dif_entry["class"]))
        _check(condition_channels(dif_net, ckpt), n_cond + (n_out if hr_mean else 0), "diffusion",
               ("regression means + " if hr_mean else "") + what)
        check("diffusion", dif_entry)
        stages["diffusion"] = (dif_entry, dif_net)
    return stages


def load(root: Path, *, device="cpu"):
    """The CorrDiff pipeline of the generic package at ``root``."""
    from ..importer import assemble_pipeline

    meta, stats = _json(root / "metadata.json"), _json(root / "stats.json")
    from . import corrdiff_cmip6

    if corrdiff_cmip6.is_time_window_package(stats):
        return corrdiff_cmip6.load(root, device=device)
    unknown = sorted(set(meta) - KNOWN_METADATA)
    if unknown:
        raise BundleError(explain("metadata.json has settings xkmcast cannot honour", expected=sorted(KNOWN_METADATA), found=unknown))
    inputs, outputs = list(meta["input_variables"]), list(meta["output_variables"])
    if len(set(inputs)) != len(inputs):
        raise BundleError(explain("metadata.json input_variables has duplicates", found=inputs))
    mode = meta.get("inference_mode", "both")
    if mode not in ("both", "regression"):
        raise BundleError(explain("Unsupported inference_mode", expected=["both", "regression"], found=mode))
    lat, lon = _grid(root / "output_latlon_grid.nc", "output")
    if lat.ndim == 1:
        lat, lon = np.meshgrid(lat, lon, indexing="ij")
    inv_names, invariants, inv_stats = _invariants(root, meta, stats)
    n_cond = len(inputs) + len(inv_names)
    hr_mean = bool(meta.get("hr_mean_conditioning", True))
    stages = checked_stages(root, mode, n_cond, len(outputs), hr_mean, f"{len(inputs)} inputs + {len(inv_names)} invariants")
    spec = {
        "kind": "corrdiff", "input_vars": inputs, "output_vars": outputs, "invariant_vars": inv_names,
        "stats": {"input": _stats(stats, "input", inputs), "output": _stats(stats, "output", outputs),
                  **({"invariant": inv_stats} if inv_stats else {})},
        "sampler": _sampler(meta), "loss": {"condition_on_mean": hr_mean},
        "extra": {"package": "corrdiff", "input_grid": _input_grid(root, meta, lat, lon)},
        "lat": lat, "lon": lon, "invariants": invariants,
    }
    return assemble_pipeline(spec, stages, device=device)


def _check(found: int, expected: int, stage: str, what: str) -> None:
    if found != expected:
        raise BundleError(
            explain(
                f"The {stage} network does not take the condition this package layout gives it",
                expected=f"{expected} channels ({what})", found=found,
                fix="a package with time-window inputs and time features (CorrDiff CMIP6) needs the sza and hod "
                    "statistics in stats.json['input']; other extra channels are not supported",
            )
        )
