"""NWP forecast files in GRIB (GFS, NAM, HRRR, IFS open data): one file per forecast hour, named without a
GRIB suffix (``gfs.t00z.pgrb2.0p25.f012``), mixing level types (2 m, 10 m, mean sea level, pressure
levels, the tropopause) that cfgrib cannot open as one Dataset. Written here with ecCodes; read back
to the values written (packing precision), on their valid times, and downscaled as the same fields
given as an in-memory Dataset are."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _grib import write_message
from _tiny import tiny_corrdiff
from typer.testing import CliRunner

import xkmcast
from xkmcast.cli import app
from xkmcast.errors import InvalidDataError
from xkmcast.models.bundle import save_bundle

pytest.importorskip("cfgrib")

LAT = np.arange(26.0, 21.9, -0.25)  # the tiny models' coarse grid around Taiwan, north first
LON = np.arange(119.0, 123.01, 0.25)
INIT = pd.Timestamp("2024-05-01T00:00")
STEPS = (6, 12)


def field(seed: float, scale: float = 1.0) -> np.ndarray:
    return scale * np.add.outer(np.cos(np.deg2rad(LAT) * 7 + seed), np.sin(np.deg2rad(LON) * 11 - seed))


def surface_fields(step: int) -> dict[str, np.ndarray]:
    return {"t2m": 290 + field(step / 6, 3), "u10m": field(step, 4), "v10m": -field(step + 1, 2),
            "msl": 101000 + field(step / 3, 800)}


def write_forecast_hour(path, step: int, second_grid: bool = False) -> None:
    s = surface_fields(step)
    with open(path, "wb") as out:
        write_message(out, s["t2m"], LAT, LON, short_name="2t", type_of_level="heightAboveGround", level=2,
                      time=INIT, step_hours=step)
        for name, short in (("u10m", "10u"), ("v10m", "10v")):
            write_message(out, s[name], LAT, LON, short_name=short, type_of_level="heightAboveGround", level=10,
                          time=INIT, step_hours=step)
        write_message(out, s["msl"], LAT, LON, short_name="prmsl", type_of_level="meanSea", time=INIT, step_hours=step)
        for level in (850, 500):
            write_message(out, 250 + level / 50 + field(level), LAT, LON, short_name="t", level=level, time=INIT,
                          step_hours=step)
        write_message(out, 50 + field(3, 20), LAT, LON, short_name="r", level=700, time=INIT, step_hours=step)
        write_message(out, 210 + field(5), LAT, LON, short_name="t", type_of_level="tropopause", time=INIT,
                      step_hours=step)
        if second_grid:
            write_message(out, field(1)[::2, ::2], LAT[::2], LON[::2], short_name="sp", type_of_level="surface",
                          time=INIT, step_hours=step)


@pytest.fixture(scope="module")
def forecast_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nwp")
    for step in STEPS:
        write_forecast_hour(folder / f"nwp.t00z.pgrb2.0p25.f{step:03d}", step)
    return folder


def test_a_forecast_hour_opens_on_its_valid_time_with_names_by_level(forecast_dir):
    path = forecast_dir / "nwp.t00z.pgrb2.0p25.f012"
    ds = xkmcast.open_dataset(path)
    assert sorted(ds.data_vars) == ["msl", "r", "t", "t2m", "t_tropopause", "u10m", "v10m"]
    np.testing.assert_array_equal(ds["time"].values, [np.datetime64(INIT + pd.Timedelta("12h"), "ns")])
    assert ds["forecast_reference_time"].values[0] == np.datetime64(INIT, "ns")
    assert ds["step"].values[0] == np.timedelta64(12, "h") and ds["step"].attrs["standard_name"] == "forecast_period"
    for name, values in surface_fields(12).items():
        np.testing.assert_allclose(ds[name].isel(time=0).values, values, atol=1e-3 * np.abs(values).max())
    np.testing.assert_allclose(ds["t_tropopause"].isel(time=0).values, 210 + field(5), atol=2e-3)
    picked = ds.kmcast.variables(["t850", "t500", "r700"]).isel(time=0)
    np.testing.assert_allclose(picked["t850"].values, 267 + field(850), atol=2e-3)
    np.testing.assert_allclose(picked["r700"].values, 50 + field(3, 20), atol=2e-2)
    assert np.isnan(ds["r"].sel(isobaricInhPa=850).values).all()  # r has 700 hPa only: the other levels missing


def test_a_folder_of_forecast_hours_is_one_record_of_valid_times(forecast_dir):
    xkmcast.open_dataset(forecast_dir / "nwp.t00z.pgrb2.0p25.f006")  # cfgrib leaves its .idx beside the file
    for source in (forecast_dir, str(forecast_dir / "nwp.t00z.pgrb2.0p25.f*")):
        ds = xkmcast.open_dataset(source)
        np.testing.assert_array_equal(ds["step"].values, np.array(STEPS, "timedelta64[h]"))
        np.testing.assert_array_equal(ds["time"].values, (INIT + pd.to_timedelta(STEPS, "h")).values)
        np.testing.assert_allclose(ds["v10m"].sel(time=INIT + pd.Timedelta("6h")).values, surface_fields(6)["v10m"],
                                   atol=1e-2)


def test_a_forecast_downscales_as_the_same_fields_in_memory(forecast_dir, tmp_path):
    model = tiny_corrdiff(seed=2)
    grib = xkmcast.open_dataset(forecast_dir)
    got = grib.kmcast.downscale(model, members=2, seed=3)
    np.testing.assert_array_equal(got["time"].values, grib["time"].values)
    np.testing.assert_array_equal(got["step"].values, np.array(STEPS, "timedelta64[h]"))  # init and lead kept
    assert got["forecast_reference_time"].attrs["standard_name"] == "forecast_reference_time"
    attrs = {"t2m": {"units": "K"}, "u10m": {"units": "m s-1"}, "msl": {"units": "Pa"}}
    same = xr.Dataset({v: (("time", "latitude", "longitude"), grib[v].values, attrs[v]) for v in attrs},
                      coords={"time": grib["time"].values, "latitude": LAT, "longitude": LON})
    np.testing.assert_array_equal(got["t2m"].values, same.kmcast.downscale(model, members=2, seed=3)["t2m"].values)
    out = tmp_path / "fine.zarr"
    result = CliRunner().invoke(app, ["downscale", str(_bundle(model, tmp_path)), str(forecast_dir), str(out),
                                      "--members", "2", "--seed", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    written = xr.open_zarr(out, consolidated=False)
    np.testing.assert_array_equal(written["time"].values, grib["time"].values)
    np.testing.assert_array_equal(written["step"].values, got["step"].values)
    np.testing.assert_allclose(written["t2m"].values, got["t2m"].values, rtol=1e-6)


def _bundle(model, folder):
    save_bundle(model, folder / "bundle")
    return folder / "bundle"


def test_fields_on_two_grids_are_refused_with_the_filter_to_choose(tmp_path):
    path = tmp_path / "mixed.grib2"
    write_forecast_hour(path, 6, second_grid=True)
    with pytest.raises(InvalidDataError, match=r"(?s)more than one grid.*\['sp'\].*filter_by_keys"):
        xkmcast.open_dataset(path)
    ds = xkmcast.open_dataset(path, backend_kwargs={"filter_by_keys": {"typeOfLevel": "surface"}})
    assert list(ds.data_vars) == ["sp"] and ds["time"].values[0] == np.datetime64(INIT + pd.Timedelta("6h"), "ns")


def test_era5_accumulations_of_cycles_and_steps_become_one_hourly_record(tmp_path):
    """ERA5's precipitation from the CDS in GRIB: 06 and 18 UTC cycles of 12 hourly steps (time x step,
    valid_time 2-D), each step the hour ending at its valid time: one record of 24 hourly valid times."""
    path = tmp_path / "era5_tp.grib"
    with open(path, "wb") as out:
        for cycle in ("2017-01-01T06", "2017-01-01T18"):
            for step in range(1, 13):
                write_message(out, field(step, 1e-4) + 1e-3, LAT, LON, short_name="tp", type_of_level="surface",
                              time=cycle, step_hours=step)
    ds = xkmcast.open_dataset(path)
    assert ds["tp"].dims == ("time", "latitude", "longitude")
    np.testing.assert_array_equal(ds["time"].values, pd.date_range("2017-01-01T07", periods=24, freq="h").values)
    np.testing.assert_array_equal(ds["step"].values, np.tile(np.arange(1, 13), 2).astype("timedelta64[h]"))
    assert ds["forecast_reference_time"].values[12] == np.datetime64("2017-01-01T18", "ns")
    np.testing.assert_allclose(ds["tp"].sel(time="2017-01-02T03").values, field(9, 1e-4) + 1e-3, atol=1e-7)


def write_projected(path, grid_type: str, keys: dict, nx: int, ny: int, fields: dict) -> None:
    """GRIB 2 messages of 10 m winds on a projected grid (``grid_type``, its ``keys``) with ecCodes."""
    eccodes = pytest.importorskip("eccodes")
    with open(path, "wb") as out:
        for short, values in fields.items():
            h = eccodes.codes_grib_new_from_samples("GRIB2")
            eccodes.codes_set(h, "gridType", grid_type)
            eccodes.codes_set_key_vals(h, {"Nx": nx, "Ny": ny, "shapeOfTheEarth": 6, "iScansNegatively": 0,
                                           "jScansPositively": 1, "dataDate": 20240501, "dataTime": 0, **keys})
            eccodes.codes_set(h, "typeOfLevel", "heightAboveGround")
            eccodes.codes_set(h, "level", 10)
            eccodes.codes_set(h, "shortName", short)
            eccodes.codes_set_values(h, values.ravel())
            eccodes.codes_write(h, out)
            eccodes.codes_release(h)


def check_projected_grid(ds, to_ll, x0: float, y0: float, dx: float, nx: int, ny: int) -> None:
    """The grid of ``ds`` has projected axes x0 + dx i, y0 + dx j, and its latitudes / longitudes are
    pyproj's inverse of them (``to_ll``: projection -> lon / lat)."""
    grid = ds.kmcast.grid
    np.testing.assert_allclose(np.diff(grid.x), dx, rtol=1e-4)
    np.testing.assert_allclose(np.diff(grid.y), dx, rtol=1e-4)
    lon, lat = to_ll.transform(*np.meshgrid(x0 + dx * np.arange(nx), y0 + dx * np.arange(ny)))
    np.testing.assert_allclose(ds["latitude"].values, lat, atol=1e-4)
    np.testing.assert_allclose((ds["longitude"].values + 180) % 360 - 180, lon, atol=1e-4)


