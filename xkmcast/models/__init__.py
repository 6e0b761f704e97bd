"""Pipelines that join networks, diffusion and normalisation; bundles to save and load them.

``build_pipeline(spec)`` makes a pipeline with fresh networks from a :class:`ModelSpec`; the spec
factories (:func:`corrdiff_spec`, :func:`stormcast_spec`, :func:`stormscope_spec`, :func:`vit_spec`)
size the networks for given variables and grid.
"""

from __future__ import annotations

from ..errors import BundleError, explain
from .base import ModelSpec, Pipeline, member_seeds
from .specs import corrdiff_spec, stormcast_spec, stormscope_spec, vit_spec

__all__ = [
    "ModelSpec", "Pipeline", "member_seeds", "build_pipeline", "PIPELINES",
    "corrdiff_spec", "stormcast_spec", "stormscope_spec", "vit_spec",
]


def _pipelines() -> dict[str, type]:
    from .corrdiff import CorrDiff
    from .stormcast import StormCast, Stormscope
    from .transformer import WeatherTransformer

    return {c.kind: c for c in (CorrDiff, StormCast, Stormscope, WeatherTransformer)}


PIPELINES = ("corrdiff", "stormcast", "stormscope", "vit")


def build_pipeline(spec: ModelSpec | dict) -> Pipeline:
    """A pipeline of ``spec.kind`` with freshly initialised networks."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec)
    classes = _pipelines()
    if spec.kind not in classes:
        raise BundleError(explain("Unknown model kind", expected=sorted(classes), found=spec.kind))
    return classes[spec.kind].from_spec(spec)
