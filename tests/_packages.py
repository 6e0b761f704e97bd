"""Build NVIDIA's published package layouts with PhysicsNeMo 2.2.2's own classes (tiny widths, real
structure, random O(1) weights) and serve them the way their hosts do (NGC files API, Hugging Face
resolve URLs and revision API) from a 127.0.0.1 server."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _nets import randomise

from xkmcast._reference import skip_without_physicsnemo

SONG_TINY = dict(model_channels=4, channel_mult=[1, 2], channel_mult_emb=1, num_blocks=1, attn_resolutions=[], bottleneck_attention=False,
                 dropout=0.0)


def physicsnemo_classes():
    skip_without_physicsnemo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from physicsnemo.diffusion.preconditioners.legacy import EDMPrecond, EDMPrecondSR, EDMPrecondSuperResolution
        from physicsnemo.models.diffusion_unets import StormCastUNet, UNet
    return dict(UNet=UNet, EDMPrecondSR=EDMPrecondSR, EDMPrecondSuperResolution=EDMPrecondSuperResolution,
                EDMPrecond=EDMPrecond, StormCastUNet=StormCastUNet)


def _save(module, path: Path, seed: int) -> None:
    randomise(module, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.save(str(path))


def _zip_folder(folder: Path, archive: Path, arcroot: str) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, f"{arcroot}/{p.relative_to(folder)}")
    return archive


# ------------------------------------------------------------------------------ CorrDiff-Taiwan
def taiwan_grid(n: int = 450):
    """A curvilinear 2 km-like grid inside the package's input domain (lat 19.25..28, lon 116..125.75)."""
    j, i = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    lat = 21.6 + 3.8 * i + 0.15 * j * (1 - j)
    lon = 118.2 + 4.0 * j + 0.2 * i - 0.1 * i * j
    return lat.astype(np.float32), lon.astype(np.float32)