def test_a_polar_stereographic_grid_keeps_its_projection(tmp_path):
    """Stage IV's HRAP-like grid (polar stereographic, true at 60 N, LoV 255 = -105, 4762.5 m): the CRS
    from the grid definition, axes spaced by Dx, latitudes / longitudes pyproj's inverse of them."""
    import pyproj

    nx, ny, dx = 10, 8, 4762.5
    crs = pyproj.CRS.from_cf({"grid_mapping_name": "polar_stereographic", "straight_vertical_longitude_from_pole": -105.0,
                              "latitude_of_projection_origin": 90.0, "standard_parallel": 60.0,
                              "earth_radius": 6371229.0})
    to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    x0, y0 = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(-95.0, 35.0)
    lon0, lat0 = to_ll.transform(x0, y0)
    path = tmp_path / "st4.2018091400.01h.grb2"
    write_projected(path, "polar_stereographic",
                    {"DxInMetres": dx, "DyInMetres": dx, "LaDInDegrees": 60.0, "orientationOfTheGridInDegrees": 255.0,
                     "latitudeOfFirstGridPointInDegrees": lat0, "longitudeOfFirstGridPointInDegrees": lon0 % 360},
                    nx, ny, {"10u": np.ones((ny, nx)), "10v": np.zeros((ny, nx))})
    ds = xkmcast.open_dataset(path)
    assert ds.kmcast.grid.grid_mapping["grid_mapping_name"] == "polar_stereographic"
    assert ds.kmcast.grid.grid_mapping["straight_vertical_longitude_from_pole"] == pytest.approx(-105.0)
    check_projected_grid(ds, to_ll, x0, y0, dx, nx, ny)


