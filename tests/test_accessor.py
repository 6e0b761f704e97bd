"""The .kmcast accessor: its methods are the library functions (signatures, docstrings, defaults)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import xarray as xr

import xkmcast  # noqa: F401  (registers the accessor)
from xkmcast.fields import grid as grid_mod
from xkmcast.fields import downscale, forecast, plot, regrid, scoring, variables
from xkmcast.fields.grid import make_latlon_grid

BOUND = {
    "downscale": downscale.downscale, "forecast": forecast.forecast, "regrid": regrid.regrid,
    "score": scoring.score, "variables": variables.select_variables,
}
PLOTS = {"map": plot.map, "members": plot.members, "spectra": plot.spectra, "animate": plot.animate}


@pytest.fixture()
def ds():
    g = make_latlon_grid(np.linspace(30, 35, 6), np.linspace(-100, -94, 7))
    values = np.random.default_rng(1).normal(size=(6, 7))
    return xr.Dataset({"t2m": (("lat", "lon"), values, {"units": "K"})}, coords=g.coords)


def _without_first(func):
    sig = inspect.signature(func)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def test_methods_show_the_real_signature_and_docstring(ds):
    for name, func in BOUND.items():
        method = getattr(ds.kmcast, name)
        assert inspect.signature(method) == _without_first(func), name
        assert method.__doc__ == func.__doc__ and method.__doc__, name
    for name, func in PLOTS.items():
        method = getattr(ds.kmcast.plot, name)
        assert inspect.signature(method) == _without_first(func) and method.__doc__ == func.__doc__
    # the defaults come from the functions (members=1, steps=12, method="bilinear" live there only)
    assert inspect.signature(ds.kmcast.downscale).parameters["members"].default == 1
    assert inspect.signature(ds.kmcast.forecast).parameters["steps"].default == 12
    assert inspect.signature(ds["t2m"].kmcast.regrid).parameters["method"].default == "bilinear"
    assert type(ds).kmcast.downscale is downscale.downscale  # on the class: the function itself


def test_bound_methods_give_what_the_functions_give(ds):
    target = make_latlon_grid(np.linspace(31, 34, 4), np.linspace(-99, -95, 5))
    xr.testing.assert_identical(ds.kmcast.regrid(target), regrid.regrid(ds, target))
    xr.testing.assert_identical(ds["t2m"].kmcast.regrid(target, "nearest"),
                                regrid.regrid(ds["t2m"], target, method="nearest"))
    shifted = ds + 1.0
    xr.testing.assert_identical(shifted.kmcast.score(ds), scoring.score(shifted, ds))


def test_grid_is_found_once_per_object(ds, monkeypatch):
    calls = []
    real = grid_mod.find_grid
    monkeypatch.setattr(grid_mod, "find_grid", lambda obj: calls.append(1) or real(obj))
    first = ds.kmcast.grid
    assert ds.kmcast.grid is first and ds.kmcast.grid.shape == (6, 7) and len(calls) == 1
    assert ds.copy().kmcast.grid is not first  # another object: its own grid
