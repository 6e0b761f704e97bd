"""Shared fixtures: the real test data in ../shared (skipped with a reason when absent), tiny grids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

os.environ.setdefault("MPLBACKEND", "Agg")



def shared_dir() -> Path:
    """The shared real-data folder: ``$XKMCAST_SHARED`` if set, else the first ``shared`` folder
    beside this clone or beside one of its parents (a clone in /work/main and a worktree in
    /work/wt/NAME both find /work/shared)."""
    if os.environ.get("XKMCAST_SHARED"):
        return Path(os.environ["XKMCAST_SHARED"])
    here = Path(__file__).resolve().parents[1]
    for parent in here.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared"
    return here.parent / "shared"


SHARED = shared_dir()
GUAM = SHARED / "data" / "guam.nc"
NCL_STORM = SHARED / "data" / "ncl_storm"


@pytest.fixture(scope="session")
def guam_path() -> Path:
    """Real WRF 0.78 km output around Guam (Chunxi Zhang, University of Hawaii; USGS CIDA; freely available)."""
    if not GUAM.exists():
        pytest.skip(f"real test data not found at {GUAM} (../shared is not beside this clone)")
    return GUAM


@pytest.fixture()
def guam(guam_path) -> xr.Dataset:
    with xr.open_dataset(guam_path) as ds:
        yield ds.load()


@pytest.fixture()
def guam_x4(guam) -> tuple[xr.Dataset, xr.Dataset]:
    """The Guam round trip ``(fine, coarse)``: t2m / u10m / v10m (west_east 0..59), coarsened by block
    means x4 (XLAT / XLONG too, with the file's attributes), and the fine window inside the coarse cell
    centres (56 x 48). No dataset attributes: the file's History and history clash when written back."""
    import xkmcast  # noqa: F401  (the accessor)

    ds = guam.kmcast.variables(["t2m", "u10m", "v10m"]).rename({"Time": "time"}).isel(west_east=slice(0, 60))
    ds.attrs = {}
    coarse = ds.coarsen(south_north=4, west_east=4).mean()
    coarse = coarse.assign_coords(XLAT=ds["XLAT"].coarsen(south_north=4, west_east=4).mean(),
                                  XLONG=ds["XLONG"].coarsen(south_north=4, west_east=4).mean())
    for c in ("XLAT", "XLONG"):
        coarse[c].attrs = dict(ds[c].attrs)
    return ds.isel(south_north=slice(6, 62), west_east=slice(6, 54)), coarse


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: the tests use tiny tensors, where thread hand-offs cost more than they
    give (measured 13x slower with 2 threads on a busy 2-core machine)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test leaves ``os.environ`` as it found it. Starting a dask LocalCluster of processes writes
    its workers' variables into the parent's environment for good (distributed's Nanny:
    ``MALLOC_TRIM_THRESHOLD_=65536``, ``PYTHONHASHSEED``), and every process the later tests start
    inherited them: the notebooks' kernels, the demo and the torchrun workers trained about 2x slower
    (glibc returning every freed block over 64 kB to the system: the time went to the kernel)."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture()
def era5_like() -> xr.Dataset:
    """A small ERA5-layout dataset: descending latitude, 0..360 longitude, hPa levels, short names."""
    lat = np.arange(30.0, 19.75, -0.25)
    lon = np.arange(110.0, 125.0, 0.25)
    time = np.array(["2024-01-01T00", "2024-01-01T01"], dtype="datetime64[ns]")
    level = np.array([1000, 850, 500], dtype=float)
    rng = np.random.default_rng(0)
    shape2 = (time.size, lat.size, lon.size)
    ds = xr.Dataset(
        {
            "2t": (("time", "latitude", "longitude"), 280 + rng.normal(size=shape2), {"units": "K"}),
            "10u": (("time", "latitude", "longitude"), rng.normal(size=shape2), {"units": "m s**-1"}),
            "msl": (("time", "latitude", "longitude"), 1010 + rng.normal(size=shape2), {"units": "hPa"}),
            "t": (("time", "level", "latitude", "longitude"), 260 + rng.normal(size=(2, 3, *shape2[1:])), {"units": "K"}),
            "z": (("time", "level", "latitude", "longitude"), 5e4 + rng.normal(size=(2, 3, *shape2[1:])), {"units": "m**2 s**-2"}),
        },
        coords={
            "time": time,
            "level": ("level", level, {"units": "hPa"}),
            "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"}),
        },
    )
    return ds