def test_a_lambert_grid_keeps_its_projection(tmp_path):
    """An HRRR-like Lambert conformal GRIB 2 grid (3 km, LoV 262.5, true latitude 38.5 on NCEP's sphere):
    the CRS comes from the grid definition, the projected axes are spaced by the file's Dx, and the
    file's latitudes / longitudes are pyproj's inverse of them; its winds are along the grid."""
    import pyproj

    nx, ny, dx = 12, 9, 3000.0
    crs = pyproj.CRS.from_cf({"grid_mapping_name": "lambert_conformal_conic", "standard_parallel": [38.5, 38.5],
                              "longitude_of_central_meridian": -97.5, "latitude_of_projection_origin": 38.5,
                              "earth_radius": 6371229.0})
    to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon0, lat0 = to_ll.transform(-15000.0, -12000.0)  # the first (south-west) point
    path = tmp_path / "hrrr.t00z.wrfsfcf01.grib2"
    write_projected(path, "lambert",
                    {"DxInMetres": dx, "DyInMetres": dx, "LaDInDegrees": 38.5, "LoVInDegrees": 262.5,
                     "Latin1InDegrees": 38.5, "Latin2InDegrees": 38.5, "uvRelativeToGrid": 1,
                     "latitudeOfFirstGridPointInDegrees": lat0, "longitudeOfFirstGridPointInDegrees": lon0 % 360},
                    nx, ny, {"10u": np.ones((ny, nx)), "10v": np.zeros((ny, nx))})
    ds = xkmcast.open_dataset(path)
    assert ds.kmcast.grid.grid_mapping["grid_mapping_name"] == "lambert_conformal_conic"
    assert ds.kmcast.grid.grid_mapping["longitude_of_central_meridian"] == pytest.approx(-97.5)
    check_projected_grid(ds, to_ll, -15000.0, -12000.0, dx, nx, ny)
    turned = ds.kmcast.earth_relative_winds()  # 1 m/s along x, within 20 km of LoV: turned a little
    assert 0 < np.abs(turned["v10m"].values).max() < 0.01
    np.testing.assert_allclose(np.hypot(turned["u10m"], turned["v10m"]), 1.0, atol=1e-5)


