"""xkmcast.data.catalog: the intake catalog and the hash-pinned downloads (served from 127.0.0.1)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from _http import http_server  # noqa: F401  (pytest fixture)

from test_data_archive import write_deb

from xkmcast.data import catalog
from xkmcast.errors import CatalogError, DownloadError, IntegrityError

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["hrrr_mini", "cwa_taiwan", "stageiv_florence", "bcsd_obs_1999", "navy_winds", "mpi_esm_2005", "era5", "hrrr_era5",
         "sample"]
STARS_DEB = "r-cran-stars_0.6-0-4_all.deb"
STAGEIV_NC = "usr/lib/R/site-library/stars/nc/test_stageiv_xyt.nc"
STAGEIV_VAR = "Total_precipitation_surface_1_Hour_Accumulation"
BCSD_NC = "usr/lib/R/site-library/stars/nc/bcsd_obs_1999.nc"
FERRET_DEB = "ferret-datasets_7.6.0-5_all.deb"
NAVY_NC = "usr/share/ferret-vis/data/monthly_navy_winds.cdf"
NCL_DEB = "libncarg-data_6.6.2.dfsg.1-1_all.deb"
MPI_NC = "usr/share/ncarg/data/nug/{}_rectilinear_grid_2D.nc"


def sha256(path: Path) -> str:  # independent of pooch
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture()
def served(tmp_path, http_server, monkeypatch):
    """Files on a local server, a registry pointing at them (via $XKMCAST_REGISTRY) and an empty cache."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_bytes(b"kilometre-scale\n" * 100)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pack/a.txt", "alpha")
        zf.writestr("pack/b.txt", "beta")
    (site / "pack.zip").write_bytes(buf.getvalue())
    with tarfile.open(site / "bundle.tar.gz", "w:gz") as tf:
        data = b"gamma"
        info = tarfile.TarInfo("inner/c.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    server = http_server(site)
    registry = tmp_path / "registry.txt"
    registry.write_text(
        "# test registry\n"
        f"hello.txt {sha256(site / 'hello.txt')} {server.url}/hello.txt\n"
        f"sub/pack.zip {sha256(site / 'pack.zip')} {server.url}/pack.zip\n"
        f"bundle.tar.gz sha256:{sha256(site / 'bundle.tar.gz')} {server.url}/bundle.tar.gz\n"
        f"nohash.txt unknown {server.url}/hello.txt\n"
    )
    cache = tmp_path / "cache"
    monkeypatch.setenv("XKMCAST_REGISTRY", str(registry))
    monkeypatch.setenv("XKMCAST_DATA_DIR", str(cache))
    monkeypatch.delenv("XKMCAST_BASE_URL", raising=False)
    return server, site, cache


# ------------------------------------------------------------------------------------ the catalog


def test_packaged_and_top_level_catalogs_are_identical():
    assert (ROOT / "catalogs" / "xkmcast.yaml").read_bytes() == catalog.CATALOG_PATH.read_bytes()


def test_catalog_list_names_and_descriptions():
    listed = catalog.catalog_list()
    assert [n for n, _ in listed] == NAMES
    assert all(isinstance(d, str) and len(d) > 20 and "\n" not in d for _, d in listed)


def test_open_catalog_is_intake_with_real_locations(tmp_path):
    cat = catalog.open_catalog(data_dir=tmp_path)
    assert sorted(cat) == sorted(NAMES)
    urls = {name: cat[name].reader.kwargs["args"][0].url for name in NAMES if name != "mpi_esm_2005"}
    assert urls["era5"] == "gs://gcp-public-data-arco-era5/ar/full_37-1h-0p25deg-chunk-1.zarr-v3"
    assert cat["era5"].reader.kwargs["args"][0].storage_options == {"token": "anon"}
    assert urls["hrrr_mini"] == f"{tmp_path}/hrrr_mini/hrrr_mini/hrrr_mini_train.nc"
    assert urls["cwa_taiwan"] == f"{tmp_path}/cwa_taiwan/2023-01-24-cwb-4years.zarr"
    assert urls["hrrr_era5"] == f"{tmp_path}/hrrr_era5/hrrr/valid/2021.zarr"
    assert urls["stageiv_florence"] == f"{tmp_path}/{STARS_DEB.removesuffix('.deb')}/{STAGEIV_NC}"
    assert urls["bcsd_obs_1999"] == f"{tmp_path}/{STARS_DEB.removesuffix('.deb')}/{BCSD_NC}"
    assert urls["navy_winds"] == f"{tmp_path}/{FERRET_DEB.removesuffix('.deb')}/{NAVY_NC}"
    assert cat["mpi_esm_2005"].reader.kwargs["args"][0].url == [
        f"{tmp_path}/{NCL_DEB.removesuffix('.deb')}/{MPI_NC.format(v)}" for v in ("tas", "uas", "vas")]
    assert Path(urls["sample"]).resolve() == (catalog.CATALOG_PATH.parent.parent / "sample" / "sample.nc").resolve()


def test_catalog_entry_reads_netcdf4_group(tmp_path):
    """The hrrr_mini entry opens the `output` group of a NetCDF4 file through intake-xarray."""
    folder = tmp_path / "hrrr_mini" / "hrrr_mini"
    folder.mkdir(parents=True)
    path = folder / "hrrr_mini_train.nc"
    xr.Dataset({"time": ("sample", np.arange(2))}).to_netcdf(path, engine="h5netcdf")
    values = np.arange(2 * 4 * 4, dtype="f4").reshape(2, 4, 4)
    xr.Dataset({"10u": (("sample", "y", "x"), values)}).to_netcdf(path, mode="a", group="output", engine="h5netcdf")
    ds = catalog.open_catalog(data_dir=tmp_path)["hrrr_mini"].to_dask()
    np.testing.assert_array_equal(ds["10u"].values, values)


def test_registry_ships_ngc_entries_without_hash():
    entries = catalog.load_registry()
    assert entries["hrrr_mini.zip"].sha256 is None
    assert entries["hrrr_mini.zip"].url.startswith("https://api.ngc.nvidia.com/v2/resources/nvidia/modulus/modulus_datasets-hrrr_mini/")
    assert entries["cwa_taiwan.zip"].url.endswith("/modulus_datasets_cwa/versions/v1/zip")


def test_registry_pins_the_stars_debian_package():
    entry = catalog.load_registry()[STARS_DEB]
    assert entry.sha256 == "a273913b84ce428c8a6f5eb3538776c8bcefb5756d473f0c4c2fd2a914e98a53"
    assert entry.url == f"http://deb.debian.org/debian/pool/main/r/r-cran-stars/{STARS_DEB}"
    assert entry.archive_suffix == ".deb" and entry.stem == STARS_DEB.removesuffix(".deb")


def test_registry_pins_the_ferret_datasets_debian_package():
    entry = catalog.load_registry()[FERRET_DEB]
    assert entry.sha256 == "e5770222647ebfe2ab77b845e07a7e05cb6fed7b12dec9ae287a1f8046031744"
    assert entry.url == f"http://deb.debian.org/debian/pool/main/f/ferret-vis/{FERRET_DEB}"
    assert entry.archive_suffix == ".deb" and entry.stem == FERRET_DEB.removesuffix(".deb")


def test_unknown_hash_is_never_downloaded(served):
    server, _, cache = served
    with pytest.raises(IntegrityError, match="known_hash"):
        catalog.fetch("nohash.txt", progress=False)
    with pytest.raises(IntegrityError):
        catalog.catalog_fetch("hrrr_mini", progress=False)  # the real NGC entry: hash not published
    assert server.requests == [] and not (cache / "nohash.txt").exists()


def test_unknown_names_are_catalog_errors(served):
    with pytest.raises(CatalogError, match="hello.txt"):
        catalog.fetch("nope")
    with pytest.raises(CatalogError, match="nothing to download"):
        catalog.catalog_fetch("era5")
    with pytest.raises(CatalogError):
        catalog.catalog_fetch("nope")


# -------------------------------------------------------------------------------------- downloads


def test_fetch_downloads_checks_hash_then_hits_cache_offline(served):
    server, site, cache = served
    path = catalog.fetch("hello.txt", progress=False)
    assert path == cache / "hello.txt"
    assert sha256(path) == sha256(site / "hello.txt")
    assert server.requests == ["/hello.txt"]
    server.stop()
    again = catalog.fetch("hello.txt", progress=False)  # the server is gone: a request would fail
    assert again == path and again.read_bytes() == (site / "hello.txt").read_bytes()


def test_fetch_progress_bar_and_cache_dir_argument(served, tmp_path):
    path = catalog.fetch("hello.txt", progress=True, cache_dir=tmp_path / "elsewhere")
    assert path == tmp_path / "elsewhere" / "hello.txt" and path.is_file()


def test_tampered_download_is_refused_and_removed(served):
    server, site, cache = served
    (site / "hello.txt").write_bytes(b"tampered")  # the registry still has the original hash
    with pytest.raises(IntegrityError, match="does not match"):
        catalog.fetch("hello.txt", progress=False)
    assert not (cache / "hello.txt").exists()
    assert list(cache.glob("**/*")) == [] or all(p.is_dir() for p in cache.glob("**/*"))


def test_corrupted_cached_file_is_detected_and_removed(served):
    server, site, cache = served
    path = catalog.fetch("hello.txt", progress=False)
    path.write_bytes(b"bit rot")
    server.stop()
    with pytest.raises(IntegrityError, match="cached file"):
        catalog.fetch("hello.txt", progress=False)
    assert not path.exists()


def test_known_hash_override(served):
    server, site, cache = served
    path = catalog.fetch("nohash.txt", progress=False, known_hash="sha256:" + sha256(site / "hello.txt"))
    assert path.read_bytes() == (site / "hello.txt").read_bytes()
    with pytest.raises(IntegrityError):
        catalog.fetch("hello.txt", progress=False, cache_dir=cache / "other", known_hash="0" * 64)


def test_zip_is_unpacked_and_stem_resolves(served):
    _, _, cache = served
    folder = catalog.fetch("sub/pack", progress=False)
    assert folder == cache / "sub" / "pack"
    assert (folder / "pack" / "a.txt").read_text() == "alpha"
    assert (folder / "pack" / "b.txt").read_text() == "beta"


def test_tar_gz_is_unpacked(served):
    _, _, cache = served
    folder = catalog.fetch("bundle.tar.gz", progress=False)
    assert folder == cache / "bundle"
    assert (folder / "inner" / "c.txt").read_text() == "gamma"


def test_base_url_mirror(served, tmp_path, http_server, monkeypatch):
    _, site, cache = served
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "hello.txt").write_bytes((site / "hello.txt").read_bytes())
    server = http_server(mirror)
    monkeypatch.setenv("XKMCAST_BASE_URL", server.url)
    assert catalog.fetch("hello.txt", progress=False).is_file()
    assert server.requests == ["/hello.txt"]


