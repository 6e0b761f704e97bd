"""GRIB files as one CF Dataset on valid times (xarray's cfgrib engine).

cfgrib opens a GRIB file as one Dataset only when its messages form one hypercube. An operational
NWP file (GFS, NAM, HRRR, IFS open data) mixes level types: 2 m and 10 m above ground, mean sea level,
the surface, pressure levels, layers. cfgrib then stops ("multiple values for unique key"). Such a
file is opened here as cfgrib's list of hypercubes (``cfgrib.open_datasets``) and merged into one
Dataset (:func:`merge_hypercubes`):

- a name found in several hypercubes keeps its plain name in the first of :data:`LEVEL_PRECEDENCE`
  (``t`` on pressure levels, ``gh`` on pressure levels, ``cape`` at the surface) and is suffixed with
  its level type elsewhere (``t_tropopause``, ``u_maxWind``, ``gh_cloudTop``; then with its level when
  one type holds it twice: ``t_pressureFromGroundLayer3000``);
- a hypercube's single level (``heightAboveGround`` 2 or 10) is dropped once it is in the name, a
  pressure level kept as a level dimension (``isobaricInhPa``, of size 1 for one level); two
  hypercubes with different sets of pressure levels are joined on the union of their levels
  (missing levels NaN);
- hypercubes on another grid than the first are refused with the ``filter_by_keys`` to choose one;
- each hypercube is put on its valid times first (below); fields whose leads differ (ERA5's
  instantaneous fields at step 0 beside its precipitation accumulated over the hour before) share the
  time axis, without ``forecast_reference_time`` / ``step``.

cfgrib also opens some files as one Dataset while leaving out, with only a log line, the fields that do
not fit its first hypercube (ERA5's precipitation beside its temperature): those files are split into
hypercubes as well.

A forecast's fields hold at their valid time: the time axis becomes ``valid_time``
(:func:`on_valid_times`; the initial time and the lead kept as ``forecast_reference_time`` and
``step`` along it), so a forecast hour lines up with the analyses and observations of that hour, and
files of successive forecast hours or cycles (a folder of them) concatenate along it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import InvalidDataError, explain
from ..fields.variables import LEVEL_DIMS

__all__ = ["GRIB_SUFFIXES", "LEVEL_PRECEDENCE", "grib_engine", "open_grib", "merge_hypercubes", "on_valid_times"]

#: file name endings of GRIB files
GRIB_SUFFIXES = (".grib", ".grib1", ".grib2", ".grb", ".grb2")

#: which hypercube keeps a variable's plain name when several hold it (the rest: by cfgrib's order)
LEVEL_PRECEDENCE = ("heightAboveGround", "meanSea", "surface", "isobaricInhPa", "isobaricInPa", "entireAtmosphere",
                    "atmosphereSingleLayer", "hybrid", "depthBelowLandLayer")

#: the grid definition keys cfgrib does not keep for every grid type (a polar-stereographic grid's LoV and
#: true latitude): read with each message, for :func:`xkmcast.fields.crs.grib_crs`
PROJECTION_KEYS = ("LaDInDegrees", "LoVInDegrees", "orientationOfTheGridInDegrees", "projectionCentreFlag",
                   "Latin1InDegrees", "Latin2InDegrees")

#: cfgrib's time coordinates: they are the time axis (:func:`on_valid_times`), not a level
_TIME_COORDS = ("time", "step", "valid_time")


def grib_engine(path: Path) -> str:
    """``"cfgrib"``, xarray's GRIB engine, or InvalidDataError saying how to install it."""
    import importlib.util

    if importlib.util.find_spec("cfgrib") is None:
        raise InvalidDataError(explain("A GRIB file is read by xarray's cfgrib engine, which is not installed",
                                       found=str(path), fix="pip install cfgrib (it brings ecCodes)"))
    return "cfgrib"


