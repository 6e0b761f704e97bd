"""Several CF files as one dataset: a glob pattern (``era5/*.nc``) or a folder of NetCDF / GRIB files.

Data arrive split: one file per month or per year (a CDS download, a WRF run's ``wrfout_*``), one per
variable (CMIP's ``tas_*.nc``, ``uas_*.nc``). :func:`cf_files` finds the files such a source names and
:func:`open_cf_files` opens them lazily (dask, one chunk per file) as one Dataset with
``xarray.open_mfdataset``: combined by their coordinates (concatenated along time, merged across
variables), the grids required to be identical (``join="exact"``); files whose time dim has no
index but a datetime coordinate (WRF's ``Time`` and ``XTIME``) are concatenated along it in the order
of their names, which must be the order of their times. One NetCDF file opens with :func:`open_netcdf`;
a NetCDF-4 / HDF5 file whose root group holds no data opens on the one group that does (GPM IMERG's
``/Grid``: :func:`data_group`), one file or many. Zarr stores and the published layouts are not this
module's concern (:func:`xkmcast.data.layouts.open_dataset`).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import xarray as xr

from ..errors import DataNotFoundError, InvalidDataError, explain
from ..fields.grid import datetime_coords
from .grib import GRIB_SUFFIXES, open_grib

__all__ = ["cf_files", "open_cf_files", "open_netcdf", "data_group", "netcdf_magic", "grib_magic",
           "CF_SUFFIXES"]

#: file name endings of the NetCDF / HDF5 files read as CF
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5", ".hdf")
CF_SUFFIXES = NETCDF_SUFFIXES + GRIB_SUFFIXES
_GLOB_CHARS = "*?["


def cf_files(source: str | os.PathLike) -> list[Path] | None:
    """The files ``source`` names when it is a glob pattern, or a folder whose files (not subfolders)
    are NetCDF / GRIB files (by their suffix, or by their first bytes when it is none of those, as
    WRF's ``wrfout_d01_<time>`` and GFS's ``gfs.t00z.pgrb2.0p25.f012``); None for anything else (a single
    file, a zarr store, a catalog entry).
    A pattern that matches no file is a DataNotFoundError."""
    text = os.path.expanduser(str(source))
    path = Path(text)
    if not path.exists() and any(c in text for c in _GLOB_CHARS):
        files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file() and not _grib_index(Path(p)))
        if not files:
            raise DataNotFoundError(explain("No file matches the pattern", found=text,
                                            fix="check the folder and the pattern (e.g. 'era5/*.nc')"))
        return files
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix.lower() in CF_SUFFIXES or
                                                                      netcdf_magic(p) or grib_magic(p)))
        return files or None
    return None


def _grib_index(path: Path) -> bool:
    """cfgrib's index of a GRIB file (``<file>.<hash>.idx``, written beside it), not data."""
    return path.suffix == ".idx"


def netcdf_magic(path: Path) -> bool:
    """The file starts as a NetCDF file does: classic (``CDF`` and the format's version byte) or NetCDF-4
    (HDF5's signature). WRF writes ``wrfout_d01_<time>`` without a suffix."""
    with open(path, "rb") as f:
        head = f.read(8)
    return head[:4] in (b"CDF\x01", b"CDF\x02", b"CDF\x05") or head == b"\x89HDF\r\n\x1a\n"


def grib_magic(path: Path) -> bool:
    """The file starts as a GRIB message does (``GRIB``): GFS names its files ``gfs.t00z.pgrb2.0p25.f012``."""
    with open(path, "rb") as f:
        return f.read(4) == b"GRIB"


def is_grib(path: Path) -> bool:
    """A GRIB file, by its suffix or its first bytes."""
    return path.suffix.lower() in GRIB_SUFFIXES or (path.is_file() and grib_magic(path))


