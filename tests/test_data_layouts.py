"""xkmcast.data.layouts*: miniature files in each published layout, opened as CF Datasets."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pyproj
import pytest
import xarray as xr

from xkmcast.data import layout_stats, open_dataset
from xkmcast.data.layouts import canonical_name, detect_layout
from xkmcast.errors import ConfigError, IntegrityError, InvalidDataError, MissingVariableError
from xkmcast.fields.grid import HRRR_CRS_CF

RNG = np.random.default_rng(0)


def lcc_grid(ny: int, nx: int, dx: float = 3000.0, x0: float = -200e3, y0: float = -100e3):
    """x, y (m) and 2-D lat / lon of a HRRR-projection grid, from pyproj (independent of xkmcast)."""
    x, y = x0 + dx * np.arange(nx), y0 + dx * np.arange(ny)
    to_ll = pyproj.Transformer.from_crs(pyproj.CRS.from_cf(HRRR_CRS_CF), "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform(*np.meshgrid(x, y))
    return x, y, lat, lon


def assert_cf_latlon(ds, lat="lat", lon="lon"):
    assert ds[lat].attrs["standard_name"] == "latitude" and ds[lat].attrs["units"] == "degrees_north"
    assert ds[lon].attrs["standard_name"] == "longitude" and ds[lon].attrs["units"] == "degrees_east"


# ------------------------------------------------------------------------------------- HRRR-Mini


@pytest.fixture()
def hrrr_mini(tmp_path):
    n, ny, nx, f = 3, 8, 8, 4
    _, _, lat, lon = lcc_grid(20, 24)
    offsets = np.array([[0, 0], [5, 7], [12, 16]])
    times = pd.to_datetime(["2020-02-02T00", "2020-02-02T01", "2020-02-02T01"]).values
    out = {k: RNG.normal(size=(n, ny, nx)).astype("f4") for k in ("10u", "10v", "2t", "tp")}
    inp = {k: RNG.normal(size=(n, ny // f, nx // f)).astype("f4") for k in ("u10", "t850", "z500", "msl")}
    path = tmp_path / "hrrr_mini" / "hrrr_mini_train.nc"
    path.parent.mkdir()
    xr.Dataset({"time": ("sample", times), "coord": (("sample", "ij"), offsets)}).to_netcdf(path, engine="h5netcdf")
    xr.Dataset({k: (("sample", "y_hr", "x_hr"), v) for k, v in out.items()}).to_netcdf(path, mode="a", group="output", engine="h5netcdf")
    xr.Dataset({k: (("sample", "y_lr", "x_lr"), v) for k, v in inp.items()}).to_netcdf(path, mode="a", group="input", engine="h5netcdf")
    elev = RNG.uniform(0, 3000, size=lat.shape).astype("f4")
    inv = {"latitude": lat.astype("f4"), "longitude": lon.astype("f4"), "elev_mean": elev, "lsm_mean": (elev > 1500).astype("f4")}
    xr.Dataset({k: (("y", "x"), v) for k, v in inv.items()}).to_netcdf(path, mode="a", group="invariant", engine="h5netcdf")
    stats = {
        "output": {k: {"mean": float(i), "std": 1.0 + i} for i, k in enumerate(out)},
        "input": {k: {"mean": 10.0 + i, "std": 2.0} for i, k in enumerate(inp)},
        "invariant": {"elev_mean": {"mean": 500.0, "std": 300.0}, "lsm_mean": {"mean": 0.5, "std": 0.5}},
    }
    (path.parent / "stats.json").write_text(json.dumps(stats))
    return path, out, inp, inv, offsets, times, stats


def test_hrrr_mini_target(hrrr_mini):
    path, out, inp, inv, offsets, times, stats = hrrr_mini
    assert detect_layout(path.parent.parent) == ("hrrr_mini", path)
    ds = open_dataset(path, part="target")
    assert set(ds.data_vars) == {"u10m", "v10m", "t2m", "tp", "orog", "lsm"}
    assert ds["u10m"].dims == ("sample", "y", "x") and ds.sizes == {"sample": 3, "y": 8, "x": 8}
    np.testing.assert_array_equal(ds["u10m"].values, out["10u"])
    np.testing.assert_array_equal(ds["time"].values, times)
    assert np.issubdtype(ds["time"].dtype, np.datetime64)
    for k, (i, j) in enumerate(offsets):  # each patch's lat/lon is its window of the HRRR grid
        np.testing.assert_allclose(ds["lat"].values[k], inv["latitude"][i : i + 8, j : j + 8], rtol=1e-6)
        np.testing.assert_allclose(ds["lon"].values[k], inv["longitude"][i : i + 8, j : j + 8], rtol=1e-6)
        np.testing.assert_array_equal(ds["orog"].values[k], inv["elev_mean"][i : i + 8, j : j + 8])
    assert_cf_latlon(ds)
    assert ds["x"].attrs["axis"] == "X" and ds["y"].attrs["axis"] == "Y"
    assert ds["t2m"].attrs["standard_name"] == "air_temperature" and ds["t2m"].attrs["units"] == "K"
    assert ds["t2m"].attrs["xkmcast_channel"] == "2t" and ds["orog"].attrs["xkmcast_role"] == "invariant"
    st = layout_stats(ds)
    assert st["u10m"] == stats["output"]["10u"] and st["orog"] == stats["invariant"]["elev_mean"]


def test_hrrr_mini_input_on_coarse_blocks(hrrr_mini):
    path, out, inp, inv, offsets, *_ = hrrr_mini
    ds = open_dataset(path, part="input")
    assert set(ds.data_vars) == {"u10m", "t850", "z500", "msl"} and ds.sizes == {"sample": 3, "y": 2, "x": 2}
    np.testing.assert_array_equal(ds["z500"].values, inp["z500"])
    i, j = offsets[1]
    window = inv["latitude"][i : i + 8, j : j + 8].astype(float)
    expected = np.array([[window[4 * a : 4 * a + 4, 4 * b : 4 * b + 4].mean() for b in range(2)] for a in range(2)])
    np.testing.assert_allclose(ds["lat"].values[1], expected, rtol=1e-6)
    assert ds["z500"].attrs["units"] == "m2 s-2" and "500 hPa" in ds["z500"].attrs["long_name"]
    assert ds.attrs["xkmcast_upsample_factor"] == 4


def test_hrrr_mini_combined_prefixes_era5(hrrr_mini):
    path, *_ , stats = hrrr_mini
    ds = open_dataset(path)
    assert {"u10m", "era5_u10m", "era5_t850"} <= set(ds.data_vars)
    assert ds["era5_u10m"].dims == ("sample", "era5_y", "era5_x")
    assert "standard_name" not in ds["era5_lat"].attrs and ds["lat"].attrs["standard_name"] == "latitude"
    st = layout_stats(ds)
    assert st["era5_u10m"] == stats["input"]["u10"] and st["u10m"] == stats["output"]["10u"]


def test_hrrr_mini_bad_files(tmp_path, hrrr_mini):
    path = tmp_path / "no_groups.nc"
    xr.Dataset({"time": ("sample", np.arange(2))}).to_netcdf(path, engine="h5netcdf")
    with pytest.raises(InvalidDataError, match="lacks the group"):
        open_dataset(path, layout="hrrr_mini")
    src = hrrr_mini[0]
    bad = tmp_path / "no_lat.nc"
    for group in (None, "output", "input"):
        xr.open_dataset(src, group=group, engine="h5netcdf").to_netcdf(bad, mode="a" if group else "w", group=group, engine="h5netcdf")
    xr.open_dataset(src, group="invariant", engine="h5netcdf").drop_vars("latitude").to_netcdf(bad, mode="a", group="invariant", engine="h5netcdf")
    with pytest.raises(MissingVariableError, match="latitude"):
        open_dataset(bad)


# ------------------------------------------------------------------------------------------- CWA


@pytest.fixture()
def cwa_store(tmp_path):
    nt, ny, nx = 3, 5, 6
    lat, lon = np.meshgrid(np.linspace(21.0, 26.0, ny), np.linspace(118.0, 123.0, nx), indexing="ij")
    cwb = RNG.normal(size=(nt, 4, ny, nx)).astype("f4")
    era5 = RNG.normal(size=(nt, 3, ny, nx)).astype("f4")
    ds = xr.Dataset(
        {
            "cwb": (("time", "cwb_channel", "south_north", "west_east"), cwb),
            "cwb_variable": ("cwb_channel", ["maximum_radar_reflectivity", "temperature_2m", "eastward_wind_10m", "northward_wind_10m"]),
            "cwb_pressure": ("cwb_channel", np.full(4, np.nan)),
            "cwb_center": ("cwb_channel", np.array([15.0, 290.0, 0.5, 0.2], "f4")),
            "cwb_scale": ("cwb_channel", np.array([15.0, 5.0, 3.0, 3.0], "f4")),
            "cwb_valid": ("time", np.array([1, 1, 0], "i1")),
            "era5": (("time", "era5_channel", "south_north", "west_east"), era5),
            "era5_variable": ("era5_channel", ["temperature", "geopotential_height", "temperature_2m"]),
            "era5_pressure": ("era5_channel", np.array([850.0, 500.0, np.nan])),
            "era5_center": ("era5_channel", np.array([280.0, 55000.0, 290.0], "f4")),
            "era5_scale": ("era5_channel", np.array([5.0, 1500.0, 5.0], "f4")),
            "era5_valid": (("time", "era5_channel"), np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], bool)),
            "XLAT": (("south_north", "west_east"), lat.astype("f4"), {"units": "degree_north"}),
            "XLONG": (("south_north", "west_east"), lon.astype("f4"), {"units": "degree_east"}),
        },
        coords={"time": pd.date_range("2021-09-12", periods=nt, freq="h")},
    )
    path = tmp_path / "2023-01-24-cwb-4years.zarr"
    ds.to_zarr(path, zarr_format=2, consolidated=True)
    return path, ds


def test_cwa_target_and_input(cwa_store):
    path, src = cwa_store
    assert detect_layout(path) == ("cwa", path)
    target = open_dataset(path, part="target")
    assert list(target.data_vars) == ["refc", "t2m", "u10m", "v10m"]
    assert target["t2m"].dims == ("time", "y", "x")
    np.testing.assert_array_equal(target["refc"].values, src["cwb"].values[:, 0])
    np.testing.assert_array_equal(target["lat"].values, src["XLAT"].values)
    assert_cf_latlon(target)
    np.testing.assert_array_equal(target["valid"].values, [True, True, False])
    assert layout_stats(target)["t2m"] == {"mean": 290.0, "std": 5.0}
    assert target["refc"].attrs["units"] == "dBZ"
    source = open_dataset(path, part="input")
    assert list(source.data_vars) == ["t850", "z500", "t2m"]  # geopotential_height holds geopotential
    np.testing.assert_array_equal(source["z500"].values, src["era5"].values[:, 1])
    np.testing.assert_array_equal(source["valid"].values, [True, False, True])


def test_cwa_combined_and_missing_array(cwa_store, tmp_path):
    path, src = cwa_store
    ds = open_dataset(path)
    assert {"t2m", "era5_t2m", "era5_z500", "refc"} <= set(ds.data_vars)
    assert ds["era5_t2m"].dims == ("time", "y", "x")  # same grid: coordinates shared
    assert "era5_valid" in ds.coords and "valid" in ds.coords
    assert np.issubdtype(ds["time"].dtype, np.datetime64)
    bad = tmp_path / "bad.zarr"
    src.drop_vars("XLAT").to_zarr(bad, zarr_format=2, consolidated=True)
    with pytest.raises(MissingVariableError, match="XLAT"):
        open_dataset(bad, layout="cwa")


# ------------------------------------------------------------------------------------- StormCast


@pytest.fixture()
def stormcast(tmp_path):
    root = tmp_path / "store"
    x, y, lat, lon = lcc_grid(6, 7)
    hrrr_channels = ["u10m", "t2m", "refc", "u1", "t2"]
    era5_channels = ["u10", "t850", "z500", "msl"]
    elat, elon = np.arange(45.0, 30.0, -1.0), np.arange(250.0, 280.0, 1.0)
    for year in (2020, 2021):
        t = pd.date_range(f"{year}-06-01", periods=2, freq="h")
        hrrr = xr.Dataset(
            {"HRRR": (("time", "channel", "y", "x"), RNG.normal(size=(2, 5, 6, 7)).astype("f4"))},
            coords={"time": t, "channel": hrrr_channels, "latitude": (("y", "x"), lat), "longitude": (("y", "x"), lon + 360.0)},
        )
        hrrr.to_zarr(root / "hrrr" / "valid" / f"{year}.zarr", zarr_format=2, consolidated=True)
        era5 = xr.Dataset(
            {"data": (("time", "channel", "latitude", "longitude"), RNG.normal(size=(2, 4, elat.size, elon.size)).astype("f4"))},
            coords={"time": t, "channel": era5_channels, "latitude": elat, "longitude": elon},
        )
        era5.to_zarr(root / "era5" / "valid" / f"{year}.zarr", zarr_format=2, consolidated=True)
    inv = xr.Dataset({"HRRR_invariants": (("channel", "y", "x"), RNG.uniform(size=(2, 6, 7)).astype("f4"))}, coords={"channel": ["lsm", "orog"]})
    inv.to_zarr(root / "hrrr" / "invariants.zarr", zarr_format=2, consolidated=True)
    for folder, n in ((root / "hrrr" / "stats", 5), (root / "era5" / "stats", 4)):
        folder.mkdir(parents=True)
        np.save(folder / "means.npy", np.arange(n, dtype=float))
        np.save(folder / "stds.npy", 1.0 + np.arange(n, dtype=float))
    return root, x, y, lat


def test_stormcast_state_grid_mapping(stormcast):
    root, x, y, lat = stormcast
    assert detect_layout(root) == ("stormcast", root)
    ds = open_dataset(root, part="state")
    assert list(ds.data_vars) == ["u10m", "t2m", "refc", "u1", "t2", "lsm", "orog"]  # u1, t2: hybrid levels
    assert ds["u10m"].dims == ("time", "y", "x") and ds.sizes["time"] == 4
    assert ds["lsm"].dims == ("y", "x") and ds["lsm"].attrs["xkmcast_role"] == "invariant"
    np.testing.assert_allclose(ds["x"].values, x, atol=0.5)  # recovered by inverting the projection
    np.testing.assert_allclose(ds["y"].values, y, atol=0.5)
    assert ds["x"].attrs["axis"] == "X" and ds["x"].attrs["units"] == "m"
    assert ds["crs"].attrs["grid_mapping_name"] == "lambert_conformal_conic" and ds["t2m"].attrs["grid_mapping"] == "crs"
    np.testing.assert_allclose(ds["lat"].values, lat)
    assert_cf_latlon(ds)
    assert layout_stats(ds)["refc"] == {"mean": 2.0, "std": 3.0}


def test_stormcast_background_and_years(stormcast):
    root, *_ = stormcast
    bg = open_dataset(root, part="background", years=[2021])
    assert list(bg.data_vars) == ["u10m", "t850", "z500", "msl"]
    assert bg["t850"].dims == ("time", "latitude", "longitude") and bg.sizes["time"] == 2
    assert bg["latitude"].attrs["axis"] == "Y"
    assert_cf_latlon(bg, "latitude", "longitude")
    assert layout_stats(bg)["msl"] == {"mean": 3.0, "std": 4.0}
    both = open_dataset(root)
    assert {"t2m", "era5_t850"} <= set(both.data_vars)
    assert both["era5_t850"].dims == ("time", "era5_latitude", "era5_longitude")
    assert "standard_name" not in both["era5_latitude"].attrs  # the HRRR lat/lon stay the only CF latitude
    assert both["lat"].attrs["standard_name"] == "latitude"
    import shutil

    shutil.rmtree(root / "era5" / "valid" / "2020.zarr")
    with pytest.raises(InvalidDataError, match="years"):
        open_dataset(root, layout="stormcast")


# ------------------------------------------------------------------------------------------- ViT


def write_h5(path, data, **attrs):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("fields", data=data)
        for k, v in attrs.items():
            dset.attrs[k] = v


def test_vit_layout(tmp_path):
    root = tmp_path / "vit"
    a = RNG.normal(size=(1460, 2, 3, 4)).astype("f4")
    b = RNG.normal(size=(1464, 2, 3, 4)).astype("f4")
    write_h5(root / "train" / "2019.h5", a)
    write_h5(root / "train" / "2020.h5", b)
    (root / "stats").mkdir()
    np.save(root / "stats" / "global_means.npy", np.array([1.0, 2.0]).reshape(1, 2, 1, 1))
    np.save(root / "stats" / "global_stds.npy", np.array([3.0, 4.0]).reshape(1, 2, 1, 1))
    assert detect_layout(root) == ("vit", root)
    ds = open_dataset(root, channels=["2t", "t850"])
    assert list(ds.data_vars) == ["t2m", "t850"] and ds["t2m"].dims == ("time", "latitude", "longitude")
    assert ds.sizes["time"] == 1460 + 1464
    times = pd.DatetimeIndex(ds["time"].values)
    assert times[0] == pd.Timestamp("2019-01-01") and times[1] - times[0] == pd.Timedelta(hours=6)
    assert times[1460] == pd.Timestamp("2020-01-01") and times[-1] == pd.Timestamp("2020-12-31T18")
    np.testing.assert_array_equal(ds["t850"].values[1460:], b[:, 1])
    np.testing.assert_array_equal(ds["latitude"].values, [90.0, 0.0, -90.0])
    np.testing.assert_array_equal(ds["longitude"].values, [0.0, 90.0, 180.0, 270.0])
    assert_cf_latlon(ds, "latitude", "longitude")
    assert layout_stats(ds) == {"t2m": {"mean": 1.0, "std": 3.0}, "t850": {"mean": 2.0, "std": 4.0}}


def test_vit_names_from_attrs_and_errors(tmp_path):
    write_h5(tmp_path / "v" / "valid" / "run.h5", np.zeros((2, 2, 4, 4), "f4"), channels=["u10", "v10"])
    ds = open_dataset(tmp_path / "v", layout="vit", split="valid")
    assert list(ds.data_vars) == ["u10m", "v10m"]
    assert "xkmcast_time" in ds.attrs and list(ds["time"].values) == [0, 1]
    np.testing.assert_array_equal(ds["latitude"].values, [90.0, 45.0, 0.0, -45.0])
    (tmp_path / "w" / "train").mkdir(parents=True)
    with h5py.File(tmp_path / "w" / "train" / "x.h5", "w") as f:
        f.create_dataset("other", data=np.zeros(3))
    with pytest.raises(MissingVariableError, match="fields"):
        open_dataset(tmp_path / "w", layout="vit")
    with pytest.raises(InvalidDataError, match="channel names"):
        open_dataset(tmp_path / "v", layout="vit", split="valid", channels=["a"])


# ------------------------------------------------------------------------------- CF, dispatching


def test_cf_netcdf_and_zarr(tmp_path):
    ds = xr.Dataset(
        {"T2": (("time", "lat", "lon"), np.ones((1, 2, 3), "f4"), {"units": "K"})},
        coords={"time": pd.date_range("2024-01-01", periods=1), "lat": [1.0, 2.0], "lon": [3.0, 4.0, 5.0]},
    )
    ds.to_netcdf(tmp_path / "a.nc")
    out = open_dataset(tmp_path / "a.nc")
    assert "t2m" in out and out["t2m"].attrs["units"] == "K" and out["t2m"].attrs["xkmcast_channel"] == "T2"
    assert_cf_latlon(out)
    ds.to_zarr(tmp_path / "b.zarr", zarr_format=2, consolidated=True)
    assert detect_layout(tmp_path / "b.zarr")[0] == "cf"
    assert "t2m" in open_dataset(tmp_path / "b.zarr")


def test_unknown_layout_and_bad_part(tmp_path, cwa_store):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("nothing")
    with pytest.raises(InvalidDataError, match="Unknown dataset layout"):
        open_dataset(tmp_path / "junk")
    with pytest.raises(ConfigError):
        open_dataset(cwa_store[0], part="background")
    with pytest.raises(ConfigError):
        open_dataset(cwa_store[0], layout="grib")


def test_catalog_name_without_hash_refuses(tmp_path, monkeypatch):
    monkeypatch.setenv("XKMCAST_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("XKMCAST_REGISTRY", raising=False)
    with pytest.raises(IntegrityError):
        open_dataset("cwa_taiwan")


@pytest.mark.parametrize(
    ("label", "level", "expected"),
    [("10u", None, "u10m"), ("2t", None, "t2m"), ("temperature", 850.0, "t850"), ("geopotential_height", 500.0, "z500"),
     ("q1000", None, "q1000"), ("u_500", None, "u500"), ("temperature_2m", np.nan, "t2m"), ("mystery", None, "mystery")],
)
def test_canonical_name(label, level, expected):
    assert canonical_name(label, level) == expected


def test_results_feed_find_grid(stormcast, cwa_store):
    """The grid finder used by inference sees one unambiguous grid (HRRR with its CRS; CWA 2-D lat/lon)."""
    from xkmcast.fields.grid import find_grid

    root, x, _, lat = stormcast
    grid = find_grid(open_dataset(root))
    assert grid.dims == ("y", "x") and grid.time_dim == "time" and grid.crs is not None
    np.testing.assert_allclose(grid.lat, lat)
    assert find_grid(open_dataset(cwa_store[0])).shape == (5, 6)


def test_sample_entry_splits_into_input_and_target_parts():
    """The shipped sample holds fine fields and era5_-prefixed coarse ones; parts give each with plain names."""
    import xkmcast

    coarse = xkmcast.open_dataset("sample", part="input")
    fine = xkmcast.open_dataset("sample", part="target")
    whole = xkmcast.open_dataset("sample")
    assert coarse.kmcast.grid.rectilinear and coarse.kmcast.grid.dims == ("latitude", "longitude")
    assert fine.kmcast.grid.dims == ("y", "x") and fine.kmcast.grid.crs is not None
    np.testing.assert_array_equal(coarse.t2m.values, whole.era5_t2m.values)
    assert not any(str(v).startswith("era5_") for v in coarse.data_vars)
    assert "t2m" in fine and "latitude" not in fine.dims
    with pytest.raises(ConfigError, match="no part"):
        xkmcast.open_dataset("sample", part="background")


def test_layout_stats_are_the_data_stats_form_and_survive_split_and_combine():
    from xkmcast.data.layouts import _combine, set_stats, split_combined
    from xkmcast.data.stats import Stats

    fine = xr.Dataset({"tp": (("y", "x"), np.ones((2, 2)))})
    coarse = xr.Dataset({"t2m": (("y", "x"), np.ones((2, 2)))})
    set_stats(fine, Stats({"tp": 0.5}, {"tp": 0.25}, {"tp": 0.1}))  # a log1p variable
    set_stats(coarse, {"t2m": (280.0, 4.0)})
    combined = _combine({"target": fine, "input": coarse}, ("target", "input"))
    assert Stats.from_attrs(combined).to_dict() == {
        "tp": {"mean": 0.5, "std": 0.25, "transform": "log1p", "eps": 0.1},
        "era5_t2m": {"mean": 280.0, "std": 4.0},
    }
    parts = split_combined(combined)
    assert layout_stats(parts["input"]) == {"t2m": {"mean": 280.0, "std": 4.0}}
    assert Stats.from_attrs(parts["target"]).log_eps == {"tp": 0.1}
