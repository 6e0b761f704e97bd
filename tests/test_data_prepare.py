"""xkmcast.data.prepare: the training store, its contents, and atomicity on failure."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from xkmcast.data.prepare import open_store, prepare, split_stats
from xkmcast.data.stats import Stats
from xkmcast.data.synthetic import SyntheticWeather
from xkmcast.errors import ConfigError, MissingVariableError, TimeCoverageError
from xkmcast.fields.grid import find_grid, make_lambert_grid, make_latlon_grid

INPUTS, OUTPUTS, INVARIANTS = ["t2m", "u10m", "tp", "msl"], ["t2m", "tp"], ["orog", "lsm"]


@pytest.fixture(scope="module")
def sources():
    """(fine 16x16 Lambert 3 km, coarse 0.25 deg lat/lon covering it), 6 hourly times each, offset by 2 h."""
    w = SyntheticWeather(5)
    grid = find_grid(make_lambert_grid(16, 16, 3000.0, 38.5, -97.5))
    fine = w.dataset(grid, pd.date_range("2024-07-01", periods=6, freq="1h"), ("t2m", "u10m", "tp"))
    latlon = make_latlon_grid(np.arange(39.0, 37.9, -0.25), np.arange(-98.25, -96.6, 0.25),
                              lat_name="latitude", lon_name="longitude")
    coarse = w.dataset(latlon, pd.date_range("2024-07-01T02", periods=6, freq="1h"), ("t2m", "u10m", "tp", "msl"),
                       supersample=2)
    return fine, coarse


def _prepare(sources, out, **kw):
    fine, coarse = sources
    args = dict(input_vars=INPUTS, output_vars=OUTPUTS, invariants=INVARIANTS, log_vars=["tp"])
    return prepare(fine, coarse, out, **{**args, **kw})


def _bilinear_latlon(coarse: xr.DataArray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Reference: scipy bilinear interpolation in (lat, lon) on the ascending coarse axes."""
    c = coarse.sortby("latitude")
    f = RegularGridInterpolator((c.latitude.values, c.longitude.values), np.moveaxis(c.values, 0, -1))
    return np.moveaxis(f(np.stack([lat, lon], -1)), -1, 0)


def test_store_contents(tmp_path, sources):
    fine, coarse = sources
    out = _prepare(sources, tmp_path / "train.zarr")
    assert out == tmp_path / "train.zarr" and out.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.zarr"]  # no temporary left behind
    ds = open_store(out)
    expected = {"input_t2m", "input_u10m", "input_tp", "input_msl", "target_t2m", "target_tp", "orog", "lsm"}
    assert set(ds.data_vars) == expected
    common = fine.time.values[2:]  # inner join of 00-05 h and 02-07 h
    np.testing.assert_array_equal(ds.time.values, common)
    assert ds.input_t2m.dims == ("time", "y", "x") and ds.orog.dims == ("y", "x")
    assert all(ds[v].dtype == np.float32 for v in ds.data_vars)
    assert ds.input_t2m.encoding["chunks"] == (1, 16, 16)
    # fine grid coordinates, CF-annotated
    np.testing.assert_allclose(ds.lat.values, fine.lat.values)
    assert ds["crs"].attrs["grid_mapping_name"] == "lambert_conformal_conic"
    assert ds.target_t2m.attrs["units"] == "K" and ds.input_t2m.attrs["xkmcast_role"] == "input"
    # targets and invariants are the fine data; inputs the coarse data bilinearly regridded
    np.testing.assert_array_equal(ds.target_tp.values, fine.tp.sel(time=common).values)
    np.testing.assert_array_equal(ds.orog.values, fine.orog.values)
    for v in INPUTS:
        ref = _bilinear_latlon(coarse[v].sel(time=common), fine.lat.values, fine.lon.values)
        np.testing.assert_allclose(ds[f"input_{v}"].values, ref, rtol=2e-6, atol=1e-5, err_msg=v)
    # attributes: the variable lists and the statistics of the stored values
    assert json.loads(ds.attrs["xkmcast_input_vars"]) == INPUTS
    assert json.loads(ds.attrs["xkmcast_invariants"]) == INVARIANTS
    stats = Stats.from_attrs(ds)
    assert stats.mean["input_t2m"] == pytest.approx(ds.input_t2m.values.astype(float).mean(), rel=1e-9)
    assert stats.std["target_t2m"] == pytest.approx(ds.target_t2m.values.astype(float).std(), rel=1e-6)
    z = np.log1p(np.maximum(ds.target_tp.values.astype(float), 0) / stats.log_eps["target_tp"])
    assert stats.mean["target_tp"] == pytest.approx(z.mean(), rel=1e-9)
    assert "input_t2m" not in stats.log_eps and "input_tp" in stats.log_eps
    inputs, outputs = split_stats(stats, INPUTS, OUTPUTS, INVARIANTS)
    assert inputs.names == [*INPUTS, *INVARIANTS] and outputs.names == OUTPUTS
    assert outputs.mean["t2m"] == stats.mean["target_t2m"]
    ds.close()


