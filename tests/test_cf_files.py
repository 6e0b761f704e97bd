"""Several CF files as one dataset: a glob pattern or a folder (one file per day, one per variable)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import xarray as xr

import xkmcast
from _tiny import coarse_dataset
from xkmcast.errors import DataNotFoundError, InvalidDataError


@pytest.fixture()
def split(tmp_path):
    """An ERA5-like dataset of 6 hours written as three 2-hour files (by_time/) and as one file per
    variable (by_variable/)."""
    ds = coarse_dataset(times=6)
    (tmp_path / "by_time").mkdir()
    (tmp_path / "by_variable").mkdir()
    for i in range(3):
        ds.isel(time=slice(2 * i, 2 * i + 2)).to_netcdf(tmp_path / "by_time" / f"era5_{i}.nc")
    for v in ds.data_vars:
        ds[[v]].to_netcdf(tmp_path / "by_variable" / f"{v}.nc")
    (tmp_path / "by_variable" / "README.txt").write_text("not data")
    return ds, tmp_path


def test_a_glob_pattern_and_a_folder_open_as_the_whole_dataset(split):
    ds, root = split
    for source in (str(root / "by_time" / "era5_*.nc"), root / "by_time", root / "by_variable"):
        got = xkmcast.open_dataset(source)
        assert got.sizes["time"] == 6, source
        np.testing.assert_array_equal(got["time"].values, ds["time"].values)
        np.testing.assert_allclose(got["t2m"].values, ds["2t"].values)  # canonical names, as one file gives them
        np.testing.assert_allclose(got["msl"].values, ds["msl"].values)
        assert got["t2m"].chunks is not None  # lazy


def test_files_that_do_not_combine_and_patterns_that_match_nothing_are_refused(split):
    ds, root = split
    other = root / "mixed"
    other.mkdir()
    ds.isel(time=slice(0, 2)).to_netcdf(other / "a.nc")
    shifted = ds.isel(time=slice(2, 4)).assign_coords(latitude=ds["latitude"] + 0.1)  # another grid
    shifted.to_netcdf(other / "b.nc")
    with pytest.raises(InvalidDataError, match="The 2 files do not combine into one dataset") as err:
        xkmcast.open_dataset(other)
    assert "xr.open_mfdataset" in str(err.value)
    with pytest.raises(DataNotFoundError, match="No file matches the pattern"):
        xkmcast.open_dataset(str(root / "by_time" / "gfs_*.nc"))


def test_a_training_store_from_patterns_and_its_fingerprint(split):
    """prepare reads a pattern as it reads one file, and the run's store recipe notices a file that changed
    under the pattern."""
    from xkmcast.data.prepare import open_pair, prepare
    from xkmcast.train.store_recipe import _fingerprint

    ds, root = split
    pattern = str(root / "by_time" / "era5_*.nc")
    fine, coarse = open_pair(pattern, root / "by_variable")
    store = prepare(fine, coarse, root / "store.zarr", input_vars=["t2m", "msl"], output_vars=["t2m"],
                    regrid_method="nearest")
    out = xr.open_zarr(store, consolidated=False)
    np.testing.assert_allclose(out["target_t2m"].values, ds["2t"].values)
    before = _fingerprint(pattern)
    assert before is not None and _fingerprint(pattern) == before
    path = root / "by_time" / "era5_1.nc"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert _fingerprint(pattern) != before
