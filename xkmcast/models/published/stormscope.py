"""StormScope: Hugging Face ``nvidia/stormscope-goes-mrms`` (GOES / MRMS nowcasting on the HRRR grid).

Layout (as Earth2Studio's ``earth2studio/models/px/stormscope.py`` reads it)::

    registry.json        {"normalization": {group: {"file_prefix": p | null, "order": [names],
                                                    "transform": "log1p"?}},
                          "goes" | "mrms": {"models": {variant: entry}, "aliases": {alias: variant}}}
    <p>_means.npy, <p>_stds.npy   statistics of group p, in its "order"
    lat.npy, lon.npy     2-D latitude / longitude of the full HRRR grid (1059 x 1799)
    topo.npy, nexrad_proximity.npy, mrms_coverage_mask.npy   fixed fields on that grid
    <entry.checkpoints[k].path>   EDMPreconditioner(ConcatConditionWrapper(DiT)) .mdlus, one per expert

A variant entry: ``checkpoints`` ([{path, sigma_min, sigma_max}]), ``variables``, ``conditioning_vars``,
``image_size`` [H, W] (centre crop of the HRRR grid, anchor ``int((full - size) / 2)``),
``spatial_downsample`` s (then every s-th point), ``sliding_window`` with ``n_steps`` (n input times
t-(n-1)dt .. t, else one), ``step_interval`` dt [min], ``topo`` / ``nexrad_proximity`` (fixed channels).
Statistics are picked by variable name from the groups. The grid: lat / lon cropped (lon mod 360),
x / y the HRRR Lambert coordinates of the crop. The step: :mod:`xkmcast.models.stormscope_package`,
sampled as Earth2Studio (stochastic Heun, 100 steps, S_churn 10, rho 7, noise range the experts').

Refused (BundleError), because xkmcast cannot yet run them as Earth2Studio does: variants conditioned
on other sources (``conditioning_vars``: the MRMS models take GOES, legacy GOES models z500), log1p
(GLM) channels, and lat.npy not on the 1059 x 1799 HRRR grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import BundleError, explain

__all__ = ["NAME", "detect", "load", "referenced_files", "SAMPLER"]

NAME = "stormscope"
REGISTRY = "registry.json"
HRRR_SHAPE = (1059, 1799)
#: Earth2Studio's sampler_args for StormScope, and its noise schedule (EDM rho 7)
SAMPLER = {"sampler": "heun", "num_steps": 100, "S_churn": 10.0, "rho": 7.0}
#: build_condition's lat / lon features: (lat - 38.5) / 15, (wrap180(lon) - 262.5) / 36
LATLON_FEATURES = ((38.5, 15.0), (262.5, 36.0))
REQUIRED = ("checkpoints", "variables", "conditioning_vars", "image_size", "spatial_downsample", "sliding_window",
            "step_interval")


def detect(folder: Path) -> Path | None:
    path = folder / REGISTRY
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return folder if isinstance(doc, dict) and "normalization" in doc and ({"goes", "mrms"} & set(doc)) else None


def _registry(root: Path) -> dict:
    return json.loads((root / REGISTRY).read_text(encoding="utf-8"))


def variant_entry(registry: dict, source: str, variant: str) -> dict:
    """The registry entry of ``variant`` (or an alias) of ``source`` ("goes" / "mrms"), checked."""
    if source not in registry or not isinstance(registry[source], dict) or "models" not in registry[source]:
        raise BundleError(explain(f"registry.json has no {source!r} models", expected=["goes", "mrms"],
                                  found=sorted(k for k in registry if k != "normalization")))
    section = registry[source]
    name = section.get("aliases", {}).get(variant, variant)
    if name not in section["models"]:
        raise BundleError(explain(f"Unknown StormScope {source} variant", expected=sorted(section["models"]), found=variant,
                                  fix="load_model(..., package_options={'variant': NAME})"))
    entry = section["models"][name]
    missing = [k for k in REQUIRED if k not in entry] + (["n_steps"] if entry.get("sliding_window") and "n_steps" not in entry else [])
    if missing:
        raise BundleError(explain(f"registry.json: {source}/{name} lacks what the step needs", expected=list(REQUIRED), found=missing))
    if entry["conditioning_vars"]:
        raise BundleError(explain(f"StormScope {source}/{name} is conditioned on other sources, which xkmcast cannot feed yet",
                                  expected="a variant without conditioning_vars (the GOES 3km_10min nowcast)",
                                  found=list(entry["conditioning_vars"])))
    for ckpt in entry["checkpoints"]:
        if not {"path", "sigma_min", "sigma_max"} <= set(ckpt):
            raise BundleError(explain("registry.json: a checkpoint lacks its path or noise range",
                                      expected=["path", "sigma_min", "sigma_max"], found=sorted(ckpt)))
    return entry


def referenced_files(root: Path, *, source: str = "goes", variant: str = "3km_10min") -> list[str]:
    """The files ``registry.json`` in ``root`` names for this variant (fetched after it)."""
    registry = _registry(root)
    entry = variant_entry(registry, source, variant)
    groups = _groups(registry, entry["variables"])
    files = ["lat.npy", "lon.npy"] + [f"{p}_{s}.npy" for p in sorted(groups) for s in ("means", "stds")]
    files += [f"{k}.npy" for k in ("nexrad_proximity", "topo") if entry.get(k)]
    return files + [c["path"] for c in entry["checkpoints"]]


def _groups(registry: dict, names) -> dict[str, list[tuple[str, int]]]:
    """{file prefix: [(name, index in the group's order)]} for ``names``; refuses log1p channels."""
    where = {}
    for group in registry["normalization"].values():
        for i, n in enumerate(group["order"]):
            where[n] = (group, i)
    out: dict[str, list[tuple[str, int]]] = {}
    for n in names:
        if n not in where:
            raise BundleError(explain(f"registry.json: {n!r} is in no normalization group", found=n))
        group, i = where[n]
        if group.get("file_prefix") is None or group.get("transform") == "log1p":
            raise BundleError(explain(f"{n!r} is a log1p (GLM) channel, which xkmcast does not support yet",
                                      expected="mean / std channels", found=n))
        out.setdefault(group["file_prefix"], []).append((n, i))
    return out


def _stats(root: Path, registry: dict, names) -> dict:
    stats = {}
    for prefix, members in _groups(registry, names).items():
        means = np.atleast_1d(np.load(root / f"{prefix}_means.npy"))
        stds = np.atleast_1d(np.load(root / f"{prefix}_stds.npy"))
        for n, i in members:
            stats[n] = {"mean": float(np.float32(means[i])), "std": float(np.float32(stds[i]))}
    return {n: stats[n] for n in names}


def crop(arr, image_size, step: int):
    """Centre crop to ``image_size`` (anchor ``int((full - size) / 2)``), then every ``step``-th point."""
    (h, w), (H, W) = image_size, arr.shape[:2]
    y0, x0 = int((H - h) / 2), int((W - w) / 2)
    return arr[y0:y0 + h, x0:x0 + w][::step, ::step]


def _grid(root: Path, entry: dict) -> dict:
    import torch

    from ...fields.grid import HRRR_CRS_CF
    from .stormcast_v1 import HRRR_X, HRRR_Y

    lat = torch.from_numpy(np.load(root / "lat.npy"))
    lon = (torch.from_numpy(np.load(root / "lon.npy")) + 360.0) % 360.0
    if tuple(lat.shape) != HRRR_SHAPE or tuple(lon.shape) != HRRR_SHAPE:
        raise BundleError(explain("lat.npy / lon.npy are not on the HRRR grid the package's coordinates assume",
                                  expected=list(HRRR_SHAPE), found=[list(lat.shape), list(lon.shape)]))
    size, step = [int(v) for v in entry["image_size"]], int(entry["spatial_downsample"])
    lat, lon = crop(lat, size, step).float(), crop(lon, size, step).float()
    y = crop(np.linspace(*HRRR_Y[:2], HRRR_Y[2])[:, None], (size[0], 1), step)[:, 0]
    x = crop(np.linspace(*HRRR_X[:2], HRRR_X[2])[None, :], (1, size[1]), step)[0]
    (lat0, lat_scale), (lon0, lon_scale) = LATLON_FEATURES
    features = [(lat - lat0) / lat_scale, (((lon + 180.0) % 360.0 - 180.0) - lon0) / lon_scale]
    for name in ("nexrad_proximity", "topo"):
        if entry.get(name):
            features.append(crop(torch.from_numpy(np.load(root / f"{name}.npy")).float(), size, step))
    return {"lat": lat.double().numpy(), "lon": lon.double().numpy(), "x": x, "y": y, "grid_mapping": dict(HRRR_CRS_CF),
            "fixed": torch.stack(features).numpy()}


def load(root: Path, *, device="cpu", source: str = "goes", variant: str = "3km_10min"):
    """The pipeline of ``variant`` of the ``source`` models in the package at ``root``."""
    from ...diffusion.experts import SigmaExperts
    from ..base import ModelSpec
    from ..importer import _inner, mdlus_stage
    from ..stages import build_stage
    from ..stormscope_package import StormScopePackage

    registry = _registry(root)
    entry = variant_entry(registry, source, variant)
    names = [str(v) for v in entry["variables"]]
    window = int(entry["n_steps"]) if entry["sliding_window"] else 1
    grid = _grid(root, entry)
    shape = list(grid["lat"].shape)
    fixed_names = ["lat_feature", "lon_feature"] + [k for k in ("nexrad_proximity", "topo") if entry.get(k)]
    networks, experts, ranges = [], [], []
    for ckpt in entry["checkpoints"]:
        net_entry, net, edm = mdlus_stage(root / ckpt["path"])
        if edm is None or edm.wrapper != "EDMPreconditioner":
            raise BundleError(explain(f"{ckpt['path']}: not a preconditioned denoiser", expected="EDMPreconditioner",
                                      found=getattr(edm, "wrapper", net_entry["class"])))
        expected = {"condition": window * len(names) + len(fixed_names) + 2, "output": len(names)}
        found = {"condition": edm.condition_channels, "output": edm.img_out_channels}
        if found != expected:
            raise BundleError(explain(f"{ckpt['path']}: channels do not match registry.json", expected=expected, found=found))
        size = net_entry["kwargs"].get("input_size")
        if size is not None and list(np.broadcast_to(size, 2)) != shape:
            raise BundleError(explain(f"{ckpt['path']}: the network's input_size is not the variant's grid",
                                      expected=shape, found=size))
        stage = build_stage(net_entry)
        _inner(stage, net).load_state_dict(net.state_dict())
        experts.append(stage)
        ranges.append((float(ckpt["sigma_min"]), float(ckpt["sigma_max"])))
        networks.append({**net_entry, "path": ckpt["path"], "sigma_min": ranges[-1][0], "sigma_max": ranges[-1][1]})
    mixture = SigmaExperts(experts, ranges)
    stats = _stats(root, registry, names)
    spec = ModelSpec(
        kind="stormscope", input_vars=names, output_vars=names, invariant_vars=fixed_names,
        networks={"diffusion": {"class": "SigmaExperts", "experts": networks}},
        stats={"input": stats, "output": stats}, conditions={"diffusion": ["state", "invariant"]},
        sampler={**SAMPLER, "sigma_min": mixture.sigma_min, "sigma_max": mixture.sigma_max},
        time_step=f"{int(entry['step_interval'])}min",
        extra={"package": "stormscope-goes-mrms", "source": source, "variant": variant, "input_window": window,
               "step_minutes": int(entry["step_interval"]), "cos_zenith_after": 2},
    )
    pipeline = StormScopePackage(spec, {"diffusion": mixture})
    pipeline.set_grid(grid["lat"], grid["lon"], grid_mapping=grid["grid_mapping"], x=grid["x"], y=grid["y"])
    pipeline.set_invariants(grid["fixed"])
    return pipeline.to(device).eval()
