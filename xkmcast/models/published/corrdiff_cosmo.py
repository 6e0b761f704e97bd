"""CorrDiff COSMO-REA: ERA5 -> COSMO-REA6 (~6 km) / COSMO-REA2 (~2.2 km) over Europe (Hugging Face
``nvidia/corrdiff-cosmo-era5``, Earth2Studio's ``CorrDiffCosmoEra5``).

Layout (one sub-folder per resolution, ``rea6/`` or ``rea2/``)::

    metadata.json   era5_variables, output_variables, pre_invariant_variables, post_invariant_variables,
                    modes {mean|diffusion: {stats, channel_transforms}}, channel_transforms, constraints
                    {bounds, sza_gate}, sampler {num_steps, sigma_min, sigma_max, rho, solver},
                    checkpoints {"<res>_mean", "<res>_diffusion"}, invariants? {file, native_offset,
                    native_shape, norm_stats_file}
    stats.json      {"era5": {var: {mean, std}}, "<mode stats>": {var: {mean, std}}}
    grids.nc        lat_input, lon_input (1-D regular, increasing), lat_output, lon_output (2-D rotated pole)
    invariants.nc   normalised invariants on the output grid (or the extended physical file of ``invariants``)
    *.mdlus         mean: PhysicsNeMo ``DiT``; diffusion: ``EDMPreconditioner(ConcatConditionWrapper(DiT))``

What the networks see (reproduced): ``background = cat(ERA5 bilinear from the input grid onto the 2-D
output grid and z-scored, pre-invariants (sin/cos lat/lon computed from the grid, the others as stored),
max(cos_zenith(t - 1 h), cos_zenith(t)), post-invariants)``. Mean mode: ``DiT(background, t=0)``.
Diffusion mode (independent of the mean, not a residual): EDM sampling of
``D(x; sigma, background)`` with the package's sampler (Heun or Euler, Karras steps, no churn). Then
denormalise with the mode's statistics, invert the channel transforms (diffusion), clamp, bound, gate
the shortwave fluxes by the Sun and rescale units (:mod:`xkmcast.fields.output_recipe`); outputs get
Earth2Studio's names (``T_2M`` -> ``t2m``, ``CLCT`` % -> ``tcc`` fraction, ``TOT_PRECIP`` mm -> ``tp`` m).
Not reproduced (refused or absent): Earth2Studio's ``set_domain`` sub-domains and hub-height winds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import BundleError, explain
from .corrdiff_package import _json, _stats

__all__ = ["NAME", "detect", "load", "RESOLUTIONS", "MODES"]

NAME = "corrdiff_cosmo"
RESOLUTIONS = ("rea6", "rea2")
MODES = ("mean", "diffusion")
REQUIRED = ("metadata.json", "stats.json", "grids.nc")
POSITION = ("sin_lat", "cos_lat", "sin_lon", "cos_lon")
SHORTWAVE = ("ASWDIR_S", "ASWDIFD_S")
SAMPLER = {"num_steps": 18, "sigma_min": 0.002, "sigma_max": 800.0, "rho": 7.0, "solver": "heun"}
ZENITH_HOURS = 1.0  # targets are hourly means: the Sun's cosine is the max over [t - 1 h, t]
#: Earth2Studio's CosmoLexicon where the public name is not the lower-case COSMO name: (name, unit scale)
PUBLIC_NAMES = {"U_10M": ("u10m", 1.0), "10U": ("u10m", 1.0), "V_10M": ("v10m", 1.0), "10V": ("v10m", 1.0),
                "T_2M": ("t2m", 1.0), "2MT": ("t2m", 1.0), "TD_2M": ("d2m", 1.0), "PS": ("sp", 1.0),
                "CLCT": ("tcc", 0.01), "TOT_PRECIP": ("tp", 1e-3), "QV_2M": ("q2m", 1.0), "VMAX_10M": ("fg10m", 1.0),
                "H_PBL": ("blh", 1.0)}


def _is_resolution_folder(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in REQUIRED) and \
        "era5_variables" in (folder / "metadata.json").read_text(encoding="utf-8")


def detect(folder: Path) -> Path | None:
    """``folder`` when it is a resolution folder or holds ``rea6/`` / ``rea2/`` ones."""
    if _is_resolution_folder(folder) or any(_is_resolution_folder(folder / r) for r in RESOLUTIONS):
        return folder
    return None


def _resolution_folder(root: Path, resolution: str | None) -> tuple[str, Path]:
    if _is_resolution_folder(root):
        found = resolution or root.name
        if found not in RESOLUTIONS:
            raise BundleError(explain("Cannot tell which COSMO-REA resolution this folder holds",
                                      expected=list(RESOLUTIONS), found=root.name, fix="pass package_options={'resolution': ...}"))
        return found, root
    present = [r for r in RESOLUTIONS if _is_resolution_folder(root / r)]
    chosen = resolution or ("rea6" if "rea6" in present else present[0])
    if chosen not in present:
        raise BundleError(explain("The package lacks the requested resolution", expected=chosen, found=present))
    return chosen, root / chosen


def _grids(path: Path) -> dict:
    import xarray as xr

    with xr.open_dataset(path) as ds:
        need = ("lat_input", "lon_input", "lat_output", "lon_output")
        if not all(n in ds for n in need):
            raise BundleError(explain("grids.nc lacks the grids", expected=list(need), found=list(ds.variables)))
        g = {n: np.asarray(ds[n].values, np.float32) for n in need}
        mapping = next((dict(v.attrs) for v in ds.variables.values() if "grid_mapping_name" in v.attrs), None)
    for name in ("lat_input", "lon_input"):
        a = g[name].astype(np.float64)
        d = np.diff(a)
        if a.ndim != 1 or a.size < 2 or not (d > 0).all() or not np.allclose(d, d[0], rtol=1e-3, atol=0.0):
            raise BundleError(explain(f"grids.nc {name} must be 1-D, increasing and regular", found=a[:5]))
    if g["lat_output"].ndim != 2 or g["lat_output"].shape != g["lon_output"].shape:
        raise BundleError(explain("grids.nc lat_output / lon_output must be 2-D of one shape",
                                  found=(g["lat_output"].shape, g["lon_output"].shape)))
    for ax in ("lat", "lon"):
        src, out = g[f"{ax}_input"], g[f"{ax}_output"]
        if out.min() <= src[0] or out.max() >= src[-1]:
            raise BundleError(explain(f"The output grid is not strictly inside the input grid in {ax}",
                                      expected=f"({src[0]}, {src[-1]})", found=(float(out.min()), float(out.max()))))
    g["grid_mapping"] = mapping
    return g


def _invariants(folder: Path, meta: dict, names: list[str], lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """The invariant channels ``names`` (position channels computed from the grid), float32 (C, H, W)."""
    import xarray as xr

    rad_lat, rad_lon = np.deg2rad(lat), np.deg2rad(lon)
    position = dict(zip(POSITION, (np.sin(rad_lat), np.cos(rad_lat), np.sin(rad_lon), np.cos(rad_lon))))
    stored = [n for n in names if n not in POSITION]
    fields: dict[str, np.ndarray] = {}
    spec = meta.get("invariants") or {}
    if spec.get("file"):  # the extended physical file: native block by index, z-scored as the norm file says
        (i0, j0), (ny, nx) = (int(v) for v in spec["native_offset"]), (int(v) for v in spec["native_shape"])
        norm = _json(folder / spec["norm_stats_file"]).get("channels", {})
        with xr.open_dataset(folder / spec["file"]) as ds:
            for name in stored:
                phys = name[:-5] if name.endswith("_norm") else name
                if phys not in ds:
                    raise BundleError(explain(f"{spec['file']} lacks an invariant", expected=phys, found=list(ds.data_vars)))
                arr = np.asarray(ds[phys].values, np.float32)
                how = norm.get(phys, {"method": "identity"})
                if how.get("method") == "zscore":
                    m, s = float(how["mean"]), float(how["std"])
                    if not (np.isfinite(m) and np.isfinite(s) and s > 0):
                        raise BundleError(explain(f"Invalid z-score statistics of invariant {phys}", found=(m, s)))
                    arr = (arr - m) / s
                elif how.get("method") not in ("identity", None):
                    raise BundleError(explain(f"Unknown normalisation of invariant {phys}", expected=["zscore", "identity"],
                                              found=how.get("method")))
                fields[name] = arr[i0:i0 + ny, j0:j0 + nx]
    elif stored:
        if not (folder / "invariants.nc").is_file():
            raise BundleError(explain("The package has no invariants", expected="invariants.nc or metadata invariants.file",
                                      found=sorted(p.name for p in folder.iterdir())))
        with xr.open_dataset(folder / "invariants.nc") as ds:
            missing = [n for n in stored if n not in ds]
            if missing:
                raise BundleError(explain("invariants.nc lacks invariants the metadata names", found=missing))
            fields = {n: np.asarray(ds[n].values, np.float32) for n in stored}
    wrong = {n: a.shape for n, a in fields.items() if a.shape != lat.shape}
    if wrong:
        raise BundleError(explain("Invariants are not on the output grid", expected=lat.shape, found=wrong))
    return np.stack([position[n] if n in POSITION else fields[n] for n in names]).astype(np.float32)


def output_recipe(meta: dict, mode_meta: dict, outputs: list[str]) -> dict:
    """The :mod:`xkmcast.fields.output_recipe` of the package (transforms, bounds, solar gate, units)."""
    recipe: dict = {"clamp": True, "gate_hours": ZENITH_HOURS, "inverse": {}, "bounds": {}, "sza_gate": {},
                    "unit_scale": {}}
    transforms = meta.get("channel_transforms") or {} if mode_meta.get("channel_transforms", True) else {}
    for name in outputs:
        t = transforms.get(name)
        if not t:
            continue
        if not isinstance(t, dict):
            raise BundleError(explain(f"channel_transforms[{name!r}] must give its eps / scale", found=t))
        kind = str(t.get("transform", "")).lower()
        eps, scale = float(t.get("eps", 1e-5)), float(t.get("scale", 1.0))
        for known in ("log_eps", "asinh", "logit_eps"):
            if known in kind:
                if known == "logit_eps" and "percent" in kind and scale == 1.0:
                    scale = 100.0
                recipe["inverse"][name] = {"transform": known, "eps": eps, "scale": scale}
                break
        else:
            raise BundleError(explain(f"Unsupported channel transform of {name}",
                                      expected=["log_eps", "asinh", "logit_eps[_percent]"], found=kind))
    constraints = meta.get("constraints") or {}
    for name, b in (constraints.get("bounds") or {}).items():
        if name not in outputs or not isinstance(b, dict):
            continue
        if str(b.get("mode", "")).lower() == "sigmoid":
            raise BundleError(explain(f"constraints.bounds[{name!r}] uses the sigmoid mode, a training-time operation",
                                      expected="clamp bounds", found="sigmoid", fix="Earth2Studio refuses it too"))
        recipe["bounds"][name] = [None if b.get("min") is None else float(b["min"]),
                                  None if b.get("max") is None else float(b["max"])]
    gate = constraints.get("sza_gate") or {}
    width = 0.05 if gate.get("half_width") is None else float(gate["half_width"])
    for name, c in (gate.get("channels") or {}).items():
        if name not in outputs:
            continue
        th, hw = (float(c.get("threshold", 0.01)), width if c.get("half_width") is None else float(c["half_width"])) \
            if isinstance(c, dict) else (float(c), width)
        if hw <= 0:
            raise BundleError(explain(f"sza_gate half_width of {name} must be > 0", found=hw))
        recipe["sza_gate"][name] = [th, hw]
    ungated = [n for n in outputs if n in SHORTWAVE and n not in recipe["sza_gate"]]
    if recipe["sza_gate"] and ungated:
        raise BundleError(explain("The solar gate must cover every shortwave output", found=f"ungated {ungated}"))
    recipe["unit_scale"] = {n: PUBLIC_NAMES[n][1] for n in outputs if n in PUBLIC_NAMES and PUBLIC_NAMES[n][1] != 1.0}
    return recipe


def _network(folder: Path, meta: dict, resolution: str, mode: str, n_background: int, n_out: int, shape):
    """(stage name, (spec entry, network)) of the mode's checkpoint, its channels checked."""
    from ...nn import PhysicsNeMoDiT
    from ..importer import mdlus_stage

    key = f"{resolution}_{mode}"
    ckpt = (meta.get("checkpoints") or {}).get(key)
    if ckpt is None or not (folder / ckpt).is_file():
        raise BundleError(explain(f"The package has no {key} checkpoint", expected=f"metadata checkpoints[{key!r}] present",
                                  found=ckpt or sorted(meta.get("checkpoints") or {})))
    entry, net, edm = mdlus_stage(folder / ckpt)
    if not isinstance(net, PhysicsNeMoDiT) or (mode == "mean") != (edm is None) or \
            (edm is not None and edm.wrapper != "EDMPreconditioner"):
        raise BundleError(explain(f"{ckpt} is not the network Earth2Studio loads for the {mode} mode",
                                  expected="DiT" if mode == "mean" else "EDMPreconditioner(ConcatConditionWrapper(DiT))",
                                  found=entry["class"] if edm is None else f"{edm.wrapper}({entry['class']})"))
    takes = net.in_channels if edm is None else edm.condition_channels
    if takes != n_background or net.out_channels != n_out:
        raise BundleError(explain(f"{ckpt} does not take the channels the metadata lays out",
                                  expected=f"{n_background} background -> {n_out} outputs",
                                  found=f"{takes} -> {net.out_channels}"))
    ph, pw = net.patch_size
    if shape[0] % ph or shape[1] % pw:
        raise BundleError(explain("The output grid is not a whole number of DiT patches", expected=(ph, pw), found=shape))
    if net.tokenizer.pos_embed is not None and tuple(net.input_size) != tuple(shape):
        raise BundleError(explain("The DiT's learnt position embedding is for another grid", expected=list(shape),
                                  found=list(net.input_size)))
    if edm is None:
        entry["condition_as_input"] = True
        return "regression", (entry, net)
    return "diffusion", (entry, net)


