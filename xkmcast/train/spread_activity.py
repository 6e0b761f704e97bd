"""The reference of a stepping model's spread by activity (:func:`activity_reference`).

A spread calibrated on the validation times is right for weather that moves as much as theirs did: on
days whose weather moves more the ensemble is too narrow (the blizzard record of bench/science.py: its
held-out days change 4-28 % more in 6 hours than its validation days, and the one-step error of a
StormCast regression there grows with the state's change over the step before it, not with the change
the regression predicts). So a rollout multiplies the members' spread by the initial state's activity
over the validation samples' (:meth:`xkmcast.models.stormcast.StormCast.rollout_context`):

    f_c = a_c(x_0, x_{-1}) / r_c,   a_c = RMS_{y,x}(x_0 - x_{-1})_c,   r_c = sqrt(mean_i a_c(i)^2)

``i`` over the validation samples whose state one step before is there too (normalised states), so that
``mean_i f_c^2 = 1`` and the spread calibrated on those samples keeps its mean variance there.
"""

from __future__ import annotations

import torch

__all__ = ["activity_reference", "MIN_ACTIVITY_SAMPLES"]

#: validation samples with a predecessor that the reference needs, at least
MIN_ACTIVITY_SAMPLES = 2


@torch.no_grad()
def activity_reference(dataset) -> list[float] | None:
    """``r_c`` of the module doc over the one-step pairs of ``dataset`` (a
    :class:`~xkmcast.data.samples.ForecastSamples`) whose previous state is the next state of another
    pair; None when fewer than :data:`MIN_ACTIVITY_SAMPLES` have one, or when a channel's is 0 (a state
    that never changes)."""
    from ..models.stormcast import state_activity

    pairs = getattr(dataset, "pairs", None) or []
    before = {j: index for index, (i, j, k) in enumerate(pairs) if k == 1}  # the one-step pair ending at j
    found = [before[i] for i, _, k in pairs if k == 1 and i in before]  # its states: x_{-1}, x_0 of a sample
    if len(found) < MIN_ACTIVITY_SAMPLES:
        return None
    squares = []
    for index in found:
        previous, state = dataset[index]["state"]
        squares.append(state_activity(state[None], previous[None])[0] ** 2)
    reference = torch.stack(squares).mean(dim=0).sqrt()
    if not bool((reference > 0).all()):
        return None
    return [float(r) for r in reference]
