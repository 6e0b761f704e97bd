"""Tests of xkmcast.fields.metrics / xkmcast.fields.spectra against analytic cases and second libraries.

References: closed-form CRPS of a Gaussian, scoringrules (estimators "nrg", "qd", "int" = plain,
"fair", "pwm" = fair), xskillscore (crps_ensemble, rmse, mae, rank_histogram), scipy.signal.periodogram,
Parseval's identity, a direct circular autocorrelation, an AR(1) process of known correlation length.
"""

from __future__ import annotations

import math

import dask
import numpy as np
import pytest
import scipy.signal
import scipy.stats
import xarray as xr

from xkmcast.fields import metrics as M
from xkmcast.errors import CoordinateError, InvalidDataError

from conftest import GUAM


def ensemble(seed=0, m=7, shape=(4, 6, 8), spread=1.0, calibrated=True):
    """Members and truth; calibrated: truth and members are exchangeable draws around a random centre."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=shape) * 3.0
    members = centre + spread * rng.normal(size=(m, *shape))
    truth = centre + (1.0 if calibrated else 3.0) * rng.normal(size=shape)
    dims = ("time", "y", "x")
    coords = {
        "time": np.arange(shape[0]),
        "y": ("y", np.arange(shape[1]) * 2000.0, {"units": "m"}),
        "x": ("x", np.arange(shape[2]) * 2000.0, {"units": "m"}),
    }
    f = xr.DataArray(members, dims=("member", *dims), coords=coords, attrs={"units": "K"}, name="t2m")
    y = xr.DataArray(truth, dims=dims, coords=coords, attrs={"units": "K"}, name="t2m")
    return f, y


class CountingScheduler:
    """A dask scheduler that counts how often it is asked to compute."""

    def __init__(self):
        self.calls = 0

    def __call__(self, dsk, keys, **kwargs):
        self.calls += 1
        return dask.get(dsk, keys, **kwargs)


# --------------------------------------------------------------------------------------------- CRPS


def test_crps_of_one_member_is_the_absolute_error():
    f, y = ensemble(m=1)
    np.testing.assert_allclose(M.crps(f, y).values, np.abs(f.isel(member=0) - y).mean().values, rtol=1e-12)
    # a forecast without member dim is a one-member ensemble
    np.testing.assert_allclose(M.crps(f.isel(member=0), y).values, M.mae(f.isel(member=0), y).values, rtol=1e-12)


def test_crps_of_large_gaussian_ensemble_matches_closed_form():
    rng = np.random.default_rng(3)
    mu, sigma, m = 1.5, 2.0, 20000
    ys = np.array([-3.0, 0.0, 1.5, 2.2, 6.0])
    members = mu + sigma * rng.standard_normal((ys.size, m))
    f = xr.DataArray(members, dims=("point", "member"))
    y = xr.DataArray(ys, dims="point")
    z = (ys - mu) / sigma
    exact = sigma * (z * (2 * scipy.stats.norm.cdf(z) - 1) + 2 * scipy.stats.norm.pdf(z) - 1 / math.sqrt(math.pi))
    for fair in (False, True):
        got = M.crps(f, y, dim=[], fair=fair).values
        np.testing.assert_allclose(got, exact, atol=0.03 * sigma)


@pytest.mark.parametrize("m", [2, 5, 16])
def test_crps_agrees_with_scoringrules(m):
    sr = pytest.importorskip("scoringrules", reason="scoringrules is a test extra")
    f, y = ensemble(seed=m, m=m)
    fct = f.transpose(..., "member").values
    plain = M.crps(f, y, dim=[]).transpose(*y.dims).values
    fair = M.crps(f, y, dim=[], fair=True).transpose(*y.dims).values
    for est in ("nrg", "qd", "int"):
        ref = sr.crps_ensemble(y.values, fct, estimator=est, backend="numpy")
        assert np.abs(plain - ref).max() < 1e-10, est
    for est in ("fair", "pwm"):
        ref = sr.crps_ensemble(y.values, fct, estimator=est, backend="numpy")
        assert np.abs(fair - ref).max() < 1e-10, est


def test_crps_is_accurate_for_large_offsets():
    sr = pytest.importorskip("scoringrules", reason="scoringrules is a test extra")
    f, y = ensemble(seed=4, m=10)
    f, y = f + 290.0, y + 290.0  # kelvin-like values
    ref = sr.crps_ensemble(y.values, f.transpose(..., "member").values, estimator="nrg", backend="numpy")
    assert np.abs(M.crps(f, y, dim=[]).transpose(*y.dims).values - ref).max() < 1e-10


def test_crps_rmse_mae_agree_with_xskillscore_with_and_without_weights():
    xs = pytest.importorskip("xskillscore", reason="xskillscore is a test extra")
    f, y = ensemble(seed=5, m=6)
    w = xr.DataArray(np.cos(np.linspace(0.1, 1.2, y.sizes["y"])), dims="y")
    mean = f.mean("member")
    for dim in (None, ["y", "x"], "x"):
        xdim = dim if dim is not None else list(y.dims)
        pairs = [
            (M.crps(f, y, dim=dim), xs.crps_ensemble(y, f, dim=xdim)),
            (M.rmse(mean, y, dim=dim), xs.rmse(mean, y, dim=xdim)),
            (M.mae(mean, y, dim=dim), xs.mae(mean, y, dim=xdim)),
            (M.mae(f, y, dim=dim), xs.mae(f, y, dim=xdim)),  # one score per member
        ]
        for ours, ref in pairs:
            ours, ref = xr.align(ours, ref, join="exact")
            assert np.abs(ours - ref.transpose(*ours.dims)).max() < 1e-10
    wdims = ["y", "x"]
    w = w.broadcast_like(y.isel(time=0, drop=True))  # xskillscore wants weights over all reduced dims
    assert np.abs(M.crps(f, y, dim=wdims, weights=w) - xs.crps_ensemble(y, f, dim=wdims, weights=w)).max() < 1e-10
    assert np.abs(M.rmse(mean, y, dim=wdims, weights=w) - xs.rmse(mean, y, dim=wdims, weights=w)).max() < 1e-10


def test_deterministic_scores_of_a_constant_offset():
    f, y = ensemble()
    off = y + 2.0
    assert float(M.bias(off, y)) == pytest.approx(2.0)
    assert float(M.mae(off, y)) == pytest.approx(2.0)
    assert float(M.rmse(off, y)) == pytest.approx(2.0)
    assert M.rmse(off, y).attrs["units"] == "K"


# --------------------------------------------------------------------------------------------- dims and errors


def test_dims_are_reduced_as_named_and_the_rest_kept():
    f, y = ensemble()
    assert M.crps(f, y).dims == ()
    assert M.crps(f, y, dim=["y", "x"]).dims == ("time",)
    assert set(M.mae(f, y).dims) == {"member"}
    assert M.spread_skill(f, y, dim="x").sizes == {"time": 4, "y": 6}
    assert M.rank_histogram(f, y, dim=["y", "x"]).sizes == {"time": 4, "rank": 8}


def test_bad_dims_coordinates_and_truth_raise():
    f, y = ensemble()
    with pytest.raises(CoordinateError, match="lead_time"):
        M.crps(f, y, dim="lead_time")
    with pytest.raises(CoordinateError):
        M.crps(f, y, dim=["member"])
    with pytest.raises(CoordinateError, match="truth.sel"):
        M.rmse(f, y.assign_coords(time=y.time + 10))
    with pytest.raises(InvalidDataError):
        M.crps(f, f)
    with pytest.raises(InvalidDataError):
        M.spread(f.isel(member=[0]))
    with pytest.raises(InvalidDataError):
        M.crps(f.isel(member=[0]), y, fair=True)


def test_dataset_in_dataset_out_per_variable():
    f, y = ensemble()
    fd = xr.Dataset({"t2m": f, "u10m": (f * 0.5).assign_attrs(units="m s-1")})
    yd = xr.Dataset({"t2m": y, "u10m": (y * 0.5).assign_attrs(units="m s-1")})
    out = M.crps(fd, yd, dim=["y", "x"])
    assert isinstance(out, xr.Dataset) and set(out.data_vars) == {"t2m", "u10m"}
    xr.testing.assert_allclose(out["t2m"], M.crps(f, y, dim=["y", "x"]))
    np.testing.assert_allclose(out["u10m"], 0.5 * out["t2m"], rtol=1e-12)
    assert out["u10m"].attrs["units"] == "m s-1"


def test_nan_points_are_skipped():
    f, y = ensemble()
    y2 = y.copy()
    y2[0, 0, 0] = np.nan
    mask = y2.notnull()
    expected = M.crps(f, y, dim=[]).where(mask).mean()
    np.testing.assert_allclose(M.crps(f, y2), expected, rtol=1e-12)
    assert int(M.rank_histogram(f, y2).sum()) == y.size - 1


# --------------------------------------------------------------------------------------------- calibration


def test_spread_skill_is_about_one_for_a_calibrated_ensemble_and_not_otherwise():
    f, y = ensemble(seed=11, m=5, shape=(40, 30, 30))
    ssr = float(M.spread_skill(f, y))
    assert abs(ssr - 1.0) < 0.03
    f2, y2 = ensemble(seed=11, m=5, shape=(40, 30, 30), calibrated=False)
    assert float(M.spread_skill(f2, y2)) < 0.5
    # spread: sqrt of the mean unbiased member variance, against numpy
    np.testing.assert_allclose(float(M.spread(f)), np.sqrt(np.var(f.values, axis=0, ddof=1).mean()), rtol=1e-12)


def test_spread_skill_is_nan_at_lead_zero_not_a_ratio_of_round_off():
    """Members equal to the truth up to float32 round-off (a forecast at lead 0) have no skill to
    compare the spread with: NaN there, while the other lead keeps its ratio."""
    rng = np.random.default_rng(3)
    truth = xr.DataArray(280 + rng.normal(size=(2, 8, 9)), dims=("lead", "y", "x"))
    members = np.stack([truth.values.astype(np.float32).astype(float) * (1 + 1e-7 * rng.normal(size=truth.shape))
                        for _ in range(4)])
    members[:, 1] = truth.values[1] + rng.normal(size=(4, 8, 9))  # lead 1: a real error
    f = xr.DataArray(members, dims=("member", "lead", "y", "x"))
    ssr = M.spread_skill(f, truth, dim=["y", "x"])
    assert np.isnan(float(ssr.isel(lead=0)))
    assert 0.3 < float(ssr.isel(lead=1)) < 3


def test_rank_histogram_is_flat_for_a_calibrated_ensemble_and_agrees_with_xskillscore():
    f, y = ensemble(seed=12, m=9, shape=(20, 20, 25))
    hist = M.rank_histogram(f, y)
    assert hist.sizes["rank"] == 10 and int(hist.sum()) == y.size
    assert scipy.stats.chisquare(hist.values).pvalue > 0.01
    f2, y2 = ensemble(seed=12, m=9, shape=(20, 20, 25), calibrated=False)
    assert scipy.stats.chisquare(M.rank_histogram(f2, y2).values).pvalue < 1e-6  # U-shaped
    xs = pytest.importorskip("xskillscore", reason="xskillscore is a test extra")
    ref = xs.rank_histogram(y, f, dim=["time", "y", "x"])
    np.testing.assert_array_equal(hist.values, ref.values)  # no ties in continuous data: exact


def test_rank_histogram_breaks_ties_at_random():
    rng = np.random.default_rng(0)
    y = xr.DataArray(rng.integers(0, 3, size=4000).astype(float), dims="point")
    f = xr.DataArray(rng.integers(0, 3, size=(4000, 4)).astype(float), dims=("point", "member"))
    hist = M.rank_histogram(f, y, seed=1)
    assert scipy.stats.chisquare(hist.values).pvalue > 0.01
    np.testing.assert_array_equal(hist.values, M.rank_histogram(f, y, seed=1).values)  # reproducible


# --------------------------------------------------------------------------------------------- dask


def test_dask_input_stays_lazy_and_gives_the_same_numbers():
    f, y = ensemble(seed=8, m=6, shape=(4, 16, 16))
    fl, yl = f.chunk({"time": 1, "member": 3}), y.chunk({"time": 1})
    counter = CountingScheduler()
    with dask.config.set(scheduler=counter):
        lazy = {
            "crps": M.crps(fl, yl, dim=["y", "x"]),
            "fair": M.crps(fl, yl, dim=["y", "x"], fair=True),
            "rmse": M.rmse(fl.mean("member"), yl, dim=["y", "x"]),
            "spread": M.spread(fl, yl, dim=["y", "x"]),
            "ssr": M.spread_skill(fl, yl, dim=["y", "x"]),
            "rank": M.rank_histogram(fl, yl, dim=["y", "x"]),
            "spec": M.power_spectrum(yl, dim=[]),
            "pgram": M.periodogram(fl),
        }
        assert counter.calls == 0
        assert all(v.chunks is not None for v in lazy.values())
    eager = {
        "crps": M.crps(f, y, dim=["y", "x"]),
        "fair": M.crps(f, y, dim=["y", "x"], fair=True),
        "rmse": M.rmse(f.mean("member"), y, dim=["y", "x"]),
        "spread": M.spread(f, y, dim=["y", "x"]),
        "ssr": M.spread_skill(f, y, dim=["y", "x"]),
        "rank": M.rank_histogram(f, y, dim=["y", "x"]),
        "spec": M.power_spectrum(y, dim=[]),
        "pgram": M.periodogram(f),
    }
    for name, value in lazy.items():
        np.testing.assert_allclose(value.compute().values, eager[name].values, rtol=1e-12, err_msg=name)


# --------------------------------------------------------------------------------------------- spectra


def field(values, dx_m=2000.0):
    ny, nx = values.shape[-2:]
    return xr.DataArray(
        values,
        dims=("y", "x") if values.ndim == 2 else ("time", "y", "x"),
        coords={"x": ("x", np.arange(nx) * dx_m, {"units": "m"}), "y": ("y", np.arange(ny) * dx_m, {"units": "m"})},
        attrs={"units": "K"},
    )


def test_spectrum_of_a_sine_peaks_at_its_wavenumber_in_cycles_per_km():
    ny, nx, d = 32, 48, 2.0
    for cycles, axis in ((6, "x"), (5, "y")):
        n = nx if axis == "x" else ny
        k0 = cycles / (n * d)  # cycles per km
        coord = np.arange(n) * d
        wave = np.sin(2 * np.pi * k0 * coord)
        values = wave[None, :] * np.ones((ny, 1)) if axis == "x" else wave[:, None] * np.ones((1, nx))
        spec = M.power_spectrum(field(values + 280.0))
        peak = float(spec.wavenumber[int(np.argmax(spec.values))])
        assert abs(peak - k0) <= spec.attrs["dk"] / 2
        if axis == "x":
            pg = M.periodogram(field(values))
            assert float(pg.frequency[int(np.argmax(pg.values))]) == pytest.approx(k0)


def test_parseval_for_both_spectra():
    rng = np.random.default_rng(2)
    f = field(rng.normal(size=(3, 20, 30)) + 5.0)
    # the radial spectrum drops the corners beyond Nyquist: exact for a field band-limited to it
    y, x = np.meshgrid(np.arange(20) * 2.0, np.arange(30) * 2.0, indexing="ij")
    waves = [(ky / 40.0, kx / 60.0) for ky in range(-8, 9) for kx in range(0, 13) if np.hypot(ky / 40, kx / 60) < 0.24]
    band = sum(rng.normal() * np.cos(2 * np.pi * (a * y + b * x) + rng.uniform(0, 6.3)) for a, b in waves)
    g = field(np.stack([band, 2 * band, band**0]) + 5.0)
    spec = M.power_spectrum(g, dim=[])
    assert float(spec.wavenumber[-1]) <= spec.attrs["nyquist"] < float(spec.wavenumber[-1]) + spec.attrs["dk"]
    variance = ((g - g.mean(["y", "x"])) ** 2).mean(["y", "x"])
    np.testing.assert_allclose((spec * spec.attrs["dk"]).sum("wavenumber"), variance, rtol=1e-12, atol=1e-20)
    white = M.power_spectrum(f, dim=[])  # white noise: the corners hold about 1 - pi/4 of its power
    share = (white * white.attrs["dk"]).sum("wavenumber") / ((f - f.mean(["y", "x"])) ** 2).mean(["y", "x"])
    assert ((share > 0.6) & (share < 0.95)).all()
    pg = M.periodogram(f, dim=[])
    df = 1.0 / (f.sizes["x"] * pg.attrs["dx_km"])
    np.testing.assert_allclose((pg * df).sum("frequency"), f.var("x"), rtol=1e-12)  # per row


def test_periodogram_matches_scipy_and_the_recipe_average():
    rng = np.random.default_rng(3)
    for nx in (30, 31):
        f = field(rng.normal(size=(2, 10, nx)), dx_m=3000.0)
        freqs, ref = scipy.signal.periodogram(f.values, fs=1 / 3.0, axis=-1)
        pg = M.periodogram(f)
        np.testing.assert_allclose(pg.frequency, freqs, rtol=1e-12)
        np.testing.assert_allclose(pg.values, ref.mean(axis=(0, 1)), rtol=1e-10, atol=1e-14)


def test_spacing_from_coordinates_equals_explicit_dx():
    rng = np.random.default_rng(4)
    f = field(rng.normal(size=(16, 24)), dx_m=2500.0)
    a = M.power_spectrum(f)
    b = M.power_spectrum(f.drop_vars(["x", "y"]), dx=2.5)
    xr.testing.assert_allclose(a, b)
    km = f.assign_coords(x=("x", f.x.values / 1000, {"units": "km"}), y=("y", f.y.values / 1000, {"units": "km"}))
    xr.testing.assert_allclose(a, M.power_spectrum(km))


def ar1_field(rng, length_km, d, shape):
    """Rows of an AR(1) process along x with correlation exp(-lag / length_km)."""
    phi = math.exp(-d / length_km)
    noise = rng.normal(size=shape)
    out = np.empty(shape)
    out[..., 0] = noise[..., 0]
    for i in range(1, shape[-1]):
        out[..., i] = phi * out[..., i - 1] + math.sqrt(1 - phi**2) * noise[..., i]
    return out


def test_autocorrelation_is_the_circular_autocorrelation_of_the_rows():
    rng = np.random.default_rng(5)
    f = field(rng.normal(size=(12, 40)))
    acf = M.autocorrelation(M.periodogram(f))
    x = f.values - f.values.mean(axis=-1, keepdims=True)
    direct = np.array([(x * np.roll(x, -lag, axis=-1)).mean() for lag in range(21)]) / (x * x).mean()
    np.testing.assert_allclose(acf.values, direct, atol=1e-12)
    np.testing.assert_allclose(acf.lag, np.arange(21) * 2.0)


def test_decorrelation_length_and_patch_size_of_an_ar1_field():
    rng = np.random.default_rng(6)
    d, length = 2.0, 10.0  # km
    values = ar1_field(rng, length, d, (400, 256))
    f = field(values, dx_m=d * 1000)
    acf = M.autocorrelation(M.periodogram(f))
    got = float(M.decorrelation_length(acf))
    assert got == pytest.approx(length, rel=0.1)
    assert float(M.decorrelation_length(acf, threshold=0.5)) == pytest.approx(length * math.log(2), rel=0.1)
    # x: 3 lengths = 15 px -> 16; y has no correlation -> the minimum, 16
    assert M.suggest_patch_size(f) == (16, 16)
    assert M.suggest_patch_size(f, n_lengths=8) == (16, 48)  # 8 * ~10 km / 2 km = ~40 px -> 48
    white = field(rng.normal(size=(20, 24)))
    assert M.suggest_patch_size(white, n_lengths=3) == (16, 16)
    smooth = field(np.ones((20, 24)) * np.linspace(0, 1, 24) ** 2)  # never decorrelates: whole domain
    assert M.suggest_patch_size(smooth) == (16, 16)


def test_patch_size_of_a_dataset_is_the_largest_per_axis():
    """One recommendation for several variables: per axis the largest of the variables' sizes."""
    rng = np.random.default_rng(7)
    short = field(ar1_field(rng, 10.0, 2.0, (400, 256)), dx_m=2000.0)  # ~10 km along x
    long_ = field(ar1_field(rng, 30.0, 2.0, (400, 256)), dx_m=2000.0)  # ~30 km along x
    a, b = M.suggest_patch_size(short), M.suggest_patch_size(long_)
    assert a[1] < b[1]  # the two variables really disagree
    ds = xr.Dataset({"short": short, "long": long_})
    assert M.suggest_patch_size(ds) == (max(a[0], b[0]), max(a[1], b[1]))
    with pytest.raises(InvalidDataError):
        M.suggest_patch_size(xr.Dataset({"scalar": ((), 1.0)}))