def load(root: Path, *, device="cpu", mode: str = "mean", resolution: str | None = None):
    """The CorrDiff pipeline of the COSMO-REA package at ``root`` (``mode`` mean | diffusion)."""
    from ..importer import assemble_pipeline

    if mode not in MODES:
        raise BundleError(explain("Unknown COSMO-REA mode", expected=list(MODES), found=mode))
    resolution, folder = _resolution_folder(root, resolution)
    meta, stats = _json(folder / "metadata.json"), _json(folder / "stats.json")
    inputs, outputs = list(meta["era5_variables"]), list(meta["output_variables"])
    pre, post = list(meta["pre_invariant_variables"]), list(meta.get("post_invariant_variables") or [])
    modes = meta.get("modes") or {}
    if modes and mode not in modes:
        raise BundleError(explain("The package metadata has no entry for this mode", expected=sorted(modes), found=mode))
    mode_meta = modes.get(mode, {})
    grids = _grids(folder / "grids.nc")
    lat, lon = grids["lat_output"], grids["lon_output"]
    stage, built = _network(folder, meta, resolution, mode, len(inputs) + len(pre) + 1 + len(post), len(outputs), lat.shape)
    sampler = {**SAMPLER, **(meta.get("sampler") or {})}
    if sampler["solver"] not in ("heun", "euler") or int(sampler["num_steps"]) < 2:
        raise BundleError(explain("Unsupported sampler settings", expected="solver heun | euler, num_steps >= 2",
                                  found=sampler))
    spec = {
        "kind": "corrdiff", "input_vars": inputs, "output_vars": outputs, "invariant_vars": pre + post,
        "stats": {"input": _stats(stats, "era5", inputs), "output": _stats(stats, mode_meta.get("stats", "output"), outputs)},
        "sampler": {"sampler": sampler["solver"], "num_steps": int(sampler["num_steps"]), "rho": float(sampler["rho"]),
                    "sigma_min": float(sampler["sigma_min"]), "sigma_max": float(sampler["sigma_max"])},
        "loss": {"condition_on_mean": False},
        "extra": {"package": "corrdiff-cosmo", "resolution": resolution, "mode": mode,
                  "input_grid": {"lat": grids["lat_input"].astype(np.float64).tolist(),
                                 "lon": grids["lon_input"].astype(np.float64).tolist()},
                  "time_channels": {"at": len(pre), "hours": ZENITH_HOURS},
                  "output_recipe": output_recipe(meta, mode_meta, outputs),
                  "output_names": [PUBLIC_NAMES.get(n, (n.lower(), 1.0))[0] for n in outputs]},
        "lat": lat.astype(np.float64), "lon": lon.astype(np.float64),
        "invariants": _invariants(folder, meta, pre + post, lat, lon),
        "grid_mapping": grids["grid_mapping"],
    }
    return assemble_pipeline(spec, {stage: built}, device=device)
