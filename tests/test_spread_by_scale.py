"""The members' spread shaped by spatial scale (:mod:`xkmcast.models.scale_filter`,
:func:`xkmcast.train.spread_by_scale.calibrated_scale_gains`): the filter against analytic modes, and the
calibration on samples whose error is smooth while the draws are not, checked through the forecast step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny import state_only_stormcast

from xkmcast.data.stats import Stats
from xkmcast.diffusion.seeds import row_seeds
from xkmcast.models.scale_filter import band_centres, band_power, filter_by_scale
from xkmcast.train.spread import calibrated_sample_scale
from xkmcast.train.spread_by_scale import calibrated_scale_gains

SHAPE = (24, 30)
VARS = ["t2m", "u10m"]
MEMBERS = 8


def _gain(k):
    return 2.0 - 2.5 * k  # a gain falling with wavenumber (values at the knots below)


@pytest.mark.parametrize("periodic_x", [False, True])
@pytest.mark.parametrize("my,mx", [(0, 0), (1, 2), (5, 3), (23, 1), (11, 14)])
def test_a_mode_of_the_even_extension_is_scaled_by_its_gain(my, mx, periodic_x):
    """cos(pi m (i + 1/2) / H) is one Fourier mode of the field mirrored to 2H, at |k| = m / 2H; along a
    periodic x, cos(2 pi m j / W) is one at m / W: the filter multiplies it by g(|k|), exactly."""
    h, w = SHAPE
    i, j = np.arange(h)[:, None], np.arange(w)[None, :]
    along_x = np.cos(2 * np.pi * mx * j / w) if periodic_x else np.cos(np.pi * mx * (j + 0.5) / w)
    field = np.cos(np.pi * my * (i + 0.5) / h) * along_x
    k = np.hypot(my / (2 * h), mx / w if periodic_x else mx / (2 * w))
    knots = band_centres()
    gains = [_gain(c) for c in knots]
    got = filter_by_scale(torch.from_numpy(field)[None, None], knots, gains, periodic_x=periodic_x)[0, 0].numpy()
    expected = np.exp(np.interp(k, knots, np.log(gains))) * field  # linear in log g between the knots
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_unit_gains_change_nothing_and_band_power_sums_every_mode():
    x = torch.randn(3, 2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(filter_by_scale(x, [0.1, 0.3], [1.0, 1.0]), x)
    extended = torch.cat([x, x.flip(-2)], -2)
    extended = torch.cat([extended, extended.flip(-1)], -1)
    total = (torch.fft.rfft2(extended).abs() ** 2).sum(dim=(-2, -1))
    torch.testing.assert_close(band_power(x).sum(-1), total)


def _pipeline():
    return state_only_stormcast(Stats({"t2m": 288.0, "u10m": 0.0}, {"t2m": 5.0, "u10m": 3.0}), SHAPE, seed=5)


def _samples(pipe, n: int, seed: int):
    """One-step pairs whose error is smooth: red noise of power ~ k^-4 (t2m) and k^-2 (u10m)."""
    rng = np.random.default_rng(seed)
    prev = torch.from_numpy(rng.normal(size=(n, len(VARS), *SHAPE))).float()
    with torch.no_grad():
        mean = pipe._regression_mean(prev, None, None, {})
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(SHAPE[0]), np.fft.fftfreq(SHAPE[1]), indexing="ij"))
    amplitude = np.stack([(k + 0.05) ** -slope for slope in (2.0, 1.0)])  # power ~ k^-4 (t2m), k^-2 (u10m)
    amplitude /= np.sqrt((amplitude ** 2).mean(axis=(1, 2), keepdims=True))  # unit variance expected
    smooth = np.fft.ifft2(np.fft.fft2(rng.normal(size=mean.shape)) * amplitude).real
    nxt = mean + 0.5 * torch.from_numpy(smooth).float()
    items = [{"state": [prev[i], nxt[i]], "background": torch.zeros(0, *SHAPE)} for i in range(n)]
    return items, prev, nxt


def _ring_ratios(pipe, prev, nxt) -> np.ndarray:
    """(channel, ring): the forecast step's members' spread power over their mean's error power."""
    spread, error = 0, 0
    for i in range(prev.shape[0]):
        x = pipe.step(prev[i:i + 1].expand(MEMBERS, -1, -1, -1), None, seeds=row_seeds(0, MEMBERS, i)).double()
        spread = spread + band_power(x - x.mean(0)).sum(0) / (MEMBERS - 1)
        error = error + band_power(x.mean(0) - nxt[i].double())
    return (spread / error).numpy()


def test_gains_by_scale_give_the_members_the_errors_spectrum():
    pipe = _pipeline()
    valid, *_ = _samples(pipe, 8, seed=1)
    pipe.spec.extra["sample_scale"] = calibrated_sample_scale(pipe, valid, members=MEMBERS)
    _, prev, nxt = _samples(pipe, 8, seed=2)  # other samples of the same process
    before = _ring_ratios(pipe, prev, nxt)
    table = calibrated_scale_gains(pipe, valid, members=MEMBERS)
    pipe.spec.extra["spread_by_scale"] = table
    after = _ring_ratios(pipe, prev, nxt)
    for c in range(len(VARS)):
        assert before[c, -1] > 20 * before[c, 0], before[c]  # the draws are rougher than the error
        gains = table[c]["gains"]
        assert gains[0] > 4 * gains[-1], gains
        # on other samples, each ring within 25 % (the first ring, a few modes of a steep spectrum: 3x)
        np.testing.assert_allclose(after[c, 1:], 1.0, rtol=0.25, err_msg=f"{VARS[c]}: {after[c]}")
        assert 1 / 3 < after[c, 0] < 3, after[c]
    assert table[0]["gains"][-1] < table[1]["gains"][-1]  # the smoother error, the lower the small-scale gain


def test_the_calibration_balances_each_ring_on_its_own_samples_and_keeps_a_table_it_replaces():
    """On the validation samples themselves the refined knots balance every ring (to 1e-3); a table the
    spec already holds is neither measured through nor lost."""
    pipe = _pipeline()
    valid, prev, nxt = _samples(pipe, 4, seed=3)
    pipe.spec.extra["sample_scale"] = calibrated_sample_scale(pipe, valid, members=MEMBERS)
    old = [{"knots": [0.1], "gains": [0.5]}, None]
    pipe.spec.extra["spread_by_scale"] = old
    table = calibrated_scale_gains(pipe, valid, members=MEMBERS)
    assert pipe.spec.extra["spread_by_scale"] == old
    pipe.spec.extra["spread_by_scale"] = table
    np.testing.assert_allclose(_ring_ratios(pipe, prev, nxt), 1.0, rtol=2e-3)
    assert calibrated_scale_gains(pipe, [], members=MEMBERS) is None
    assert calibrated_scale_gains(pipe, valid, members=1) is None
