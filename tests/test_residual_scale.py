"""The diffusion stage models the regression residual scaled per channel: r / s, s = RMS(r) / sigma_data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import randomise
from _tiny import FINE_SHAPE, INPUT_VARS, OUTPUT_VARS, STATE_VARS, tiny_corrdiff, tiny_stormcast

from xkmcast.train.spread import residual_scale


def _batch(seed=0, b=3):
    g = torch.Generator().manual_seed(seed)
    return {"input": torch.randn(b, len(INPUT_VARS) + 1, *FINE_SHAPE, generator=g),
            "target": torch.randn(b, len(OUTPUT_VARS), *FINE_SHAPE, generator=g)}


def test_corrdiff_loss_sees_the_scaled_residual():
    """Loss with scale s on y == loss without scale on mu + (y - mu) / s (same noise draws)."""
    pipe = tiny_corrdiff()
    randomise(pipe, seed=1)
    batch = _batch()
    s = [0.2, 3.0]
    with torch.no_grad():
        mean = pipe.regression_mean(batch["input"])
        plain_target = mean + (batch["target"] - mean) / torch.tensor(s).reshape(1, 2, 1, 1)
        plain = pipe.loss("diffusion", {**batch, "target": plain_target}, torch.Generator().manual_seed(5)).loss
        pipe.spec.extra["residual_scale"] = s
        scaled = pipe.loss("diffusion", batch, torch.Generator().manual_seed(5)).loss
        pipe.spec.extra.pop("residual_scale")
        unscaled = pipe.loss("diffusion", batch, torch.Generator().manual_seed(5)).loss
    torch.testing.assert_close(scaled, plain)
    assert not torch.allclose(scaled, unscaled)


def test_corrdiff_members_are_mean_plus_scaled_residual():
    pipe = tiny_corrdiff()
    randomise(pipe, seed=2)
    inputs = _batch(b=2)["input"][:, : len(INPUT_VARS)]
    seeds = [[1, 2], [3, 4]]
    members, mean = pipe.sample(inputs, seeds=seeds)
    pipe.spec.extra["residual_scale"] = [0.1, 4.0]
    scaled, mean2 = pipe.sample(inputs, seeds=seeds)
    torch.testing.assert_close(mean2, mean)
    expect = mean + (members - mean) * torch.tensor([0.1, 4.0]).reshape(1, 1, 2, 1, 1)
    torch.testing.assert_close(scaled, expect, rtol=1e-5, atol=1e-5)


def test_stormcast_step_is_mean_plus_scaled_residual():
    pipe = tiny_stormcast()
    randomise(pipe, seed=3)
    g = torch.Generator().manual_seed(0)
    state = torch.randn(2, len(STATE_VARS), *FINE_SHAPE, generator=g)
    background = torch.randn(2, 1, *FINE_SHAPE, generator=g)
    one = pipe.step(state, background, seeds=[7, 8])
    mean = pipe._regression_mean(state, background, pipe.batch_invariant(2, state), {})
    pipe.spec.extra["residual_scale"] = [0.5, 2.0, 0.25]
    two = pipe.step(state, background, seeds=[7, 8])
    torch.testing.assert_close(two, mean + (one - mean) * torch.tensor([0.5, 2.0, 0.25]).reshape(1, 3, 1, 1),
                               rtol=1e-5, atol=1e-5)


def test_auto_scale_is_the_residual_rms_over_sigma_data():
    """Computed over the samples of a dataset: RMS per channel of y - mu (numpy), over sigma_data."""
    pipe = tiny_corrdiff()
    randomise(pipe, seed=4)
    g = torch.Generator().manual_seed(9)
    items = [{"input": torch.randn(len(INPUT_VARS) + 1, *FINE_SHAPE, generator=g),
              "target": torch.randn(len(OUTPUT_VARS), *FINE_SHAPE, generator=g) * torch.tensor([0.3, 7.0])[:, None, None]}
             for _ in range(5)]
    with torch.no_grad():
        r = np.stack([(it["target"] - pipe.regression_mean(it["input"][None])[0]).numpy() for it in items])
    rms = np.sqrt((r.astype(np.float64) ** 2).mean(axis=(0, 2, 3)))
    got = residual_scale(pipe, items, "auto")
    np.testing.assert_allclose(got, rms / pipe.stages["diffusion"].sigma_data, rtol=1e-5)
    assert residual_scale(pipe, items, "none") is None
    assert residual_scale(pipe, items, [1.0, 2.0]) == [1.0, 2.0]


def _corrdiff_batch_with_times():
    pipe = randomise(tiny_corrdiff(), seed=6)
    batch = {**_batch(seed=3, b=3), "time": torch.tensor([4, 9, 4])}
    batch["input"][2] = batch["input"][0]  # one store time, one input
    return pipe, batch


def _stormcast_batch_with_times():
    """A patched StormCast (its large-grid form) on a forecast batch."""
    pipe = randomise(tiny_stormcast(patch=(12, 12)), seed=8)
    g = torch.Generator().manual_seed(4)
    prev, nxt = (torch.randn(3, len(STATE_VARS), *FINE_SHAPE, generator=g) for _ in range(2))
    background = torch.randn(3, 1, *FINE_SHAPE, generator=g)
    for t in (prev, nxt, background):
        t[2] = t[0]  # one store time, one input
    return pipe, {"state": [prev, nxt], "background": background, "time": torch.tensor([4, 9, 4])}


@pytest.mark.parametrize("case", [_corrdiff_batch_with_times, _stormcast_batch_with_times], ids=["corrdiff", "stormcast"])
def test_the_frozen_regression_mean_is_computed_once_per_time(case):
    """Diffusion batches carrying store times reuse the regression mean: same loss, one forward per time."""
    pipe, batch = case()
    calls = []
    hook = pipe.stages["regression"].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        first = pipe.loss("diffusion", batch, torch.Generator().manual_seed(1)).loss
        second = pipe.loss("diffusion", batch, torch.Generator().manual_seed(1)).loss
        plain = pipe.loss("diffusion", {k: v for k, v in batch.items() if k != "time"},
                          torch.Generator().manual_seed(1)).loss
    hook.remove()
    torch.testing.assert_close(first, plain)
    torch.testing.assert_close(second, plain)
    assert calls == [3, 3]  # the first batch and the uncached one; the second batch used the cache


def test_members_take_the_sampling_scale_when_there_is_one():
    pipe = tiny_corrdiff()
    randomise(pipe, seed=7)
    inputs = _batch(b=1)["input"][:, : len(INPUT_VARS)]
    pipe.spec.extra["residual_scale"] = [0.5, 0.5]
    base, mean = pipe.sample(inputs, seeds=[[1, 2]])
    pipe.spec.extra["sample_scale"] = [1.0, 0.25]
    wide, _ = pipe.sample(inputs, seeds=[[1, 2]])
    expect = mean + (base - mean) * torch.tensor([2.0, 0.5]).reshape(1, 1, 2, 1, 1)
    torch.testing.assert_close(wide, expect, rtol=1e-5, atol=1e-5)
    # training still sees the training scale
    batch = _batch(seed=8, b=2)
    with torch.no_grad():
        a = pipe.loss("diffusion", batch, torch.Generator().manual_seed(3)).loss
        pipe.spec.extra.pop("sample_scale")
        b = pipe.loss("diffusion", batch, torch.Generator().manual_seed(3)).loss
    torch.testing.assert_close(a, b)


def test_patches_per_sample_reaches_the_patched_diffusion_loss():
    """data.patches_per_sample=n: n patches per whole field, one loss value each, one regression forward."""
    from xkmcast.models import build_pipeline, spec_from_config
    from xkmcast.train.config import validate

    data = {"source": "synthetic", "input_vars": ["t2m", "u10m", "msl"], "output_vars": ["t2m", "u10m"],
            "patch": [8, 8], "patches_per_sample": 3}
    cfg = validate({"data": data, "model": {"kind": "corrdiff", "stage": "diffusion", "size": "tiny",
                                            "regression_bundle": "r", "input_skip": False,
                                            "diffusion_conditions": ["background", "regression"]}})
    spec = spec_from_config(cfg.model, cfg.data, FINE_SHAPE)
    assert spec.extra["patches_per_sample"] == 3
    pipe = build_pipeline(spec)
    randomise(pipe, seed=9)
    calls = []
    pipe.stages["regression"].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batch = {"input": _batch(b=2)["input"][:, : len(INPUT_VARS)], "target": _batch(b=2)["target"]}
    out = pipe.loss("diffusion", batch, torch.Generator().manual_seed(0))
    assert out.loss.shape == (6,) and torch.isfinite(out.loss).all() and calls == [2]
