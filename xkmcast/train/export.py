"""Exporting a run's trained stage as a model bundle ``<run dir>/model``.

The bundle holds the pipeline with the trained stage's EMA weights: the best validation's with
``training.export_weights: best`` once a validation kept them, else those at the end
(:meth:`xkmcast.train.trainer.Trainer.exported_weights`). Only the main process writes; with FSDP the
full weights are gathered first and loaded into an unsharded copy of the pipeline. Before writing, a
diffusion stage's members get their spread calibrated on the validation times with the exported
weights (:func:`calibrate_spread`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from . import distributed as D

__all__ = ["export_run", "calibrate_spread"]


def export_run(trainer) -> Path | None:
    """Write ``trainer``'s bundle (see the module docstring); the path on the main process, else None."""
    from ..models.bundle import save_bundle

    which, weights = trainer.exported_weights()
    path = None
    if trainer.env.distributed and trainer.t.strategy == "fsdp":
        weights = weights if which == "best" else trainer._weights_copy()
        if trainer.env.is_main:
            fresh = unsharded_copy(trainer.pipeline, trainer.stage, weights).eval()
            calibrate_spread(fresh, trainer)
            path = save_bundle(fresh, trainer.dir / "model")
    elif trainer.env.is_main:
        with trainer._ema_weights(), loaded(trainer.module, weights), trainer._eval_mode():
            trainer.pipeline.stages[trainer.stage] = trainer.module
            try:
                calibrate_spread(trainer.pipeline, trainer)
                path = save_bundle(trainer.pipeline, trainer.dir / "model")
            finally:
                trainer.pipeline.stages[trainer.stage] = trainer.wrapped
    if trainer.env.is_main and which == "best":
        step = min(trainer.valid_losses, key=lambda sv: sv[1])[0]
        trainer.log.message(f"exported the weights of the best validation (step {step}, {trainer.valid_score} {trainer.best:.4g})")
    D.barrier(trainer.env)
    return path