def test_network_failure_is_download_error(served):
    server, _, _ = served
    server.stop()
    with pytest.raises(DownloadError) as info:
        catalog.fetch("hello.txt", progress=False)
    assert not isinstance(info.value, IntegrityError)


def test_malformed_registry(tmp_path, monkeypatch):
    bad = tmp_path / "bad.txt"
    bad.write_text("file.txt notahash http://x\n")
    monkeypatch.setenv("XKMCAST_REGISTRY", str(bad))
    with pytest.raises(CatalogError, match="invalid hash"):
        catalog.load_registry()
    monkeypatch.setenv("XKMCAST_REGISTRY", str(tmp_path / "missing.txt"))
    with pytest.raises(CatalogError, match="does not exist"):
        catalog.load_registry()


def test_cache_dir_not_touched_at_import(tmp_path):
    import subprocess
    import sys

    cache = tmp_path / "never"
    code = "import xkmcast, xkmcast.data; import sys; assert 'pooch' not in sys.modules and 'intake' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={"XKMCAST_DATA_DIR": str(cache), "PATH": "/usr/bin"})
    assert not cache.exists()


def test_sample_entry_opens_offline():
    from xkmcast.data import open_dataset

    if not (catalog.CATALOG_PATH.parent.parent / "sample" / "sample.nc").is_file():
        pytest.skip("xkmcast/sample/sample.nc has not been generated in this checkout")
    raw = catalog.open_catalog()["sample"].to_dask()
    ds = open_dataset("sample")
    assert set(raw.data_vars) == set(ds.data_vars) and ds.sizes == raw.sizes


