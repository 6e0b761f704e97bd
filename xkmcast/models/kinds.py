"""The model kinds xkmcast knows: one table that configuration, training setup, spec factories,
pipelines, the CLI and the docs read.

A kind is a :class:`ModelKind` row of :data:`KINDS`:

* ``conditions``: its stages (in order) and the conditions each stage accepts, from ``state`` (x_t),
  ``background`` (coarse fields on the model grid; for downscaling the coarse input), ``invariant``
  (static fields) and ``regression`` (the regression mean, for a diffusion stage);
* ``defaults``: the conditions a stage takes when the configuration names none (None: all it accepts);
* ``sigma_prior``: the training noise prior ln sigma ~ N(P_mean, P_std^2) of its diffusion stage, by
  its name in :func:`xkmcast.diffusion.losses.sigma_distribution` ("edm": -1.2, 1.2; "residual": 0, 1.2);
* ``sampler``: the :class:`~xkmcast.diffusion.samplers.SamplerConfig` its bundles default to (None:
  deterministic kind). Every sampling kind defaults to DPM-Solver++(2M) with 10 steps: on real fields
  its CRPS equals Heun-18's at 3.5x fewer network evaluations (CorrDiff downscaling, bench/science.py;
  StormCast, the Stormscope DiT and the precipitation nowcast within 1.2 % at every variable and lead,
  about 3x faster, bench/science_samplers.py). Published packages keep their own sampler;
* ``input_skip``: whether it learns the departure from its input by default (``model.input_skip``:
  the CorrDiff regression from the regridded coarse input, the StormCast regression and the ViT from
  the current state, the Stormscope diffusion the tendency from the current state);
* ``balanced_regression``: its regression loss weighs each output channel by the inverse mean square of
  the departure it learns unless configured otherwise (``model.loss.channel_weights: auto``,
  :mod:`xkmcast.train.loss_weights`): the ViT, whose token vectors write every channel of their patch, so
  that the loss decides which channels get the capacity (on the blizzard's 6-hour steps the unweighted
  loss gives the temperature tendency a tenth of a wind's weight); the U-Nets, measured neutral, do not;
* ``regression_windows``: its regression (a fully convolutional U-Net) can train on windows of the
  field (``data.patch`` / ``data.regression_patch``, :mod:`xkmcast.models.regression_windows`);
* ``patched_diffusion``: its diffusion (a U-Net with a positional grid) can train on random patches of
  ``data.patch`` and sample on overlapping blended patches (:meth:`xkmcast.models.base.Pipeline.patched`);
* ``time_step``: the forecast step (None: a downscaling kind);
* ``sizes``: which network size table it uses (:data:`xkmcast.models.specs.UNET_SIZES`, ``DIT_SIZES``
  or ``VIT_SIZES``, both of the latter from ``TRANSFORMER_SIZES``);
* ``spec`` / ``pipeline``: the spec factory in :mod:`xkmcast.models.specs` and the pipeline class
  (``module:Class`` under :mod:`xkmcast.models`, imported when first needed).

Adding a kind: one row here, its spec factory and its pipeline class.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from ..diffusion.losses import sigma_distribution
from ..diffusion.samplers import SamplerConfig
from ..errors import ConfigError, explain

__all__ = ["CONDITIONS", "STAGES", "ModelKind", "KINDS", "KIND_NAMES", "get_kind"]

#: the condition names, in the order their tensors are concatenated
CONDITIONS: tuple[str, ...] = ("state", "background", "invariant", "regression")
#: the stage names, in training order
STAGES: tuple[str, ...] = ("regression", "diffusion")


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """One model kind (see the module docstring for the fields)."""

    name: str
    pipeline: str
    spec: str
    conditions: Mapping[str, tuple[str, ...]]
    sigma_prior: str = "edm"
    sampler: SamplerConfig | None = SamplerConfig("dpmpp_2m")
    time_step: str | None = None
    input_skip: bool = False
    balanced_regression: bool = False
    regression_windows: bool = False
    patched_diffusion: bool = False
    sizes: str = "unet"
    description: str = ""
    defaults: Mapping[str, tuple[str, ...]] | None = None

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages the kind has, in training order."""
        return tuple(s for s in STAGES if s in self.conditions)

    @property
    def P_mean(self) -> float:
        """The centre of the kind's lognormal noise prior."""
        return float(sigma_distribution(self.sigma_prior).P_mean)

    @property
    def P_std(self) -> float:
        """The width of the kind's lognormal noise prior."""
        return float(sigma_distribution(self.sigma_prior).P_std)

    @property
    def forecast(self) -> bool:
        """Steps a state forward in time (else downscales)."""
        return self.time_step is not None

    def default_stage(self) -> str:
        """The stage a run trains when the configuration names none: the first one."""
        return self.stages[0]

    def stages_for(self, stage: str, diffusion_conditions: Sequence[str] = ()) -> tuple[str, ...]:
        """The networks a pipeline trained at ``stage`` holds: a regression run only its
        regression; a diffusion run also the (frozen) regression when it is conditioned on it."""
        if stage == "regression":
            return ("regression",)
        return ("regression", "diffusion") if "regression" in diffusion_conditions else ("diffusion",)

    def check_conditions(self, stage: str, names: Sequence[str], *, stages: Sequence[str] | None = None,
                         background_vars: Sequence[str] | None = None,
                         invariant_vars: Sequence[str] | None = None) -> None:
        """ConfigError unless ``names`` are conditions ``stage`` accepts; with ``stages``,
        ``background_vars`` / ``invariant_vars`` given, also that what they name exists."""
        if stage not in self.conditions:
            if names:
                raise ConfigError(explain(f"{stage}_conditions: kind {self.name!r} has no {stage} stage, so it "
                                          "takes no conditions", expected=list(self.stages), found=list(names)))
            return
        allowed = self.conditions[stage]
        bad = [c for c in names if c not in allowed]
        if bad:
            hint = " (it is diffusion-only)" if self.stages == ("diffusion",) and "regression" in bad else ""
            raise ConfigError(explain(f"{stage}_conditions: {bad} not allowed for kind {self.name!r}{hint}",
                                      expected=sorted(allowed), found=list(names)))
        if stages is not None and "regression" in names and "regression" not in stages:
            raise ConfigError(explain(f"{stage}_conditions name 'regression' but the model has no regression stage",
                                      expected="a regression stage (or drop 'regression' from the conditions)",
                                      found=list(stages)))
        for cond, given in (("background", background_vars), ("invariant", invariant_vars)):
            if given is not None and cond in names and not given:
                raise ConfigError(explain(f"{cond!r} is a condition but no {cond} variables are given",
                                          expected=f"{cond}_vars", found=[]))

    def default_conditions(self, stage: str) -> list[str]:
        """The conditions of ``stage`` when none are named, sorted as a configuration records them
        ([] when the kind has no such stage; tensors are concatenated in :data:`CONDITIONS` order)."""
        return sorted((self.defaults if self.defaults is not None else self.conditions).get(stage, ()))

    def pipeline_class(self) -> type:
        module, _, name = self.pipeline.partition(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)

    def spec_factory(self):
        from . import specs

        return getattr(specs, self.spec)

    def size_table(self) -> dict[str, dict[str, Any]]:
        from . import specs

        return {"unet": specs.UNET_SIZES, "dit": specs.DIT_SIZES, "vit": specs.VIT_SIZES}[self.sizes]