def build_taiwan(workdir: Path, *, n: int = 450, scale_cond_input: bool = True) -> Path:
    """The unpacked package folder ``corrdiff_inference_package`` (checkpoints/, dataset/)."""
    import zarr

    cls = physicsnemo_classes()
    root = workdir / "corrdiff_inference_package"
    res = n - 2
    reg = cls["UNet"](img_resolution=res, img_in_channels=16, img_out_channels=4, model_type="SongUNet",
                      embedding_type="zero", **SONG_TINY)
    _save(reg, root / "checkpoints/regression.mdlus", seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dif = cls["EDMPrecondSR"](img_resolution=res, img_channels=4, img_in_channels=20, img_out_channels=4,
                                  model_type="SongUNetPosEmbd", scale_cond_input=scale_cond_input,
                                  gridtype="sinusoidal", N_grid_channels=4, **SONG_TINY)
    _save(dif, root / "checkpoints/diffusion.mdlus", seed=2)
    lat, lon = taiwan_grid(n)
    rng = np.random.default_rng(3)
    group = zarr.open_group(str(root / "dataset/2023-01-24-cwb-4years_5times.zarr"), mode="w", zarr_format=2)
    group["XLAT"], group["XLONG"] = lat, lon
    group["era5_center"] = rng.normal(0, 50, 20).astype(np.float32)
    group["era5_scale"] = rng.uniform(1, 30, 20).astype(np.float32)
    group["cwb_center"] = rng.normal(0, 20, 20).astype(np.float32)
    group["cwb_scale"] = rng.uniform(1, 10, 20).astype(np.float32)
    return root


def zip_taiwan(root: Path, archive: Path) -> Path:
    return _zip_folder(root, archive, "corrdiff_inference_package")


def serve_ngc(served: Path, archive: Path, server_url: str) -> None:
    """NGC's public files API for corrdiff_inference_package version 1: JSON with the download URL."""
    api = served / "v2/models/org/nvidia/team/modulus/corrdiff_inference_package/1/files"
    api.parent.mkdir(parents=True, exist_ok=True)
    (served / "direct").mkdir(exist_ok=True)
    shutil.copy(archive, served / "direct" / archive.name)
    api.write_text(json.dumps({"urls": [f"{server_url}/direct/{archive.name}"]}))


def ngc_mirror(tmp_path: Path, http_server, monkeypatch, package: Path) -> Path:
    """Zip the Taiwan ``package`` as NGC ships it, serve it from 127.0.0.1 through NGC's files API, point
    ``NGC_CLI_SEARCH_SERVICE_URL`` there and the cache at ``tmp_path/cache``. Returns (server, archive)."""
    served = tmp_path / "served"
    served.mkdir()
    archive = zip_taiwan(package, tmp_path / "corrdiff_inference_package.zip")
    server = http_server(served)
    serve_ngc(served, archive, server.url)
    monkeypatch.setenv("NGC_CLI_SEARCH_SERVICE_URL", server.url + "/")
    monkeypatch.setenv("XKMCAST_DATA_DIR", str(tmp_path / "cache"))
    return server, archive


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------- StormCast v1
STATE_VARS = ["u10m", "v10m", "t2m", "msl", "u1hl", "Z1hl", "refc"]
BACKGROUND_VARS = ["u10m", "v10m", "t2m", "tcwv", "sp", "msl", "u1000", "z500"]
INVARIANTS = ["lsm", "orography"]


def build_stormcast(folder: Path, *, shape=(16, 24), sampler_args=None) -> Path:
    """A StormCast v1 layout with the recipe's structure at a small size (the HRRR window is an option)."""
    import xarray as xr
    import yaml
    import zarr

    cls = physicsnemo_classes()
    folder.mkdir(parents=True, exist_ok=True)
    c, cb, ci = len(STATE_VARS), len(BACKGROUND_VARS), len(INVARIANTS)
    reg = cls["StormCastUNet"](img_resolution=list(shape), img_in_channels=c + cb + ci, img_out_channels=c,
                               model_type="SongUNet", embedding_type="zero", **SONG_TINY)
    _save(reg, folder / "StormCastUNet.0.0.mdlus", seed=4)
    dif = cls["EDMPrecond"](img_resolution=list(shape), img_channels=c, img_in_channels=c + c + ci + c,
                            img_out_channels=c, model_type="SongUNet", sigma_data=0.5, **SONG_TINY)
    _save(dif, folder / "EDMPrecond.0.0.mdlus", seed=5)
    config = {"data": {"invariants": INVARIANTS, "conus_dataset_name": "hrrr_v3"},
              "model": {"name": "regression", "hyperparameters": "${eval:'1+1'}"},  # never evaluated
              "sampler_args": sampler_args}
    (folder / "model.yaml").write_text(yaml.safe_dump(config))
    rng = np.random.default_rng(6)
    meta = xr.Dataset(
        {"means": ("variable", rng.normal(0, 10, c)), "stds": ("variable", rng.uniform(1, 5, c)),
         "conditioning_means": ("conditioning_variable", rng.normal(0, 10, cb)),
         "conditioning_stds": ("conditioning_variable", rng.uniform(1, 5, cb)),
         "invariants": (("invariant", "y", "x"), rng.normal(0, 1, (3, *shape)).astype(np.float32))},
        coords={"variable": STATE_VARS, "conditioning_variable": BACKGROUND_VARS,
                "invariant": ["landsea", "orography", "lsm"]},  # stored order differs from model.yaml's
    )
    plain = folder.parent / f".{folder.name}-metadata.zarr"
    meta.to_zarr(plain, zarr_format=2, consolidated=True, mode="w")
    _zip_folder_flat(plain, folder / "metadata.zarr.zip")
    shutil.rmtree(plain)
    return folder


def _zip_folder_flat(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, str(p.relative_to(folder)))
    return archive


def serve_huggingface(served: Path, folder: Path, repo: str, revision: str, *, with_api: bool = True) -> None:
    """``/{repo}/resolve/{revision}/{file}`` and the revision API listing LFS sha256 / git blob ids."""
    import hashlib as _h

    target = served / repo / "resolve" / revision
    target.mkdir(parents=True, exist_ok=True)
    siblings = []
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):  # sub-folders too (StormScope's checkpoints/, COSMO-REA's rea6/)
        name = p.relative_to(folder).as_posix()
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, target / name)
        data = p.read_bytes()
        if p.suffix in (".yaml", ".json"):
            siblings.append({"rfilename": name, "blobId": _h.sha1(b"blob %d\x00" % len(data) + data).hexdigest()})
        else:
            siblings.append({"rfilename": name, "lfs": {"sha256": _h.sha256(data).hexdigest(), "size": len(data)}})
    if with_api:
        api = served / "api/models" / repo / "revision" / revision
        api.parent.mkdir(parents=True, exist_ok=True)
        api.write_text(json.dumps({"sha": revision, "siblings": siblings}))


