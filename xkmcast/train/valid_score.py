"""Sample-based validation of a diffusion stage: the fair CRPS of the members it draws.

The denoising loss measures how well the network removes noise at levels drawn from its training
prior. Where the members' ensemble mean is the draws' own (a diffusion not centred on a regression
mean: the Stormscope tendency), that loss can keep falling while the members forecast worse; the
validation then scores what inference makes. For each validation sample, ``M`` members are drawn with
the inference sampler (seeds fixed by the sample's index, so successive validations are comparable)
and scored against the truth with the fair CRPS (Ferro 2014; the scoring's own
:func:`~xkmcast.fields.metrics.crps_ensemble_kernel`), per pixel and channel in normalised units and
averaged:

    CRPS_fair = (1/M) sum_k |x_k - y| - 1/(2 M (M - 1)) sum_{k,l} |x_k - x_l|

with ``x_k`` the members' departures from what the residual is added to
(:meth:`~xkmcast.models.base.Pipeline.members_about_mean`, before the export's spread calibration)
and ``y`` the true residual (:meth:`~xkmcast.models.base.Pipeline.calibration_draws`), at the pixels
where the target has a value (the batch's ``mask``). Lower is better, like the loss it replaces.

``training.valid_score``: ``"loss"`` (the stage's training loss), ``"crps"`` (this) or ``"auto"``:
the CRPS for a diffusion stage whose members are not centred (:func:`resolve_valid_score`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..diffusion.losses import reduce_per_sample
from ..errors import ConfigError, explain
from ..fields.metrics import crps_ensemble_kernel

__all__ = ["members_crps", "resolve_valid_score"]


@torch.no_grad()
def members_crps(pipeline, batch: dict, seeds: list[list[int]]) -> Tensor | None:
    """The fair CRPS (B,) of each sample of ``batch``, averaged over channels and pixels, of members
    drawn with ``seeds[b][k]`` (member k of sample b); None when the pipeline draws no residual members
    (:meth:`~xkmcast.models.base.Pipeline.calibration_draws`)."""
    got = pipeline.calibration_draws(batch, seeds)
    if got is None:
        return None
    draws, residual, _ = got
    members = np.moveaxis(pipeline.members_about_mean(draws).double().cpu().numpy(), 0, -1)
    crps = crps_ensemble_kernel(members, residual.double().cpu().numpy(), fair=True)
    mask = batch.get("mask")
    return reduce_per_sample(torch.from_numpy(crps), mask=None if mask is None else mask.cpu())


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
