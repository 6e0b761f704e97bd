"""What a published package does to its outputs after denormalisation (``spec.extra["output_recipe"]``).

Some packages (CorrDiff COSMO-REA) predict channels in a transformed space and post-process them in
physical space. The recipe is JSON (stored in the model spec) keyed by output channel name; the steps,
in this order, on ``x`` = the denormalised value:

1. ``inverse``: ``{name: {"transform": t, "eps": e, "scale": s}}`` inverts the forward transform
   ``log_eps``  ``z = log(1 + x / e)``                      ->  ``x = e expm1(z)``,
   ``asinh``    ``z = asinh(x / e)``                        ->  ``x = e sinh(z)``,
   ``logit_eps`` ``z = logit(e + (1 - 2 e) x / s)``         ->  ``x = s (sigmoid(z) - e) / (1 - 2 e)``;
2. with ``"clamp": true``: ``log_eps`` channels to ``x >= 0``, ``logit_eps`` ones to ``[0, s]``, then
   ``bounds`` ``{name: [min | None, max | None]}`` (all minima, then all maxima), then the solar gate
   ``sza_gate`` ``{name: [threshold th, half width hw]}``:
   ``x = max(x clip((c - th + hw) / (2 hw), 0, 1), 0)`` with
   ``c = max(cos_zenith(t - gate_hours), cos_zenith(t))`` (:func:`xkmcast.fields.solar.cos_zenith_window_max`);
3. ``unit_scale`` ``{name: factor}``: ``x = factor x`` (e.g. percent -> fraction).

numpy only; no torch, no xarray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["INVERSE_TRANSFORMS", "apply_output_recipe"]

#: forward transform name -> inverse x(z; eps, scale)
INVERSE_TRANSFORMS = {
    "log_eps": lambda z, eps, scale: eps * np.expm1(z),
    "asinh": lambda z, eps, scale: eps * np.sinh(z),
    "logit_eps": lambda z, eps, scale: scale * (1.0 / (1.0 + np.exp(-z)) - eps) / (1.0 - 2.0 * eps),
}


def apply_output_recipe(out: np.ndarray, recipe: Mapping, names: Sequence[str], times, lat, lon) -> np.ndarray:
    """``out`` (..., T, C, H, W) denormalised, channels ``names``, valid times ``times`` (T,), model grid
    ``lat`` / ``lon`` (H, W) -> the physical outputs (float64, see the module docstring)."""
    from .solar import cos_zenith_window_max

    x = np.array(out, dtype=np.float64)
    idx = {n: i for i, n in enumerate(names)}
    for name, t in recipe.get("inverse", {}).items():
        x[..., idx[name], :, :] = INVERSE_TRANSFORMS[t["transform"]](x[..., idx[name], :, :], float(t["eps"]),
                                                                     float(t.get("scale", 1.0)))
    if recipe.get("clamp", True):
        for name, t in recipe.get("inverse", {}).items():
            high = float(t.get("scale", 1.0)) if t["transform"] == "logit_eps" else None
            if t["transform"] != "asinh":  # asinh channels are signed
                x[..., idx[name], :, :] = np.clip(x[..., idx[name], :, :], 0.0, high)
        bounds = recipe.get("bounds", {})
        for side in (0, 1):
            for name, pair in bounds.items():
                if pair[side] is not None:
                    lo, hi = (pair[0], None) if side == 0 else (None, pair[1])
                    x[..., idx[name], :, :] = np.clip(x[..., idx[name], :, :], lo, hi)
        if recipe.get("sza_gate"):
            cz = cos_zenith_window_max(np.asarray(times), lat, lon, float(recipe.get("gate_hours", 1.0)))  # (T, H, W)
            for name, (th, hw) in recipe["sza_gate"].items():
                gate = np.clip((cz - th + hw) / (2.0 * hw), 0.0, 1.0)
                x[..., idx[name], :, :] = np.maximum(x[..., idx[name], :, :] * gate, 0.0)
    for name, factor in recipe.get("unit_scale", {}).items():
        x[..., idx[name], :, :] *= float(factor)
    return x