def test_registry_pooch_cache_variable_mirror_and_missing_url(tmp_path, monkeypatch):
    registry = tmp_path / "r.txt"
    registry.write_text(f"a/x.nc {'ab' * 32}\nb.nc SHA256:{'CD' * 32} http://example.invalid/b\n")
    monkeypatch.setenv("XKMCAST_DATA_DIR", str(tmp_path / "env-cache"))
    monkeypatch.delenv("XKMCAST_BASE_URL", raising=False)
    pup = catalog.registry_pooch(registry)
    assert Path(pup.abspath) == tmp_path / "env-cache" == catalog.default_cache_dir()
    assert Path(catalog.registry_pooch(registry, cache_dir=tmp_path / "arg").abspath) == tmp_path / "arg"
    entries = catalog.load_registry(registry)
    assert entries["b.nc"].sha256 == "cd" * 32 and entries["a/x.nc"].sha256 == "ab" * 32
    assert "hrrr_mini.zip" in entries  # the packaged lines stay
    with pytest.raises(CatalogError, match="no URL"):
        catalog.fetch("a/x.nc", registry=registry, progress=False)
    mirrored = catalog.registry_pooch(registry, base_url="http://127.0.0.1:9/m")
    assert mirrored.get_url("b.nc") == "http://127.0.0.1:9/m/b.nc" and mirrored.get_url("a/x.nc").endswith("/m/a/x.nc")
    assert not (tmp_path / "env-cache").exists()  # nothing created before a download


