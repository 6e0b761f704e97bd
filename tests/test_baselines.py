"""The linear statistical downscaling baseline against numpy.linalg.lstsq and an exact linear world."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xkmcast.errors import InvalidDataError
from xkmcast.fields.baselines import fit_linear


def _fields(seed=0, t=12, ny=5, nx=6):
    rng = np.random.default_rng(seed)
    dims = ("time", "y", "x")
    a = rng.normal(size=(t, ny, nx))
    b = rng.normal(size=(t, ny, nx)) * 3 + 10
    inputs = xr.Dataset({"a": (dims, a), "b": (dims, b)})
    return rng, inputs


def test_per_pixel_equals_lstsq_at_every_pixel():
    rng, inputs = _fields()
    y = inputs["a"] * 2 + rng.normal(size=inputs["a"].shape)
    target = xr.Dataset({"out": y})
    fit = fit_linear(inputs, target)
    pred = fit.predict(inputs)["out"].values
    for j, i in [(0, 0), (2, 3), (4, 5)]:
        design = np.column_stack([np.ones(12), inputs["a"].values[:, j, i], inputs["b"].values[:, j, i]])
        beta = np.linalg.lstsq(design, y.values[:, j, i], rcond=None)[0]
        np.testing.assert_allclose(pred[:, j, i], design @ beta, rtol=1e-10, atol=1e-10)


def test_pooled_recovers_an_exact_linear_law_with_an_invariant():
    rng, inputs = _fields(seed=1)
    orog = xr.Dataset({"orog": (("y", "x"), rng.uniform(0, 2000, size=(5, 6)))})
    y = 1.5 + 0.8 * inputs["a"] - 0.1 * inputs["b"] - 0.0065 * orog["orog"]
    fit = fit_linear(inputs.isel(time=slice(0, 8)), xr.Dataset({"t2m": y.isel(time=slice(0, 8))}),
                     invariants=orog, pooled=True)
    held_out = fit.predict(inputs.isel(time=slice(8, None)))["t2m"]
    np.testing.assert_allclose(held_out.values, y.isel(time=slice(8, None)).transpose(*held_out.dims).values,
                               atol=1e-9)
    # the pooled fit equals one lstsq over all samples and pixels
    a = np.column_stack([np.ones(8 * 30), inputs["a"].values[:8].ravel(), inputs["b"].values[:8].ravel(),
                         np.broadcast_to(orog["orog"].values, (8, 5, 6)).ravel()])
    beta = np.linalg.lstsq(a, y.values[:8].ravel(), rcond=None)[0]
    np.testing.assert_allclose(beta, [1.5, 0.8, -0.1, -0.0065], atol=1e-9)
    # the same law on another grid (a region held out in space: 7 x 4), given that grid's orography
    _, there = _fields(seed=2, t=3, ny=7, nx=4)
    orog_there = xr.Dataset({"orog": (("y", "x"), rng.uniform(0, 3000, size=(7, 4)))})
    got = fit.predict(there, invariants=orog_there)["t2m"]
    want = 1.5 + 0.8 * there["a"] - 0.1 * there["b"] - 0.0065 * orog_there["orog"]
    np.testing.assert_allclose(got.values, want.transpose(*got.dims).values, atol=1e-9)
    with pytest.raises(InvalidDataError, match="pooled=True"):
        fit_linear(inputs, xr.Dataset({"t2m": y})).predict(there, invariants=orog_there)


def test_ridge_shrinks_towards_the_training_mean():
    rng, inputs = _fields(seed=2)
    target = xr.Dataset({"out": inputs["a"] * 4.0})
    plain = fit_linear(inputs, target).predict(inputs)["out"]
    shrunk = fit_linear(inputs, target, alpha=1e6).predict(inputs)["out"]
    mean = target["out"].mean("time")
    assert float(np.abs(shrunk - mean).max()) < 1e-3 * float(np.abs(plain - mean).max())
    np.testing.assert_allclose(plain.values, target["out"].values, atol=1e-9)


def test_nan_samples_are_left_out_at_their_pixel():
    rng, inputs = _fields(seed=3)
    y = 3.0 * inputs["a"] + 1.0
    y[2, 1, 1] = np.nan
    pred = fit_linear(inputs, xr.Dataset({"out": y})).predict(inputs)["out"]
    np.testing.assert_allclose(pred.values[:, 1, 1], (3.0 * inputs["a"] + 1.0).values[:, 1, 1], atol=1e-9)


def test_pooled_linear_beats_bilinear_on_guam_round_trip(guam_x4):
    """Real WRF fields coarsened x4: fitted on two hours, the pooled fit is not worse than bilinear on
    the third (it can only rescale/mix the interpolated inputs)."""
    fine, coarse = guam_x4
    interp = coarse.kmcast.regrid(fine, method="bilinear")
    fit = fit_linear(interp.isel(time=slice(0, 2)), fine.isel(time=slice(0, 2)), pooled=True)
    pred = fit.predict(interp.isel(time=[2]))
    for v in ("t2m", "u10m", "v10m"):
        lin = float(np.abs(pred[v] - fine[v].isel(time=[2])).mean())
        bil = float(np.abs(interp[v].isel(time=[2]) - fine[v].isel(time=[2])).mean())
        assert lin < 1.05 * bil, (v, lin, bil)
