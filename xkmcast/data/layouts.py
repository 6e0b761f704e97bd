"""Open the published dataset layouts as CF-annotated xarray Datasets.

:func:`open_dataset` takes a catalog name or a path, recognises the layout (or takes ``layout=``) and
returns one Dataset:

========== ============================================== ============================ ===============
layout     published as                                   reader                       parts
========== ============================================== ============================ ===============
hrrr_mini  CorrDiff-Mini NetCDF4 (groups input/output/    layouts_corrdiff.read_hrrr_mini input, target
           invariant) + stats.json
cwa        CorrDiff Taiwan zarr (cwb / era5 arrays)       layouts_corrdiff.read_cwa    input, target
stormcast  StormCast HRRR + ERA5 per-year zarr stores     layouts_stormcast.read_stormcast state, background
vit        ViT recipe HDF5 (split/*.h5 ``fields``)        layouts_vit.read_vit         state
cf         any CF NetCDF / zarr                           read_cf (here)               (whole)
========== ============================================== ============================ ===============

Conventions of the result (what the tests check):

* one data variable per channel, named canonically (``t2m``, ``u10m``, ``z500``...) from the
  variables table ``xkmcast/fields/variables.yaml``; labels the table does not know are kept as they are, and
  the original label is in ``attrs["xkmcast_channel"]``; ``standard_name`` / ``units`` /
  ``long_name`` from the table (units are left out for ``tp``, whose unit differs between sources);
* ``attrs["xkmcast_role"]`` says what the variable is in its recipe (``input``, ``target``, ``state``,
  ``background``, ``invariant``);
* latitude / longitude are coordinates with ``standard_name``, ``units`` (degrees_north / _east) and
  ``long_name``; 2-D ``lat`` / ``lon`` on dims ``(y, x)`` for model grids, 1-D ``latitude`` /
  ``longitude`` dimension coordinates for regular lat/lon grids; ``y`` / ``x`` carry ``axis`` Y / X
  (projection metres plus a ``crs`` grid_mapping variable when the projection is known, else grid
  indices); ``time`` is decoded to datetime64;
* the layout's normalisation statistics are kept as JSON in ``ds.attrs["xkmcast_stats"]``:
  ``{variable: {"mean": m, "std": s}}`` keyed by the variable names of the returned Dataset (read
  them with :func:`layout_stats`). Attributes rather than ``<var>_mean`` variables, so that the data
  variables stay the physical channels;
* with ``part=None`` every part is returned in one Dataset and the ERA5 part (``input`` /
  ``background``) is prefixed ``era5_`` (variables, and the dims / coords it does not share with the
  main part; those coordinates drop ``standard_name`` / ``axis`` so the main grid stays unambiguous);
  ``part="input"`` etc. returns that part alone with plain names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..fields.coords import coordinate_attrs, coordinate_key
from ..errors import ConfigError, InvalidDataError, MissingVariableError, explain
from ..fields.variables import canonical_alias, variable_info
from .cf_files import CF_SUFFIXES, cf_files, is_grib, netcdf_magic, open_cf_files, open_netcdf
from .grib import open_grib
from .stats import STATS_ATTR, Stats

__all__ = ["LAYOUTS", "canonical_name", "detect_layout", "layout_stats", "open_dataset", "read_cf"]

#: Layout name -> (reader module, roles of its parts). The first role is the main grid.
LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "hrrr_mini": ("layouts_corrdiff:read_hrrr_mini", ("target", "input")),
    "cwa": ("layouts_corrdiff:read_cwa", ("target", "input")),
    "stormcast": ("layouts_stormcast:read_stormcast", ("state", "background")),
    "vit": ("layouts_vit:read_vit", ("state",)),
    "cf": ("layouts:read_cf", ("data",)),
}
PREFIXED_ROLES = ("input", "background")
PREFIX = "era5_"


# ------------------------------------------------------------------------------- variable naming


def canonical_name(label: Any, level: Any = None, *, model_levels: bool = False) -> str:
    """Canonical xkmcast name of a channel label (``"10u"`` -> ``u10m``, ``("temperature", 850)`` -> ``t850``).

    ``level`` is a pressure in hPa (NaN or None for single-level fields). Labels such as ``t850`` or
    ``z_500`` are split into base and level. With ``model_levels=True`` (HRRR hybrid levels in
    StormCast) labels of letters followed by digits (``u1``, ``t10``) are model levels and are kept.
    Unknown labels come back unchanged.
    """
    label = str(label).strip()
    if level is not None and np.isfinite(float(level)):
        base = canonical_alias(label, pressure_level=True)
        if label == "geopotential_height":
            base = "z"  # CWA labels raw ERA5 geopotential (m2 s-2) "geopotential_height"; see read_cwa
        return f"{base or label}{int(round(float(level)))}"
    if model_levels and re.fullmatch(r"[A-Za-z]+\d+", label):
        return label
    found = canonical_alias(label)
    if found:
        return found
    match = re.fullmatch(r"([A-Za-z]+?)_?(\d{1,4})(?:hPa|hpa)?", label)
    if match and not model_levels and 1 <= int(match.group(2)) <= 1100:
        base = canonical_alias(match.group(1), pressure_level=True)
        if base:
            return f"{base}{int(match.group(2))}"
    return label


def variable_attrs(name: str, label: Any = None) -> dict:
    """CF attributes of a canonical variable from :mod:`xkmcast.fields.variables` (empty for unknown names;
    no ``units`` for ``tp``, whose unit differs between sources) plus the original ``label``."""
    try:
        attrs = variable_info(name).attrs
    except MissingVariableError:
        attrs = {}
    if name == "tp":
        attrs.pop("units", None)
    if label is not None:
        attrs["xkmcast_channel"] = str(label)
    return attrs


def channel_names(labels, levels=None, *, model_levels: bool = False) -> list[str]:
    """Canonical names of a list of channel labels; a second label mapping to a taken name keeps its label."""
    levels = list(levels) if levels is not None else [None] * len(labels)
    names: list[str] = []
    for label, level in zip(labels, levels):
        name = canonical_name(label, level, model_levels=model_levels)
        if name in names:
            name = str(label) if level is None or not np.isfinite(float(level)) else f"{label}{int(level)}"
        names.append(name)
    return names


# ----------------------------------------------------------------------------------- CF helpers


def index_xy(ds: xr.Dataset, y: str = "y", x: str = "x") -> xr.Dataset:
    """Give dims ``y`` / ``x`` integer index coordinates carrying ``axis`` Y / X (projection unknown)."""
    for dim, axis in ((y, "Y"), (x, "X")):
        if dim in ds.dims and dim not in ds.coords:
            ds = ds.assign_coords({dim: (dim, np.arange(ds.sizes[dim]), {"axis": axis, "long_name": f"grid index along {dim}", "units": "1"})})
    return ds


def set_stats(ds: xr.Dataset, stats: Stats | Mapping[str, tuple[float, float]]) -> xr.Dataset:
    """Keep ``stats`` (a :class:`~xkmcast.data.stats.Stats` or ``{var: (mean, std)}``) in
    ``ds.attrs["xkmcast_stats"]`` in the JSON form of :mod:`xkmcast.data.stats`; returns ``ds``."""
    if not isinstance(stats, Stats):
        stats = Stats({k: float(m) for k, (m, _) in stats.items()}, {k: float(s) for k, (_, s) in stats.items()})
    if stats.names:
        ds.attrs[STATS_ATTR] = stats.to_json()
    return ds


def layout_stats(ds: xr.Dataset) -> dict[str, dict[str, float]]:
    """The statistics kept by :func:`open_dataset` as ``{variable: {"mean", "std"}}``
    (``Stats.from_attrs(ds).to_dict()``; ``{}`` when there are none)."""
    stats = Stats.from_attrs(ds)
    return stats.to_dict() if stats is not None else {}


def channel_dataset(
    da: xr.DataArray, channel_dim: str, names: list[str], labels, role: str, coords: Mapping | None = None
) -> xr.Dataset:
    """Split ``da`` along ``channel_dim`` into one variable per channel, with CF attrs and the role."""
    data_vars = {}
    for k, (name, label) in enumerate(zip(names, labels)):
        var = da.isel({channel_dim: k}, drop=True)
        var.attrs = {**variable_attrs(name, label), "xkmcast_role": role}
        data_vars[name] = var
    ds = xr.Dataset(data_vars)
    return ds.assign_coords(coords) if coords else ds


# ----------------------------------------------------------------------------------- detection


def is_zarr_store(path: Path) -> bool:
    """A zarr store (v2 or v3) on disk: a folder with zarr metadata (or named ``*.zarr``)."""
    path = Path(path)
    return path.is_dir() and (path.suffix == ".zarr" or any(
        (path / m).exists() for m in (".zgroup", ".zattrs", ".zmetadata", "zarr.json")))


def zarr_consolidated(path: Path) -> bool:
    """Whether the zarr store at ``path`` has consolidated metadata (v2 ``.zmetadata``, or v3
    ``consolidated_metadata`` in the root ``zarr.json``): the ``consolidated=`` to open it with, so
    that xarray neither warns about missing consolidated metadata nor reads the store twice."""
    path = Path(path)
    if (path / ".zmetadata").exists():
        return True
    root = path / "zarr.json"
    if root.exists():
        import json

        try:
            return json.loads(root.read_text()).get("consolidated_metadata") is not None
        except (OSError, ValueError):
            return False
    return False


def _zarr_has(path: Path, name: str) -> bool:
    return any((path / name / m).exists() for m in (".zarray", "zarr.json"))


def _hdf5_keys(path: Path) -> set[str] | None:
    import h5py

    if not h5py.is_hdf5(path):
        return None
    with h5py.File(path, "r") as f:
        return set(f.keys())


def detect_layout(path: str | Path) -> tuple[str, Path]:
    """Recognise a published layout from the files at ``path``: ``(layout, path to open)``.

    Raises :class:`InvalidDataError` when nothing matches, saying what was looked for.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InvalidDataError(explain("No file or directory at the given path", found=str(path)))
    if path.is_file():
        keys = _hdf5_keys(path)
        if keys is not None and {"input", "output"} <= keys:
            return "hrrr_mini", path
        if keys is not None and "fields" in keys:
            return "vit", path
        if path.suffix.lower() in CF_SUFFIXES or netcdf_magic(path) or is_grib(path):
            return "cf", path  # named as NetCDF / GRIB, or by its first bytes (wrfout_d01_<time>, gfs.*.f012)
    elif is_zarr_store(path):
        return ("cwa" if _zarr_has(path, "cwb") and _zarr_has(path, "era5") else "cf"), path
    else:
        subdirs = {p.name for p in path.iterdir() if p.is_dir()}
        if "era5" in subdirs and any((path / d / "invariants.zarr").exists() for d in subdirs - {"era5"}):
            return "stormcast", path
        if any(list((path / s).glob("*.h5")) for s in ("train", "valid", "test") if s in subdirs):
            return "vit", path
        for candidate in sorted(path.glob("*/*.nc")) + sorted(path.glob("*.nc")) + sorted(path.glob("**/*.zarr")):
            try:
                layout, found = detect_layout(candidate)
            except InvalidDataError:
                continue
            if layout != "cf":
                return layout, found
        if cf_files(path):  # a folder of CF files: one dataset (xkmcast.data.cf_files)
            return "cf", path
    raise InvalidDataError(
        explain(
            "Unknown dataset layout",
            expected="HRRR-Mini NetCDF (groups input/output/invariant), CWA zarr (cwb + era5 arrays), "
            "StormCast store (era5/ + <hrrr>/invariants.zarr), ViT HDF5 (train|valid|test/*.h5 with "
            "`fields`), or a CF NetCDF (.nc) / zarr / GRIB (.grib, .grib2), or a folder of such files",
            found=f"{path} ({'directory' if path.is_dir() else 'file'})",
            fix="pass layout= one of " + ", ".join(LAYOUTS),
        )
    )


