"""CorrDiff CMIP6 -> ERA5: the generic CorrDiff package layout with time-window inputs and time features
(Hugging Face ``nvidia/corrdiff-cmip6-era5``, Earth2Studio's ``CorrDiffCMIP6``).

The layout is the generic package's (:mod:`.corrdiff_package`); what makes it this variant is
``stats.json["input"]`` holding the time features ``sza`` (cos of the solar zenith angle) and ``hod``
(hour of day). The facts honoured (Earth2Studio's ``CorrDiffCMIP6``, reproduced step by step in
:mod:`.cmip6_steps`):

* the input window: every input variable at ``centre + (-24 h, 0, +24 h)`` (``metadata["time_window"]``,
  hours, if present, must be this window), channels variable-major (``v0@-24h, v0@0h, v0@+24h, v1@...``),
  each normalised with its variable's statistics;
* the output valid time is ``centre + lead`` with lead in [-12 h, +11 h] (default -12 h): sza is
  computed at the valid time on the output grid, hod is its hour;
* ``siconc`` (if ``snc`` is an input too) is replaced by the sea-air-ice cover
  ``clip(siconc + snc, 0, 100)`` (NaN read as 0) smoothed by a 3 x 3 mean (circular in longitude,
  edge-replicated in latitude), before interpolation;
* bilinear (pixel-space, ``align_corners=False``) from the input grid onto the output grid shape;
  invariants appended upside down (then flipped back with everything: as stored); the last invariant
  slot holds the hour of day normalised with that invariant's statistics (a training quirk);
  sza and hod appended and normalised with ``stats["input"]["sza" / "hod"]``;
* flipped north-to-south, reflect-padded (23, 24) rows, circularly padded (48, 48) columns, channels
  reordered ``inputs, sza, invariants[:-1], hod (invariant slot), hod``;
* regression on zero latents, residual diffusion (sampler of metadata; sigma 1 .. 400 unless
  metadata sets them, Earth2Studio's defaults for this package); output cropped, denormalised,
  clamped at 0 for the non-negative variables (:data:`NONNEGATIVE`), flipped back south-to-north.

Refused with a BundleError: another window, no invariants, a 2-D grid, a grid too small for the
padding, networks whose condition channels or resolution differ from what these steps give.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import BundleError, explain

__all__ = ["is_time_window_package", "load", "WINDOW_HOURS", "LEAD_HOURS", "PAD", "NONNEGATIVE", "TIME_FEATURES"]

TIME_FEATURES = ("sza", "hod")
WINDOW_HOURS = (-24, 0, 24)
LEAD_HOURS = (-12, 11)  # output lead times (inclusive) around the window centre
PAD = ((23, 24), (48, 48))  # (rows: reflect top, bottom), (columns: circular left, right)
SIGMA_DEFAULTS = {"stochastic": (1.0, 400.0), "deterministic": (1.0, 400.0)}
SAI = ("siconc", "snc")  # sea-ice concentration and snow cover [%], combined into the sai cover
_LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)
#: outputs clamped at 0 after denormalisation (Earth2Studio's list)
NONNEGATIVE = ("t2m", "sp", "msl", "tcwv", *(f"{b}{p}" for b in "ztq" for p in _LEVELS), "sst", "d2m")


def is_time_window_package(stats: dict) -> bool:
    """Whether stats.json has the time features of the CMIP6 variant."""
    table = stats.get("input") or {}
    return all(f in table for f in TIME_FEATURES)


def _window(meta: dict) -> list[int]:
    import pandas as pd

    raw = meta.get("time_window", list(WINDOW_HOURS))
    try:
        hours = [float(v) if isinstance(v, (int, float)) else pd.Timedelta(v) / pd.Timedelta(1, "h") for v in raw]
    except (TypeError, ValueError) as exc:
        raise BundleError(explain("metadata.json time_window is not a list of offsets",
                                  expected="hours ([-24, 0, 24]) or durations (['-24h', '0h', '24h'])", found=raw)) from exc
    if hours != [float(h) for h in WINDOW_HOURS]:
        raise BundleError(explain("The package's input time window is not the one Earth2Studio's CorrDiffCMIP6 uses",
                                  expected=f"{list(WINDOW_HOURS)} h", found=raw,
                                  fix="only the published window can be reproduced exactly"))
    return list(WINDOW_HOURS)


def _one_d(lat, lon, name: str) -> None:
    if lat.ndim != 1:
        raise BundleError(explain(f"The CMIP6 package's {name} grid must be 1-D lat / lon", found=(lat.shape, lon.shape)))


def _check_resolution(stage: str, entry: dict, padded: tuple[int, int]) -> None:
    res = entry["kwargs"].get("img_resolution")
    if res is None:
        return
    res = (res, res) if isinstance(res, int) else tuple(res)
    if tuple(res) != padded:
        raise BundleError(explain(f"The {stage} network's img_resolution is not the padded output grid",
                                  expected=f"{list(padded)} (output grid + rows {PAD[0]}, columns {PAD[1]})",
                                  found=list(res)))


def load(root: Path, *, device="cpu"):
    """The CorrDiff pipeline of the CMIP6 -> ERA5 package at ``root`` (time-window steps in ``spec.extra``)."""
    from ..importer import assemble_pipeline
    from .corrdiff_package import KNOWN_METADATA, _grid, _input_grid, _invariants, _json, _sampler, _stats, checked_stages

    meta, stats = _json(root / "metadata.json"), _json(root / "stats.json")
    unknown = sorted(set(meta) - KNOWN_METADATA - {"time_window"})
    if unknown:
        raise BundleError(explain("metadata.json has settings xkmcast cannot honour",
                                  expected=sorted(KNOWN_METADATA | {"time_window"}), found=unknown))
    window = _window(meta)
    inputs, outputs = list(meta["input_variables"]), list(meta["output_variables"])
    if len(set(inputs)) != len(inputs):
        raise BundleError(explain("metadata.json input_variables has duplicates", found=inputs))
    mode = meta.get("inference_mode", "both")
    if mode not in ("both", "regression"):
        raise BundleError(explain("CorrDiff CMIP6 runs inference_mode 'both' or 'regression' only", found=mode))
    lat, lon = _grid(root / "output_latlon_grid.nc", "output")
    _one_d(lat, lon, "output")
    if lat.size <= PAD[0][1] or lon.size < PAD[1][0]:
        raise BundleError(explain("The output grid is too small for the package's padding",
                                  expected=f"more than {PAD[0][1]} rows and at least {PAD[1][0]} columns",
                                  found=(lat.size, lon.size)))
    if not (root / "input_latlon_grid.nc").is_file():
        raise BundleError(explain("The CMIP6 package needs input_latlon_grid.nc", found=sorted(p.name for p in root.iterdir())))
    input_grid = _input_grid(root, meta, lat, lon)
    inv_names, invariants, inv_stats = _invariants(root, meta, stats)
    if not inv_names:
        raise BundleError(explain("The CMIP6 package needs invariants (its last slot carries the hour of day)",
                                  expected="invariants.nc with at least one variable", found=inv_names))
    if invariants.shape[1:] != (lat.size, lon.size):
        raise BundleError(explain("invariants.nc is not on the output grid", expected=(lat.size, lon.size),
                                  found=invariants.shape[1:]))
    padded = (lat.size + sum(PAD[0]), lon.size + sum(PAD[1]))
    n_cond = len(window) * len(inputs) + len(inv_names) + len(TIME_FEATURES)
    what = f"{len(window)} times x {len(inputs)} inputs + {len(inv_names)} invariants + sza, hod"
    hr_mean = bool(meta.get("hr_mean_conditioning", True))
    stages = checked_stages(root, mode, n_cond, len(outputs), hr_mean, what,
                            check=lambda stage, entry: _check_resolution(stage, entry, padded))
    features = _stats(stats, "input", list(TIME_FEATURES))
    sai = list(SAI) if all(v in inputs for v in SAI) else None
    spec = {
        "kind": "corrdiff", "input_vars": inputs, "output_vars": outputs, "invariant_vars": inv_names,
        "stats": {"input": _stats(stats, "input", inputs), "output": _stats(stats, "output", outputs),
                  "invariant": inv_stats},
        "sampler": _sampler(meta, SIGMA_DEFAULTS), "loss": {"condition_on_mean": hr_mean},
        "extra": {"package": "corrdiff-cmip6", "input_grid": input_grid,
                  "time_window": {"hours": window, "lead_hours": list(LEAD_HOURS), "pad": [list(p) for p in PAD],
                                  "time_features": features, "sai": sai,
                                  "nonnegative": [v for v in outputs if v in NONNEGATIVE]}},
        "lat": np.broadcast_to(lat[:, None], (lat.size, lon.size)), "lon": np.broadcast_to(lon[None], (lat.size, lon.size)),
        "invariants": invariants,
    }
    pipeline = assemble_pipeline(spec, stages, device=device)
    pipeline.set_grid(pipeline.grid_lat.cpu().numpy(), pipeline.grid_lon.cpu().numpy(), latlon_dims=["lat", "lon"])
    return pipeline
