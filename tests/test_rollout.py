"""state.kmcast.forecast: rollout shapes, valid_time, streaming to zarr and resuming, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xkmcast  # noqa: F401
from _tiny import FINE_SHAPE, coarse_dataset, state_dataset, tiny_corrdiff, tiny_stormcast
from xkmcast.errors import GridError, TimeCoverageError, XkmcastError


@pytest.fixture(scope="module")
def model():
    return tiny_stormcast()


def test_forecast_dims_and_valid_time(model):
    out = state_dataset(2).kmcast.forecast(model, steps=3, background=coarse_dataset(5), members=2)
    assert dict(out.sizes) == {"member": 2, "init_time": 2, "lead_time": 4, "y": FINE_SHAPE[0], "x": FINE_SHAPE[1]}
    assert out.lead_time.values[1] == np.timedelta64(1, "h")
    np.testing.assert_array_equal(out.valid_time.values[1, 2], np.datetime64("2024-05-01T03", "ns"))
    # lead 0 is the initial state itself
    np.testing.assert_allclose(out.t2m.isel(lead_time=0, member=1), state_dataset(2).t2m, atol=1e-4)
    assert out.t2m.attrs["units"] == "K"


def test_diffusion_only_and_deterministic_models(model):
    scope = tiny_stormcast(stages=("diffusion",))
    out = state_dataset(1).kmcast.forecast(scope, steps=2, background=coarse_dataset(3), members=2)
    assert float(abs(out.t2m.isel(member=0) - out.t2m.isel(member=1)).isel(lead_time=2).max()) > 0
    reg = tiny_stormcast(stages=("regression",))
    out = state_dataset(1).kmcast.forecast(reg, steps=2, background=coarse_dataset(3), members=2)
    np.testing.assert_array_equal(out.t2m.isel(member=0).values, out.t2m.isel(member=1).values)


def test_lazy_and_streamed_forecasts_agree_and_resume(model, tmp_path):
    state, bg = state_dataset(2), coarse_dataset(6)
    lazy = state.chunk({"time": 1}).kmcast.forecast(model, steps=3, background=bg, members=2)
    assert lazy.t2m.chunks is not None
    path = tmp_path / "fc.zarr"
    full = state.kmcast.forecast(model, steps=3, background=bg, members=2, output=path)
    xr.testing.assert_allclose(full.t2m.compute(), lazy.t2m.compute(), atol=1e-5)
    assert full.completed.values.all()

    # interrupt a second run after a few steps, then run the same call again to finish it
    path2 = tmp_path / "fc2.zarr"

    class Interrupt(Exception):
        pass

    calls = {"n": 0}
    original = type(model).step

    def failing_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Interrupt
        return original(self, *a, **k)

    type(model).step = failing_step
    try:
        with pytest.raises(Interrupt):
            state.kmcast.forecast(model, steps=3, background=bg, members=2, output=path2)
    finally:
        type(model).step = original
    partial = xr.open_zarr(path2, consolidated=False).completed.values
    assert partial[0].all() and not partial[1].all()
    resumed = state.kmcast.forecast(model, steps=3, background=bg, members=2, output=path2)
    xr.testing.assert_allclose(resumed.t2m.compute(), lazy.t2m.compute(), atol=1e-4)


def test_resume_refuses_a_different_forecast(model, tmp_path):
    path = tmp_path / "fc.zarr"
    state_dataset(1).kmcast.forecast(model, steps=1, background=coarse_dataset(2), output=path)
    with pytest.raises(XkmcastError, match="different forecast"):
        state_dataset(1).kmcast.forecast(model, steps=1, background=coarse_dataset(2), output=path, seed=5)


def test_background_must_cover_the_window(model):
    with pytest.raises(TimeCoverageError, match="missing"):
        state_dataset(2).kmcast.forecast(model, steps=4, background=coarse_dataset(3))
    with pytest.raises(TimeCoverageError, match="background"):
        state_dataset(1).kmcast.forecast(model, steps=1)


def test_state_not_on_the_model_grid_is_refused(model):
    with pytest.raises(GridError, match="model's grid"):
        coarse_dataset(2).rename({"2t": "t2m", "10u": "u10m"}).assign(v10m=lambda d: d.u10m).kmcast.forecast(
            model, steps=1, background=coarse_dataset(3))


def test_downscaling_model_cannot_forecast_and_back():
    with pytest.raises(XkmcastError, match="downscale"):
        state_dataset(1).kmcast.forecast(tiny_corrdiff(), steps=1)
    with pytest.raises(XkmcastError, match="forecast"):
        coarse_dataset(1).kmcast.downscale(tiny_stormcast())


def test_bf16_forecast_is_finite_and_close(model):
    state, bg = state_dataset(1), coarse_dataset(3)
    a = state.kmcast.forecast(model, steps=1, background=bg)
    b = state.kmcast.forecast(model, steps=1, background=bg, precision="amp-bf16")
    assert np.isfinite(b.t2m).all()
    assert float(abs(a.t2m - b.t2m).max()) < 0.1 * float(abs(a.t2m - a.t2m.mean()).max())