# ------------------------------------------------------------------------- generic CorrDiff package
GEN_INPUTS = ["t2m", "u10m", "v10m", "z500", "tcwv"]
GEN_OUTPUTS = ["t2m", "u10m", "refc"]
GEN_INVARIANTS = ["orog", "lsm"]


def build_corrdiff_package(folder: Path, *, shape=(20, 28), hr_mean_conditioning=True, metadata_extra=None) -> Path:
    """The layout PhysicsNeMo's CorrDiff recipe exports (as Earth2Studio's CorrDiff reads it)."""
    import xarray as xr

    cls = physicsnemo_classes()
    folder.mkdir(parents=True, exist_ok=True)
    n_in, n_out, n_inv = len(GEN_INPUTS), len(GEN_OUTPUTS), len(GEN_INVARIANTS)
    reg = cls["UNet"](img_resolution=list(shape), img_in_channels=n_in + n_inv + 4, img_out_channels=n_out,
                      model_type="SongUNetPosEmbd", embedding_type="zero", gridtype="sinusoidal", N_grid_channels=4,
                      **SONG_TINY)
    _save(reg, folder / "regression.mdlus", seed=7)
    cond = n_in + n_inv + (n_out if hr_mean_conditioning else 0)
    dif = cls["EDMPrecondSuperResolution"](img_resolution=list(shape), img_in_channels=cond + 4, img_out_channels=n_out,
                                           model_type="SongUNetPosEmbd", gridtype="sinusoidal", N_grid_channels=4,
                                           **SONG_TINY)
    _save(dif, folder / "diffusion.mdlus", seed=8)
    lat = 30.0 + 0.05 * np.arange(shape[0])
    lon = 250.0 + 0.05 * np.arange(shape[1])
    xr.Dataset(coords={"lat": lat, "lon": lon}).to_netcdf(folder / "output_latlon_grid.nc")
    xr.Dataset(coords={"lat": np.arange(29.0, 32.01, 0.25), "lon": np.arange(249.0, 252.51, 0.25)}).to_netcdf(
        folder / "input_latlon_grid.nc")
    rng = np.random.default_rng(9)
    xr.Dataset({n: (("lat", "lon"), rng.normal(100 * k, 10, shape)) for k, n in enumerate(GEN_INVARIANTS)},
               coords={"lat": lat, "lon": lon}).to_netcdf(folder / "invariants.nc")
    stat = lambda names: {n: {"mean": float(rng.normal(0, 20)), "std": float(rng.uniform(1, 8))} for n in names}  # noqa: E731
    (folder / "stats.json").write_text(json.dumps({"input": stat(GEN_INPUTS), "output": stat(GEN_OUTPUTS),
                                                   "invariants": stat(GEN_INVARIANTS)}))
    meta = {"input_variables": GEN_INPUTS, "output_variables": GEN_OUTPUTS, "invariant_variables": GEN_INVARIANTS,
            "number_of_steps": 6, "sampler_type": "stochastic", "hr_mean_conditioning": hr_mean_conditioning,
            "sigma_max": 400, "sigma_min": 0.002, **(metadata_extra or {})}
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