@pytest.mark.skipif(not GUAM.exists(), reason=f"shared test data not found at {GUAM}")
def test_spectrum_of_wrf_guam_uses_the_great_circle_spacing():
    """guam.nc: WRF 0.8 km downscaling around Guam (Chunxi Zhang, University of Hawaii; USGS CIDA;
    "Freely available")."""
    ds = xr.open_dataset(GUAM)
    spec = M.power_spectrum(ds["T2_present"])
    assert spec.attrs["dx_km"] == pytest.approx(0.78, abs=0.02)
    assert spec.attrs["dy_km"] == pytest.approx(0.78, abs=0.02)
    t = ds["T2_present"]
    variance = ((t - t.mean(["south_north", "west_east"])) ** 2).mean(["south_north", "west_east"]).mean()
    np.testing.assert_allclose(float((spec * spec.attrs["dk"]).sum()), float(variance), rtol=1e-2)  # less the corners
    ny, nx = M.suggest_patch_size(t)
    assert ny % 16 == 0 and nx % 16 == 0 and 16 <= ny <= 64 and 16 <= nx <= 48


def _blockiness_loop(f: np.ndarray, period: int) -> float:
    """Seam / non-seam mean |neighbour jump| over both axes, by explicit loops."""
    seams, others = [], []
    for a in (f, f.T):
        for row in a:
            for i in range(len(row) - 1):
                (seams if (i + 1) % period == 0 else others).append(abs(row[i + 1] - row[i]))
    return float(np.mean(seams) / np.mean(others))