# ---------------------------------------------------------------------------------------- readers


def read_cf(path: str | Path | xr.Dataset, **kwargs) -> dict[str, xr.Dataset]:
    """Any CF NetCDF / zarr / GRIB (cfgrib), or several files as one (a glob pattern or a folder of them,
    :mod:`xkmcast.data.cf_files`): variables renamed to canonical names where the table knows them."""
    if isinstance(path, xr.Dataset):
        ds = path
    else:
        files = cf_files(path)
        path = Path(path)
        if files is not None:
            ds = open_cf_files(files, **kwargs)
        elif is_zarr_store(path):
            kwargs.setdefault("consolidated", zarr_consolidated(path))
            ds = xr.open_zarr(path, **kwargs)
        elif is_grib(path):
            ds = open_grib(path, **kwargs)
        else:
            ds = open_netcdf(path, **kwargs)
    names = channel_names(list(ds.data_vars))
    rename = {old: new for old, new in zip(ds.data_vars, names) if old != new and new not in ds.variables}
    ds = ds.rename(rename)
    for old, new in rename.items():
        ds[new].attrs = {**variable_attrs(new, old), **ds[new].attrs}
    for name in ds.coords:
        key = coordinate_key(name)
        if key in ("latitude", "longitude") and "standard_name" not in ds[name].attrs:
            ds[name].attrs.update(coordinate_attrs(key))
    return {"data": ds, **split_combined(ds)}


