"""Several CF files as one dataset: a glob pattern (``era5/*.nc``) or a folder of NetCDF / GRIB files.

Data arrive split: one file per month or per year (a CDS download, a WRF run's ``wrfout_*``), one per
variable (CMIP's ``tas_*.nc``, ``uas_*.nc``). :func:`cf_files` finds the files such a source names and
:func:`open_cf_files` opens them lazily (dask, one chunk per file) as one Dataset with
``xarray.open_mfdataset``: combined by their coordinates (concatenated along time, merged across
variables), the grids required to be identical (``join="exact"``); files whose time dim has no
index but a datetime coordinate (WRF's ``Time`` and ``XTIME``) are concatenated along it in the order
of their names, which must be the order of their times. A single file, a zarr store and
the published layouts are not this module's concern (:func:`xkmcast.data.layouts.open_dataset`).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import xarray as xr

from ..errors import DataNotFoundError, InvalidDataError, explain
from ..fields.grid import datetime_coords

__all__ = ["cf_files", "open_cf_files", "grib_engine", "netcdf_magic", "CF_SUFFIXES", "GRIB_SUFFIXES"]

#: file name endings of the NetCDF / HDF5 files read as CF
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5", ".hdf")
#: file name endings of GRIB files (xarray's cfgrib engine)
GRIB_SUFFIXES = (".grib", ".grib1", ".grib2", ".grb", ".grb2")
CF_SUFFIXES = NETCDF_SUFFIXES + GRIB_SUFFIXES
_GLOB_CHARS = "*?["


def grib_engine(path: Path) -> str:
    """``"cfgrib"``, xarray's GRIB engine, or InvalidDataError saying how to install it."""
    import importlib.util

    if importlib.util.find_spec("cfgrib") is None:
        raise InvalidDataError(explain("A GRIB file is read by xarray's cfgrib engine, which is not installed",
                                       found=str(path), fix="pip install cfgrib (it brings ecCodes)"))
    return "cfgrib"


def cf_files(source: str | os.PathLike) -> list[Path] | None:
    """The files ``source`` names when it is a glob pattern, or a folder whose files (not subfolders)
    are NetCDF / GRIB files (by their suffix, or NetCDF by their first bytes when they have none, as
    WRF's output); None for anything else (a single file, a zarr store, a catalog entry).
    A pattern that matches no file is a DataNotFoundError."""
    text = os.path.expanduser(str(source))
    path = Path(text)
    if not path.exists() and any(c in text for c in _GLOB_CHARS):
        files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not files:
            raise DataNotFoundError(explain("No file matches the pattern", found=text,
                                            fix="check the folder and the pattern (e.g. 'era5/*.nc')"))
        return files
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix.lower() in CF_SUFFIXES or
                                                                      (not p.suffix and netcdf_magic(p))))
        return files or None
    return None


def netcdf_magic(path: Path) -> bool:
    """The file starts as a NetCDF file does: classic (``CDF`` and the format's version byte) or NetCDF-4
    (HDF5's signature). WRF writes ``wrfout_d01_<time>`` without a suffix."""
    with open(path, "rb") as f:
        head = f.read(8)
    return head[:4] in (b"CDF\x01", b"CDF\x02", b"CDF\x05") or head == b"\x89HDF\r\n\x1a\n"


def open_cf_files(files: list[Path], **kwargs) -> xr.Dataset:
    """``files`` as one lazy Dataset (module docstring); ``kwargs`` go to ``xarray.open_mfdataset``."""
    if any(f.suffix.lower() in GRIB_SUFFIXES for f in files):
        kwargs.setdefault("engine", grib_engine(files[0]))
    options = {"combine": "by_coords", "data_vars": "minimal", "coords": "minimal", "compat": "override",
               "join": "exact", "chunks": {}, **kwargs}
    try:
        nested = _time_dim_without_index(files[0], kwargs)
        if nested is not None:  # WRF: Time has no index, XTIME holds the times; files in name order
            options.update(combine="nested", concat_dim=nested)
        ds = xr.open_mfdataset([str(f) for f in files], **options)
        if nested is not None:
            _check_increasing(ds, nested, files)
        return ds
    except ValueError as exc:  # grids that differ, times that overlap, no coordinate to order by
        raise InvalidDataError(explain(
            f"The {len(files)} files do not combine into one dataset",
            expected="files that differ only in their times (one per month, say) or in their variables, on one grid",
            found=f"{files[0].name} .. {files[-1].name}: {str(exc).splitlines()[0]}",
            fix="open them yourself (xr.open_mfdataset(...) with the options your files need) and pass the Dataset, "
                "or write it to one zarr store first")) from exc


def _time_dim_without_index(first: Path, kwargs: dict) -> str | None:
    """The dim of a file's datetime coordinate when that dim has no index of its own (WRF's ``Time``,
    whose times are ``XTIME``): the files are concatenated along it in the order of their names."""
    with xr.open_dataset(first, **{k: v for k, v in kwargs.items() if k == "engine"}) as ds:
        return next((str(d) for d in ds.dims if d not in ds.indexes and datetime_coords(ds, d)), None)


def _check_increasing(ds: xr.Dataset, dim: str, files: list[Path]) -> None:
    """The times along ``dim`` of files concatenated in name order increase."""
    times = ds[datetime_coords(ds, dim)[0]].values
    if times.size > 1 and not (times[1:] > times[:-1]).all():
        raise ValueError(f"the times along {dim} do not increase in the order of the file names "
                         f"({files[0].name} .. {files[-1].name})")