def test_blockiness():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((3, 64, 60))
    blocks = np.kron(rng.standard_normal((3, 16, 15)), np.ones((1, 4, 4)))  # constant 4 x 4 blocks
    da = lambda a: xr.DataArray(a, dims=("time", "y", "x"))  # noqa: E731
    b_noise = M.blockiness(da(noise), 4)
    assert b_noise.dims == ("time",)
    np.testing.assert_allclose(b_noise.values, [_blockiness_loop(n, 4) for n in noise], rtol=1e-12)
    assert abs(float(b_noise.mean()) - 1.0) < 0.05  # white noise: no seams
    assert np.isinf(M.blockiness(da(blocks), 4)).all()
    mixed = M.blockiness(da(noise + blocks), 4)
    assert (mixed > 1.3).all() and (M.blockiness(da(noise + blocks), 4, offset=2) < mixed).all()
    with pytest.raises(InvalidDataError):
        M.blockiness(da(noise), 4, dims=("lat", "lon"))


def test_argument_order_is_forecast_then_truth_and_swaps_are_caught():
    """xskillscore takes (observations, forecasts); ours is (forecast, truth): bias = forecast - truth."""
    import inspect

    xs = pytest.importorskip("xskillscore", reason="xskillscore is a test extra")
    y = xr.DataArray(np.zeros((3, 4)), dims=("y", "x"))
    warm = y + 1.5
    assert float(M.bias(warm, y)) == 1.5  # too warm -> positive
    assert float(M.bias(truth=y, forecast=warm)) == 1.5  # keywords in any order
    assert float(xs.me(y, warm)) == -1.5  # xskillscore's mean error: other order, other sign
    ens = warm.expand_dims(member=3) + xr.DataArray([-1.0, 0.0, 1.0], dims="member")
    for score in (M.crps, M.spread_skill, M.rank_histogram, M.bias):
        with pytest.raises(InvalidDataError, match="xskillscore"):
            score(y, ens)  # swapped: the "truth" has members
    for score in (M.bias, M.mae, M.rmse, M.crps, M.spread, M.spread_skill, M.rank_histogram):
        params = inspect.signature(score).parameters
        assert list(params)[:2] == ["forecast", "truth"] and params["dim"].kind is inspect.Parameter.KEYWORD_ONLY
        doc = " ".join(score.__doc__.split())
        assert "(forecast, truth)" in doc and "(observations, forecasts)" in doc, score.__name__
    with pytest.raises(TypeError):
        M.mae(warm, y, ["y", "x"])  # dim is keyword-only: no silent positional mix-up
