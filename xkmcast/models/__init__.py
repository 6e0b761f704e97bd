"""Pipelines that join networks, diffusion and normalisation; bundles to save and load them.

``build_pipeline(spec)`` makes a pipeline with fresh networks from a :class:`ModelSpec`; the model
kinds are the rows of :data:`KINDS` (:mod:`xkmcast.models.kinds`); the spec
factories (:func:`corrdiff_spec`, :func:`stormcast_spec`, :func:`stormscope_spec`, :func:`vit_spec`)
size the networks for given variables and grid.
"""

from __future__ import annotations

from ..errors import BundleError, explain
from .base import ModelSpec, Pipeline
from .kinds import KIND_NAMES, KINDS, ModelKind, get_kind
from .specs import corrdiff_spec, spec_from_config, stormcast_spec, stormscope_spec, vit_spec

__all__ = [
    "ModelSpec", "Pipeline", "build_pipeline", "KINDS", "KIND_NAMES", "ModelKind", "get_kind",
    "corrdiff_spec", "stormcast_spec", "stormscope_spec", "vit_spec", "spec_from_config",
]


def build_pipeline(spec: ModelSpec | dict) -> Pipeline:
    """A pipeline of ``spec.kind`` (its class from :data:`KINDS`) with freshly initialised networks."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec)
    if spec.kind not in KINDS:
        raise BundleError(explain("Unknown model kind", expected=list(KINDS), found=spec.kind))
    return get_kind(spec.kind).pipeline_class().from_spec(spec)
