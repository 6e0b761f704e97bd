"""The export's spread calibrations (:func:`xkmcast.train.export.calibrate_spread`) draw once for all of
them, on fewer validation samples on a large grid on a CPU (:func:`xkmcast.train.spread.calibration_samples`)."""

from __future__ import annotations

import types

import pytest
from test_spread_by_scale import SHAPE, _pipeline, _samples

from xkmcast.train.config import load_config
from xkmcast.train.export import calibrate_spread
from xkmcast.train.spread import (CALIBRATION_SAMPLES, FEW_CALIBRATION_SAMPLES, calibrated_sample_scale,
                                  calibrated_value_gains, calibration_samples, validation_draws)
from xkmcast.train.spread_by_scale import calibrated_scale_gains


@pytest.mark.parametrize("shape, device, samples", [((24, 30), "cpu", 8), ((70, 144), "cpu", 8), ((128, 160), "cpu", 6),
                                                    ((200, 400), "cpu", 2), ((1056, 1792), "cpu", 2),
                                                    ((200, 400), "cuda", 8), (None, "cpu", 8)])
def test_calibration_samples_bound_the_pixels_drawn_on_a_cpu(shape, device, samples):
    """8 samples of 128 x 128 pixels at most on a CPU, at least 2 samples; all 8 on a GPU."""
    assert calibration_samples(shape, device) == samples
    assert CALIBRATION_SAMPLES == 8


class _Counting:
    """Counts the pipeline's calibration draws (the costly part)."""

    def __init__(self, pipe):
        self.calls, self.inner = 0, pipe.calibration_draws
        pipe.calibration_draws = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_one_set_of_draws_serves_every_calibration_with_the_same_results():
    """Scale, gains by scale and gains by value from one set of draws equal those drawn separately; the
    export draws once (9 samples: 2 batches), where separate calibrations draw once each."""
    valid, _, _ = _samples(_pipeline(), 9, seed=3)
    alone = _pipeline()
    counter = _Counting(alone)
    scale = calibrated_sample_scale(alone, valid, max_samples=9)
    alone.spec.extra["sample_scale"] = scale
    by_scale = calibrated_scale_gains(alone, valid, max_samples=9)
    by_value = calibrated_value_gains(alone, valid, [0, 1], max_samples=9)
    assert counter.calls == 3 * 2

    shared = _pipeline()
    counter = _Counting(shared)
    drawn = list(validation_draws(shared, valid, 8, 9, 0))
    assert counter.calls == 2
    assert calibrated_sample_scale(shared, valid, max_samples=9, drawn=drawn) == scale
    shared.spec.extra["sample_scale"] = scale
    assert calibrated_scale_gains(shared, valid, max_samples=9, drawn=drawn) == by_scale
    assert calibrated_value_gains(shared, valid, [0, 1], max_samples=9, drawn=drawn) == by_value
    assert counter.calls == 2


def test_the_export_calibrates_from_one_set_of_draws():
    """calibrate_spread as a training run calls it: sample scale, gains by scale and by value (both channels)
    from one pass of draws over the validation samples (three before); the scale calibrated alone."""
    valid, _, _ = _samples(_pipeline(), 9, seed=3)
    cfg = load_config("stormcast-tiny-diffusion", ["model.spread_steps=0", "model.spread_by_value=all",
                                                   "model.spread_by_scale=true"])
    messages = []
    trainer = types.SimpleNamespace(cfg=cfg, stage="diffusion", valid_data=valid, t=types.SimpleNamespace(seed=0),
                                    log=types.SimpleNamespace(message=messages.append))
    pipe = _pipeline()
    pipe.spec.grid["shape"] = list(SHAPE)
    counter = _Counting(pipe)
    calibrate_spread(pipe, trainer)
    assert counter.calls == 1  # 8 of the 9 samples (CALIBRATION_SAMPLES), one batch, for all three calibrations
    extra = pipe.spec.extra
    assert {"sample_scale", "spread_by_scale", "spread_by_value"} <= set(extra)
    alone = _pipeline()
    assert calibrated_sample_scale(alone, valid) == extra["sample_scale"]
    assert len(messages) == 3
    # without validation times nothing is calibrated, and the log says so with the fix
    messages.clear()
    bare = _pipeline()
    before = dict(bare.spec.extra)
    calibrate_spread(bare, types.SimpleNamespace(**{**vars(trainer), "valid_data": None}))
    assert bare.spec.extra == before
    assert len(messages) == 1 and "not calibrated" in messages[0] and "data.valid_times" in messages[0]
    # calibrated on fewer than FEW_CALIBRATION_SAMPLES samples: calibrated, with a warning that names the fix
    messages.clear()
    few, _, _ = _samples(_pipeline(), FEW_CALIBRATION_SAMPLES - 1, seed=3)
    small = _pipeline()
    calibrate_spread(small, types.SimpleNamespace(**{**vars(trainer), "valid_data": few}))
    assert "sample_scale" in small.spec.extra
    warned = [m for m in messages if m.startswith("warning:")]
    assert len(warned) == 1 and f"on {FEW_CALIBRATION_SAMPLES - 1} validation" in warned[0]
    assert "data.valid_times" in warned[0]


def test_on_a_large_grid_the_export_draws_on_fewer_samples_and_rollouts(monkeypatch):
    """With the pixel bound at 3 samples of this grid, the export's draws cover 3 validation samples and its
    rollouts start from at most 3 validation times (8 on a small grid)."""
    import xkmcast.train.spread as spread
    import xkmcast.train.spread_steps as spread_steps

    valid, _, _ = _samples(_pipeline(), 9, seed=3)
    monkeypatch.setattr(spread, "CALIBRATION_PIXELS", 3 * SHAPE[0] * SHAPE[1])
    asked = {}
    monkeypatch.setattr(spread_steps, "rollout_chains", lambda data, steps, max_chains: asked.setdefault("chains", max_chains) and [])
    cfg = load_config("stormcast-tiny-diffusion", ["model.spread_steps=2"])
    trainer = types.SimpleNamespace(cfg=cfg, stage="diffusion", valid_data=valid, t=types.SimpleNamespace(seed=0),
                                    log=types.SimpleNamespace(message=lambda text: None))
    pipe = _pipeline()
    pipe.spec.grid["shape"] = list(SHAPE)
    drawn_on = []
    inner = pipe.calibration_draws
    pipe.calibration_draws = lambda batch, seeds: drawn_on.append(len(seeds)) or inner(batch, seeds)
    calibrate_spread(pipe, trainer)
    assert drawn_on == [3] and asked["chains"] == 3
    assert pipe.spec.extra["sample_scale"] == calibrated_sample_scale(_pipeline(), valid, max_samples=3)
