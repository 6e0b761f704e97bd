"""The regression learns the departure from its input by default: CorrDiff from the regridded coarse
input, StormCast and the ViT from the current state (persistence)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr
from _nets import randomise
from _tiny import FINE_SHAPE, attach_grid, fine_grid, stats_for, tiny_stormcast

from xkmcast.data.stats import Stats
from xkmcast.models import build_pipeline, corrdiff_spec, stormcast_spec, vit_spec
from xkmcast.train.config import load_config


def test_input_skip_is_on_by_default_for_corrdiff_stormcast_and_the_vit():
    assert load_config("corrdiff-tiny-regression").model.input_skip is True
    assert load_config("stormcast-tiny-regression").model.input_skip is True
    assert load_config("vit-tiny").model.input_skip is True
    assert load_config("corrdiff-tiny-regression", ["model.input_skip=false"]).model.input_skip is False
    assert load_config("vit-tiny", ["model.input_skip=false"]).model.input_skip is False


def test_corrdiff_interpolation_renormalises_shared_outputs_and_skips_the_others():
    """interp = (x_n s_in + m_in - m_out) / s_out for an output that is an input; 0 for tp (not an input)."""
    inputs, outputs = ["t2m", "msl"], ["t2m", "tp"]
    spec = corrdiff_spec(inputs, outputs, FINE_SHAPE, size="tiny", input_skip=True, stages=("regression",))
    out_stats = Stats({"t2m": 290.0, "tp": 0.3}, {"t2m": 4.0, "tp": 0.5}).to_dict()
    spec.stats = {"input": stats_for(inputs), "output": out_stats, "invariant": {}}
    pipe = build_pipeline(spec).eval()
    randomise(pipe, seed=0)
    cond = torch.randn(2, 2, *FINE_SHAPE, generator=torch.Generator().manual_seed(1))
    interp = pipe.interpolation(cond)
    x = cond[:, 0].numpy() * 5.0 + 288.0  # stats_for: t2m input mean 288, std 5
    np.testing.assert_allclose(interp[:, 0].numpy(), (x - 290.0) / 4.0, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(interp[:, 1]) == 0
    with torch.no_grad():
        raw = pipe.stages["regression"](torch.zeros(2, 2, *FINE_SHAPE), cond)
        torch.testing.assert_close(pipe.regression_mean(cond), raw + interp)


def test_stormcast_regression_adds_the_state_when_skipping():
    pipe = tiny_stormcast(stages=("regression",))
    randomise(pipe, seed=4)
    g = torch.Generator().manual_seed(2)
    state, bg = torch.randn(2, 3, *FINE_SHAPE, generator=g), torch.randn(2, 1, *FINE_SHAPE, generator=g)
    plain = pipe.step(state, bg, seeds=[0, 1])
    pipe.spec.extra["input_skip"] = True
    torch.testing.assert_close(pipe.step(state, bg, seeds=[0, 1]), plain + state)
    nxt = torch.randn(2, 3, *FINE_SHAPE, generator=g)
    loss = pipe.loss("regression", {"state": [state, nxt], "background": bg}).loss
    torch.testing.assert_close(loss, ((plain + state - nxt) ** 2).mean(dim=(1, 2, 3)))


def test_vit_adds_the_state_when_skipping():
    """x_{t+1} = F(x_t) + x_t with the skip, F(x_t) without (the flag was once recorded and ignored)."""
    spec = vit_spec(["t2m", "u10m", "v10m"], FINE_SHAPE, size="tiny", background_vars=["msl"],
                    regression_conditions=["state", "background"])
    pipe = build_pipeline(spec).eval()
    randomise(pipe, seed=6)
    g = torch.Generator().manual_seed(3)
    state, bg, nxt = (torch.randn(2, c, *FINE_SHAPE, generator=g) for c in (3, 1, 3))
    plain = pipe.step(state, bg)
    assert plain.abs().mean() > 0.05  # real weights: the network's own output (a mean over token offsets) is not ~0
    pipe.spec.extra["input_skip"] = True
    torch.testing.assert_close(pipe.step(state, bg), plain + state)
    loss = pipe.loss("regression", {"state": [state, nxt], "background": bg}).loss
    torch.testing.assert_close(loss, ((plain + state - nxt) ** 2).mean(dim=(1, 2, 3)))


def test_a_trained_vit_spec_records_the_skip():
    from xkmcast.models.specs import spec_from_config

    for skip in (True, False):
        cfg = load_config("vit-tiny", [f"model.input_skip={str(skip).lower()}"])
        spec = spec_from_config(cfg.model, cfg.data, FINE_SHAPE)
        assert bool(spec.extra.get("input_skip")) is skip


def test_a_state_only_regression_bundle_forecasts_without_background():
    """A regression model conditioned on the state alone needs no background, whatever the diffusion
    defaults recorded in its spec say."""
    spec = stormcast_spec(["t2m", "u10m"], FINE_SHAPE, size="tiny", stages=("regression",),
                          regression_conditions=["state"])
    spec.stats = {"input": stats_for(["t2m", "u10m"]), "output": stats_for(["t2m", "u10m"])}
    pipe = build_pipeline(spec).eval()
    attach_grid(pipe, fine_grid())
    randomise(pipe, seed=5)
    grid = fine_grid()
    rng = np.random.default_rng(0)
    time = pd.date_range("2024-05-01", periods=2, freq="1h")
    state = xr.Dataset({v: (("time", "y", "x"), rng.normal(280 if v == "t2m" else 0, 2, (2, *FINE_SHAPE)),
                            {"units": "K" if v == "t2m" else "m s-1"}) for v in ("t2m", "u10m")},
                       coords={"time": time}).assign_coords(grid.coords)
    out = state.kmcast.forecast(pipe, steps=2)
    assert out["t2m"].sizes["lead_time"] >= 2 and np.isfinite(out["t2m"].values).all()
