"""Tests of xkmcast.fields.plot: figures are rendered to PNG / GIF files and checked as images.

Real data: guam.nc, WRF 0.78 km output around Guam from "Dynamical Downscaled and Projected Climate
for the Pacific Islands - Guam" (creator Chunxi Zhang, University of Hawaii; served by USGS CIDA;
licence "Freely available"), read from ../shared/data (the tests using it skip when it is absent).
Coastlines come from the Natural Earth files shipped in xkmcast/naturalearth (public domain).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.ndimage  # noqa: E402
import xarray as xr  # noqa: E402
from PIL import Image  # noqa: E402

from xkmcast.fields import plot as P  # noqa: E402
from xkmcast.fields.grid import make_lambert_grid, make_latlon_grid  # noqa: E402

from conftest import GUAM
needs_guam = pytest.mark.skipif(not GUAM.exists(), reason=f"shared test data not found at {GUAM}")
RED = "#ff0000"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def red_pixels(img: np.ndarray) -> int:
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return int(((r > 200) & (g < 80) & (b < 80)).sum())


def assert_not_blank(img: np.ndarray) -> None:
    assert img.std() > 20, "the image is (nearly) uniform"


def coloured_regions(img: np.ndarray, min_area: int = 800) -> int:
    """Connected regions of saturated (colour-mapped) pixels: panels and colour bars."""
    saturation = img.max(axis=-1) - img.min(axis=-1)
    labels, n = scipy.ndimage.label(scipy.ndimage.binary_closing(saturation > 40, iterations=2))
    areas = scipy.ndimage.sum(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    return int((areas >= min_area).sum())


def with_field(grid: xr.Dataset, seed=0, name="t2m") -> xr.Dataset:
    """A random 2 m temperature on a coordinates-only grid (2-D lat/lon or 1-D lat, lon axes)."""
    rng = np.random.default_rng(seed)
    dims = grid["lat"].dims if grid["lat"].ndim == 2 else ("lat", "lon")
    values = 290 + rng.normal(size=tuple(grid.sizes[d] for d in dims))
    return grid.assign({name: (dims, values, {"units": "K", "long_name": "2 m temperature"})})


def test_import_does_not_load_cartopy_or_pyplot():
    code = "import sys, xkmcast.fields.plot; print('cartopy' in sys.modules, 'matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_packaged_naturalearth_is_used_unless_the_user_set_a_directory(monkeypatch, tmp_path):
    import cartopy

    for rel in ("physical/ne_50m_coastline.shp", "physical/ne_110m_coastline.shp",
                "cultural/ne_50m_admin_0_boundary_lines_land.shp"):
        assert (P.NATURALEARTH_DIR / "shapefiles" / "natural_earth" / rel).is_file()
    monkeypatch.delenv("CARTOPY_DATA_DIR", raising=False)
    monkeypatch.setitem(cartopy.config, "pre_existing_data_dir", "")
    assert P.use_packaged_naturalearth() == P.NATURALEARTH_DIR
    monkeypatch.setitem(cartopy.config, "pre_existing_data_dir", str(tmp_path))
    assert P.use_packaged_naturalearth() == tmp_path


@needs_guam
def test_guam_map_shows_the_coast_in_the_wrf_lat_lon_grid(tmp_path):
    ds = xr.open_dataset(GUAM)
    png = tmp_path / "guam.png"
    fig = P.map(ds, "T2_present", time=1, coast_color=RED, borders=False, cmap="Greys", path=png)
    img = rgb(png)
    assert_not_blank(img)
    assert red_pixels(img) > 100  # Guam's coastline crosses the domain
    assert type(fig.axes[0].projection).__name__ == "PlateCarree"
    assert fig.axes[1].get_ylabel() == "TEMP at 2 M [K]"  # colour bar labelled with units
    bare = tmp_path / "bare.png"
    P.map(ds, "T2_present", coastlines=False, borders=False, cmap="Greys", path=bare)
    assert red_pixels(rgb(bare)) == 0


@pytest.mark.parametrize("kind", ["lambert", "latlon"])
def test_open_ocean_domain_has_no_coast_and_the_island_domain_has(tmp_path, kind):
    if kind == "lambert":  # CF grid_mapping Lambert conformal, drawn natively in x/y
        ocean = make_lambert_grid(40, 30, 3000.0, 30.0, -150.0)
        island = make_lambert_grid(40, 30, 3000.0, 13.45, 144.8)
    else:
        ocean = make_latlon_grid(np.linspace(30, 31, 20), np.linspace(-151, -150, 25))
        island = make_latlon_grid(np.linspace(13.1, 13.8, 20), np.linspace(144.5, 145.1, 25))
    paths = {}
    for name, grid in (("ocean", ocean), ("island", island)):
        paths[name] = tmp_path / f"{name}.png"
        fig = P.map(with_field(grid), "t2m", coast_color=RED, cmap="Greys", path=paths[name])
        expected = "LambertConformal" if kind == "lambert" else "PlateCarree"
        assert type(fig.axes[0].projection).__name__ == expected
    assert_not_blank(rgb(paths["ocean"]))
    assert red_pixels(rgb(paths["ocean"])) == 0
    assert red_pixels(rgb(paths["island"])) > 100


def ensemble(m=6, nt=3):
    grid = make_lambert_grid(32, 24, 2000.0, 13.45, 144.8)
    rng = np.random.default_rng(1)
    data = 290 + rng.normal(size=(m, nt, 24, 32))
    return grid.assign(
        t2m=(("member", "lead_time", "y", "x"), data, {"units": "K", "long_name": "2 m temperature"})
    ).assign_coords(lead_time=np.arange(nt))


def test_member_panels_share_one_colour_scale(tmp_path):
    ens = ensemble()
    truth = ens["t2m"].isel(member=0) + 3.0  # outside the members' range: the shared scale must include it
    reg = ens["t2m"].mean("member")
    png = tmp_path / "members.png"
    fig = P.members(ens, "t2m", truth=truth, n=4, regression=reg, path=png)
    maps = [ax for ax in fig.axes if hasattr(ax, "projection")]
    assert [ax.get_title() for ax in maps] == ["truth", "regression mean", "member 0", "member 1", "member 2", "member 3"]
    clims = {ax.collections[0].get_clim() for ax in maps}
    assert len(clims) == 1
    vmin, vmax = clims.pop()
    assert vmax == pytest.approx(float(truth.isel(lead_time=0).max()))
    img = rgb(png)
    assert_not_blank(img)
    assert coloured_regions(img) == 6 + 1  # six panels and the colour bar


def test_member_panels_of_precipitation_take_scale_options_and_keep_the_label_inside(tmp_path):
    from matplotlib.colors import LogNorm

    ens = ensemble(m=3, nt=1)
    rain = np.exp(ens["t2m"] - 290.0)
    ens["tp"] = rain.assign_attrs(units="kg m-2", standard_name="precipitation_amount",
                                  long_name="total precipitation over the time step")
    fig = P.members(ens, "tp", n=3, vmin=0.0, vmax=5.0, path=tmp_path / "a.png")
    maps = [ax for ax in fig.axes if hasattr(ax, "projection")]
    assert {ax.collections[0].get_clim() for ax in maps} == {(0.0, 5.0)}
    assert {ax.collections[0].get_cmap().name for ax in maps} == {P.PRECIP_CMAP}
    fig = P.members(ens, "tp", n=2, norm=LogNorm(0.1, 10.0), path=tmp_path / "b.png")
    maps = [ax for ax in fig.axes if hasattr(ax, "projection")]
    assert all(isinstance(ax.collections[0].norm, LogNorm) for ax in maps)
    # a long colour-bar label stays inside the saved figure
    renderer = fig.canvas.get_renderer()
    cbar = [ax for ax in fig.axes if not hasattr(ax, "projection")][0]
    label = cbar.yaxis.label.get_window_extent(renderer)
    assert label.width > 0 and fig.bbox.x0 <= label.x0 and label.x1 <= fig.bbox.x1
    assert fig.bbox.y0 <= label.y0 and label.y1 <= fig.bbox.y1  # a long name is wrapped, not cut
    assert "precipitation" in cbar.get_ylabel()


def test_spectra_plot_is_log_log_with_members_mean_and_truth(tmp_path):
    ens = ensemble(m=3)
    png = tmp_path / "spectra.png"
    fig = P.spectra(ens, "t2m", truth=ens["t2m"].isel(member=0), path=png)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert len(ax.get_lines()) == 3 + 1 + 1 + 1  # members, their mean, truth, the Nyquist marker
    assert "cycles per km" in ax.get_xlabel()
    assert_not_blank(rgb(png))


def test_animation_has_one_frame_per_lead_time(tmp_path):
    ens = ensemble(m=2, nt=3)
    path = P.animate(ens, "t2m", dim="lead_time", path=tmp_path / "rollout.gif", member=0)
    with Image.open(path) as gif:
        assert gif.n_frames == 3
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB")).astype(int))
    assert all(f.std() > 20 for f in frames)
    assert np.abs(frames[0] - frames[1]).mean() > 1.0  # the field changes between frames


def test_saving_figures_leaves_the_backend_and_pyplot_alone(tmp_path):
    """Library calls that write files draw on their own Agg canvas: no backend switch, no pyplot."""
    code = f"""