def test_time_window_and_unit_conversion(tmp_path, sources):
    fine, coarse = sources
    celsius = coarse.assign(t2m=(coarse.t2m - 273.15).assign_attrs(units="degC"))
    out = prepare(fine, celsius, tmp_path / "s.zarr", input_vars=["t2m"], output_vars=["t2m"],
                  times=slice("2024-07-01T03", "2024-07-01T04"))
    ds = open_store(out)
    np.testing.assert_array_equal(ds.time.values, fine.time.values[3:5])
    ref = _bilinear_latlon(coarse.t2m.sel(time=ds.time.values), fine.lat.values, fine.lon.values)
    np.testing.assert_allclose(ds.input_t2m.values, ref, rtol=1e-6)  # converted back to K
    assert ds.input_t2m.attrs["units"] == "K"


def test_inputs_already_on_the_fine_grid_are_not_regridded(tmp_path, sources):
    fine, _ = sources
    coarse_on_fine = fine[["t2m"]].rolling(x=3, center=True, min_periods=1).mean()
    ds = open_store(prepare(fine, coarse_on_fine, tmp_path / "s.zarr", input_vars=["t2m"], output_vars=["t2m"]))
    np.testing.assert_array_equal(ds.input_t2m.values, coarse_on_fine.t2m.values)


def test_missing_variable_leaves_nothing(tmp_path, sources):
    with pytest.raises(MissingVariableError, match="refc"):
        _prepare(sources, tmp_path / "s.zarr", output_vars=["t2m", "refc"])
    assert list(tmp_path.iterdir()) == []


def test_no_common_time_leaves_nothing(tmp_path, sources):
    fine, coarse = sources
    later = coarse.assign_coords(time=coarse.time + np.timedelta64(30, "D"))
    with pytest.raises(TimeCoverageError, match="share no time"):
        _prepare((fine, later), tmp_path / "s.zarr")
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_nothing(tmp_path, sources):
    fine, coarse = sources

    def explode(block):
        if block.max() > -1e30:
            raise RuntimeError("disk on fire")
        return block

    broken = coarse.copy()
    data = da.from_array(coarse.msl.values, chunks=(1, -1, -1)).map_blocks(explode, dtype=np.float32)
    broken["msl"] = coarse.msl.copy(data=data)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _prepare((fine, broken), tmp_path / "s.zarr")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path, sources):
    out = _prepare(sources, tmp_path / "s.zarr", input_vars=["t2m"], output_vars=["t2m"], invariants=[],
                   log_vars=[])
    with pytest.raises(ConfigError, match="exists"):
        _prepare(sources, out)
    _prepare(sources, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    assert "input_msl" in open_store(out).data_vars


def test_runs_on_dask_distributed(tmp_path, sources):
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None):
        out = _prepare(sources, tmp_path / "s.zarr")
    ds = open_store(out)
    assert ds.sizes["time"] == 4 and float(ds.orog.max()) > 0


def test_statistics_only_from_the_statistics_window(tmp_path, sources):
    """stats_times keeps evaluation times out of the normalisation: numpy over the window alone."""
    fine, coarse = sources
    window = slice(str(fine.time.values[2])[:19], str(fine.time.values[4])[:19])
    out = _prepare(sources, tmp_path / "train.zarr", stats_times=window, log_vars=[])
    ds = open_store(out)
    stats = Stats.from_attrs(ds)
    truth = fine["t2m"].sel(time=window).values.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(stats.mean["target_t2m"], truth.mean(), rtol=1e-6)
    np.testing.assert_allclose(stats.std["target_t2m"], truth.std(), rtol=1e-5)
    everything = fine["t2m"].sel(time=ds.time).values.astype(np.float64)
    assert abs(stats.mean["target_t2m"] - everything.mean()) > 1e-4  # the window made a difference
    assert json.loads(ds.attrs["xkmcast_stats_times"]) == {"first": window.start, "last": window.stop, "count": 3}
    with pytest.raises(TimeCoverageError):
        _prepare(sources, tmp_path / "none.zarr", stats_times=slice("2030-01-01", None))


