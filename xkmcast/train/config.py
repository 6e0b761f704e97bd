"""The training configuration: one pydantic schema that holds every default.

A run is described by three sections, ``data``, ``model`` and ``training``. Presets
(``xkmcast/presets/<name>.yaml``) and user YAML files only *override* these defaults; a YAML file may
start from another one with ``extends: <preset name or path>``, and dotted ``key=value`` overrides from
the command line are merged last (:mod:`xkmcast.train.config_files` reads them).

Validation is strict (``extra="forbid"``): an unknown key is a :class:`~xkmcast.errors.ConfigError`
naming its dotted path and the nearest valid key (difflib), and the cross-field rules of the model kinds
are checked here (allowed conditions, a diffusion run on a regression needs ``model.regression_bundle``).

The resolved configuration is written as ``config.yaml`` in the run directory
``<training.outdir>/<training.experiment>/<training.run_id>``.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ..diffusion.losses import LOGUNIFORM_SIGMA_MAX, LOGUNIFORM_SIGMA_MIN
from ..diffusion.samplers import SamplerConfig
from ..errors import ConfigError
from ..models.kinds import CONDITIONS, KIND_NAMES, get_kind
from ..models.specs import DEFAULT_SIZE, SIGMA_DATA
from .config_files import apply_overrides, deep_merge, list_presets, read_raw
from .config_times import RecurringWindow, StrictModel, TimeRange, TimeWindows, ValidTimes, time_windows

__all__ = [
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "EMAConfig",
    "TrainingConfig",
    "TrainConfig",
    "TimeRange",
    "RecurringWindow",
    "time_windows",
    "CONDITIONS",
    "list_presets",
    "load_config",
    "read_raw",
    "validate",
    "deep_merge",
    "apply_overrides",
    "save_config",
    "run_dir",
]

Condition = Literal[CONDITIONS]  # type: ignore[valid-type]
Kind = Literal[KIND_NAMES]  # type: ignore[valid-type]


class DataConfig(StrictModel):
    """Where the samples come from.

    ``source``: a catalog entry (``xkmcast catalog list``), a path to a CF zarr / NetCDF dataset of your
    own, or ``"synthetic"`` (:mod:`xkmcast.data.synthetic`, its arguments in ``params``). The fine
    target is ``source``; the coarse input is ``coarse`` (another entry / path) or the target
    block-averaged by ``coarsen``; the coarse input is regridded onto the fine grid with
    ``regrid_method`` and ``regrid_options`` (e.g. ``{allow_outside: true}``, see
    :data:`xkmcast.fields.regrid.OPTIONS`) when the training store is prepared (once, in the run directory). Or ``dataset_class: "package.module:Class"``, a torch Dataset with
    the StormCast sample interface, built as ``Class(split="train"|"valid", **params)``.

    Times: ``train_times`` / ``valid_times``, each one window ``{start, end}`` or a list of windows
    (e.g. validation days spread over the record, so that the validation samples its regimes), and
    ``valid_times`` also ``{every, length}`` (:class:`RecurringWindow`: one day in four is
    ``{every: 4D, length: 1D}``); the
    validation times are never trained on (they are taken out of the training windows, and a
    forecast pair is only formed within one set, so none crosses from one to the other);
    ``train_times`` alone gives its last ``valid_fraction`` to validation; when neither is set the last
    ``valid_fraction`` of the times validate and the first ``train_fraction`` of the others train
    (scaling runs). The normalisation statistics are those of the training times.
    Forecast kinds (StormCast, Stormscope, ViT): ``input_vars`` / ``output_vars`` are the state,
    ``background_vars`` the coarse conditioning. ``patch`` [ph, pw]: train on random patches of the whole
    fields, ``patches_per_sample`` of each: CorrDiff's patched diffusion (one regression forward
    serves them all), and the regression stage (CorrDiff, StormCast) on windows of ``regression_patch``
    (None: ``patch``; a window as large as the field along an axis is the whole axis, so
    ``regression_patch`` >= the field keeps whole-field regression), its loss left out within
    ``regression_halo`` pixels of the window edges that are not domain edges (where the network sees
    its padding instead of the field; :mod:`xkmcast.models.regression_windows`). Windows wrap around
    a periodic longitude; inference stays whole-field. ``num_workers > 0`` loads faster but resuming is then no
    longer bitwise exact. ``transforms``: ``{variable: log1p | sqrt}`` (:mod:`xkmcast.fields.transforms`),
    applied before the statistics and inverted (clipped to the physical range) at output; the model
    bundle records them. On the command line: ``"data.transforms={tp: log1p}"``.
    """

    source: str | None = None
    coarse: str | None = None
    coarsen: int | None = Field(default=None, ge=1)
    dataset_class: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    input_vars: list[str] = Field(default_factory=list)
    output_vars: list[str] = Field(default_factory=list)
    background_vars: list[str] = Field(default_factory=list)
    invariants: list[str] = Field(default_factory=list)
    train_times: TimeWindows = Field(default_factory=TimeRange)
    valid_times: ValidTimes = Field(default_factory=TimeRange)
    valid_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    train_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    regrid_method: Literal["bilinear", "nearest", "conservative"] = "bilinear"
    regrid_options: dict[str, Any] = Field(default_factory=dict)
    patch: list[int] | None = None
    patches_per_sample: int = Field(default=1, ge=1)
    regression_patch: list[int] | None = None
    regression_halo: int = Field(default=8, ge=0)
    num_workers: int = Field(default=0, ge=0)
    transforms: dict[str, str] = Field(default_factory=dict)

    @field_validator("transforms")
    @classmethod
    def _transforms(cls, value: dict[str, str]) -> dict[str, str]:
        from ..fields.transforms import parse_transforms

        return parse_transforms(value)

    @field_validator("dataset_class")
    @classmethod
    def _class_path(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ValueError(f"expected 'package.module:Class', found {value!r}")
        return value

    @field_validator("regrid_options")
    @classmethod
    def _regrid_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        from ..fields.regrid import check_options

        return check_options(value)  # ConfigError is a ValueError: pydantic reports it

    @field_validator("patch", "regression_patch")
    @classmethod
    def _patch(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or min(value) < 1):
            raise ValueError(f"expected [height, width] of positive ints, found {value!r}")
        return value


class LossConfig(StrictModel):
    """Training noise: ln(sigma) ~ N(P_mean, P_std^2) ("lognormal") or log-uniform on
    [sigma_min, sigma_max]; ``P_mean`` / ``P_std`` None take the kind's prior
    (:data:`xkmcast.models.kinds.KINDS`: CorrDiff 0.0, EDM / StormCast -1.2; 1.2).
    ``channel_weights``: one weight per output channel; ``balanced``: a regression with ``input_skip``
    weighs each channel by the inverse mean square of the departure it learns over the training samples
    (:mod:`xkmcast.train.loss_weights`), every other stage equally; ``auto`` (the default): ``balanced``
    for the kinds whose table row says so (the ViT), else equal; None: equal."""

    sigma_distribution: Literal["lognormal", "loguniform"] = "lognormal"
    P_mean: float | None = None
    P_std: float | None = Field(default=None, gt=0)
    sigma_min: float = Field(default=LOGUNIFORM_SIGMA_MIN, gt=0)
    sigma_max: float = Field(default=LOGUNIFORM_SIGMA_MAX, gt=0)
    sigma_data: float | list[float] = SIGMA_DATA
    channel_weights: list[float] | Literal["auto", "balanced"] | None = "auto"


class ModelConfig(StrictModel):
    """The model: its ``kind``, the ``stage`` this run trains, the network size, the conditions.

    ``kind``: a row of :data:`xkmcast.models.kinds.KINDS`, which gives the stages, the conditions
    allowed and their defaults, the noise prior, the sampler defaults and the forecast time step.
    ``sampler``: settings of :class:`xkmcast.diffusion.samplers.SamplerConfig` over the kind's.
    ``size`` is a published network size ("tiny" for CPU tests, "mini", "normal"; see
    :mod:`xkmcast.models.specs`) and ``network`` overrides its constructor arguments (e.g.
    ``model.network.model_channels=32``); channel counts and the image size come from the data.
    ``condition_on_mean`` (CorrDiff): also give the regression mean to the diffusion network.
    ``input_skip``: the regression predicts the departure from its input for the output variables
    that are also inputs: CorrDiff from the coarse input regridded to the fine grid (it starts from
    interpolation; with ``mean_detail`` also from the training-mean fine detail, weighed by how well it
    holds on times it was not computed from, :mod:`xkmcast.train.mean_detail`), StormCast from the current state
    (it starts from persistence), the ViT likewise; the Stormscope diffusion (no regression) models the
    tendency ``x_{t+1} - x_t``, scaled per channel by its RMS over sigma_data (``residual_scale``). None:
    the kind's default (on for all four).
    ``residual_scale`` (diffusion on a regression): the diffusion models ``(y - mu) / s`` per output
    channel with ``s = RMS(y - mu) / sigma_data`` measured on training samples when the run starts
    ("auto"), no scaling ("none"), or the given values. ``spread_calibration`` (with "auto" and
    validation times): at export, members are drawn with the scale that makes their spread about the
    ensemble mean equal the regression's RMS error on the validation times (measured with the trained
    diffusion, :mod:`xkmcast.train.spread`), not on the times it was fitted to; a stepping model's
    spread is then calibrated at each of the first ``spread_steps`` steps of rollouts along consecutive
    validation times (a gain per step and channel; later steps take the last; 0: none). ``spread_by_value``:
    the channels whose spread is also calibrated as a function of the value the residual is added to
    (``transformed``: those with a ``data.transforms`` entry, e.g. precipitation; ``all``; ``none``;
    :func:`xkmcast.train.spread.calibrated_value_gains`). ``spread_by_scale``: the members' spread is first
    shaped by spatial scale, a gain per ring of wavenumber that gives it the error's power spectrum on the
    validation times (:mod:`xkmcast.train.spread_by_scale`). ``spread_by_activity`` (stepping models): a
    rollout reads the state one step before its initial one too and multiplies the members' spread by
    how much the state changed over that step, relative to the validation times' RMS change
    (:mod:`xkmcast.train.spread_activity`). ``centre_members``: the
    members' residuals are centred on their ensemble mean at inference, so the ensemble mean is the
    regression mean and the diffusion gives the spread (:meth:`xkmcast.models.base.Pipeline.members_about_mean`;
    recorded in the bundle, overridable per call with ``centre=``).
    """

    kind: Kind = KIND_NAMES[0]
    stage: Literal["regression", "diffusion"] | None = None
    size: Literal["tiny", "mini", "normal"] = DEFAULT_SIZE
    network: dict[str, Any] = Field(default_factory=dict)
    regression_conditions: list[Condition] | None = None
    diffusion_conditions: list[Condition] | None = None
    regression_bundle: str | None = None
    condition_on_mean: bool = False
    input_skip: bool | None = None
    mean_detail: bool = True
    residual_scale: Literal["auto", "none"] | list[float] = "auto"
    spread_calibration: bool = True
    spread_steps: int = Field(3, ge=0)
    spread_by_value: Literal["transformed", "all", "none"] = "transformed"
    spread_by_scale: bool = True
    spread_by_activity: bool = True
    centre_members: bool = True
    loss: LossConfig = Field(default_factory=LossConfig)
    sampler: dict[str, Any] = Field(default_factory=dict)
    time_step: str | None = None

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            SamplerConfig.from_dict(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _kind_rules(self) -> ModelConfig:
        kind = get_kind(self.kind)
        if self.stage is None:
            self.stage = kind.default_stage()
        if self.stage not in kind.stages:
            raise ValueError(f"kind {self.kind!r} has no {self.stage!r} stage; it has {list(kind.stages)}")
        for stage in ("regression", "diffusion"):
            field = f"{stage}_conditions"
            given = getattr(self, field)
            if given is None:
                setattr(self, field, kind.default_conditions(stage))
                continue
            try:
                kind.check_conditions(stage, given)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        if self.loss.P_mean is None:
            self.loss.P_mean = kind.P_mean
        if self.loss.P_std is None:
            self.loss.P_std = kind.P_std
        if self.input_skip is None:
            self.input_skip = kind.input_skip
        needs_reg = self.stage == "diffusion" and "regression" in (self.diffusion_conditions or [])
        if needs_reg and not self.regression_bundle:
            raise ValueError("a diffusion run conditioned on 'regression' needs model.regression_bundle "
                             "(the bundle exported by the regression run, <run dir>/model); or drop "
                             "'regression' from model.diffusion_conditions for a diffusion-only model")
        return self


class EMAConfig(StrictModel):
    """Exponential moving average of the weights, used for validation and export.

    Per optimizer step of B samples the decay is ``beta = 0.5 ** (B / h)`` with the half-life ``h``
    in samples, ramped up as ``h = min(halflife_samples, rampup_ratio * samples_seen)``; or a fixed
    ``decay`` per step. ``enabled: false`` exports the raw weights."""

    enabled: bool = True
    halflife_samples: float = Field(default=500_000, gt=0)
    rampup_ratio: float | None = Field(default=0.05, gt=0)
    decay: float | None = Field(default=None, ge=0, lt=1)


_DURATION = re.compile(r"^\s*([0-9.]+)\s*(s|sec|m|min|h|d)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


class TrainingConfig(StrictModel):
    """How to train: duration, batch, optimiser, precision, budgets, checkpoints, outputs.

    ``stages: [regression, diffusion]`` trains both stages in one run (a recipe, see
    :mod:`xkmcast.train.recipe`): ``regression_share`` of ``time_budget`` to the regression, the rest
    to the diffusion; one bundle with both stages at ``<run dir>/model``."""

    duration: int = Field(default=1000, ge=1)
    duration_unit: Literal["steps", "samples"] = "steps"
    batch_size: int = Field(default=8, ge=1)
    batch_size_per_rank: int | Literal["auto"] = "auto"
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(default=2e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    schedule: Literal["constant", "cosine", "linear", "rsqrt"] = "constant"
    min_lr: float = Field(default=0.0, ge=0)
    grad_clip: float | None = Field(default=None, gt=0)
    #: "auto": bfloat16 autocast where the device computes bf16 in hardware, else fp32
    #: (:func:`xkmcast.device.resolve_precision`)
    precision: Literal["fp32", "amp-bf16", "auto"] = "fp32"
    ema: EMAConfig = Field(default_factory=EMAConfig)
    validate_every: int = Field(default=100, ge=1)
    valid_batches: int | None = Field(default=8, ge=1)
    #: what a validation scores: the stage's "loss" (on ``valid_batches`` batches), the fair "crps" of
    #: ``valid_members`` members drawn with the inference sampler for ``valid_samples`` samples spread
    #: evenly over the validation set, or "auto" (the CRPS for a diffusion whose members make their own
    #: ensemble mean: :mod:`xkmcast.train.valid_score`)
    valid_score: Literal["auto", "loss", "crps"] = "auto"
    valid_members: int = Field(default=4, ge=2)
    valid_samples: int = Field(default=8, ge=1)
    patience: int | None = Field(default=None, ge=1)
    min_delta: float = 0.0
    #: the weights the bundle holds: "best" = the EMA weights of the lowest validation loss (when a
    #: validation ran; restores the best weights on small data that the run went on to overfit),
    #: "last" = the EMA weights at the end
    export_weights: Literal["best", "last"] = "best"
    time_budget: float | None = Field(default=None, gt=0)
    flops_budget: float | None = Field(default=None, gt=0)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    checkpoint_every: int = Field(default=500, ge=1)
    max_checkpoints: int = Field(default=3, ge=0)
    resume: str | None = "latest"
    seed: int = 0
    outdir: str = "runs"
    experiment: str = "xkmcast"
    run_id: str = "0"
    tensorboard: bool = True
    log_every: int = Field(default=10, ge=1)
    image_every: int | None = Field(default=None, ge=1)
    stages: list[Literal["regression", "diffusion"]] | None = None
    regression_share: float = Field(default=0.5, gt=0, lt=1)

    @field_validator("time_budget", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        """Accept seconds or strings such as ``"90s"``, ``"30m"``, ``"1.5h"``."""
        if isinstance(value, str):
            match = _DURATION.match(value)
            if not match:
                raise ValueError(f"expected seconds or a duration like '30m' / '1.5h', found {value!r}")
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return value

    @field_validator("flops_budget", mode="before")
    @classmethod
    def _float(cls, value: Any) -> Any:
        return float(value) if isinstance(value, str) else value  # YAML 1.1 reads 1e18 as a string

    @field_validator("run_id", mode="before")
    @classmethod
    def _str(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _batch(self) -> TrainingConfig:
        per = self.batch_size_per_rank
        if per != "auto" and (per < 1 or per > self.batch_size):
            raise ValueError(f"batch_size_per_rank must be 'auto' or 1..batch_size ({self.batch_size}), found {per}")
        return self


class TrainConfig(StrictModel):
    """A whole training run."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="after")
    def _data_rules(self) -> TrainConfig:
        d = self.data
        if d.dataset_class is None and d.source is None:
            raise ValueError("data: set data.source (catalog entry, path or 'synthetic') or data.dataset_class")
        if not get_kind(self.model.kind).forecast and d.dataset_class is None and not self.training.stages:
            if not d.output_vars:  # a recipe (training.stages) fills them from the data
                raise ValueError("data.output_vars: list the predicted variables")
        return self

    def model_signature(self) -> dict[str, Any]:
        """The settings a checkpoint's weights depend on, flattened: ``{dotted key: value}`` (not those
        applied when sampling or exporting: the sampler, the spread calibration, centring)."""
        keep = self.model.model_dump(mode="json", by_alias=True, exclude={
            "regression_bundle", "sampler", "spread_calibration", "spread_steps", "spread_by_value", "spread_by_scale",
            "spread_by_activity", "centre_members"})
        data = self.data.model_dump(mode="json", include={"input_vars", "output_vars", "background_vars",
                                                          "invariants", "patch"})
        return _flatten({"model": keep, "data": data})


