"""The members' spread as a function of the value its residual is added to
(:func:`xkmcast.train.spread.calibrated_value_gains`, :meth:`Pipeline.value_gain`): calibrated on samples
whose error grows with the regression mean, checked through the forecast step (another code path),
in normalised units for a plain channel and in physical units for a log-transformed one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny import FINE_SHAPE, Sequences, state_only_stormcast

from xkmcast.data.stats import Stats
from xkmcast.diffusion.seeds import row_seeds
from xkmcast.models.base import piecewise_linear
from xkmcast.train.spread import calibrated_sample_scale, calibrated_value_gains, value_channels

VARS = ["tp", "t2m"]
MEMBERS = 8


def test_piecewise_linear_is_numpys_interp():
    rng = np.random.default_rng(0)
    knots = np.sort(rng.normal(size=5))
    values = rng.uniform(0.5, 2, size=5)
    x = rng.normal(scale=2, size=(3, 7, 11))  # beyond the knots too: constant there
    got = piecewise_linear(torch.from_numpy(x), knots.tolist(), values.tolist()).numpy()
    np.testing.assert_allclose(got, np.interp(x, knots, values), rtol=1e-12)
    np.testing.assert_allclose(piecewise_linear(torch.from_numpy(x), [0.3], [1.7]).numpy(), 1.7)


def _pipeline(tp=(0.8, 0.9)):
    """A state-only StormCast on (tp, t2m) with random weights; tp log1p-transformed with (mean, std) ``tp``."""
    return state_only_stormcast(Stats({"tp": tp[0], "t2m": 288.0}, {"tp": tp[1], "t2m": 5.0}, transforms={"tp": "log1p"}),
                                seed=21)


def _samples(pipe, n: int, seed: int):
    """One-step pairs whose error (normalised units) grows from 0.1 to ~1.2 with the regression mean."""
    g = torch.Generator().manual_seed(seed)
    prev = torch.randn(n, len(VARS), *FINE_SHAPE, generator=g)
    with torch.no_grad():
        mean = pipe._regression_mean(prev, None, None, {})
    lo, hi = mean.amin(dim=(0, 2, 3), keepdim=True), mean.amax(dim=(0, 2, 3), keepdim=True)
    sigma = 0.1 + 1.1 * (mean - lo) / (hi - lo)
    nxt = mean + sigma * torch.randn(mean.shape, generator=g)
    items = [{"state": [prev[i], nxt[i]], "background": torch.zeros(0, *FINE_SHAPE)} for i in range(n)]
    return items, prev, mean, nxt


def _class_ratios(pipe, prev, mean, nxt, channel: int, physical: bool) -> np.ndarray:
    """Per quartile of the regression mean: ``k mean var_k / mean (ensemble mean - truth)^2`` of the
    forecast step's members (physical units: through the output statistics' inverse transform)."""
    outs = []
    for i in range(prev.shape[0]):
        outs.append(pipe.step(prev[i:i + 1].expand(MEMBERS, -1, -1, -1), None, seeds=row_seeds(0, MEMBERS, i)).double())
    x = torch.stack(outs, dim=1)[:, :, channel].numpy()  # (M, n, H, W)
    y = nxt[:, channel].double().numpy()
    k = 1.0
    if physical:
        stats = pipe.stats_for("output")
        x = stats.denormalise(x[None], [VARS[channel]], axis=0)[0]
        y = stats.denormalise(y[None], [VARS[channel]], axis=0)[0]
        k = 1 + 1 / MEMBERS
    mu = mean[:, channel].numpy()
    edges = np.quantile(mu, [0, 0.25, 0.5, 0.75, 1])
    cls = np.clip(np.digitize(mu, edges) - 1, 0, 3)
    var, err2 = x.var(axis=0, ddof=1), (x.mean(axis=0) - y) ** 2
    return np.array([k * var[cls == j].mean() / err2[cls == j].mean() for j in range(4)])


def test_gains_by_value_calibrate_each_class_of_the_mean_in_its_units():
    pipe = _pipeline()
    valid, *_ = _samples(pipe, 6, seed=1)
    pipe.spec.extra["sample_scale"] = calibrated_sample_scale(pipe, valid, members=MEMBERS)
    test = _samples(pipe, 6, seed=2)  # other samples of the same process
    before = [_class_ratios(pipe, *test[1:], c, physical=c == 0) for c in (0, 1)]
    table = calibrated_value_gains(pipe, valid, [0, 1], members=MEMBERS)
    assert [bool(e) for e in table] == [True, True]
    pipe.spec.extra["spread_by_value"] = table
    for c in (0, 1):
        after = _class_ratios(pipe, *test[1:], c, physical=c == 0)
        # one level for all values: dry / small values over-dispersed, large under (by far)
        assert before[c].max() / before[c].min() > 3, before[c]
        np.testing.assert_allclose(after, 1.0, rtol=0.25, err_msg=f"channel {VARS[c]}: {after}")
        assert np.abs(np.log(after)).mean() < 0.5 * np.abs(np.log(before[c])).mean()
    gains = table[1]["gains"]
    assert gains[-1] > 2 * gains[0]  # the plain channel's gain grows with the error the test built


def test_the_channels_calibrated_by_value():
    pipe = _pipeline()
    assert value_channels(pipe, "transformed") == [0]
    assert value_channels(pipe, "all") == [0, 1]
    assert value_channels(pipe, "none") == []
    assert calibrated_value_gains(pipe, [], [0]) is None
    assert calibrated_value_gains(pipe, _samples(pipe, 1, 0)[0], []) is None


@pytest.mark.parametrize("members", [1, 4])
def test_a_table_without_entries_changes_nothing(members):
    pipe = _pipeline()
    _, prev, _, _ = _samples(pipe, 1, seed=3)
    rows = prev.expand(members, -1, -1, -1)
    plain = pipe.step(rows, None, seeds=row_seeds(0, members, 0))
    pipe.spec.extra["spread_by_value"] = [None, None]
    torch.testing.assert_close(pipe.step(rows, None, seeds=row_seeds(0, members, 0)), plain)


def _chains(pipe, chains: int, steps: int, seed: int) -> Sequences:
    """State sequences x_{n+1} = R(x_n) + e_n (errors growing with n and with the value), state only."""
    g = torch.Generator().manual_seed(seed)
    states = []
    for _ in range(chains):
        x = torch.randn(1, len(VARS), *FINE_SHAPE, generator=g)
        seq = [x[0]]
        for n in range(steps):
            with torch.no_grad():
                mean = pipe._regression_mean(x, None, None, {})
            x = mean + 0.3 * (1 + n) * (0.2 + 1.5 * mean.clamp(min=0)) * torch.randn(mean.shape, generator=g)
            seq.append(x[0])
        states.append(torch.stack(seq))
    return Sequences(states, [torch.zeros(steps, 0, *FINE_SHAPE)] * chains)


def test_step_gains_of_a_transformed_channel_calibrate_its_physical_units():
    """Rolled out through the forecast step: at every step, the spread of the members mapped back to
    physical units matches the error of their mean (within the gain grid's resolution) for the
    log-transformed channel, exactly in normalised units for the plain one."""
    from xkmcast.train.spread_steps import calibrated_step_gains, rollout_chains, rollout_seeds

    pipe = _pipeline(tp=(1.0, 2.5))  # strongly curved: x = 0.1 expm1(2.5 z + 1)
    pipe.spec.extra["sample_scale"] = [0.01, 0.01]
    steps, members = 3, 6
    data = _chains(pipe, 4, steps, seed=9)
    solved = calibrated_step_gains(pipe, data, steps=steps, members=members, relative=False)
    pipe.spec.extra["step_spread_gain"] = solved
    stats = pipe.stats_for("output")
    chains = rollout_chains(data, steps, 8)
    now = [data[chain[0]]["state"][0][None].expand(members, -1, -1, -1) for chain in chains]
    for n in range(steps):
        sums = np.zeros((2, 2, 2))  # (normalised, physical) x (var, err2) x channel
        for c, chain in enumerate(chains):
            if n >= len(chain):  # the steps a chain reaches
                continue
            now[c] = pipe.step(now[c], None, seeds=rollout_seeds(0, members, chain[0], n), step_index=n)
            f, y = now[c].double().numpy(), data[chain[n]]["state"][1].double().numpy()
            for u, (ff, yy) in enumerate(((f, y), (stats.denormalise(f, VARS, axis=1), stats.denormalise(y, VARS, axis=0)))):
                sums[u, 0] += ff.var(axis=0, ddof=1).mean(axis=(1, 2))
                sums[u, 1] += ((ff.mean(axis=0) - yy) ** 2).mean(axis=(1, 2))
        ratio = (1 + 1 / members) * sums[:, 0] / sums[:, 1]
        np.testing.assert_allclose(ratio[0, 1], 1.0, rtol=1e-4)  # t2m, normalised: the quadratic's root
        np.testing.assert_allclose(ratio[1, 0], 1.0, rtol=1e-3)  # tp, physical: the balance found by bisection
        assert abs(ratio[0, 0] - 1) > 3e-3, (n, ratio)  # ... which is not the normalised units' balance
