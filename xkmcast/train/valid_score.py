"""Sample-based validation of a diffusion stage: the fair CRPS of the members it draws.

The denoising loss measures how well the network removes noise at levels drawn from its training
prior. Where the members' ensemble mean is the draws' own (a diffusion not centred on a regression
mean: the Stormscope tendency), that loss can keep falling while the members forecast worse; the
validation then scores what inference makes. For each validation sample, ``M`` members are drawn with
the inference sampler (seeds fixed by the sample's index, so successive validations are comparable)
and scored against the truth with the fair CRPS (Ferro 2014), per pixel and channel in normalised
units and averaged:

    CRPS_fair = (1/M) sum_k |x_k - y| - 1/(2 M (M - 1)) sum_{k,l} |x_k - x_l|

with ``x_k`` the members' departures from what the residual is added to
(:meth:`~xkmcast.models.base.Pipeline.members_about_mean`, before the export's spread calibration)
and ``y`` the true residual (:meth:`~xkmcast.models.base.Pipeline.calibration_draws`). Lower is better,
like the loss it replaces.

``training.valid_score``: ``"loss"`` (the stage's training loss), ``"crps"`` (this) or ``"auto"``:
the CRPS for a diffusion stage whose members are not centred (:func:`resolve_valid_score`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, explain

__all__ = ["fair_crps", "members_crps", "resolve_valid_score"]


def fair_crps(members: Tensor, truth: Tensor) -> Tensor:
    """The fair CRPS of ``members`` (M, ...) against ``truth`` (...), elementwise (M >= 2).

    With the departures ``d = x - y`` sorted over the members, ``sum_{k,l} |d_k - d_l| = 2 sum_i
    (2i - M - 1) d_(i)`` (O(M log M) instead of O(M^2))."""
    m = members.shape[0]
    if m < 2:
        raise ValueError(f"the fair CRPS needs at least two members, found {m}")
    d = torch.sort(members - truth.unsqueeze(0), dim=0).values
    coeff = (2.0 * torch.arange(1, m + 1, dtype=d.dtype, device=d.device) - m - 1).reshape(m, *([1] * (d.ndim - 1)))
    return d.abs().mean(dim=0) - (d * coeff).sum(dim=0) / (m * (m - 1))


@torch.no_grad()
def members_crps(pipeline, batch: dict, seeds: list[list[int]]) -> Tensor | None:
    """The fair CRPS (B,) of each sample of ``batch``, averaged over channels and pixels, of members
    drawn with ``seeds[b][k]`` (member k of sample b); None when the pipeline draws no residual members
    (:meth:`~xkmcast.models.base.Pipeline.calibration_draws`)."""
    got = pipeline.calibration_draws(batch, seeds)
    if got is None:
        return None
    draws, residual = got
    members = pipeline.members_about_mean(draws)
    return fair_crps(members.double(), residual.double()).mean(dim=tuple(range(1, residual.ndim)))


def resolve_valid_score(setting: str, stage: str, pipeline) -> str:
    """``"loss"`` or ``"crps"``: ``setting`` itself, or for ``"auto"`` the CRPS when ``stage`` is a
    diffusion whose members make their own ensemble mean (it models a residual and the members are not
    centred), else the loss. ``"crps"`` for a stage that draws no residual members is refused."""
    draws = stage == "diffusion" and pipeline.diffuses_residual
    if setting == "crps" and not draws:
        raise ConfigError(explain("training.valid_score=crps scores the members of a diffusion stage that models "
                                  "a residual", expected="stage diffusion with a residual (a regression mean, or "
                                  "model.input_skip for Stormscope)", found=f"stage {stage}",
                                  fix="use training.valid_score=loss (or auto)"))
    if setting != "auto":
        return setting
    return "crps" if draws and not pipeline.members_centred else "loss"
