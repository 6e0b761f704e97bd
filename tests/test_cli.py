"""The xkmcast command line: downscale / forecast / score / catalog on tiny bundles and files."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from _tiny import coarse_dataset, state_dataset, tiny_corrdiff, tiny_stormcast
from xkmcast.cli import app
from xkmcast.models.bundle import save_bundle
from xkmcast.fields.scoring import open_corrdiff_netcdf

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_bundle(tiny_corrdiff(), root / "corrdiff")
    save_bundle(tiny_stormcast(), root / "stormcast")
    coarse_dataset(3).to_netcdf(root / "coarse.nc")
    state_dataset(1).to_netcdf(root / "state.nc")
    return root


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("downscale", "forecast", "score", "catalog"):
        assert command in result.output


def test_downscale_writes_zarr_equal_to_the_accessor(files, tmp_path):
    out = tmp_path / "fine.zarr"
    result = runner.invoke(app, ["downscale", str(files / "corrdiff"), str(files / "coarse.nc"), str(out),
                                 "--members", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    written = xr.open_zarr(out, consolidated=False)
    expected = coarse_dataset(3).kmcast.downscale(str(files / "corrdiff"), members=2)
    np.testing.assert_allclose(written.t2m.values, expected.t2m.values, atol=1e-5)
    assert not list(tmp_path.glob(".*tmp*"))


def test_downscale_corrdiff_layout_and_score(files, tmp_path):
    out = tmp_path / "generate.nc"
    truth = tmp_path / "truth.nc"
    # a truth on the fine grid: the first member of another run
    coarse_dataset(3).kmcast.downscale(str(files / "corrdiff"), members=1, seed=7).isel(member=0).to_netcdf(truth)
    result = runner.invoke(app, ["downscale", str(files / "corrdiff"), str(files / "coarse.nc"), str(out),
                                 "--members", "3", "--layout", "corrdiff", "--truth", str(truth), "--quiet"])
    assert result.exit_code == 0, result.output
    prediction, truth_ds, _ = open_corrdiff_netcdf(out)
    assert prediction.sizes["member"] == 3 and set(truth_ds.data_vars) == {"t2m", "u10m"}
    scores = runner.invoke(app, ["score", str(out), "-o", str(tmp_path / "scores.nc")])
    assert scores.exit_code == 0, scores.output
    assert "crps" in scores.output.lower()
    assert "crps" in xr.open_dataset(tmp_path / "scores.nc").data_vars


def test_nan_input_leaves_no_output(files, tmp_path):
    bad = coarse_dataset(3)
    bad["2t"][2] = np.nan
    bad.to_netcdf(tmp_path / "bad.nc")
    out = tmp_path / "fine.zarr"
    result = runner.invoke(app, ["downscale", str(files / "corrdiff"), str(tmp_path / "bad.nc"), str(out), "--quiet"])
    assert result.exit_code != 0
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_forecast_command_streams_to_zarr(files, tmp_path):
    out = tmp_path / "fc.zarr"
    result = runner.invoke(app, ["forecast", str(files / "stormcast"), str(files / "state.nc"), str(out),
                                 "--background", str(files / "coarse.nc"), "--steps", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    fc = xr.open_zarr(out, consolidated=False)
    assert fc.sizes["lead_time"] == 3 and fc.completed.values.all()


def test_catalog_list():
    result = runner.invoke(app, ["catalog", "list"])
    assert result.exit_code == 0
    for name in ("hrrr_mini", "cwa_taiwan", "era5", "hrrr_era5", "sample"):
        assert name in result.output


def test_times_accept_iso_minutes_and_a_range_syntax():
    """--times: ISO datetimes keep their ':' (13:00 is not a range); START..END is the range."""
    from xkmcast.cli import parse_times

    ds = xr.Dataset({"a": ("time", np.arange(6.0))},
                    coords={"time": np.datetime64("2018-09-14T12:00", "ns") + np.arange(6) * np.timedelta64(1, "h")})
    picked = ds.sel(time=parse_times("2018-09-14T13:00,2018-09-14T14:00"))
    assert picked["a"].values.tolist() == [1.0, 2.0]
    assert ds.sel(time=parse_times("2018-09-14T13:00..2018-09-14T15:00"))["a"].values.tolist() == [1.0, 2.0, 3.0]
    assert ds.sel(time=parse_times("..2018-09-14T13:00"))["a"].values.tolist() == [0.0, 1.0]
    assert ds.sel(time=parse_times("2018-09-14T16:00"))["a"].values.tolist() == [4.0]
    assert parse_times("2021-02-01:2021-02-03") == slice("2021-02-01", "2021-02-03")  # the older form


def test_era5_from_the_cds_with_a_valid_time_dim(files, tmp_path):
    """ERA5 NetCDF from the CDS (since 2024) names its time dim ``valid_time``: ``downscale --times``
    selects on it, the result's axis is ``time``, and ``score`` takes such a file as the truth."""
    cds = coarse_dataset(3).rename(time="valid_time").assign_coords(number=0)
    cds.to_netcdf(tmp_path / "era5_cds.nc")
    out = tmp_path / "fine.zarr"
    result = runner.invoke(app, ["downscale", str(files / "corrdiff"), str(tmp_path / "era5_cds.nc"), str(out),
                                 "--members", "2", "--times", "2024-05-01T01:00..", "--quiet"])
    assert result.exit_code == 0, result.output
    written = xr.open_zarr(out, consolidated=False)
    expected = coarse_dataset(3).isel(time=slice(1, None)).kmcast.downscale(str(files / "corrdiff"), members=2)
    np.testing.assert_allclose(written.t2m.values, expected.t2m.values, atol=1e-5)
    truth = expected.isel(member=0).rename(time="valid_time")
    truth.to_netcdf(tmp_path / "truth_cds.nc")
    scored = written.kmcast.score(truth)
    np.testing.assert_allclose(scored["mae"].values, written.kmcast.score(expected.isel(member=0))["mae"].values)
    result = runner.invoke(app, ["score", str(out), str(tmp_path / "truth_cds.nc")])
    assert result.exit_code == 0 and "t2m" in result.output, result.output


def test_prepare_keeps_the_times_asked_for(tmp_path):
    from xkmcast.data.prepare import open_store

    coarse_dataset(3).isel(latitude=slice(0, 16), longitude=slice(0, 16)).to_netcdf(tmp_path / "fine.nc")
    args = ["prepare", str(tmp_path / "fine.nc"), "--coarsen", "2", "--input", "t2m", "--output", "t2m",
            "--allow-outside"]
    for times, kept in (("2024-05-01T01:00..", [1, 2]), ("2024-05-01T00:00,2024-05-01T02:00", [0, 2])):
        out = tmp_path / f"store{kept[0]}.zarr"
        result = runner.invoke(app, [*args[:2], str(out), *args[2:], "--times", times])
        assert result.exit_code == 0, result.output
        np.testing.assert_array_equal(open_store(out)["time"].values, coarse_dataset(3)["time"].values[kept])