# ------------------------------------------------------------------- CorrDiff CMIP6 -> ERA5 (time window)
CMIP6_INPUTS = ["siconc", "snc", "t2m", "u10m"]
CMIP6_OUTPUTS = ["t2m", "u10m", "sp"]
CMIP6_INVARIANTS = ["lsm", "coslat"]
CMIP6_LAT_IN, CMIP6_LON_IN = np.linspace(-84.0, 84.0, 8), np.arange(0.0, 360.0, 22.5)
CMIP6_LAT_OUT, CMIP6_LON_OUT = np.linspace(-90.0, 90.0, 25), np.arange(0.0, 360.0, 7.5)
CMIP6_PADDED = (25 + 47, 48 + 96)
CMIP6_STEPS = 3
CMIP6_DAYS = pd.date_range("2030-06-01T12", periods=3, freq="1D").values


def build_cmip6_package(folder, *, metadata_extra=None, invariants=CMIP6_INVARIANTS):
    """The CorrDiff CMIP6 layout (as Earth2Studio's CorrDiffCMIP6 reads it) at a tiny size; the networks
    always take two invariants (``invariants`` changes what the files say)."""
    import xarray as xr

    cls = physicsnemo_classes()
    folder.mkdir(parents=True, exist_ok=True)
    n_cond = 3 * len(CMIP6_INPUTS) + len(CMIP6_INVARIANTS) + 2
    reg = cls["UNet"](img_resolution=list(CMIP6_PADDED), img_in_channels=n_cond + 4, img_out_channels=len(CMIP6_OUTPUTS),
                      model_type="SongUNetPosEmbd", embedding_type="zero", gridtype="sinusoidal", N_grid_channels=4,
                      **SONG_TINY)
    _save(reg, folder / "regression.mdlus", seed=11)
    dif = cls["EDMPrecondSuperResolution"](img_resolution=list(CMIP6_PADDED), img_in_channels=n_cond + len(CMIP6_OUTPUTS) + 4,
                                           img_out_channels=len(CMIP6_OUTPUTS), model_type="SongUNetPosEmbd",
                                           gridtype="sinusoidal", N_grid_channels=4, **SONG_TINY)
    _save(dif, folder / "diffusion.mdlus", seed=12)
    xr.Dataset(coords={"lat": CMIP6_LAT_OUT, "lon": CMIP6_LON_OUT}).to_netcdf(folder / "output_latlon_grid.nc")
    xr.Dataset(coords={"lat": CMIP6_LAT_IN, "lon": CMIP6_LON_IN}).to_netcdf(folder / "input_latlon_grid.nc")
    rng = np.random.default_rng(13)
    la = np.broadcast_to(CMIP6_LAT_OUT[:, None], (CMIP6_LAT_OUT.size, CMIP6_LON_OUT.size))
    fields = {"lsm": (rng.uniform(0, 1, la.shape) > 0.6).astype(float), "coslat": np.cos(np.deg2rad(la))}
    xr.Dataset({n: (("lat", "lon"), fields[n]) for n in invariants},
               coords={"lat": CMIP6_LAT_OUT, "lon": CMIP6_LON_OUT}).to_netcdf(folder / "invariants.nc")
    levels = {"siconc": (20, 30), "snc": (15, 25), "t2m": (280, 15), "u10m": (0, 6), "sp": (98000, 3000),
              "sza": (0.0, 0.4), "hod": (11.5, 6.9)}
    stat = lambda n: {"mean": float(levels[n][0] + rng.normal(0, 0.1)), "std": float(levels[n][1])}  # noqa: E731
    stats = {"input": {n: stat(n) for n in [*CMIP6_INPUTS, "sza", "hod"]}, "output": {n: stat(n) for n in CMIP6_OUTPUTS},
             "invariants": {"lsm": {"mean": 0.4, "std": 0.5}, "coslat": {"mean": 0.6, "std": 0.3}}}
    (folder / "stats.json").write_text(json.dumps(stats))
    meta = {"input_variables": CMIP6_INPUTS, "output_variables": CMIP6_OUTPUTS, "invariant_variables": invariants,
            "number_of_steps": CMIP6_STEPS, "sampler_type": "stochastic", "hr_mean_conditioning": True,
            "time_window": [-24, 0, 24], **(metadata_extra or {})}
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def cmip6_days(times=CMIP6_DAYS):
    """Daily inputs on the package's input grid; sea-ice concentration NaN over 'land' as in CMIP6 files."""
    import xarray as xr

    rng = np.random.default_rng(1)
    la, lo = np.meshgrid(CMIP6_LAT_IN, CMIP6_LON_IN, indexing="ij")
    shape = (len(times), *la.shape)
    ice = np.clip(100 * (np.abs(la) - 50) / 30 + rng.normal(0, 10, shape), 0, 100)
    ice[:, 3, 2:5] = np.nan
    data = {"siconc": ice, "snc": np.clip(rng.normal(30, 30, shape), 0, 100),
            "t2m": 285 - 0.4 * np.abs(la) + rng.normal(0, 2, shape), "u10m": 5 * np.sin(np.deg2rad(lo)) + rng.normal(0, 2, shape)}
    units = {"siconc": "%", "snc": "%", "t2m": "K", "u10m": "m s-1"}
    return xr.Dataset({v: (("time", "lat", "lon"), a.astype(np.float32), {"units": units[v]}) for v, a in data.items()},
                      coords={"time": times, "lat": ("lat", CMIP6_LAT_IN, {"units": "degrees_north"}),
                              "lon": ("lon", CMIP6_LON_IN, {"units": "degrees_east"})})
