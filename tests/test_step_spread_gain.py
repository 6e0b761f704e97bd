"""The members' spread along a rollout: gains per step calibrated on validation rollouts
(:func:`xkmcast.train.spread_steps.calibrated_step_gains`) and applied by the forecast path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import randomise
from _tiny import FINE_SHAPE, STATE_VARS, Sequences, tiny_stormcast

from xkmcast.train.spread import calibration_index, draws_by_sample, validation_draws
from xkmcast.train.spread_steps import calibrated_step_gains, rollout_chains, rollout_seeds


def _truth(pipe, chains: int, steps: int, seed: int) -> Sequences:
    """Sequences x_{n+1} = R(x_n) + e_n with errors e_n that grow with n, so an ensemble calibrated at
    the first step is under-dispersive later."""
    g = torch.Generator().manual_seed(seed)
    states, backgrounds = [], []
    for _ in range(chains):
        x = torch.randn(1, len(STATE_VARS), *FINE_SHAPE, generator=g)
        bg = torch.randn(steps, 1, *FINE_SHAPE, generator=g)
        seq = [x[0]]
        for n in range(steps):
            with torch.no_grad():
                mean = pipe._regression_mean(x, bg[n:n + 1], pipe.batch_invariant(1, x), {})
            x = mean + 0.3 * (1 + n) * torch.randn(mean.shape, generator=g)
            seq.append(x[0])
        states.append(torch.stack(seq))
        backgrounds.append(bg)
    return Sequences(states, backgrounds)


def test_rollout_chains_follow_consecutive_pairs_and_stop_at_gaps():
    class Pairs:
        pairs = [(0, 1, 1), (1, 2, 1), (2, 3, 1), (5, 6, 1), (6, 7, 1), (0, 2, 2)]

    # one chain of 3 pairs is not enough (MIN_CHAINS): the longest that two chains reach, 2 pairs
    assert rollout_chains(Pairs(), 3, 8) == [[0, 1], [1, 2], [3, 4]]
    assert rollout_chains(Pairs(), 2, 8) == [[0, 1], [1, 2], [3, 4]]
    assert rollout_chains(Pairs(), 2, 2) == [[0, 1], [3, 4]]  # starts spread evenly
    assert rollout_chains(Pairs(), 9, 8) == [[0, 1], [1, 2], [3, 4]]

    class Longer:  # 0 -> 1 -> 2 -> 3 -> 4: two chains of 3 pairs
        pairs = [(0, 1, 1), (1, 2, 1), (2, 3, 1), (3, 4, 1)]

    # as long as two reach, then the shorter chains of 2 pairs or more while there is room
    assert rollout_chains(Longer(), 3, 8) == [[0, 1, 2], [1, 2, 3], [2, 3]]
    assert rollout_chains(Longer(), 9, 8) == [[0, 1, 2], [1, 2, 3], [2, 3]]
    assert rollout_chains(Longer(), 3, 2) == [[0, 1, 2], [1, 2, 3]]  # the full ones first

    class Days:  # one-day windows of 4 times: a chain of 3 pairs from the first, of 2 from the second
        pairs = [(4 * d + h, 4 * d + h + 1, 1) for d in range(3) for h in range(3)]

    assert rollout_chains(Days(), 3, 8) == [[0, 1, 2], [1, 2], [3, 4, 5], [4, 5], [6, 7, 8], [7, 8]]
    assert rollout_chains(Days(), 3, 4) == [[0, 1, 2], [1, 2], [3, 4, 5], [6, 7, 8]]  # the full ones, then room for one

    class One:  # three consecutive times: one chain of 2 pairs
        pairs = [(0, 1, 1), (1, 2, 1)]

    assert rollout_chains(One(), 3, 8) == []

    class Apart:
        pairs = [(0, 1, 1), (2, 3, 1)]

    assert rollout_chains(Apart(), 3, 8) == []


def _dispersion(pipe, data, steps: int, members: int) -> list[np.ndarray]:
    """Per step, per channel ``(1 + 1/M) mean var_k / mean (ensemble mean - truth)^2`` (numpy) of the
    forecast path (``step`` with ``step_index``: another code path than the calibration's) rolled out
    along the chains of ``data``."""
    ratios, chains = [], rollout_chains(data, steps, 8)
    now = [data[chain[0]]["state"][0][None].expand(members, -1, -1, -1) for chain in chains]
    for n in range(steps):
        var, err2 = 0.0, 0.0
        for c, chain in enumerate(chains):
            if n >= len(chain):  # the steps a chain reaches
                continue
            bg = data[chain[n]]["background"][None].expand(members, -1, -1, -1)
            now[c] = pipe.step(now[c], bg, seeds=rollout_seeds(0, members, chain[0], n), step_index=n)
            f, y = now[c].double().numpy(), data[chain[n]]["state"][1].double().numpy()
            var = var + f.var(axis=0, ddof=1).mean(axis=(1, 2))
            err2 = err2 + ((f.mean(axis=0) - y) ** 2).mean(axis=(1, 2))
        ratios.append((1 + 1 / members) * var / err2)
    return ratios


def _centred(seed: int):
    """A tiny StormCast with real weights, members centred on its regression mean, a sampling scale."""
    pipe = tiny_stormcast()
    randomise(pipe, seed=seed)
    pipe.spec.extra["centre_members"] = True
    pipe.spec.extra["sample_scale"] = [0.05, 0.08, 0.06]
    return pipe


def test_the_solved_gains_calibrate_every_step_of_the_validation_rollouts():
    """With the gains as solved, the members' spread equals the ensemble mean's error (fair, M members)
    at every step of the chains; the relative gains are those divided by the first step's."""
    pipe = _centred(seed=21)
    steps, members = 3, 6
    data = _truth(pipe, 4, steps, seed=5)
    solved = calibrated_step_gains(pipe, data, steps=steps, members=members, relative=False)
    relative = calibrated_step_gains(pipe, data, steps=steps, members=members)
    assert len(solved) == steps and np.allclose(relative[0], 1.0)
    np.testing.assert_allclose(np.array(relative), np.array(solved) / np.array(solved[0]), rtol=1e-12)
    assert all(g > 1.05 for g in relative[-1])  # the errors grow faster than the rollout's spread
    pipe.spec.extra["step_spread_gain"] = solved
    for ratio in _dispersion(pipe, data, steps, members):
        np.testing.assert_allclose(ratio, 1.0, rtol=1e-4)
    pipe.spec.extra.pop("step_spread_gain")  # without gains the later steps are under-dispersive
    plain = _dispersion(pipe, data, steps, members)
    assert all((r < 0.8 * plain[0]).all() for r in plain[1:])


def test_the_rollouts_first_steps_are_the_validation_draws_of_their_samples():
    """The export draws each first step once: the calibration samples include the rollouts' starts
    (then others), and rollouts given those samples' validation draws (the same seeds) solve the same
    gains as rollouts that draw their first steps again, without drawing them."""
    pipe = _centred(seed=24)
    steps, members = 3, 4
    data = _truth(pipe, 4, steps, seed=11)
    chains = rollout_chains(data, steps, 2)
    starts = [chain[0] for chain in chains]
    index = calibration_index(len(data), 3, starts=starts)
    assert len(index) == 3 and set(starts) < set(index) and index == sorted(index)
    first = draws_by_sample(index, list(validation_draws(pipe, data, members, 3, seed=0, index=index)))
    assert sorted(first) == index and first[starts[0]][0].shape == (members, len(STATE_VARS), *FINE_SHAPE)
    calls = []
    step_parts = pipe.step_parts
    pipe.step_parts = lambda *a, **k: calls.append(1) or step_parts(*a, **k)
    fresh = calibrated_step_gains(pipe, data, steps=steps, members=members, chains=chains, relative=False)
    drawn_again = len(calls)
    shared = calibrated_step_gains(pipe, data, steps=steps, members=members, chains=chains, relative=False,
                                   first=first)
    steps_drawn = sum(len(chain) for chain in chains)
    assert drawn_again == steps_drawn and len(calls) - drawn_again == steps_drawn - len(chains)
    np.testing.assert_allclose(np.array(shared), np.array(fresh), rtol=1e-4)
    assert not np.allclose(np.array(shared[1:]), 1.0)  # gains that say something


def test_the_rollout_applies_the_gain_of_each_step():
    """Through the forecast rollout: a gain 0 from the second step on leaves each member its own
    regression mean (centred members), which numpy-free torch recomputes from the step before."""
    from xkmcast.fields.forecast import _rollout

    pipe = tiny_stormcast()
    randomise(pipe, seed=22)
    pipe.spec.extra["centre_members"] = True
    c = len(STATE_VARS)
    pipe.spec.extra["step_spread_gain"] = [[1.0] * c, [0.0] * c]
    g = torch.Generator().manual_seed(6)
    state0 = torch.randn(c, *FINE_SHAPE, generator=g).numpy()
    bg = torch.randn(3, 1, *FINE_SHAPE, generator=g).numpy()
    out = _rollout(pipe, state0, bg, np.datetime64("2024-01-01T00"), 4, 0, {"_steps": 3})
    assert out.shape == (4, 4, c, *FINE_SHAPE)
    assert out[:, 1].std(axis=0).mean() > 1e-3  # the first step's members spread
    for n in (2, 3):  # gain 0: the next state of each member is its regression mean
        x = torch.from_numpy(out[:, n - 1])
        b = torch.from_numpy(bg[n - 1]).expand(4, -1, -1, -1)
        with torch.no_grad():
            mean = pipe._regression_mean(x, b, pipe.batch_invariant(4, x), {})
        np.testing.assert_allclose(out[:, n], mean.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("what", ["one member", "no chain", "one chain", "regression only"])
def test_no_gains_where_nothing_can_be_calibrated(what):
    """... nor from one rollout, which cannot tell the lead from its own stretch of weather, even when
    given as the chains to use (a network with real weights, whose draws spread: two chains give gains)."""
    pipe = tiny_stormcast(stages=("regression",)) if what == "regression only" else tiny_stormcast()
    data = _truth(tiny_stormcast(), 2, 1 if what == "no chain" else 3, seed=7)
    chains = None
    if what == "one chain":
        pipe = _centred(seed=21)
        data = _truth(pipe, 2, 3, seed=5)
        assert calibrated_step_gains(pipe, data, members=4) is not None
        chains = rollout_chains(data, 3, 8)[:1]
    assert calibrated_step_gains(pipe, data, members=1 if what == "one member" else 4, chains=chains) is None


def test_uncentred_members_take_the_gains_too():
    """``centre=False``: the members keep their draws' mean, and their spread about it takes the gain."""
    pipe = tiny_stormcast()
    randomise(pipe, seed=23)
    c = len(STATE_VARS)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, c, *FINE_SHAPE, generator=g).expand(4, -1, -1, -1)
    b = torch.randn(1, 1, *FINE_SHAPE, generator=g).expand(4, -1, -1, -1)
    plain = pipe.step(x, b, seeds=[1, 2, 3, 4], centre=False)
    pipe.spec.extra["step_spread_gain"] = [[1.0] * c, [2.5] * c]
    first = pipe.step(x, b, seeds=[1, 2, 3, 4], centre=False, step_index=0)
    later = pipe.step(x, b, seeds=[1, 2, 3, 4], centre=False, step_index=5)
    torch.testing.assert_close(first, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(later.mean(0), plain.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(later - later.mean(0), 2.5 * (plain - plain.mean(0)), rtol=1e-4, atol=1e-5)


def test_rollouts_that_all_start_at_one_hour_are_told_apart():
    """One-day validation windows of 6-hourly times: every 3-step chain starts at 00:00 (its steps fall
    at 06, 12 and 18 every time); a 2-day window has chains from all four hours; daily data has none."""
    import pandas as pd
    import xarray as xr

    from xkmcast.data.samples import ForecastSamples
    from xkmcast.train.spread_steps import chains_time_of_day

    def split(freq: str, positions: list[int]) -> str | None:
        times = pd.date_range("1996-01-05", periods=64, freq=freq)
        ds = xr.Dataset({"t2m": (("time", "y", "x"), np.zeros((64, 4, 4), "f4"))}, coords={"time": times})
        data = ForecastSamples(ds, ["t2m"], times=positions)
        return chains_time_of_day(data, rollout_chains(data, 3, 8))

    one_day_in_four = [4 * d + h for d in (3, 7, 11) for h in range(4)]
    assert split("6h", one_day_in_four) == "00:00"
    assert split("6h", [p + 2 for p in one_day_in_four]) == "12:00"  # windows from noon to noon
    assert split("6h", list(range(40, 48))) is None  # 2 days: chains from 00, 06, 12, 18
    assert split("1D", one_day_in_four) is None  # a daily step: no time of day to mix


@pytest.mark.slow
@pytest.mark.parametrize("fraction, rows", [(0.2, None), (0.3, 3)], ids=["one-rollout", "two-rollouts"])
def test_the_export_stores_step_gains_only_from_two_validation_rollouts(tmp_path, capfd, fraction, rows):
    """16 hourly times, the last 3 validating: one rollout of 2 steps, no gains, and the log says why and
    what gives them; the last 5: two rollouts of 3 steps (pairs 11-14 and 12-15), three rows of gains."""
    import xkmcast
    from xkmcast.train import load_config, train

    torch.set_num_threads(1)
    cfg = load_config("stormscope-tiny", ["data.params={nx: 16, ny: 16, dx: 3000.0, factor: 4, times: 16, seed: 0}",
                                          f"data.valid_fraction={fraction}", "training.duration=2", "training.batch_size=4",
                                          "training.tensorboard=false", f"training.outdir={tmp_path}"])
    result = train(cfg, quiet=True)
    gains = xkmcast.load_model(result.bundle).spec.extra.get("step_spread_gain")
    told = [line for line in capfd.readouterr().err.splitlines() if line.startswith("no gains per step of a rollout")]
    if rows is None:
        assert gains is None and len(told) == 1 and "validation window of 4 consecutive times" in told[0]
    else:
        assert len(gains) == rows and gains[0] == [1.0] * len(gains[0]) and not told
