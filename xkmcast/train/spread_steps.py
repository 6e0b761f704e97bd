"""The per-step gains of a stepping model's members (:func:`calibrated_step_gains`).

The sampling scale and the gains by value (:mod:`xkmcast.train.spread`) calibrate one step from a true
state. In a rollout the members' spread at step n is what the steps before left (the network maps each
member's state, and a smooth regression contracts their differences) plus the new draws', so an
ensemble calibrated at the first step is under-dispersive later. Rolled out from validation
times along consecutive validation pairs, each member is ``x_k = b_k + g_c d_k`` at step n (``b_k``
its own part, ``d_k`` the spread of the draws: :meth:`StormCast.step_parts`) and the per-channel
gain ``g_c`` of that step solves, over the chains that reach it and their pixels,

    mean var_k(b + g d) = mean (y - mean_k b)^2 / (1 + 1/M)
    i.e.  g^2 mean var_k(d) + 2 g mean cov_k(b, d) + mean var_k(b) - T = 0

(ddof 1; the larger root, 0 when the spread the steps before left already exceeds ``T``; a channel
with a value transform: the same balance in physical units, ``x_k = T^-1(b_k + g d_k)`` and its
ensemble mean's error, solved by bisection); the members
continue with that gain to the next step. It takes :data:`MIN_CHAINS` rollouts: one cannot tell how the
spread grows with the lead from how it grows in its own stretch of weather (the hurricane nowcast's one
validation rollout gave a second-step gain of 0.74 that left the held-out 2-3 h under-dispersive,
spread-skill 0.69-0.70; without it 0.97-1.10). The gains are then divided by the first step's: they set
how the spread grows along a rollout, and its level stays the first step's sampling scale (made
on all validation samples, where the chains are a few; a spread growing linearly with the gains, the
chains' spread-skill ratio becomes ``1 / g_1`` at every step). A chain shorter than the longest still
measures the steps it reaches (:func:`rollout_chains`): with one-day validation windows of 6-hourly
data, each window holds one chain of 3 steps, from 00:00, and one of 2, from 06:00, and the second
step's gain solved on the three windows' 3-step chains alone mixed the lead with that hour (a
5-minute StormCast of bench/science.py's blizzard: second-step gains t2m 1.34, msl 1.66 from the three
00:00 chains, 0.87, 1.36 with the three 06:00 ones too: docs/guide/training.md).

The rollouts' first steps are the validation draws the export's other calibrations share when the
rollouts start at their samples (:func:`~xkmcast.train.spread.calibration_index`,
:func:`~xkmcast.train.spread.draws_by_sample`): member k of the rollout from sample i draws its first
step with the seed of draw k of sample i (:func:`rollout_seeds`), so they are the same draws, made once.
"""

from __future__ import annotations

import numpy as np
import torch

from .spread import _balance_gain, _evenly_spread, _physical_moments, _physical_units, draw_seeds

__all__ = ["calibrated_step_gains", "rollout_chains", "rollout_seeds", "chains_time_of_day", "MAX_CHAINS", "MIN_CHAINS"]

#: validation rollouts that calibrate the step gains, at most
MAX_CHAINS = 8
#: validation rollouts the step gains need, at least (module docstring)
MIN_CHAINS = 2


def rollout_seeds(seed: int, members: int, start: int, step: int) -> list[int]:
    """The seeds of the ``members`` members of the calibration rollout from sample ``start`` at ``step``
    (0: the first): those of that sample's validation draws at step 0
    (:func:`~xkmcast.train.spread.draw_seeds`), ``row_seeds(seed, M, start, step)`` after."""
    from ..diffusion.seeds import row_seeds

    return draw_seeds(seed, members, start) if step == 0 else row_seeds(seed, members, start, step)


def rollout_chains(dataset, steps: int, max_chains: int) -> list[list[int]]:
    """Up to ``max_chains`` lists of indices of ``dataset`` (a
    :class:`~xkmcast.data.samples.ForecastSamples`) whose one-step pairs follow each other (the next state
    of one is the previous state of the next), sorted by their first pair: the chains of ``length``
    pairs, ``length`` the longest that :data:`MIN_CHAINS` reach up to ``steps`` (down to 2), their starts
    spread evenly, then, while there is room, the shorter ones of 2 pairs or more (spread evenly): a
    step's gain is solved on every chain that reaches it, so the steps that short chains reach are
    measured on more weather and, in windows of a few times, from more hours of the day (one-day
    windows of 6-hourly data: chains of 3 pairs from 00:00 and of 2 from 06:00). Empty when not even
    :data:`MIN_CHAINS` chains of 2 pairs are there."""
    pairs = getattr(dataset, "pairs", None)
    if not pairs:
        return []
    after = {i: index for index, (i, _, k) in enumerate(pairs) if k == 1}
    chains = []
    for index, (i, j, k) in enumerate(pairs):
        if k != 1:
            continue
        chain = [index]
        while len(chain) < steps and pairs[chain[-1]][1] in after:
            chain.append(after[pairs[chain[-1]][1]])
        chains.append(chain)
    lengths = sorted((len(c) for c in chains), reverse=True)
    if len(lengths) < MIN_CHAINS or lengths[MIN_CHAINS - 1] < 2:
        return []
    length = lengths[MIN_CHAINS - 1]  # the longest that MIN_CHAINS chains reach
    full = [c[:length] for c in chains if len(c) >= length]
    short = [c for c in chains if 2 <= len(c) < length]
    picked = [full[i] for i in _evenly_spread(len(full), max_chains)]
    if len(picked) < max_chains:
        picked += [short[i] for i in _evenly_spread(len(short), max_chains - len(picked))]
    return sorted(picked, key=lambda chain: chain[0])