def calibrate_spread(pipeline, trainer) -> None:
    """A diffusion stage modelling a residual, ``model.spread_calibration`` (with ``residual_scale: auto``)
    and validation times: calibrate its members' spread (:mod:`xkmcast.train.spread`) -- the sampling
    scale on a regression mean, else the spread factor about the ensemble mean -- into ``pipeline.spec.extra``;
    then with ``model.spread_by_scale`` its gain by spatial scale (:mod:`.spread_by_scale`), then the gains by
    value of the channels ``model.spread_by_value`` names (:func:`.spread.value_channels`), then a stepping
    model's gains for the first ``model.spread_steps`` steps of a rollout and, with ``model.spread_by_activity``,
    the reference of its spread by activity (:mod:`.spread_activity`). The first three share one set of
    validation draws (:func:`.spread.validation_draws`) on :func:`.spread.calibration_samples` samples; the
    rollouts (:mod:`.spread_steps`) start from as many validation times at most, those samples, and take
    their draws as the first steps (:func:`.spread.calibration_index`)."""
    from .spread import (CALIBRATION_MEMBERS, FEW_CALIBRATION_SAMPLES, calibrated_sample_scale,
                         calibrated_spread_factor, calibrated_value_gains, calibration_index, calibration_samples,
                         draws_by_sample, validation_draws, value_channels)
    from .spread_activity import activity_reference
    from .spread_by_scale import calibrated_scale_gains
    from .spread_steps import MAX_CHAINS, MIN_CHAINS, calibrated_step_gains, chains_time_of_day, rollout_chains

    m = trainer.cfg.model
    if trainer.stage != "diffusion" or not m.spread_calibration or m.residual_scale != "auto":
        return
    valid, seed = trainer.valid_data, trainer.t.seed
    if valid is None or len(valid) == 0:
        trainer.log.message("warning: no validation times, so the members' spread is not calibrated (it is the "
                            "diffusion's own, often too narrow or too wide): give data.valid_times")
        return
    samples = calibration_samples(pipeline.spec.grid.get("shape"), pipeline.device)
    steps = m.spread_steps if pipeline.model_kind.forecast else 0  # rollouts: stepping models only
    chains = rollout_chains(valid, steps, min(MAX_CHAINS, samples)) if steps > 0 else []
    index = calibration_index(len(valid), samples, starts=[chain[0] for chain in chains])
    drawn = list(validation_draws(pipeline, valid, CALIBRATION_MEMBERS, samples, seed, index=index))
    on_mean = "regression" in pipeline.stages
    key, fn = ("sample_scale", calibrated_sample_scale) if on_mean else ("spread_factor", calibrated_spread_factor)
    values = fn(pipeline, valid, max_samples=samples, seed=seed, drawn=drawn)
    if values is None:
        return
    names = pipeline.spec.output_vars
    pipeline.spec.extra[key] = values
    trainer.log.message(f"members' spread calibrated on the validation times: {key} "
                        + ", ".join(f"{v}={x:.3g}" for v, x in zip(names, values)))
    if len(valid) < FEW_CALIBRATION_SAMPLES:
        trainer.log.message(f"warning: the members' spread is calibrated on {len(valid)} validation sample(s), "
                            "which stand for little weather: on other times the ensemble may be a third too narrow "
                            f"or too wide; give {FEW_CALIBRATION_SAMPLES} or more (data.valid_times)")
    by_scale = (calibrated_scale_gains(pipeline, valid, max_samples=samples, seed=seed, drawn=drawn)
                if m.spread_by_scale else None)
    if by_scale is not None:
        pipeline.spec.extra["spread_by_scale"] = by_scale
        trainer.log.message("members' spread calibrated by scale on the validation times: "
                            + "; ".join(f"{v} x{e['gains'][0]:.2f} (largest) .. x{e['gains'][-1]:.2f} (smallest)"
                                        for v, e in zip(names, by_scale) if e))
    by_value = calibrated_value_gains(pipeline, valid, value_channels(pipeline, m.spread_by_value),
                                      max_samples=samples, seed=seed, drawn=drawn)
    if by_value is not None:
        pipeline.spec.extra["spread_by_value"] = by_value
        trainer.log.message("members' spread calibrated by value on the validation times: "
                            + "; ".join(f"{v} x{min(e['gains']):.2f}..{max(e['gains']):.2f}"
                                        for v, e in zip(names, by_value) if e))
    gains = calibrated_step_gains(pipeline, valid, steps=m.spread_steps, members=CALIBRATION_MEMBERS, seed=seed,
                                  chains=chains, first=draws_by_sample(index, drawn)) if chains else None
    if gains is not None:
        pipeline.spec.extra["step_spread_gain"] = gains
        trainer.log.message("members' spread calibrated on validation rollouts: gain per step "
                            + "; ".join(", ".join(f"{v}={g:.2f}" for v, g in zip(names, row)) for row in gains))
        hour = chains_time_of_day(valid, chains)
        if hour is not None:
            longest = [chain for chain in chains if len(chain) == len(gains)]
            trainer.log.message(f"warning: the {len(longest)} validation rollouts behind the last step's gain all "
                                f"start at {hour}, so that gain is also that hour's; validation windows longer than "
                                f"{m.spread_steps + 1} times (data.valid_times) start rollouts at several hours")
    elif steps > 0 and not chains:
        trainer.log.message(f"no gains per step of a rollout: they need {MIN_CHAINS} validation rollouts of 2 steps "
                            "or more, which a validation window of 4 consecutive times gives "
                            f"({m.spread_steps + MIN_CHAINS} for {m.spread_steps} steps: data.valid_times); the "
                            "members' spread grows along a rollout as the one-step calibration draws it")
    reference = activity_reference(valid) if m.spread_by_activity and pipeline.model_kind.forecast else None
    if reference is not None:
        pipeline.spec.extra["spread_by_activity"] = reference
        trainer.log.message("members' spread scaled by the initial state's change over the step before it, "
                            "relative to the validation times' RMS change: "
                            + ", ".join(f"{v}={r:.3g}" for v, r in zip(names, reference)))


@contextlib.contextmanager
def loaded(module: torch.nn.Module, weights: dict[str, torch.Tensor] | None):
    """``module`` with ``weights`` loaded for the duration of the block (nothing when None)."""
    if weights is None:
        yield
        return
    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
    module.load_state_dict(weights)
    try:
        yield
    finally:
        module.load_state_dict(saved)


def unsharded_copy(pipeline, stage: str, full_state: dict):
    """A fresh pipeline of the same spec with the other stages copied and ``full_state`` in ``stage``."""
    from ..models import build_pipeline

    fresh = build_pipeline(pipeline.spec)
    for name, module in fresh.stages.items():
        module.load_state_dict(full_state if name == stage else pipeline.stages[name].state_dict())
    for name, buf in pipeline.named_buffers(recurse=False):
        getattr(fresh, name).resize_(buf.shape).copy_(buf.cpu())
    return fresh