# ------------------------------------------------------------------------ StormScope GOES + MRMS
GOES_ORDER = ["abi01c", "abi02c", "abi03c", "abi07c", "abi08c", "abi09c", "abi10c", "abi13c"]
SCOPE_VARS = ["abi13c", "abi02c", "abi07c"]  # a subset, not in the group's order: picked by name
SCOPE_EXPERTS = (("checkpoints/goes/3km_10min/high.mdlus", 2.0, 400.0), ("checkpoints/goes/3km_10min/low.mdlus", 0.002, 2.0))


def hrrr_latlon():
    """The full 1059 x 1799 HRRR lat / lon (float32, lon in [-180, 180) as a package may store it)."""
    from xkmcast.models.published.stormcast_v1 import hrrr_subgrid

    grid = hrrr_subgrid(((0, 1059), (0, 1799)))
    return grid["lat"].astype(np.float32), np.where(grid["lon"] >= 180, grid["lon"] - 360, grid["lon"]).astype(np.float32)


def stormscope_classes():
    skip_without_physicsnemo()
    from physicsnemo.diffusion.preconditioners import EDMPreconditioner
    from physicsnemo.diffusion.utils.model_wrappers import ConcatConditionWrapper
    from physicsnemo.models.dit import DiT

    return DiT, ConcatConditionWrapper, EDMPreconditioner