def test_allow_outside_reaches_the_regridder_from_prepare_and_the_cli(tmp_path, sources):
    from typer.testing import CliRunner

    from xkmcast.cli import app
    from xkmcast.errors import DomainCoverageError

    fine, coarse = sources
    east = coarse.sel(longitude=slice(-97.5, None))  # misses the western fine columns
    with pytest.raises(DomainCoverageError, match="allow_outside"):
        prepare(fine, east, tmp_path / "a.zarr", input_vars=["t2m"], output_vars=["t2m"])
    with pytest.raises(ConfigError, match="allow_outsde"):
        prepare(fine, east, tmp_path / "a.zarr", input_vars=["t2m"], output_vars=["t2m"],
                regrid_options={"allow_outsde": True})
    with pytest.raises(ConfigError, match="allow_outside: nearest"):  # NaN inputs: every loss NaN
        prepare(fine, east, tmp_path / "a.zarr", input_vars=["t2m"], output_vars=["t2m"],
                regrid_options={"allow_outside": True})
    assert not (tmp_path / "a.zarr").exists()
    ds = open_store(prepare(fine, east, tmp_path / "a.zarr", input_vars=["t2m"], output_vars=["t2m"],
                            regrid_options={"allow_outside": "nearest"}))
    west = fine.lon.values < -97.5
    assert np.isfinite(ds.input_t2m.values).all()
    # outside, each fine point takes the value of its nearest coarse point (a brute-force search on the sphere)
    c = east.t2m.sel(time=ds.time.values).values  # (time, lat, lon) at the store's times
    clat, clon = np.meshgrid(east.latitude.values, east.longitude.values, indexing="ij")
    flat, flon = fine.lat.values, fine.lon.values
    for y, x in list(zip(*np.nonzero(west)))[:5]:
        d = np.sin(np.radians(clat - flat[y, x]) / 2) ** 2 + np.cos(np.radians(clat)) * np.cos(
            np.radians(flat[y, x])) * np.sin(np.radians(clon - flon[y, x]) / 2) ** 2
        j, i = np.unravel_index(np.argmin(d), d.shape)
        np.testing.assert_allclose(ds.input_t2m.values[:, y, x], c[:, j, i], rtol=1e-6)
    assert json.loads(ds.attrs["regrid_options"]) == {"allow_outside": "nearest"}
    fine.to_netcdf(tmp_path / "fine.nc")
    east.to_netcdf(tmp_path / "east.nc")
    args = ["prepare", str(tmp_path / "fine.nc"), str(tmp_path / "b.zarr"), "--input", "t2m", "--output", "t2m",
            "--coarse", str(tmp_path / "east.nc")]
    assert CliRunner().invoke(app, args).exit_code != 0
    result = CliRunner().invoke(app, [*args, "--allow-outside"])
    assert result.exit_code == 0, result.output
    # the count of nearest-filled points, as a plain line (not the Python source line that issued it)
    assert f"warning: {int(west.sum())} of {west.size} fine grid points are outside" in result.output
    assert "warnings.warn" not in result.output and "UserWarning" not in result.output
    cli = open_store(tmp_path / "b.zarr")
    np.testing.assert_array_equal(cli.input_t2m.values, ds.input_t2m.values)


def test_transforms_are_applied_before_the_statistics(tmp_path, sources):
    """transforms={tp: sqrt}: the store's statistics of input_tp and target_tp are those of sqrt(tp)."""
    out = _prepare(sources, tmp_path / "sqrt.zarr", log_vars=[], transforms={"tp": "sqrt"})
    ds = open_store(out)
    stats = Stats.from_attrs(ds)
    for name in ("input_tp", "target_tp"):
        z = np.sqrt(np.maximum(ds[name].values.astype(float), 0))
        assert stats.transform_of(name) == "sqrt"
        assert stats.mean[name] == pytest.approx(z.mean(), rel=1e-6)
        assert stats.std[name] == pytest.approx(z.std(), rel=1e-6)
    assert stats.transform_of("input_t2m") == "none"


def test_a_variable_with_a_dim_besides_time_and_the_grid_is_refused_naming_it(tmp_path, sources):
    """An ensemble dim left on the target (ERA5's ``number``) would reach the network as an extra axis:
    prepare refuses it before writing, naming the dim and how to select one."""
    from xkmcast.errors import InvalidDataError

    fine, coarse = sources
    members = fine.assign(t2m=fine.t2m.expand_dims(number=2))
    with pytest.raises(InvalidDataError, match=r"(?s)'t2m' has dims \['number'\].*ds.isel\(number=0\)"):
        prepare(members, coarse, tmp_path / "m.zarr", input_vars=["t2m"], output_vars=["t2m"])
    assert not (tmp_path / "m.zarr").exists()