# ------------------------------------------------------------------------------ validating
def load_config(config: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Resolve a preset name / YAML path / dict plus dotted overrides into a validated TrainConfig."""
    return validate(read_raw(config, overrides))


def validate(raw: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict; every problem becomes one ConfigError listing dotted paths."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise ConfigError("invalid training configuration:\n" + "\n".join(lines)) from None


def _describe(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    path = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = _fields_at(TrainConfig, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"; did you mean {'.'.join([*loc[:-1], close[0]])!r}?" if close else ""
        return f"  - unknown key {path!r}{hint} (valid keys here: {', '.join(sorted(valid))})"
    found = err.get("input")
    found_text = "" if isinstance(found, dict) else f" (found {found!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return f"  - {path}: {msg}{found_text}"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Valid key names of the (sub)model reached by following ``loc`` (keys of dict fields skipped)."""
    current: Any = model
    parts = iter(loc)
    for part in parts:
        fields = getattr(current, "model_fields", None)
        info = next((f for n, f in (fields or {}).items() if part in (n, f.alias)), None)
        if info is None:
            return []
        if getattr(info.annotation, "__origin__", None) is dict:
            next(parts, None)  # the user's dict key (e.g. a stage name)
        current = _submodel(info.annotation)
    if not hasattr(current, "model_fields"):
        return []
    return [f.alias or n for n, f in current.model_fields.items()]


def _submodel(annotation: Any) -> Any:
    """The BaseModel inside ``annotation`` (``Sub``, ``dict[str, Sub]``, ``Sub | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


# ------------------------------------------------------------------------------ the run directory
def run_dir(cfg: TrainConfig) -> Path:
    """``<outdir>/<experiment>/<run_id>``."""
    t = cfg.training
    return Path(t.outdir) / t.experiment / t.run_id


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (atomically)."""
    from ..atomic import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))
