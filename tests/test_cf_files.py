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


def _wrfout(folder, hours: int = 4, fmt: str = "NETCDF4"):
    """Raw WRF output as WRF writes it with one frame per file: ``wrfout_d01_<time>`` (no suffix), dim
    ``Time`` without an index, ``XTIME`` (minutes since the start) its times, XLAT / XLONG (Time, y, x)."""
    import netCDF4

    from pyproj import CRS, Transformer

    ny, nx, dx = 6, 8, 4000.0
    lcc = CRS.from_proj4("+proj=lcc +lat_1=30 +lat_2=60 +lat_0=35 +lon_0=-100 +R=6370000")
    xx, yy = np.meshgrid((np.arange(nx) - nx / 2) * dx, (np.arange(ny) - ny / 2) * dx)
    lon, lat = Transformer.from_crs(lcc, "EPSG:4326", always_xy=True).transform(xx, yy)
    for h in range(hours):
        with netCDF4.Dataset(folder / f"wrfout_d01_2020-01-01_{h:02d}:00:00", "w", format=fmt) as f:
            f.setncatts({"MAP_PROJ": 1, "TRUELAT1": 30.0, "TRUELAT2": 60.0, "STAND_LON": -100.0, "CEN_LAT": 35.0,
                         "MOAD_CEN_LAT": 35.0, "DX": dx, "DY": dx})
            f.createDimension("Time", None)
            f.createDimension("south_north", ny)
            f.createDimension("west_east", nx)
            for name, values, units in (("XLAT", lat, "degree_north"), ("XLONG", lon, "degree_east")):
                var = f.createVariable(name, "f4", ("Time", "south_north", "west_east"))
                var[0], var.units = values, units
            xtime = f.createVariable("XTIME", "f4", ("Time",))
            xtime[0], xtime.units = 60.0 * h, "minutes since 2020-01-01 00:00:00"
            t2 = f.createVariable("T2", "f4", ("Time", "south_north", "west_east"))
            t2[0], t2.units, t2.coordinates = 280.0 + lat - lat.min() + h, "K", "XLONG XLAT XTIME"


@pytest.mark.parametrize("fmt", ["NETCDF4", "NETCDF3_64BIT_OFFSET"])
def test_raw_wrf_output_files_open_and_prepare_with_their_times(tmp_path, fmt):
    """A wrfout file has no suffix (recognised as NetCDF by its first bytes); a pattern of them is
    concatenated along Time in name order, and prepare indexes the store by XTIME, not by 0..n-1."""
    from xkmcast.data.prepare import prepare
    from xkmcast.data.synthetic import block_mean

    _wrfout(tmp_path, fmt=fmt)
    one = xkmcast.open_dataset(tmp_path / "wrfout_d01_2020-01-01_02:00:00")
    np.testing.assert_allclose(float(one["t2m"].min()), 282.0)
    ds = xkmcast.open_dataset(str(tmp_path / "wrfout_d01_*"))
    xr.testing.assert_identical(xkmcast.open_dataset(tmp_path), ds)  # their folder: the same
    hours = np.datetime64("2020-01-01T00", "ns") + np.arange(4) * np.timedelta64(1, "h")
    np.testing.assert_array_equal(ds["XTIME"].values, hours)
    np.testing.assert_allclose(ds["t2m"].min(["south_north", "west_east"]).values, 280.0 + np.arange(4))
    store = prepare(ds, block_mean(ds, 2), tmp_path / "store.zarr", input_vars=["t2m"], output_vars=["t2m"],
                    regrid_options={"allow_outside": "nearest"})
    written = xr.open_zarr(store, consolidated=False)
    np.testing.assert_array_equal(written["time"].values, hours)
    assert "XLAT" not in written.variables and written["lat"].dims == ("south_north", "west_east")  # once
    # the projection of WRF's global attributes is kept as the store's CF grid mapping: the grid is x / y
    from xkmcast.fields.grid import find_grid

    grid = find_grid(written)
    assert grid.grid_mapping["grid_mapping_name"] == "lambert_conformal_conic" and grid.grid_mapping_var == "crs"
    np.testing.assert_allclose(np.diff(grid.x), 4000.0, rtol=1e-4)
    assert grid.model_info()["xy_dims"] == ["south_north", "west_east"]


def test_downscaling_raw_wrf_output_keeps_its_times(tmp_path):
    """An input whose time dim has no index (WRF's Time) is downscaled at its XTIME times."""
    from _tiny import stats_for
    from xkmcast.data.synthetic import block_mean
    from xkmcast.models import build_pipeline, corrdiff_spec

    _wrfout(tmp_path, hours=3)
    fine = xkmcast.open_dataset(str(tmp_path / "wrfout_d01_*"))
    spec = corrdiff_spec(["t2m"], ["t2m"], (6, 8), size="tiny", sampler={"num_steps": 2})
    spec.stats = {"input": stats_for(["t2m"]), "output": stats_for(["t2m"]), "invariant": {}}
    pipe = build_pipeline(spec).eval()
    pipe.set_grid(fine["XLAT"].isel(Time=0).values, fine["XLONG"].isel(Time=0).values)
    out = block_mean(fine[["t2m"]], 2).kmcast.downscale(pipe, members=1, regrid_options={"allow_outside": "nearest"})
    np.testing.assert_array_equal(out["time"].values, fine["XTIME"].values)


def _grouped(path, ds, groups=("Grid",)):
    """A NetCDF-4 file as GPM IMERG writes its HDF5: an empty root (file attributes only), the data in
    ``groups``."""
    xr.Dataset(attrs={"FileHeader": "DOI=10.5067/GPM/IMERG/3B-HH/07"}).to_netcdf(path)
    for g in groups:
        ds.to_netcdf(path, group=g, mode="a")


def test_data_in_a_group_is_found(tmp_path):
    """IMERG keeps its fields in /Grid: one file, and a folder of half-hourly files, open on that group;
    two groups with data are refused naming them, and group= chooses."""
    ds = coarse_dataset(times=4)
    _grouped(tmp_path / "one.HDF5", ds)
    got = xkmcast.open_dataset(tmp_path / "one.HDF5")
    np.testing.assert_array_equal(got["t2m"].values, ds["2t"].values)  # ERA5 short names read as canonical
    (tmp_path / "halfhourly").mkdir()
    for i in range(2):
        _grouped(tmp_path / "halfhourly" / f"3B-HHR.{i}.nc", ds.isel(time=slice(2 * i, 2 * i + 2)))
    record = xkmcast.open_dataset(tmp_path / "halfhourly")
    np.testing.assert_array_equal(record["time"].values, ds["time"].values)
    _grouped(tmp_path / "two.nc", ds, groups=("Grid", "Grid_extra"))
    with pytest.raises(InvalidDataError, match=r"(?s)data in 2 groups.*group='/Grid'"):
        xkmcast.open_dataset(tmp_path / "two.nc")
    assert "t2m" in xkmcast.open_dataset(tmp_path / "two.nc", group="Grid_extra")