def data_group(path: Path) -> str | None:
    """The group of a NetCDF-4 / HDF5 file whose root group holds no data that holds its data (GPM
    IMERG's ``/Grid``); None when the file has no such group. Several groups with data: an
    InvalidDataError naming them (open one with ``group=``)."""
    try:
        groups = xr.open_groups(path)
    except (ValueError, OSError, TypeError):  # a format without groups (NetCDF-3)
        return None
    with_data = [name for name, g in groups.items() if g.data_vars]
    for g in groups.values():
        g.close()
    if len(with_data) > 1:
        raise InvalidDataError(explain(f"{path.name} holds data in {len(with_data)} groups and none in its root",
                                       expected="one group with data", found=with_data,
                                       fix=f"open one: xkmcast.open_dataset(path, group={with_data[0]!r})"))
    return with_data[0] if with_data else None


def open_netcdf(path: Path, **kwargs) -> xr.Dataset:
    """One NetCDF / HDF5 file, lazily; its data group when the root holds none (:func:`data_group`)."""
    return _open_with_group(path, **kwargs)[0]


def _open_with_group(path: Path, **kwargs) -> tuple[xr.Dataset, str | None]:
    """:func:`open_netcdf`'s Dataset and the group it was opened on (None: the root)."""
    chunks = kwargs.pop("chunks", {})
    ds = xr.open_dataset(path, chunks=chunks, **kwargs)
    if ds.data_vars or "group" in kwargs or (group := data_group(path)) is None:
        return ds, kwargs.get("group")
    ds.close()
    return xr.open_dataset(path, chunks=chunks, group=group, **kwargs), group


def open_cf_files(files: list[Path], **kwargs) -> xr.Dataset:
    """``files`` as one lazy Dataset (module docstring); ``kwargs`` go to ``xarray.open_mfdataset``
    (for GRIB files, to :func:`xkmcast.data.grib.open_grib`)."""
    if any(is_grib(f) for f in files):
        return _open_grib_files(files, **kwargs)
    first, group = _open_with_group(files[0], **{k: v for k, v in kwargs.items() if k in ("engine", "group")})
    with first:  # one look at the first file: its data group, and a time dim without an index
        nested = _time_dim_without_index(first)
    options = {"combine": "by_coords", "data_vars": "minimal", "coords": "minimal", "compat": "override",
               "join": "exact", "chunks": {}, **kwargs, **({"group": group} if group else {})}
    try:
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


def _open_grib_files(files: list[Path], **kwargs) -> xr.Dataset:
    """GRIB files (each :func:`~xkmcast.data.grib.open_grib`: on its valid times) concatenated along
    time in the order of their valid times: forecast hours, or cycles, one per file."""
    parts = [open_grib(f, **kwargs) for f in files]
    try:
        return xr.combine_by_coords(parts, join="exact", data_vars="minimal", coords="minimal", compat="override",
                                    combine_attrs="drop_conflicts")
    except ValueError as exc:
        raise InvalidDataError(explain(
            f"The {len(files)} GRIB files do not combine into one dataset",
            expected="files of one grid and one set of fields at different valid times (forecast hours, cycles)",
            found=f"{files[0].name} .. {files[-1].name}: {str(exc).splitlines()[0]}",
            fix="open the files you need with xkmcast.data.grib.open_grib and combine them yourself")) from exc


def _time_dim_without_index(ds: xr.Dataset) -> str | None:
    """The dim of a file's datetime coordinate when that dim has no index of its own (WRF's ``Time``,
    whose times are ``XTIME``): the files are concatenated along it in the order of their names."""
    return next((str(d) for d in ds.dims if d not in ds.indexes and datetime_coords(ds, d)), None)


def _check_increasing(ds: xr.Dataset, dim: str, files: list[Path]) -> None:
    """The times along ``dim`` of files concatenated in name order increase."""
    times = ds[datetime_coords(ds, dim)[0]].values
    if times.size > 1 and not (times[1:] > times[:-1]).all():
        raise ValueError(f"the times along {dim} do not increase in the order of the file names "
                         f"({files[0].name} .. {files[-1].name})")
