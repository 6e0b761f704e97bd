"""Build the network of a pipeline stage from its entry in ``ModelSpec.networks``.

An entry is ``{"class": <network class name>, "kwargs": {...constructor args...}, "precond": {"class":
"EDMPrecond" | "EDMPrecondSuperResolution", ...its args} | None}``. Regression networks
(``RegressionUNet``, ``StormCastUNet``) need no preconditioner. ``"physicsnemo_eval_groupnorm": true``
(set for imported PhysicsNeMo weights) makes group norms use PhysicsNeMo's eval-mode variance
(:func:`xkmcast.nn.unet.match_physicsnemo_eval`), so imports reproduce PhysicsNeMo's outputs. The
preconditioner wraps the network under ``model.`` as PhysicsNeMo does, so state dicts line up.
``"append_grid": {"kind": "sinusoidal", "shape": [H, W]}`` appends fixed grid channels to the
condition (:class:`xkmcast.nn.fixed_inputs.AppendGridChannels`, the network then sits under ``net.``);
``"condition_as_input": true`` calls a regression network as ``net(condition, 0)``
(:class:`xkmcast.nn.fixed_inputs.ConditionAsInput`, also under ``net.``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import BundleError, explain

__all__ = ["build_stage", "PRECONDITIONERS"]


def _preconditioners() -> dict[str, type]:
    from ..diffusion.edm import EDMPrecond, EDMPrecondSuperResolution

    return {"EDMPrecond": EDMPrecond, "EDMPrecondSuperResolution": EDMPrecondSuperResolution}


PRECONDITIONERS = ("EDMPrecond", "EDMPrecondSuperResolution")


def build_stage(entry: dict[str, Any]) -> torch.nn.Module:
    """The (preconditioned) network described by ``entry``."""
    from ..nn import NETWORKS

    cls_name = entry.get("class")
    if cls_name not in NETWORKS:
        raise BundleError(
            explain(
                "Unknown network class in the model spec",
                expected=sorted(NETWORKS),
                found=cls_name,
                fix="use a network class xkmcast provides",
            )
        )
    try:
        net = NETWORKS[cls_name](**entry.get("kwargs", {}))
    except TypeError as exc:
        raise BundleError(explain(f"Cannot build {cls_name} from the spec's arguments", found=str(exc))) from exc
    if entry.get("physicsnemo_eval_groupnorm"):  # imported weights: normalise as PhysicsNeMo does in eval
        from ..nn import match_physicsnemo_eval

        match_physicsnemo_eval(net)
    if entry.get("append_grid"):  # fixed channels appended to the condition (CorrDiff-Taiwan's regression)
        from ..nn.fixed_inputs import AppendGridChannels

        spec = entry["append_grid"]
        net = AppendGridChannels(net, spec["kind"], tuple(spec["shape"]))
    if entry.get("condition_as_input"):  # a regression DiT fed the condition (CorrDiff COSMO-REA's mean)
        from ..nn.fixed_inputs import ConditionAsInput

        net = ConditionAsInput(net)
    precond = dict(entry.get("precond") or {})
    pname = precond.pop("class", None)
    if pname is None:
        return net
    wrappers = _preconditioners()
    if pname not in wrappers:
        raise BundleError(explain("Unknown preconditioner in the model spec", expected=sorted(wrappers), found=pname))
    if "sigma_data" in precond and isinstance(precond["sigma_data"], list):
        precond["sigma_data"] = torch.tensor(precond["sigma_data"], dtype=torch.float32)
    return wrappers[pname](net, **precond)
