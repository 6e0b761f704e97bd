"""Members about the regression mean: centring (ensemble mean = regression mean) and the spread
calibrated on validation samples (their spread about the mean = the regression's RMS error)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import randomise
from _tiny import FINE_SHAPE, INPUT_VARS, OUTPUT_VARS, STATE_VARS, tiny_corrdiff, tiny_stormcast

from xkmcast.diffusion.seeds import row_seeds
from xkmcast.models import build_pipeline, stormcast_spec
from xkmcast.train.spread import calibrated_sample_scale


def _inputs(seed: int, b: int) -> torch.Tensor:
    return torch.randn(b, len(INPUT_VARS), *FINE_SHAPE, generator=torch.Generator().manual_seed(seed))


def test_centred_members_are_the_draws_about_their_mean_added_to_the_regression_mean():
    pipe = tiny_corrdiff()
    randomise(pipe, seed=11)
    pipe.spec.extra["sample_scale"] = [0.7, 2.5]
    inputs, seeds = _inputs(0, 2), [[1, 2, 3], [4, 5, 6]]
    plain, mean = pipe.sample(inputs, seeds=seeds, centre=False)
    pipe.spec.extra["centre_members"] = True  # what a trained bundle records
    centred, mean2 = pipe.sample(inputs, seeds=seeds)
    torch.testing.assert_close(mean2, mean)
    p, m = plain.double().numpy(), mean.double().numpy()
    expect = m[None] + (p - p.mean(axis=0, keepdims=True))  # numpy: the same draws, their mean removed
    np.testing.assert_allclose(centred.double().numpy(), expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(centred.double().numpy().mean(axis=0), m, atol=1e-5)
    assert np.abs(p.mean(axis=0) - m).max() > 1e-2  # uncentred, the draws' mean is not the regression's
    # the spread about the ensemble mean is the same either way
    np.testing.assert_allclose(centred.double().numpy().std(axis=0), p.std(axis=0), rtol=1e-4, atol=1e-6)
    # one member has nothing to centre on
    one, _ = pipe.sample(inputs, seeds=[[1], [4]])
    torch.testing.assert_close(one, plain[:1], rtol=1e-5, atol=1e-5)


def test_stormcast_centres_each_step_over_the_members():
    pipe = tiny_stormcast()
    randomise(pipe, seed=12)
    g = torch.Generator().manual_seed(2)
    state = torch.randn(1, len(STATE_VARS), *FINE_SHAPE, generator=g).expand(4, -1, -1, -1)
    background = torch.randn(1, 1, *FINE_SHAPE, generator=g).expand(4, -1, -1, -1)
    plain = pipe.step(state, background, seeds=[1, 2, 3, 4])
    centred = pipe.step(state, background, seeds=[1, 2, 3, 4], centre=True)
    mean = pipe._regression_mean(state, background, pipe.batch_invariant(4, state), {})
    torch.testing.assert_close(centred.mean(0), mean[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(centred - centred.mean(0), plain - plain.mean(0), rtol=1e-5, atol=1e-5)


def _corrdiff_items(pipe, n: int, seed: int) -> tuple[list[dict], torch.Tensor]:
    inputs = _inputs(seed, n)
    cond = pipe.condition(inputs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        target = pipe.regression_mean(cond) + torch.randn(n, len(OUTPUT_VARS), *FINE_SHAPE, generator=g) \
            * torch.tensor([0.3, 1.7]).reshape(1, 2, 1, 1)
    return [{"input": cond[i], "target": target[i]} for i in range(n)], inputs


def test_the_calibrated_spread_equals_the_regression_error_on_the_validation_samples():
    """After calibration, members drawn by inference (sample(), another code path than the calibration's)
    on the validation samples have spread about their mean == RMS(target - regression mean), per channel."""
    pipe = tiny_corrdiff()
    randomise(pipe, seed=13)
    pipe.spec.extra["residual_scale"] = [0.4, 0.9]
    items, inputs = _corrdiff_items(pipe, 5, seed=3)
    scale = calibrated_sample_scale(pipe, items, members=6)
    assert scale is not None and len(scale) == 2
    pipe.spec.extra["sample_scale"] = scale
    pipe.spec.extra["centre_members"] = True
    members, mean = pipe.sample(inputs, seeds=[row_seeds(0, 6, i) for i in range(5)])
    target = torch.stack([it["target"] for it in items]).double().numpy()
    m = members.double().numpy()
    spread = np.sqrt(m.var(axis=0, ddof=1).mean(axis=(0, 2, 3)))
    error = np.sqrt(((target - mean.double().numpy()) ** 2).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(spread, error, rtol=1e-4)
    np.testing.assert_allclose(error, [0.3, 1.7], rtol=0.1)  # the residual the test built


@pytest.mark.parametrize("with_background", [True, False])
def test_stormcast_calibration_matches_its_forecast_step(with_background):
    """As above for the forecast step (a state-only model's batches carry a 0-channel background)."""
    if with_background:
        pipe = tiny_stormcast()
    else:
        pipe = build_pipeline(stormcast_spec(STATE_VARS, FINE_SHAPE, size="tiny", sampler={"num_steps": 3},
                                             regression_conditions=["state"], diffusion_conditions=["state", "regression"]))
    randomise(pipe, seed=14)
    g = torch.Generator().manual_seed(4)
    n, members = 3, 5
    prev = torch.randn(n, len(STATE_VARS), *FINE_SHAPE, generator=g)
    background = torch.randn(n, 1 if with_background else 0, *FINE_SHAPE, generator=g)
    with torch.no_grad():
        mean = pipe._regression_mean(prev, background, pipe.batch_invariant(n, prev), {})
    nxt = mean + 0.5 * torch.randn(mean.shape, generator=g)
    items = [{"state": [prev[i], nxt[i]], "background": background[i]} for i in range(n)]
    scale = calibrated_sample_scale(pipe, items, members=members)
    pipe.spec.extra["sample_scale"] = scale
    spreads = []
    for i in range(n):  # the forecast path: one state, its members as rows
        out = pipe.step(prev[i:i + 1].expand(members, -1, -1, -1), background[i:i + 1].expand(members, -1, -1, -1),
                        seeds=row_seeds(0, members, i), centre=True).double().numpy()
        spreads.append(out.var(axis=0, ddof=1).mean(axis=(1, 2)))
    error = np.sqrt(((nxt - mean).double().numpy() ** 2).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(np.sqrt(np.mean(spreads, axis=0)), error, rtol=1e-4)


def test_no_calibration_without_a_residual_or_validation_samples():
    pipe = tiny_stormcast(stages=("diffusion",))
    prev = torch.randn(1, len(STATE_VARS), *FINE_SHAPE)
    items = [{"state": [prev[0], prev[0]], "background": torch.zeros(1, *FINE_SHAPE)}]
    assert calibrated_sample_scale(pipe, items) is None
    assert calibrated_sample_scale(tiny_corrdiff(), []) is None


def test_the_accessor_centres_as_the_bundle_records_and_as_the_call_says():
    """Through ds.kmcast.downscale (physical units): centred members average to <var>_regression."""
    from _tiny import coarse_dataset

    pipe = tiny_corrdiff()
    randomise(pipe, seed=15)
    pipe.spec.extra["centre_members"] = True
    ds = coarse_dataset(2)
    out = ds.kmcast.downscale(pipe, members=4, include_mean=True)
    off = ds.kmcast.downscale(pipe, members=4, include_mean=True, centre=False)
    for v in OUTPUT_VARS:
        np.testing.assert_allclose(out[v].mean("member"), out[f"{v}_regression"], rtol=1e-5, atol=1e-3)
        assert float(abs(off[v].mean("member") - off[f"{v}_regression"]).max()) > 1e-2
        np.testing.assert_allclose(out[v] - out[v].mean("member"), off[v] - off[v].mean("member"), rtol=1e-4, atol=1e-3)


def test_centre_is_refused_where_there_is_no_regression_mean():
    from xkmcast.errors import ConfigError
    from xkmcast.fields.downscale import require_task
    from xkmcast.models import stormscope_spec

    scope = build_pipeline(stormscope_spec(STATE_VARS, FINE_SHAPE, size="tiny"))
    with pytest.raises(ConfigError, match="regression mean"):
        require_task(scope, forecast=True, centre=True)
    require_task(scope, forecast=True)  # no setting: fine
    require_task(tiny_stormcast(), forecast=True, centre=False)