def build_stormscope(folder: Path, *, image_size=(16, 24), window=3, latlon=None) -> Path:
    """The StormScope layout (registry.json, statistics, HRRR lat / lon and fixed fields, two experts saved
    as EDMPreconditioner(ConcatConditionWrapper(DiT)) with dense attention) at a small image size."""
    DiT, Concat, Precond = stormscope_classes()
    folder.mkdir(parents=True, exist_ok=True)
    c, fixed = len(SCOPE_VARS), 2 + 2 + 2  # lat / lon features, cos zenith pair, nexrad proximity and topo
    for k, (path, _, _) in enumerate(SCOPE_EXPERTS):
        dit = DiT(input_size=tuple(image_size), in_channels=c + window * c + fixed, out_channels=c, patch_size=4,
                  hidden_size=32, depth=2, num_heads=4)
        net = Precond(Concat(randomise(dit, seed=20 + k)), sigma_data=0.5).eval()
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        net.save(str(folder / path))
    lat, lon = latlon if latlon is not None else hrrr_latlon()
    rng = np.random.default_rng(11)
    np.save(folder / "lat.npy", lat)
    np.save(folder / "lon.npy", lon)
    np.save(folder / "topo.npy", rng.normal(0, 1, lat.shape).astype(np.float32))
    np.save(folder / "nexrad_proximity.npy", rng.uniform(0, 1, lat.shape).astype(np.float32))
    np.save(folder / "mrms_coverage_mask.npy", rng.uniform(0, 1, lat.shape) > 0.9)
    np.save(folder / "goes_means.npy", rng.uniform(200, 280, len(GOES_ORDER)).astype(np.float32))
    np.save(folder / "goes_stds.npy", rng.uniform(5, 30, len(GOES_ORDER)).astype(np.float32))
    np.save(folder / "mrms_means.npy", np.array([0.5, 0.2], np.float32))
    np.save(folder / "mrms_stds.npy", np.array([12.0, 10.0], np.float32))
    goes = {"checkpoints": [{"path": p, "sigma_min": lo, "sigma_max": hi} for p, lo, hi in SCOPE_EXPERTS],
            "variables": SCOPE_VARS, "conditioning_vars": [], "image_size": list(image_size), "spatial_downsample": 1,
            "sliding_window": window > 1, "n_steps": window, "step_interval": 10, "topo": True, "nexrad_proximity": True,
            "description": "GOES 3 km / 10 min nowcast (test layout)"}
    registry = {
        "normalization": {"goes": {"file_prefix": "goes", "order": GOES_ORDER},
                          "mrms": {"file_prefix": "mrms", "order": ["refc", "refc_base"]},
                          "glm": {"file_prefix": None, "transform": "log1p", "order": ["glm_density"]}},
        "goes": {"models": {"3km_10min": goes,
                            "6km_1hr": {**goes, "conditioning_vars": ["z500"], "deprecated": True}},
                 "aliases": {"3km_10min_natten_goes": "3km_10min"}},
        "mrms": {"models": {"3km_10min": {**goes, "variables": ["refc", "refc_base", "glm_density"],
                                          "conditioning_vars": GOES_ORDER, "mrms_coverage_mask": True}}},
    }
    (folder / "registry.json").write_text(json.dumps(registry, indent=1))
    (folder / "config.json").write_text(json.dumps({"library_name": "physicsnemo"}))
    return folder


# -------------------------------------------------------------------------------- CorrDiff COSMO-REA
COSMO_ERA5 = ["u10m", "v10m", "t2m", "z500"]
COSMO_OUTPUTS = ["U_10M", "T_2M", "TOT_PRECIP", "CLCT", "ASWDIR_S", "ASWDIFD_S"]
COSMO_PRE = ["sin_lat", "cos_lat", "sin_lon", "cos_lon", "elevation_norm", "land_fraction"]
COSMO_POST = ["z0_lu_norm"]
COSMO_POLE = (39.25, -162.0)  # COSMO-REA6's rotated north pole (lat, lon)


def rotated_to_geographic(rlat, rlon, pole=COSMO_POLE):
    """CF rotated_latitude_longitude -> geographic lat / lon [deg] (no rotation about the new pole)."""
    plat, plon = np.deg2rad(pole[0]), pole[1]
    rlat, rlon = np.deg2rad(rlat), np.deg2rad(rlon)
    lat = np.arcsin(np.sin(rlat) * np.sin(plat) + np.cos(rlat) * np.cos(rlon) * np.cos(plat))
    lon = np.rad2deg(np.arctan2(np.cos(rlat) * np.sin(rlon),
                                np.sin(plat) * np.cos(rlat) * np.cos(rlon) - np.cos(plat) * np.sin(rlat))) + plon + 180.0
    return np.rad2deg(lat), (lon + 180.0) % 360.0 - 180.0