KINDS: dict[str, ModelKind] = {k.name: k for k in (
    ModelKind(
        "corrdiff", "corrdiff:CorrDiff", "corrdiff_spec",
        conditions={"regression": ("background", "invariant"),
                    "diffusion": ("background", "invariant", "regression")},
        sigma_prior="residual", input_skip=True, regression_windows=True, patched_diffusion=True,
        description="downscaling: regression U-Net + residual EDM diffusion (Mardani et al. 2023)",
    ),
    ModelKind(
        "stormcast", "stormcast:StormCast", "stormcast_spec",
        conditions={"regression": ("state", "background", "invariant"), "diffusion": CONDITIONS},
        time_step="1h", input_skip=True, regression_windows=True, patched_diffusion=True,
        description="forecast: regression U-Net + EDM diffusion (Pathak et al. 2024)",
    ),
    ModelKind(
        "stormscope", "stormcast:Stormscope", "stormscope_spec",
        conditions={"diffusion": ("state", "background", "invariant")},
        time_step="1h", sizes="dit", input_skip=True,
        description="forecast: diffusion-only DiT (PhysicsNeMo layout, neighbourhood attention)",
    ),
    ModelKind(
        "vit", "transformer:WeatherTransformer", "vit_spec",
        conditions={"regression": ("state", "background", "invariant")},
        sampler=None, time_step="6h", sizes="vit", input_skip=True, balanced_regression=True,
        description="forecast: deterministic vision transformer",
    ),
)}

#: the kind names, in table order
KIND_NAMES: tuple[str, ...] = tuple(KINDS)


def get_kind(name: str) -> ModelKind:
    """The row of kind ``name``; ConfigError listing the known kinds otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(explain("Unknown model kind", expected=list(KINDS), found=name)) from None