# ------------------------------------------------------------- stageiv_florence: a NetCDF inside a .deb


def _stageiv_like(path: Path) -> xr.Dataset:
    """A tiny stand-in for stars' test_stageiv_xyt.nc: NetCDF classic, CF-1.4, the real names and attrs."""
    rng = np.random.default_rng(3)
    time = np.datetime64("2018-09-13T19:00", "ns") + np.arange(3) * np.timedelta64(1, "h")
    lat, lon = np.meshgrid(np.linspace(33.0, 36.0, 4), np.linspace(-80.0, -77.0, 3), indexing="ij")
    ds = xr.Dataset(
        {STAGEIV_VAR: (("time", "y", "x"), rng.gamma(0.5, 4.0, (3, 4, 3)).astype("f4"),
                       {"units": "kg m^-2", "standard_name": "precipitation_amount",
                        "long_name": "Total precipitation (1_Hour Accumulation) @ Ground or water surface",
                        "cell_methods": "time: sum (interval: 1 hr)"})},
        coords={"time": ("time", time, {"standard_name": "time"}),
                "lat": (("y", "x"), lat.astype("f4"), {"units": "degrees_north"}),
                "lon": (("y", "x"), lon.astype("f4"), {"units": "degrees_east"})},
        attrs={"Conventions": "CF-1.4", "title": "United States Stage IV Quantitative Precipitation Archive"},
    )
    ds.to_netcdf(path, engine="netcdf4", format="NETCDF3_CLASSIC")
    return ds