def build_cosmo_package(root: Path, *, resolution="rea6", shape=(16, 24), extended=False, backend="timm",
                        metadata_extra=None) -> Path:
    """Earth2Studio's COSMO-REA layout (``<root>/<resolution>/``) with PhysicsNeMo's DiT and
    EDMPreconditioner(ConcatConditionWrapper(DiT)); ``extended``: the physical extended invariants file."""
    import xarray as xr

    skip_without_physicsnemo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from physicsnemo.diffusion.preconditioners import EDMPreconditioner
        from physicsnemo.diffusion.utils.model_wrappers import ConcatConditionWrapper
        from physicsnemo.models.dit import DiT
    folder = root / resolution
    folder.mkdir(parents=True, exist_ok=True)
    n_bg, n_out = len(COSMO_ERA5) + len(COSMO_PRE) + 1 + len(COSMO_POST), len(COSMO_OUTPUTS)
    arch = dict(input_size=list(shape), patch_size=2, hidden_size=32, depth=2, num_heads=4, attention_backend=backend,
                **({"attn_kwargs": {"attn_kernel": 3}} if backend != "timm" else {}))
    _save(DiT(in_channels=n_bg, out_channels=n_out, **arch), folder / "dit_mean.mdlus", seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dif = EDMPreconditioner(ConcatConditionWrapper(DiT(in_channels=n_out + n_bg, out_channels=n_out, **arch)),
                                sigma_data=0.5)
    _save(dif, folder / "dit_diffusion.mdlus", seed=12)
    rlat = (np.arange(shape[0]) - shape[0] / 2) * 0.1
    rlon = (np.arange(shape[1]) - shape[1] / 2) * 0.1
    lat, lon = rotated_to_geographic(*np.meshgrid(rlat, rlon, indexing="ij"))
    lat_in = np.arange(np.floor(lat.min()) - 1, np.ceil(lat.max()) + 1.01, 0.25)
    lon_in = np.arange(np.floor(lon.min()) - 1, np.ceil(lon.max()) + 1.01, 0.25)
    pole = xr.DataArray(np.int32(0), attrs={"grid_mapping_name": "rotated_latitude_longitude",
                                            "grid_north_pole_latitude": COSMO_POLE[0],
                                            "grid_north_pole_longitude": COSMO_POLE[1]})
    xr.Dataset({"lat_input": ("lat_in", lat_in.astype(np.float32)), "lon_input": ("lon_in", lon_in.astype(np.float32)),
                "lat_output": (("rlat", "rlon"), lat.astype(np.float32)),
                "lon_output": (("rlat", "rlon"), lon.astype(np.float32)), "rotated_pole": pole},
               coords={"rlat": rlat, "rlon": rlon}).to_netcdf(folder / "grids.nc")
    rng = np.random.default_rng(13)
    physical = {"elevation": rng.uniform(0, 1500, shape), "land_fraction": rng.uniform(0, 1, shape),
                "z0_lu": rng.uniform(0.01, 1, shape)}
    norm = {"elevation": {"method": "zscore", "mean": 400.0, "std": 350.0},
            "z0_lu": {"method": "zscore", "mean": 0.3, "std": 0.25}}
    meta = {"era5_variables": COSMO_ERA5, "output_variables": COSMO_OUTPUTS, "pre_invariant_variables": COSMO_PRE,
            "post_invariant_variables": COSMO_POST,
            "modes": {"mean": {"stats": "output_mean", "channel_transforms": False}, "diffusion": {"stats": "output"}},
            "channel_transforms": {"TOT_PRECIP": {"transform": "log_eps", "eps": 1e-5},
                                   "ASWDIR_S": {"transform": "log_eps", "eps": 1.0},
                                   "ASWDIFD_S": {"transform": "asinh", "eps": 10.0},
                                   "CLCT": {"transform": "logit_eps_percent", "eps": 0.01, "scale": 100.0}},
            "constraints": {"bounds": {"TOT_PRECIP": {"min": 0.0, "max": None}, "T_2M": {"min": 0.0, "max": None},
                                       "CLCT": {"min": 0.0, "max": 100.0, "mode": "clamp"}},
                            "sza_gate": {"half_width": 0.05, "channels": {"ASWDIR_S": {"threshold": 0.03},
                                                                           "ASWDIFD_S": {"threshold": 0.01, "half_width": 0.1}}}},
            "number_of_samples": 2,
            "sampler": {"num_steps": 4, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0, "solver": "heun"},
            "checkpoints": {f"{resolution}_mean": "dit_mean.mdlus", f"{resolution}_diffusion": "dit_diffusion.mdlus"},
            "regression": {"patch_size": 2, "attn_kernel_size": 3}, "diffusion": {"patch_size": 2, "attn_kernel_size": 3}}
    if extended:  # the physical invariants on a grid one cell wider on each side, z-scored on load
        pad = lambda a: np.pad(a, 1, mode="edge")  # noqa: E731
        xr.Dataset({"lat": (("y", "x"), pad(lat)), "lon": (("y", "x"), pad(lon)),
                    **{k: (("y", "x"), pad(v).astype(np.float32)) for k, v in physical.items()}}).to_netcdf(
            folder / "invariants_ext.nc")
        (folder / "invariant_norm.json").write_text(json.dumps({"channels": norm}))
        meta["invariants"] = {"file": "invariants_ext.nc", "native_offset": [1, 1], "native_shape": list(shape),
                              "norm_stats_file": "invariant_norm.json"}
    else:
        z = lambda k: (physical[k] - norm[k]["mean"]) / norm[k]["std"]  # noqa: E731
        xr.Dataset({"elevation_norm": (("y", "x"), z("elevation").astype(np.float32)),
                    "land_fraction": (("y", "x"), physical["land_fraction"].astype(np.float32)),
                    "z0_lu_norm": (("y", "x"), z("z0_lu").astype(np.float32))}).to_netcdf(folder / "invariants.nc")
    era5 = {"u10m": (1.0, 3.0), "v10m": (-0.5, 3.0), "t2m": (283.0, 8.0), "z500": (55000.0, 1500.0)}
    mean = {"U_10M": (1.0, 3.0), "T_2M": (283.0, 7.0), "TOT_PRECIP": (0.1, 0.5), "CLCT": (60.0, 30.0),
            "ASWDIR_S": (100.0, 150.0), "ASWDIFD_S": (60.0, 70.0)}
    transformed = {**mean, "TOT_PRECIP": (2.0, 3.0), "CLCT": (0.5, 2.0), "ASWDIR_S": (2.0, 2.5), "ASWDIFD_S": (1.0, 1.5)}
    table = lambda d: {k: {"mean": m, "std": s} for k, (m, s) in d.items()}  # noqa: E731
    (folder / "stats.json").write_text(json.dumps({"era5": table(era5), "output_mean": table(mean),
                                                   "output": table(transformed)}))
    (folder / "metadata.json").write_text(json.dumps({**meta, **(metadata_extra or {})}))
    return root


def hugging_face_mirror(tmp_path: Path, http_server, monkeypatch, folder: Path, repo: str, revision: str, *,
                        with_api: bool = True, registry_entry: tuple[str, str] | None = None):
    """Serve ``folder`` from 127.0.0.1 as Hugging Face serves ``repo`` at ``revision``, point ``HF_ENDPOINT``
    there and the cache at ``tmp_path/cache``; with ``registry_entry=(name, family)`` also write a model
    registry file naming each file with its SHA-256 (``$XKMCAST_MODEL_REGISTRY``). Returns the server."""
    served = tmp_path / "served"
    server = http_server(served)
    serve_huggingface(served, folder, repo, revision, with_api=with_api)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("XKMCAST_DATA_DIR", str(tmp_path / "cache"))
    if registry_entry is not None:
        name, family = registry_entry
        registry = tmp_path / "models.yaml"
        files = "".join(f"    {p.name}: {sha256(p)}\n" for p in sorted(folder.iterdir()))
        registry.write_text(f"{name}:\n  family: {family}\n  host: huggingface\n  repo: {repo}\n"
                            f"  revision: {revision}\n  files:\n{files}")
        monkeypatch.setenv("XKMCAST_MODEL_REGISTRY", str(registry))
    return server