def split_combined(ds: xr.Dataset) -> dict[str, xr.Dataset]:
    """The inverse of the combined form: ``{"target": main part, "input": era5_ part, plain names}``.

    Applies to a CF dataset holding ``era5_``-prefixed variables (the shipped sample, or a combined
    dataset written back to disk); other datasets give ``{}``.
    """
    coarse = [v for v in ds.data_vars if str(v).startswith(PREFIX)]
    if not coarse:
        return {}
    fine = [v for v in ds.data_vars if v not in coarse]
    coarse_dims = set().union(*(ds[v].dims for v in coarse))
    fine_dims = set().union(*(ds[v].dims for v in fine)) if fine else set()

    def only(names, dims, keep_dims):
        part = ds[names]
        drop = [c for c in part.coords if not set(part[c].dims) <= keep_dims]
        return part.drop_vars(drop)

    target = only(fine, fine_dims, fine_dims)
    inputs = only(coarse, coarse_dims, coarse_dims)
    inputs = inputs.drop_vars([c for c in ("crs",) if c in inputs.coords])
    inputs = inputs.rename({v: str(v)[len(PREFIX):] for v in coarse})
    for name in inputs.coords:  # give the coarse grid back its CF meaning
        key = coordinate_key(name, prefix=PREFIX)
        if key in ("latitude", "longitude"):
            inputs[name].attrs.update({**coordinate_attrs(key), "axis": "Y" if key == "latitude" else "X"})
    stats = Stats.from_attrs(ds) or Stats({}, {})
    target = set_stats(target, stats.subset([k for k in stats.names if k in fine]))
    inputs = set_stats(inputs, stats.subset([k for k in stats.names if k in coarse]).rename(
        {k: k[len(PREFIX):] for k in coarse}))
    return {"target": target, "input": inputs}