def _serve_deb(tmp_path, http_server, monkeypatch, deb_name: str, member: str, payload: bytes):
    """A .deb holding ``payload`` at ``member``, served from 127.0.0.1 and pinned in a $XKMCAST_REGISTRY
    file under the packaged key (so a catalog entry's fetch key resolves to it); an empty cache.
    ``(server, registry, cache)``."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    info = tarfile.TarInfo(f"./{member}")
    info.mode = 0o644
    root = tarfile.TarInfo("./")
    root.type, root.mode = tarfile.DIRTYPE, 0o755
    deb = write_deb(site / deb_name, [(root, None), (info, payload)])
    server = http_server(site)
    registry = tmp_path / "registry.txt"
    registry.write_text(f"{deb_name} {sha256(deb)} {server.url}/{deb_name}\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv("XKMCAST_REGISTRY", str(registry))
    monkeypatch.setenv("XKMCAST_DATA_DIR", str(cache))
    monkeypatch.delenv("XKMCAST_BASE_URL", raising=False)
    return server, registry, cache


@pytest.fixture()
def stars_deb(tmp_path, http_server, monkeypatch):
    """A small r-cran-stars .deb (:func:`_serve_deb`) holding a stand-in of the Stage IV file."""
    nc = tmp_path / "test_stageiv_xyt.nc"
    written = _stageiv_like(nc)
    return (*_serve_deb(tmp_path, http_server, monkeypatch, STARS_DEB, STAGEIV_NC, nc.read_bytes()), written)


def test_stageiv_florence_is_fetched_from_a_deb_and_opened_by_the_catalog(stars_deb):
    server, _, cache, written = stars_deb
    folder = catalog.catalog_fetch("stageiv_florence", progress=False)
    assert folder == cache / STARS_DEB.removesuffix(".deb") and (folder / STAGEIV_NC).is_file()
    assert server.requests == [f"/{STARS_DEB}"]
    ds = catalog.open_catalog()["stageiv_florence"].to_dask()  # the entry's urlpath under the same cache
    np.testing.assert_array_equal(ds[STAGEIV_VAR].values, written[STAGEIV_VAR].values)
    np.testing.assert_array_equal(ds["time"].values, written["time"].values)
    assert ds[STAGEIV_VAR].dims == ("time", "y", "x") and ds["lat"].dims == ("y", "x")
    assert ds[STAGEIV_VAR].attrs["standard_name"] == "precipitation_amount"
    server.stop()
    assert catalog.catalog_fetch("stageiv_florence", progress=False) == folder  # cached: offline
    from xkmcast.data import open_dataset
    from xkmcast.data.layouts import canonical_name

    cf = open_dataset(folder / STAGEIV_NC)  # the cf layout on the unpacked file (named by the variables table)
    np.testing.assert_array_equal(cf[canonical_name(STAGEIV_VAR)].values, written[STAGEIV_VAR].values)
    assert cf["lat"].attrs["standard_name"] == "latitude"


def test_open_dataset_by_name_gives_tp(stars_deb):
    from xkmcast.data import open_dataset

    _, _, _, written = stars_deb
    ds = open_dataset("stageiv_florence", progress=False)
    np.testing.assert_array_equal(ds["tp"].values, written[STAGEIV_VAR].values)


def test_stageiv_florence_with_a_wrong_hash_is_refused(stars_deb):
    server, registry, cache, _ = stars_deb
    registry.write_text(f"{STARS_DEB} {'0' * 64} {server.url}/{STARS_DEB}\n")
    with pytest.raises(IntegrityError, match="does not match"):
        catalog.catalog_fetch("stageiv_florence", progress=False)
    assert server.requests == [f"/{STARS_DEB}"]
    assert not (cache / STARS_DEB).exists() and not (cache / STARS_DEB.removesuffix(".deb")).exists()


def test_hash_pinned_deb_with_a_traversal_member_is_refused(stars_deb, tmp_path):
    server, registry, cache, _ = stars_deb
    evil = tarfile.TarInfo("../evil")
    evil.mode = 0o644
    site = tmp_path / "site"
    deb = write_deb(site / STARS_DEB, [(evil, b"pwned")])  # replaces the served file, re-pinned
    registry.write_text(f"{STARS_DEB} {sha256(deb)} {server.url}/{STARS_DEB}\n")
    with pytest.raises(IntegrityError, match="'..'"):  # UnsafeArchiveError is an IntegrityError
        catalog.catalog_fetch("stageiv_florence", progress=False)
    assert not (cache / STARS_DEB.removesuffix(".deb")).exists()
    assert not (cache / "evil").exists() and not (tmp_path / "evil").exists()


# ------------------------------------------------------------- bcsd_obs_1999: land-only observations in a .deb


def test_bcsd_obs_are_fetched_from_a_deb_as_tp_and_t2m_with_their_units_fixed(tmp_path, http_server, monkeypatch):
    """A stand-in of stars' bcsd_obs_1999.nc (NetCDF4, the real names and attrs: pr in "mm/m", tas in
    "C", no standard_names, NaN over the sea): opened by name it is tp in kg m-2 and t2m in K, NaN kept."""
    rng = np.random.default_rng(4)
    pr = rng.gamma(2.0, 40.0, (3, 4, 5)).astype("f4")
    tas = rng.normal(15.0, 8.0, (3, 4, 5)).astype("f4")
    pr[:, :, -2:], tas[:, :, -2:] = np.nan, np.nan  # the Atlantic
    raw = xr.Dataset(
        {"pr": (("time", "latitude", "longitude"), pr, {"long_name": "monthly_sum_pr", "units": "mm/m", "name": "pr"}),
         "tas": (("time", "latitude", "longitude"), tas, {"long_name": "monthly_avg_tas", "units": "C", "name": "tas"})},
        coords={"time": ("time", np.array(["1999-01-31", "1999-02-28", "1999-03-31"], "datetime64[ns]"),
                         {"standard_name": "time"}),
                "latitude": ("latitude", np.linspace(33.0625, 33.4375, 4), {"standard_name": "latitude",
                                                                           "units": "degrees_north"}),
                "longitude": ("longitude", np.linspace(-84.9375, -84.4375, 5), {"standard_name": "longitude",
                                                                               "units": "degrees_east"})},
        attrs={"Conventions": "CF-1.0", "title": "Monthly Gridded Meteorological Observations"})
    nc = tmp_path / "bcsd_obs_1999.nc"
    raw.to_netcdf(nc, engine="netcdf4")
    _serve_deb(tmp_path, http_server, monkeypatch, STARS_DEB, BCSD_NC, nc.read_bytes())
    from xkmcast.data import open_dataset
    from xkmcast.fields.variables import select_variables

    ds = open_dataset("bcsd_obs_1999", progress=False)
    assert ds["tp"].attrs["units"] == "mm" and ds["tp"].attrs["xkmcast_channel"] == "pr"
    got = select_variables(ds, ["tp", "t2m"])  # canonical units, as prepare reads them
    np.testing.assert_array_equal(got["tp"].values, pr)
    np.testing.assert_allclose(got["t2m"].values, tas + 273.15, rtol=1e-6)
    assert got["tp"].attrs["units"] == "kg m-2" and got["t2m"].attrs["units"] == "K"
    # the file as it is: its units are refused, naming the file's variable
    from xkmcast.errors import UnitError

    with pytest.raises(UnitError, match="Variable 'pr' has unknown units"):
        select_variables(open_dataset(nc), ["tp"])


# ------------------------------------------------------------- navy_winds: COARDS NetCDF inside a .deb


def _navy_like(path: Path) -> xr.Dataset:
    """A tiny stand-in for Ferret's monthly_navy_winds.cdf: NetCDF classic, COARDS, the real names,
    units and axes (hours since 1980-01-14 14:00, latitude ascending with the poles, longitude past 360)."""
    rng = np.random.default_rng(5)
    lat, lon = np.arange(-90.0, 90.1, 45.0), np.arange(20.0, 380.0, 90.0)
    wind = {"units": "M/S", "history": "From monthly_navy_winds"}
    ds = xr.Dataset(
        {"UWND": (("TIME", "FNOCY", "FNOCX"), rng.normal(0, 5, (3, 5, 4)).astype("f4"), {**wind, "long_name": "ZONAL WIND"}),
         "VWND": (("TIME", "FNOCY", "FNOCX"), rng.normal(0, 5, (3, 5, 4)).astype("f4"),
                  {**wind, "long_name": "MERIDIONAL WIND"})},
        coords={"TIME": ("TIME", [17598.0, 18328.5, 19059.0], {"units": "hour since 1980-01-14 14:00:00"}),
                "FNOCY": ("FNOCY", lat, {"units": "degrees_north"}), "FNOCX": ("FNOCX", lon, {"units": "degrees_east"})},
        attrs={"history": "FERRET V4.45 (GUI) 22-May-97"},
    )
    ds.to_netcdf(path, engine="netcdf4", format="NETCDF3_CLASSIC")
    return ds


def test_navy_winds_are_fetched_from_a_deb_and_opened_as_cf(tmp_path, http_server, monkeypatch):
    import cf_xarray  # noqa: F401

    from xkmcast.data import open_dataset
    from xkmcast.fields.variables import normalise_units

    nc = tmp_path / "monthly_navy_winds.cdf"
    written = _navy_like(nc)
    server, _, cache = _serve_deb(tmp_path, http_server, monkeypatch, FERRET_DEB, NAVY_NC, nc.read_bytes())
    folder = catalog.catalog_fetch("navy_winds", progress=False)
    assert folder == cache / FERRET_DEB.removesuffix(".deb") and (folder / NAVY_NC).is_file()
    assert server.requests == [f"/{FERRET_DEB}"]
    ds = open_dataset("navy_winds", progress=False)
    np.testing.assert_array_equal(ds["UWND"].values, written["UWND"].values)
    assert str(ds["TIME"].values[0])[:16] == "1982-01-16T20:00"  # 17598 h after 1980-01-14T14:00 (the real first value)
    assert ds.cf["latitude"].name == "FNOCY" and ds.cf["longitude"].name == "FNOCX"
    assert normalise_units(ds["VWND"].attrs["units"]) == "m s-1"


# ----------------------------------------------- mpi_esm_2005: three CF files inside NCL's data .deb
def test_mpi_esm_monthly_means_are_fetched_from_a_deb_and_merged(tmp_path, http_server, monkeypatch):
    """Stand-ins of NCL's nug/{tas,uas,vas}_rectilinear_grid_2D.nc (CMOR names, units, Gaussian-like
    latitudes, "days since 1850-01-01") in a .deb that also holds the package's inner symbolic links:
    fetched, unpacked (the links left out), opened as one CF dataset whose tas is t2m (renamed)."""
    import cf_xarray  # noqa: F401

    from xkmcast.data import open_dataset
    from xkmcast.fields.variables import find_variable

    from test_data_archive import _dir, _file, _special

    rng = np.random.default_rng(7)
    lat, lon = np.array([-60.0, -20.5, 20.5, 60.0]), np.arange(0.0, 360.0, 90.0)
    coords = {"time": ("time", [56628.5, 56658.0], {"units": "days since 1850-01-01 00:00:00", "calendar": "proleptic_gregorian"}),
              "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
              "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"})}
    names = {"tas": ("air_temperature", "K", 280.0), "uas": ("eastward_wind", "m s-1", 0.0),
             "vas": ("northward_wind", "m s-1", 0.0)}
    members, written = [_dir("./")], {}
    for v, (standard, units, mean) in names.items():
        values = (mean + rng.normal(0, 3, (2, 4, 4))).astype("f4")
        ds = xr.Dataset({v: (("time", "lat", "lon"), values, {"standard_name": standard, "units": units})}, coords=coords)
        nc = tmp_path / f"{v}.nc"
        ds.to_netcdf(nc, engine="netcdf4", format="NETCDF3_CLASSIC")
        members.append(_file(f"./{MPI_NC.format(v)}", nc.read_bytes()))
        written[v] = values
    members += [_special("./usr/lib/ncarg", tarfile.SYMTYPE, "../share/ncarg"),
                _special("./usr/share/ncarg/lib/ncarg", tarfile.SYMTYPE, "..")]
    site = tmp_path / "site"
    site.mkdir()
    deb = write_deb(site / NCL_DEB, members)
    server = http_server(site)
    registry = tmp_path / "registry.txt"
    registry.write_text(f"{NCL_DEB} {sha256(deb)} {server.url}/{NCL_DEB}\n")
    monkeypatch.setenv("XKMCAST_REGISTRY", str(registry))
    monkeypatch.setenv("XKMCAST_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XKMCAST_BASE_URL", raising=False)
    ds = open_dataset("mpi_esm_2005", progress=False)
    assert server.requests == [f"/{NCL_DEB}"]
    for v, values in written.items():  # CMOR's names are the canonical ones' aliases: renamed
        canonical = {"tas": "t2m", "uas": "u10m", "vas": "v10m"}[v]
        np.testing.assert_array_equal(ds[canonical].values, values)
        assert ds[canonical].attrs["xkmcast_channel"] == v
    assert str(ds["time"].values[0])[:16] == "2005-01-16T12:00"  # 56628.5 days after 1850-01-01 (the real first value)
    assert ds.cf["latitude"].name == "lat" and find_variable(ds, "t2m") == "t2m"
    assert not (tmp_path / "cache" / NCL_DEB.removesuffix(".deb") / "usr/lib/ncarg").exists()
