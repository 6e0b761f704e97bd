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

__all__ = ["pipeline_from_mdlus", "mdlus_stage", "assemble_pipeline", "condition_channels"]

_SPEC_KEYS = ("kind", "input_vars", "output_vars")
#: PhysicsNeMo EDM wrappers -> (xkmcast preconditioner, fixed arguments)
_WRAPPERS = {"EDMPrecond": "EDMPrecond", "EDMPrecondSuperResolution": "EDMPrecondSuperResolution",
             "EDMPrecondSR": "EDMPrecondSuperResolution",
             # PhysicsNeMo 2.x's EDMPreconditioner(ConcatConditionWrapper(net)) computes what EDMPrecond does
             "EDMPreconditioner": "EDMPrecond"}


def mdlus_stage(path) -> tuple[dict[str, Any], torch.nn.Module, Any]:
    """(spec.networks entry, the network with its weights, the EDMCheckpoint or None) of a ``.mdlus`` file.

    The entry reproduces PhysicsNeMo's inference: eval-mode group norm, and for the legacy
    ``EDMPrecondSR`` its ``scale_cond_input`` (condition scaled by c_in when true).
    """
    from ..nn.mdlus import EDMCheckpoint, load_mdlus

    obj = load_mdlus(path)
    if isinstance(obj, EDMCheckpoint):
        if obj.wrapper not in _WRAPPERS:
            raise BundleError(explain(f"{Path(path).name}: unsupported EDM preconditioner",
                                      expected=sorted(_WRAPPERS), found=obj.wrapper))
        precond = {"class": _WRAPPERS[obj.wrapper], "sigma_data": obj.sigma_data, "sigma_min": obj.sigma_min,
                   "sigma_max": obj.sigma_max}
        if obj.scale_cond_input:
            precond["scale_cond_input"] = True
        net = obj.network
        entry = {"class": type(net).__name__, "kwargs": net.config, "precond": precond}
    else:
        net, entry = obj, {"class": type(obj).__name__, "kwargs": obj.config, "precond": None}
    entry["physicsnemo_eval_groupnorm"] = True  # reproduce PhysicsNeMo's inference, also once re-saved
    return entry, net, obj if isinstance(obj, EDMCheckpoint) else None


def condition_channels(net: torch.nn.Module, ckpt=None) -> int:
    """Channels of the condition a caller passes to this stage (its own positional channels excluded)."""
    if ckpt is not None:
        return ckpt.condition_channels
    inner = getattr(net, "model", net)
    own = inner.pos_embd.shape[0] if getattr(inner, "pos_embd", None) is not None else 0
    if getattr(net, "img_in_channels", None) is None:
        return -1
    return int(net.img_in_channels) - own


def _inner(module: torch.nn.Module, like: torch.nn.Module) -> torch.nn.Module:
    """The sub-module of a built stage that has the class of ``like`` (through preconditioner / wrappers)."""
    while type(module) is not type(like):
        module = getattr(module, "model", None) if hasattr(module, "sigma_data") else getattr(module, "net", None)
        if module is None:
            raise BundleError(explain("The stage built from the spec does not hold the checkpoint's network",
                                      expected=type(like).__name__))
    return module


def assemble_pipeline(spec: dict[str, Any], stages: dict[str, tuple[dict, torch.nn.Module]], *, device="cpu"):
    """A pipeline of ``spec`` whose stages are ``{stage: (networks entry, network with weights)}``.

    ``spec`` may hold ``lat`` / ``lon`` (2-D), ``grid_mapping`` / ``x`` / ``y`` and ``invariants``
    (normalised, ``(C_inv, H, W)``) besides the :class:`ModelSpec` fields.
    """
    from . import build_pipeline

    known = {f for f in ModelSpec.__dataclass_fields__}
    networks = {name: entry for name, (entry, _) in stages.items()}
    model_spec = ModelSpec.from_dict({**{k: v for k, v in spec.items() if k in known}, "networks": networks})
    pipeline = build_pipeline(model_spec)
    for stage, (_, net) in stages.items():
        _inner(pipeline.stages[stage], net).load_state_dict(net.state_dict())
    if spec.get("lat") is not None and spec.get("lon") is not None:
        pipeline.set_grid(np.asarray(spec["lat"]), np.asarray(spec["lon"]),
                          **{k: spec[k] for k in ("grid_mapping", "x", "y") if spec.get(k) is not None})
    if spec.get("invariants") is not None:
        pipeline.set_invariants(np.asarray(spec["invariants"], dtype=np.float32))
    return pipeline.to(device).eval()


def pipeline_from_mdlus(mdlus: dict[str, str | Path], spec: dict[str, Any], *, device="cpu"):
    """A pipeline whose stages are the networks of ``mdlus`` (``{"regression": path, "diffusion": path}``)."""
    missing = [k for k in _SPEC_KEYS if k not in spec]
    if missing:
        raise BundleError(explain("Importing .mdlus files needs what they do not hold",
                                  expected=list(_SPEC_KEYS) + ["stats", "lat", "lon"], found=sorted(spec),
                                  fix=f"add {missing} to spec="))
    stages = {}
    for stage, path in mdlus.items():
        entry, net, _ = mdlus_stage(path)
        stages[stage] = (entry, net)
    return assemble_pipeline(spec, stages, device=device)