def _reader(layout: str):
    import importlib

    if layout not in LAYOUTS:
        raise ConfigError(explain(f"Unknown layout {layout!r}", expected=list(LAYOUTS)))
    module, func = LAYOUTS[layout][0].split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), func)


def _combine(parts: dict[str, xr.Dataset], roles: tuple[str, ...]) -> xr.Dataset:
    main = parts[roles[0]]
    stats = Stats.from_attrs(main) or Stats({}, {})
    out = main.copy()
    for role in roles[1:]:
        if role not in parts:
            continue
        part = parts[role]
        part_stats = Stats.from_attrs(part) or Stats({}, {})
        prefix = PREFIX if role in PREFIXED_ROLES else ""
        rename = {v: prefix + v for v in part.data_vars}
        for dim in part.dims:
            if dim not in out.dims or out.sizes[dim] != part.sizes[dim]:
                rename[dim] = prefix + str(dim)
        for name in part.coords:
            if name not in out.coords or not part[name].variable.equals(out[name].variable):
                rename[name] = prefix + str(name)
        part = part.rename(rename)
        for name in part.coords:
            if str(name).startswith(prefix) and prefix:
                part[name].attrs.pop("standard_name", None)
                part[name].attrs.pop("axis", None)
        out = xr.merge([out, part], compat="no_conflicts", join="outer", combine_attrs="drop_conflicts")
        stats = stats.merge(part_stats.rename(rename))
    out.attrs = {k: v for k, v in main.attrs.items() if k != STATS_ATTR}
    return set_stats(out, stats)


