"""PhysicsNeMo's module wrappers in ``.mdlus`` files: ``EDMPreconditioner`` and ``ConcatConditionWrapper``.

PhysicsNeMo 2.x saves a module that holds another module by reference: the wrapper's ``args.json``
has ``"model": "__physicsnemo.Module__.model"`` and the referenced entry sits at the top level of the
same ``args.json`` under that key (``__physicsnemo.Module__.model.model`` one level deeper); the
weights of the wrapped module are under ``model.`` (``model.model.`` ...). Earth2Studio's StormScope
and CorrDiff COSMO-REA packages store ``EDMPreconditioner(ConcatConditionWrapper(DiT))`` this way.

* ``EDMPreconditioner(model, sigma_data)``: D(x; sigma) = c_skip x + c_out F(c_in x, log(sigma) / 4, ...)
  with the EDM coefficients (sigma_data a scalar or one per channel, buffer ``sigma_data``);
* ``ConcatConditionWrapper(model, image_cond_key, vector_cond_key)``: F(cat(x, image condition), t,
  vector condition) - xkmcast's preconditioners concatenate the image condition themselves, so the
  wrapper only moves the weights one level down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xkmcast.errors import BundleError, explain

__all__ = ["NESTED_PREFIX", "MODULE_WRAPPERS", "Unwrapped", "unwrap", "wrapped_args"]

NESTED_PREFIX = "__physicsnemo.Module__"
#: wrapper class -> (its own arguments besides ``model``, module it is imported from)
MODULE_WRAPPERS: dict[str, tuple[tuple[str, ...], str]] = {
    "EDMPreconditioner": (("sigma_data",), "physicsnemo.diffusion.preconditioners.preconditioners"),
    "ConcatConditionWrapper": (("image_cond_key", "vector_cond_key"), "physicsnemo.diffusion.utils.model_wrappers"),
}


@dataclass
class Unwrapped:
    """The network inside a chain of wrappers: its class / module / args, the weight prefix, the wrappers."""

    name: str
    module: str
    args: dict[str, Any]
    prefix: str
    wrappers: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (class, weight prefix, args)


def unwrap(args_json: dict[str, Any], source: str) -> Unwrapped:
    """Follow the ``model`` references of the wrappers down to the network."""
    node, prefix, chain = args_json, "", []
    while node.get("__name__") in MODULE_WRAPPERS:
        name = node["__name__"]
        args = dict(node.get("__args__") or {})
        ref = args.pop("model", None)
        unknown = sorted(set(args) - set(MODULE_WRAPPERS[name][0]))
        if unknown:
            raise BundleError(explain(f"{source}: unknown {name} arguments in args.json", expected=list(MODULE_WRAPPERS[name][0]),
                                      found=unknown))  # fmt: skip
        if not isinstance(ref, str) or not ref.startswith(NESTED_PREFIX) or not isinstance(args_json.get(ref), dict):
            raise BundleError(explain(f"{source}: {name} does not reference its wrapped module",
                                      expected=f'"model": "{NESTED_PREFIX}..." with that entry in args.json', found=ref))  # fmt: skip
        chain.append((name, prefix, args))
        node, prefix = args_json[ref], prefix + "model."
    if not isinstance(node.get("__name__"), str) or not isinstance(node.get("__args__"), dict):
        raise BundleError(explain(f"{source}: malformed wrapped module entry", found=sorted(node)))
    return Unwrapped(node["__name__"], str(node.get("__module__", "")), dict(node["__args__"]), prefix, chain)


def wrapped_args(inner: dict[str, Any], sigma_data: float | list[float]) -> dict[str, Any]:
    """``args.json`` of EDMPreconditioner(ConcatConditionWrapper(inner)) as PhysicsNeMo writes it."""
    ref1, ref2 = f"{NESTED_PREFIX}.model", f"{NESTED_PREFIX}.model.model"
    return {
        "__name__": "EDMPreconditioner",
        "__module__": MODULE_WRAPPERS["EDMPreconditioner"][1],
        "__args__": {"model": ref1, "sigma_data": sigma_data},
        ref1: {
            "__name__": "ConcatConditionWrapper",
            "__module__": MODULE_WRAPPERS["ConcatConditionWrapper"][1],
            "__args__": {"model": ref2, "image_cond_key": "cond_concat", "vector_cond_key": "cond_vec"},
        },
        ref2: inner,
    }