import sys, matplotlib, numpy as np, torch, xarray as xr
matplotlib.use("svg")  # a user's choice the library must not change
from pathlib import Path
from xkmcast.fields import plot
from xkmcast.fields.grid import make_latlon_grid
from xkmcast.train.logging import save_image
out = Path({str(tmp_path)!r})
g = make_latlon_grid(np.linspace(10, 12, 6), np.linspace(140, 143, 8))
da = xr.DataArray(np.random.default_rng(0).normal(size=(6, 8)), dims=("lat", "lon"), coords=g.coords, name="t2m")
fig = plot.map(da, path=out / "map.png", coastlines=False, borders=False)
plot.spectra(da.rename(lat="y", lon="x").drop_vars(["y", "x"]), dx=2.0, path=out / "spectra.png")
save_image(out / "img.png", torch.rand(2, 6, 8), torch.rand(2, 6, 8), ["a", "b"])
assert type(fig).__name__ in ("Figure", "GeoFigure"), type(fig)
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "MPLBACKEND"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    for name in ("map.png", "spectra.png", "img.png"):
        assert_not_blank(rgb(tmp_path / name))


def test_a_map_title_gives_a_selected_lead_time_in_hours():
    """sel={"lead_time": one year} titles the map "lead_time=8760 h", not the raw nanoseconds."""
    ens = ensemble(m=2, nt=2).assign_coords(lead_time=np.array([0, 365 * 24], dtype="timedelta64[h]"))
    fig = P.map(ens, "t2m", member=0, sel={"lead_time": np.timedelta64(365, "D")})
    title = [ax for ax in fig.axes if hasattr(ax, "projection")][0].get_title()
    assert "lead_time=8760 h" in title and "nanoseconds" not in title and "member 0" in title


def test_a_map_refuses_a_selection_passed_as_a_drawing_keyword():
    """map(ens, "t2m", lead_time=...) names the sel= to write, instead of matplotlib's QuadMesh error."""
    from xkmcast.errors import InvalidDataError

    ens = ensemble(m=2, nt=2).assign_coords(lead_time=np.array([0, 6], dtype="timedelta64[h]"))
    with pytest.raises(InvalidDataError, match=r"sel=\{'lead_time': 1\}"):
        P.map(ens, "t2m", lead_time=1)
    assert P.map(ens, "t2m", sel={"lead_time": np.timedelta64(6, "h")}, cmap="viridis") is not None
