"""Import PhysicsNeMo ``.mdlus`` checkpoints as an xkmcast pipeline.

A ``.mdlus`` file holds a network (and, for diffusion, its EDM preconditioner settings) but not what
a pipeline needs around it. ``spec`` supplies that, as in a bundle's ``config.json``:

* ``kind`` (a row of :data:`xkmcast.models.kinds.KINDS`), ``input_vars``, ``output_vars``, ``invariant_vars``,
  ``background_vars``, ``conditions``, ``sampler``, ``time_step``;
* ``stats`` by role (``{"input": {...}, "output": {...}}``, the JSON of
  :class:`xkmcast.data.stats.Stats`);
* the grid: ``lat`` / ``lon`` (2-D lists or arrays) and optionally ``grid_mapping``, ``x``, ``y``;
* ``invariants``: the normalised invariant fields ``(C_inv, H, W)``, if the model uses any.

The networks' classes and constructor arguments come from the files; the result saves as a normal
bundle (:func:`xkmcast.models.bundle.save_bundle`), so the import is done once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BundleError, explain
from .base import ModelSpec

__all__ = ["pipeline_from_mdlus"]

_SPEC_KEYS = ("kind", "input_vars", "output_vars")


def _stage_entry(obj) -> tuple[dict[str, Any], torch.nn.Module]:
    """(spec.networks entry, the network with its weights) of what load_mdlus returned."""
    from ..nn.mdlus import EDMCheckpoint

    if isinstance(obj, EDMCheckpoint):
        # PhysicsNeMo 2.x's EDMPreconditioner(ConcatConditionWrapper(net)) computes what EDMPrecond does
        wrapper = {"EDMPreconditioner": "EDMPrecond"}.get(obj.wrapper, obj.wrapper)
        if wrapper not in ("EDMPrecond", "EDMPrecondSuperResolution"):
            raise BundleError(explain("Unsupported EDM preconditioner in the checkpoint",
                                      expected=["EDMPrecond", "EDMPrecondSuperResolution", "EDMPreconditioner"],
                                      found=obj.wrapper))
        precond = {"class": wrapper, "sigma_data": obj.sigma_data, "sigma_min": obj.sigma_min,
                   "sigma_max": obj.sigma_max}
        net = obj.network
        return {"class": type(net).__name__, "kwargs": net.config, "precond": precond}, net
    return {"class": type(obj).__name__, "kwargs": obj.config, "precond": None}, obj


def pipeline_from_mdlus(mdlus: dict[str, str | Path], spec: dict[str, Any], *, device="cpu"):
    """A pipeline whose stages are the networks of ``mdlus`` (``{"regression": path, "diffusion": path}``)."""
    from ..nn.mdlus import load_mdlus
    from . import build_pipeline

    missing = [k for k in _SPEC_KEYS if k not in spec]
    if missing:
        raise BundleError(explain("Importing .mdlus files needs what they do not hold",
                                  expected=list(_SPEC_KEYS) + ["stats", "lat", "lon"], found=sorted(spec),
                                  fix=f"add {missing} to spec="))
    networks, weights = {}, {}
    for stage, path in mdlus.items():
        entry, net = _stage_entry(load_mdlus(path))
        entry["physicsnemo_eval_groupnorm"] = True  # reproduce PhysicsNeMo's inference, also once re-saved
        networks[stage], weights[stage] = entry, net
    known = {f for f in ModelSpec.__dataclass_fields__}
    model_spec = ModelSpec.from_dict({**{k: v for k, v in spec.items() if k in known}, "networks": networks})
    pipeline = build_pipeline(model_spec)
    for stage, net in weights.items():
        target = pipeline.stages[stage]
        target = getattr(target, "model", target) if networks[stage]["precond"] else target
        target.load_state_dict(net.state_dict())
    if "lat" in spec and "lon" in spec:
        pipeline.set_grid(np.asarray(spec["lat"]), np.asarray(spec["lon"]),
                          **{k: spec[k] for k in ("grid_mapping", "x", "y") if k in spec})
    if spec.get("invariants") is not None:
        pipeline.set_invariants(np.asarray(spec["invariants"], dtype=np.float32))
    return pipeline.to(device).eval()