def open_grib(path: str | Path, **kwargs) -> xr.Dataset:
    """A GRIB file as one lazy Dataset on valid times (module docstring); ``kwargs`` go to
    ``xarray.open_dataset`` (e.g. ``backend_kwargs={"filter_by_keys": {"typeOfLevel": "surface"}}``)."""
    from cfgrib.dataset import DatasetBuildError

    engine = kwargs.pop("engine", None) or grib_engine(Path(path))
    chunks = kwargs.pop("chunks", {})
    backend = dict(kwargs.pop("backend_kwargs", None) or {})
    backend["read_keys"] = [*backend.get("read_keys", []), *PROJECTION_KEYS]  # kept as GRIB_ attributes
    with _cfgrib_skips() as skipped:
        try:
            ds = xr.open_dataset(path, engine=engine, chunks=chunks, backend_kwargs=backend, **kwargs)
        except DatasetBuildError:  # several hypercubes: mixed level types
            ds = None
        if ds is not None:
            if not skipped:
                return on_valid_times(ds)
            ds.close()
        # cfgrib refused the file, or opened it leaving out fields that do not fit its first hypercube
        # (ERA5's accumulated precipitation beside its instantaneous fields): its hypercubes, merged
        import cfgrib

        parts = cfgrib.open_datasets(str(path), backend_kwargs=backend, chunks=chunks, **kwargs)
    return merge_hypercubes([on_valid_times(part) for part in parts], Path(path).name)


class _Skips(logging.Handler):
    """Collects cfgrib's "skipping variable" errors: the fields it left out of a Dataset."""

    def __init__(self, skipped: list):
        super().__init__(logging.ERROR)
        self.skipped = skipped

    def emit(self, record: logging.LogRecord) -> None:
        self.skipped.append(record.getMessage())


@contextlib.contextmanager
def _cfgrib_skips():
    """The fields cfgrib leaves out while it opens a file (yielded list), taken from its log instead of
    printed (they are read from its hypercubes then), and xarray's FutureWarning about the merge
    defaults cfgrib's own merging uses (cfgrib's call, not ours)."""
    log = logging.getLogger("cfgrib")
    skipped: list[str] = []
    handler, propagate = _Skips(skipped), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="cfgrib")
            yield skipped
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _level_type(ds: xr.Dataset) -> str:
    types = {v.attrs.get("GRIB_typeOfLevel", "undef") for v in ds.data_vars.values()}
    return types.pop() if len(types) == 1 else "undef"


def _rank(level_type: str) -> int:
    return LEVEL_PRECEDENCE.index(level_type) if level_type in LEVEL_PRECEDENCE else len(LEVEL_PRECEDENCE)