def chains_time_of_day(dataset, chains: list[list[int]]) -> str | None:
    """``"HH:MM"`` when every one of ``chains`` (:func:`rollout_chains`) that reaches the last step starts
    at that time of day and ``dataset``'s step is shorter than a day: then that step of every chain falls
    at the same hour, and the gain solved there mixes the lead with the time of day (one-day validation
    windows of 6-hourly data: the chains of 3 pairs all start at 00:00). None otherwise, or when
    ``dataset`` has no times."""
    times = getattr(dataset, "time_values", None)
    step = getattr(dataset, "step", None)
    if not chains or times is None or not np.issubdtype(np.asarray(times).dtype, np.datetime64) \
            or np.timedelta64(step) >= np.timedelta64(1, "D"):
        return None
    longest = max(len(chain) for chain in chains)
    starts = {str(np.datetime64(times[dataset.pairs[chain[0]][0]], "m"))[11:16] for chain in chains
              if len(chain) == longest}
    return starts.pop() if len(starts) == 1 else None


def _solve_gain(var_b: torch.Tensor, var_d: torch.Tensor, cov: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The larger root g >= 0 of ``var_d g^2 + 2 cov g + var_b - target = 0`` per channel (where there is
    none, the g >= 0 that brings the spread closest to the target)."""
    disc = cov ** 2 - var_d * (var_b - target)
    root = (-cov + disc.clamp(min=0).sqrt()) / var_d.clamp(min=1e-30)
    return root.clamp(min=0)


@torch.no_grad()
def calibrated_step_gains(pipeline, dataset, steps: int = 3, members: int = 8, max_chains: int = MAX_CHAINS,
                          seed: int = 0, relative: bool = True, chains: list[list[int]] | None = None,
                          first: dict | None = None) -> list[list[float]] | None:
    """The per-step gains of the module docstring (``relative``: divided by the first step's, so the
    first row is ones; else as solved): one row per step (``steps`` of them at most, fewer
    when the validation times hold no chain that long), one value per output channel, measured on up
    to ``max_chains`` rollouts of ``members`` members along consecutive pairs of ``dataset``
    (``chains``: those rollouts when the caller has them, :func:`rollout_chains`), step n's gain over
    the chains that reach it; member k
    of chain c at step n is seeded by :func:`rollout_seeds`. ``first``: the validation draws of the
    chains' first samples already made (:func:`~xkmcast.train.spread.draws_by_sample`, ``members``
    each), taken as their first steps instead of drawing them again. None when the pipeline has no
    spread to gain (no ``step_parts``, one member, draws taken as they are) or fewer than
    :data:`MIN_CHAINS` chains of 2 steps."""
    from torch.utils.data import default_collate

    if chains is None:
        chains = rollout_chains(dataset, steps, max_chains)
    if members < 2 or len(chains) < MIN_CHAINS or not hasattr(pipeline, "step_parts"):
        return None
    device = pipeline.device
    first = {i: got for i, got in (first or {}).items() if got[0].shape[0] == members}

    def rows(t):  # (1, ...) -> (M, ...)
        return None if t is None else t.to(device).expand(members, *t.shape[1:])

    physical = {c: f for c in range(len(pipeline.spec.output_vars)) if (f := _physical_units(pipeline, c)) is not None}
    states: dict[int, torch.Tensor] = {}
    gains = []
    for n in range(max(len(chain) for chain in chains)):
        sums = torch.zeros(4, len(pipeline.spec.output_vars), dtype=torch.float64)
        count, parts = 0, {}
        for c, chain in enumerate(chains):
            if n >= len(chain):  # a shorter chain: the steps it reaches only
                continue
            batch = default_collate([dataset[chain[n]]])
            prev, nxt, background, _ = pipeline.unpack(batch)
            if n == 0 and chain[0] in first:  # the validation draws of this sample, with their base
                draws, drawn_base = first[chain[0]]
                base, spread = pipeline.split_draws(draws.to(device), rows(drawn_base[None]))
            else:
                x = states[c] if c in states else rows(prev)
                label = batch.get("lead_time_label")
                base, spread = pipeline.step_parts(x, rows(background), seeds=rollout_seeds(seed, members, chain[0], n),
                                                   lead_time_label=rows(label))
            if spread is None:
                return None
            b, d, y = base.double(), spread.double(), nxt.to(device).double()
            sums[0] += b.var(dim=0).sum(dim=(1, 2)).cpu()
            sums[1] += d.var(dim=0).sum(dim=(1, 2)).cpu()
            sums[2] += ((b - b.mean(0)) * d).sum(dim=0).div(members - 1).sum(dim=(1, 2)).cpu()
            sums[3] += (y[0] - b.mean(0)).pow(2).sum(dim=(1, 2)).cpu()
            count += y.shape[-2] * y.shape[-1]
            parts[c] = (base, spread, y[0])
        var_b, var_d, cov, err2 = sums / count
        if bool((var_d <= 0).any()):
            return None
        gain = _solve_gain(var_b, var_d, cov, err2 / (1 + 1 / members))
        for c, to_physical in physical.items():  # a transformed channel: in its physical units
            centre, spread_c, truth = (torch.cat([t[..., c, :, :].double().reshape(*t.shape[:-3], -1).cpu()
                                                  for t in column], dim=-1) for column in zip(*parts.values()))
            gain[c] = _balance_gain(lambda g: _physical_moments(centre, spread_c, truth, g, to_physical), 1 + 1 / members)
        gains.append([float(g) for g in gain])
        g = gain.to(device=device, dtype=torch.float32).reshape(1, -1, 1, 1)
        states = {c: base + g * spread for c, (base, spread, _) in parts.items()}
    if not relative:
        return gains
    return [[g / f if f > 0 else 1.0 for g, f in zip(row, gains[0])] for row in gains]
