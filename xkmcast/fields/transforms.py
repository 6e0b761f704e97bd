"""Per-variable value transforms, declared once: forward, inverse and the physical range.

A transform T is applied to a variable's values before its statistics are computed and before it
is normalised (``n = (T(x) - mean) / std``, :mod:`xkmcast.data.stats`); model outputs are mapped
back with T^-1 and clipped to the variable's physical range. Transforms (``eps`` > 0 in the
variable's units):

==========  ============================  ==============================  ==============
name        forward z = T(x)              inverse x = T^-1(z)              domain of x
==========  ============================  ==============================  ==============
``none``    x                             z                               any
``log1p``   log1p(max(x, 0) / eps)        eps expm1(max(z, 0))            x >= 0
``sqrt``    sqrt(max(x, 0))               max(z, 0)^2                     x >= 0
==========  ============================  ==============================  ==============

Both non-trivial transforms are exact inverses of each other on x >= 0 (up to round-off) and
compress heavy precipitation tails; the inverse never returns a value outside the domain, so a
model cannot emit negative precipitation. The physical range of a variable is the CF
``valid_min`` / ``valid_max`` of the variables table (``variables.yaml``) where it is given,
intersected with the domain of its transform (:func:`physical_range`, :func:`clip_physical`).

In a training configuration: ``data.transforms={tp: log1p}`` (or ``{tp: sqrt}``); the statistics
(and so the model bundle) record each variable's transform, so inference inverts it without being
told again. numpy only: works on numpy, dask and xarray objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from ..errors import ConfigError, explain

__all__ = ["Transform", "TRANSFORMS", "get_transform", "parse_transforms", "physical_range", "clip_physical"]


@dataclasses.dataclass(frozen=True)
class Transform:
    """One transform: ``forward(x, eps)``, ``inverse(z, eps)``, and the lower bound of its domain."""

    name: str
    forward: Callable
    inverse: Callable
    lower: float = -np.inf


TRANSFORMS: dict[str, Transform] = {
    "none": Transform("none", lambda x, eps: x, lambda z, eps: z),
    "log1p": Transform("log1p", lambda x, eps: np.log1p(np.maximum(x, 0) / eps),
                       lambda z, eps: eps * np.expm1(np.maximum(z, 0)), lower=0.0),
    "sqrt": Transform("sqrt", lambda x, eps: np.sqrt(np.maximum(x, 0)), lambda z, eps: np.maximum(z, 0) ** 2,
                      lower=0.0),
}


def get_transform(name: str | None) -> Transform:
    """The transform called ``name`` (None: ``none``); ConfigError naming the known ones otherwise."""
    key = "none" if name in (None, "", "identity") else str(name)
    if key not in TRANSFORMS:
        raise ConfigError(explain("Unknown variable transform", expected=sorted(TRANSFORMS), found=name,
                                  fix="write e.g. data.transforms={tp: log1p}"))
    return TRANSFORMS[key]


def parse_transforms(value: Mapping[str, str] | None) -> dict[str, str]:
    """``{variable: transform name}`` checked against :data:`TRANSFORMS` (``none`` entries dropped)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(explain("Transforms must map variables to transform names",
                                  expected="{variable: name}, e.g. {tp: log1p}", found=value))
    return {str(v): get_transform(t).name for v, t in value.items() if get_transform(t).name != "none"}


def physical_range(variable: str, transform: str | None = None) -> tuple[float, float]:
    """``(low, high)`` of a variable: the variables table's valid_min / valid_max (when the name is a
    known canonical variable and they are given), intersected with the transform's domain."""
    low, high = -np.inf, np.inf
    from ..errors import MissingVariableError
    from .variables import variable_info

    try:
        info = variable_info(variable)
    except MissingVariableError:  # not a canonical variable (a store name, a user's own field)
        info = None
    if info is not None:
        low = info.valid_min if info.valid_min is not None else low
        high = info.valid_max if info.valid_max is not None else high
    return max(low, get_transform(transform).lower), high


def clip_physical(x, variable: str, transform: str | None = None):
    """x clipped to :func:`physical_range` (unchanged when the range is unbounded)."""
    low, high = physical_range(variable, transform)
    if np.isfinite(low) or np.isfinite(high):
        return np.clip(x, low if np.isfinite(low) else None, high if np.isfinite(high) else None)
    return x