def test_era5_temperature_and_precipitation_in_one_file(tmp_path):
    """One CDS request of t2m and tp: cfgrib opens it as one Dataset without tp (it logs that it skips
    it); both are read here, on the same hourly valid times, without a per-field lead."""
    path = tmp_path / "era5_single_levels.grib"
    with open(path, "wb") as out:
        for hour in pd.date_range("2017-01-01T07", periods=24, freq="h"):
            write_message(out, 270 + field(hour.hour), LAT, LON, short_name="2t", type_of_level="heightAboveGround",
                          level=2, time=hour)
        for cycle in ("2017-01-01T06", "2017-01-01T18"):
            for step in range(1, 13):
                write_message(out, field(step, 1e-4) + 1e-3, LAT, LON, short_name="tp", type_of_level="surface",
                              time=cycle, step_hours=step)
    ds = xkmcast.open_dataset(path)
    assert sorted(ds.data_vars) == ["t2m", "tp"] and "step" not in ds.coords
    np.testing.assert_array_equal(ds["time"].values, pd.date_range("2017-01-01T07", periods=24, freq="h").values)
    np.testing.assert_allclose(ds["t2m"].sel(time="2017-01-01T09").values, 270 + field(9), atol=2e-3)
    np.testing.assert_allclose(ds["tp"].sel(time="2017-01-01T09").values, field(3, 1e-4) + 1e-3, atol=1e-7)
