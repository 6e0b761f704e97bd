"""The Stormscope kind (diffusion only) models the tendency x_{t+1} - x_t by default: x_{t+1} = x_t + s * r."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import randomise
from _tiny import FINE_SHAPE, STATE_VARS

from xkmcast.models import build_pipeline, stormscope_spec
from xkmcast.train.spread import residual_scale

SCALE = [0.2, 0.5, 0.1]


def _scope() -> torch.nn.Module:
    spec = stormscope_spec(STATE_VARS, FINE_SHAPE, background_vars=["msl"], size="tiny", sampler={"num_steps": 3},
                           diffusion_conditions=["state", "background"])
    return randomise(build_pipeline(spec), seed=21).eval()


def _state(seed: int, n: int = 2):
    g = torch.Generator().manual_seed(seed)
    prev = torch.randn(n, len(STATE_VARS), *FINE_SHAPE, generator=g)
    return prev, prev + 0.1 * torch.randn(prev.shape, generator=g), torch.randn(n, 1, *FINE_SHAPE, generator=g)


def test_a_tendency_step_is_the_state_plus_the_scaled_draw():
    pipe = _scope()
    prev, _, bg = _state(0)
    full = pipe.step(prev, bg, seeds=[3, 4])  # a published-style Stormscope: the draw is the next state
    pipe.spec.extra.update(input_skip=True, residual_scale=SCALE)
    tendency = pipe.step(prev, bg, seeds=[3, 4])
    s = torch.tensor(SCALE).reshape(1, 3, 1, 1)
    torch.testing.assert_close(tendency, prev + s * full, rtol=1e-5, atol=1e-5)


def test_the_tendency_loss_is_the_plain_loss_on_the_scaled_tendency():
    pipe = _scope().train()
    prev, nxt, bg = _state(1)
    s = torch.tensor(SCALE).reshape(1, 3, 1, 1)
    plain = pipe.loss("diffusion", {"state": [prev, (nxt - prev) / s], "background": bg},
                      torch.Generator().manual_seed(2)).loss
    pipe.spec.extra.update(input_skip=True, residual_scale=SCALE)
    skip = pipe.loss("diffusion", {"state": [prev, nxt], "background": bg}, torch.Generator().manual_seed(2)).loss
    torch.testing.assert_close(skip, plain)


def test_the_tendency_scale_is_its_rms_over_sigma_data():
    pipe = _scope()
    pipe.spec.extra["input_skip"] = True
    assert pipe.diffuses_residual
    prev, nxt, bg = _state(2, n=4)
    items = [{"state": [prev[i], nxt[i]], "background": bg[i]} for i in range(4)]
    rms = np.sqrt((((nxt - prev).double().numpy()) ** 2).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(residual_scale(pipe, items), rms / 0.5, rtol=1e-5)


@pytest.mark.parametrize("skip", [None, False])
def test_the_stormscope_config_turns_the_tendency_on_by_default(skip):
    from xkmcast.models.specs import spec_from_config
    from xkmcast.train import load_config

    cfg = load_config("stormscope-tiny", [] if skip is None else [f"model.input_skip={str(skip).lower()}"])
    spec = spec_from_config(cfg.model, cfg.data, (32, 32))
    assert spec.extra.get("input_skip", False) is (skip is None)


def test_the_calibrated_spread_factor_matches_the_ensemble_mean_error():
    """After calibration, members from step() (the forecast path) on the validation samples satisfy the
    exchangeable-ensemble identity (1 + 1/M) mean var_k(x_k) == mean (y - ensemble mean)^2, per channel."""
    from xkmcast.diffusion.seeds import row_seeds
    from xkmcast.train.spread import calibrated_spread_factor

    pipe = _scope()
    pipe.spec.extra.update(input_skip=True, residual_scale=SCALE)
    prev, nxt, bg = _state(3, n=3)
    items = [{"state": [prev[i], nxt[i]], "background": bg[i]} for i in range(3)]
    m = 6
    factor = calibrated_spread_factor(pipe, items, members=m)
    assert factor is not None and len(factor) == 3
    before = [pipe.step(prev[i:i + 1].expand(m, -1, -1, -1), bg[i:i + 1].expand(m, -1, -1, -1),
                        seeds=row_seeds(0, m, i)).double() for i in range(3)]
    pipe.spec.extra["spread_factor"] = factor
    after = [pipe.step(prev[i:i + 1].expand(m, -1, -1, -1), bg[i:i + 1].expand(m, -1, -1, -1),
                       seeds=row_seeds(0, m, i)).double() for i in range(3)]
    var = np.mean([a.var(dim=0, unbiased=True).mean(dim=(1, 2)).numpy() for a in after], axis=0)
    err = np.mean([((nxt[i].double() - a.mean(dim=0)) ** 2).mean(dim=(1, 2)).numpy() for i, a in enumerate(after)], axis=0)
    np.testing.assert_allclose((1 + 1 / m) * var, err, rtol=1e-4)
    for a, b in zip(after, before):  # the factor moves members about their mean, not the mean
        torch.testing.assert_close(a.mean(dim=0), b.mean(dim=0), rtol=1e-5, atol=1e-5)
    assert not np.allclose(factor, 1.0, atol=0.05)


@pytest.mark.slow
def test_a_trained_stormscope_exports_its_tendency_scale_and_spread_factor(tmp_path):
    import xkmcast
    from xkmcast.train import load_config, train

    torch.set_num_threads(1)
    cfg = load_config("stormscope-tiny", ["data.params={nx: 16, ny: 16, dx: 3000.0, factor: 4, times: 16, seed: 0}",
                                          "training.duration=6", "training.validate_every=3", "training.valid_batches=1",
                                          "training.batch_size=4", f"training.outdir={tmp_path}",
                                          "training.tensorboard=false", "training.checkpoint_every=100"])
    model = xkmcast.load_model(train(cfg, quiet=True).bundle)
    extra = model.spec.extra
    assert extra["input_skip"] is True and "centre_members" not in extra
    assert len(extra["residual_scale"]) == 3 and len(extra["spread_factor"]) == 3
    assert all(v > 0 for v in extra["spread_factor"])
    state = torch.zeros(2, 3, 16, 16)
    out = model.step(state, torch.zeros(2, 2, 16, 16), seeds=[0, 1])
    assert out.shape == state.shape and torch.isfinite(out).all()