def merge_hypercubes(parts: list[xr.Dataset], source: str = "the file") -> xr.Dataset:
    """cfgrib's hypercubes of one file as one Dataset, names made unique by level (module docstring)."""
    if not parts:
        raise InvalidDataError(explain("The GRIB file holds no field cfgrib can read", found=source,
                                       fix="check the file with grib_ls (ecCodes)"))
    first = parts[0]
    grid = [c for c in ("latitude", "longitude") if c in first.coords]
    renamed, taken = [], set()
    for ds in sorted(parts, key=lambda d: _rank(_level_type(d))):  # stable: cfgrib's order within a rank
        other = [c for c in grid if c not in ds.coords or ds[c].shape != first[c].shape
                 or not np.array_equal(ds[c].values, first[c].values)]
        if other:
            raise InvalidDataError(explain(
                f"{source} holds fields on more than one grid", expected="one grid",
                found=f"{list(ds.data_vars)} ({_level_type(ds)}) on another grid than {list(first.data_vars)}",
                fix="open one grid: xkmcast.open_dataset(path, backend_kwargs={'filter_by_keys': "
                    "{'gridType': ..., 'typeOfLevel': ...}}) (keys as grib_ls shows them)"))
        level_type = _level_type(ds)
        single = [c for c in ds.coords if ds[c].ndim == 0 and c not in _TIME_COORDS and c not in ds.dims]
        pressure = [c for c in single if c in LEVEL_DIMS]  # one pressure level: a level dim of size 1, not a name
        ds = ds.set_coords(pressure).expand_dims(pressure) if pressure else ds
        single = [c for c in single if c not in pressure]
        level = "".join(f"{float(ds[c]):g}" for c in single if c == level_type)
        names = {}
        for name in ds.data_vars:
            for new in (str(name), f"{name}_{level_type}", f"{name}_{level_type}{level}"):
                if new not in taken:
                    break
            else:
                raise InvalidDataError(explain(f"{source}: two fields named {name} on {level_type} {level}",
                                               fix="open one of them with backend_kwargs={'filter_by_keys': {...}}"))
            names[name] = new
            taken.add(new)
        renamed.append(ds.drop_vars(single).rename({k: v for k, v in names.items() if k != v}))
    for name in ("forecast_reference_time", "step"):  # per field when the fields' leads differ: not kept
        values = [part[name] for part in renamed if name in part.coords]
        if any(not v.equals(values[0]) for v in values[1:]):
            renamed = [part.drop_vars(name, errors="ignore") for part in renamed]
    return xr.merge(renamed, join="outer", compat="override", combine_attrs="drop_conflicts")


def on_valid_times(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` (cfgrib's ``time`` = the initial time, ``step``, ``valid_time``) with ``time`` the valid
    times, and ``forecast_reference_time`` and ``step`` along it: from one field (time and step
    scalars), a forecast's steps (step a dim), a record of analyses (time a dim, one step), or cycles x
    leads whose valid times do not repeat (ERA5's accumulations from the CDS: 06 and 18 UTC cycles of
    12 hourly steps, each the hour ending at its valid time). Cycles whose leads overlap are left
    with their time and step dims (select a step first)."""
    if not all(c in ds.coords for c in _TIME_COORDS):
        return ds
    time, step = ds["time"], ds["step"]
    if time.ndim == 0 and step.ndim == 0:
        ds = ds.expand_dims("step").assign_coords(valid_time=("step", np.atleast_1d(ds["valid_time"].values)))
        step = ds["step"]
    if time.ndim == 0 and step.dims == ("step",):
        n = step.size
        ds = ds.swap_dims(step="valid_time").drop_vars("time")
        ds = ds.rename(valid_time="time").assign_coords(
            forecast_reference_time=("time", np.repeat(time.values, n)))
    elif time.dims == ("time",) and step.ndim == 0:
        valid = ds["valid_time"].values
        ds = ds.assign_coords(forecast_reference_time=("time", time.values),
                              step=("time", np.repeat(step.values, time.size)))
        ds = ds.drop_vars("valid_time").assign_coords(time=valid)
    elif time.dims == ("time",) and step.dims == ("step",) and ds["valid_time"].dims == ("time", "step"):
        valid = ds["valid_time"].values.ravel()
        if np.unique(valid).size != valid.size:  # cycles whose leads overlap: no one record of valid times
            return ds
        reference, lead = np.meshgrid(time.values, step.values, indexing="ij")
        ds = ds.drop_vars("valid_time").stack(valid=("time", "step")).drop_vars(["valid", "time", "step"])
        ds = ds.assign_coords(time=("valid", valid), forecast_reference_time=("valid", reference.ravel()),
                              step=("valid", lead.ravel())).swap_dims(valid="time").sortby("time")
        ds = ds.transpose("time", ...)
    else:
        return ds
    ds["time"].attrs = {"standard_name": "time", "long_name": "valid time"}
    ds["forecast_reference_time"].attrs = {"standard_name": "forecast_reference_time", "long_name": "initial time"}
    ds["step"].attrs = {"standard_name": "forecast_period", "long_name": "time since forecast_reference_time"}
    return ds
