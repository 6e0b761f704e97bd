"""What a run's log says about the model it is about to train (printed once, at the start).

:func:`setup_messages` describes, from the pipeline and the stage alone: the random windows a
regression trains on (:func:`xkmcast.models.regression_windows.training_window`), the regression's
loss weights per output, the pixels where the targets never have a value (the output is missing there:
``output_valid``, :mod:`xkmcast.data.samples`) and the weights of the regression base's training-mean
fine detail (:mod:`xkmcast.train.mean_detail`).
"""

from __future__ import annotations

from ..models.regression_windows import training_window

__all__ = ["setup_messages"]


def setup_messages(pipeline, stage: str) -> list[str]:
    """The log lines of the module docstring for training ``stage`` of ``pipeline`` (those that apply)."""
    spec, out = pipeline.spec, []
    shape = spec.grid.get("shape")
    window = training_window(spec, stage, shape)
    if window is not None:
        out.append(f"{stage} trains on random {window[0]} x {window[1]} windows of the {shape[0]} x {shape[1]} field")
    loss_weights = spec.loss.get("channel_weights")
    if loss_weights and stage == "regression":
        out.append("regression loss weights: " + ", ".join(
            f"{v} x{w:.2f}" for v, w in zip(spec.output_vars, loss_weights)))
    valid = getattr(pipeline, "output_valid", None)
    if valid is not None and valid.numel() and (stage == "regression" or "regression" not in pipeline.stages):
        never = (valid == 0).flatten(1).sum(dim=1).tolist()
        where = (f"{never[0]} of {valid[0].numel()} pixels" if len(set(never)) == 1 else ", ".join(
            f"{v} {n} of {valid[0].numel()} pixels" for v, n in zip(spec.output_vars, never)))
        out.append("targets with missing values: left out of the losses and calibrations; the output is missing "
                   f"where no training time has a value ({where})")
    weights = spec.extra.get("mean_detail_weights")
    if weights and stage == "regression":
        none = "" if any(weights.values()) else " (none: one training time and no validation)"
        out.append("regression base: the regridded input + the training-mean fine detail, weighed on times it was "
                   f"not computed from{none}: " + ", ".join(f"{v} x{w:.2f}" for v, w in weights.items()))
    return out