def open_dataset(name_or_path: str | Path, *, layout: str | None = None, part: str | None = None, **kwargs) -> xr.Dataset:
    """Open a catalog entry or a path in a published layout as a CF-annotated Dataset; a glob pattern
    (``"era5/*.nc"``) or a folder of CF files opens them as one (:mod:`xkmcast.data.cf_files`).

    ``layout`` forces a reader (see :data:`LAYOUTS`); otherwise it is detected from the files.
    ``part`` selects one part (``"input"``, ``"target"``, ``"state"``, ``"background"``); ``None``
    returns all parts in one Dataset (module docstring). Other keywords go to the reader.
    """
    path = Path(name_or_path).expanduser()
    if not path.exists() and isinstance(name_or_path, str) and "/" not in name_or_path:
        from .catalog import _catalog_sources

        if name_or_path in _catalog_sources():
            return _open_catalog_entry(name_or_path, layout=layout, part=part, **kwargs)
    if not path.exists() and layout in (None, "cf") and cf_files(name_or_path):  # a glob pattern
        layout, path = "cf", name_or_path
    elif layout is None or (layout in ("hrrr_mini", "cwa") and path.is_dir() and not is_zarr_store(path)):
        detected, path = detect_layout(path)
        layout = layout or detected
    parts = _reader(layout)(path, **kwargs)
    roles = LAYOUTS[layout][1]
    if part is None:
        return _combine(parts, roles)
    if part not in parts:
        raise ConfigError(explain(f"The {layout} layout has no part {part!r}", expected=list(parts)))
    return parts[part]


def _open_catalog_entry(name: str, *, layout=None, part=None, **kwargs) -> xr.Dataset:
    from .catalog import _catalog_sources, default_cache_dir, fetch, open_catalog

    meta = _catalog_sources()[name].get("metadata") or {}
    layout = layout or meta.get("xkmcast_layout", "cf")
    if meta.get("fetch"):
        target = fetch(meta["fetch"], progress=kwargs.pop("progress", True))
        if layout != "cf":
            return open_dataset(target, layout=layout, part=part, **kwargs)
        # cf: the entry's urlpath names the file inside what fetch unpacked (same cache folder)
    if layout == "stormcast":
        return open_dataset(default_cache_dir() / "hrrr_era5", layout=layout, part=part, **kwargs)
    import warnings

    with warnings.catch_warnings():
        # intake 2.0.9's expand_defaults warns "Shell command not executed due to getshell=False" for
        # every plain string parameter (ours: data_dir), shell() or not; nothing runs, nothing to act on
        warnings.filterwarnings("ignore", message="Shell command not executed", category=UserWarning)
        ds = open_catalog()[name].to_dask()
    for var, units in (meta.get("fix_units") or {}).items():  # the entry's units where its file's are wrong
        ds[var].attrs["units"] = units
    parts = read_cf(ds)
    if part is None:
        return parts["data"]
    if part not in parts:
        raise ConfigError(explain(f"The catalog entry {name!r} has no part {part!r}",
                                  expected=[p for p in parts if p != "data"] or "no parts (a plain CF dataset)"))
    return parts[part]
