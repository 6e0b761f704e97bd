"""The common interface of xkmcast pipelines (networks + diffusion + what they need to run).

A pipeline works on normalised tensors on the model grid; it knows nothing of xarray. The bridge to
xarray (variable selection, regridding, normalisation) is :mod:`xkmcast.fields.downscale`, and training is
:mod:`xkmcast.train`. Both only use what is defined here:

* ``pipeline.spec`` -- a :class:`ModelSpec`: variables, grid, normalisation statistics, invariants,
  sampler defaults, conditions; JSON-serialisable, stored in the bundle's ``config.json``.
* ``pipeline.stages`` -- the trainable networks by stage name (``"regression"``, ``"diffusion"``);
  a training run trains one stage, the others are frozen.
* ``pipeline.loss(stage, batch, generator=None) -> (per_sample_loss, sigma_or_None)`` -- the training
  loss of a stage on a batch of the training datasets (see :mod:`xkmcast.data.samples`): downscaling
  batches ``{"input": (B, Cin, H, W), "target": (B, Cout, H, W)}``; forecast batches
  ``{"state": [prev, next], "background", "invariant", "lead_time_label"?}``.
* Downscaling pipelines: ``sample(condition, *, seeds, ...) -> (M, B, Cout, H, W)``.
* Forecast pipelines: ``step(state, background, invariant, *, seeds, ...) -> (M, B, C, H, W)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

__all__ = ["ModelSpec", "Pipeline", "training_sigma", "sampler_config", "piecewise_linear", "MEAN_CACHE_BYTES"]

#: the frozen regression means a diffusion run keeps (:meth:`Pipeline.frozen_mean`)
MEAN_CACHE_BYTES = 256 * 2**20


def _plain(value):
    """numpy arrays and tuples to lists, for JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclasses.dataclass
class ModelSpec:
    """Everything a pipeline needs besides its weights; stored as JSON in a bundle.

    ``input_vars``: channels of the coarse input (downscaling) or of the state (forecast).
    ``output_vars``: predicted channels. ``background_vars``: coarse conditioning of forecasts.
    ``invariant_vars``: static fields (orography, land-sea mask) on the model grid.
    ``stats``: normalisation statistics by role, each the JSON document of
    :class:`xkmcast.data.stats.Stats`: ``{"input": ..., "output": ..., "background": ...,
    "invariant": ...}``. Roles are separate because one variable (``t2m``) has other statistics as
    a coarse input regridded to the fine grid than as the fine output; for forecasts the state is
    both ``input`` and ``output``. ``grid``: ``{"shape": [ny, nx], "grid_mapping": {...} | None,
    "x": [...] | None, "y": [...] | None}``; the 2-D lat/lon themselves are stored as tensors in
    the weights file (``grid.lat`` / ``grid.lon``), invariants as ``invariant``.
    ``networks``: ``{stage: {"class": name, "kwargs": {...}, "precond": {...} | None}}``.
    ``conditions``: ``{"regression": [...], "diffusion": [...]}`` from state / background /
    invariant / regression (the StormCast recipe's names).
    """

    kind: str
    input_vars: list[str]
    output_vars: list[str]
    networks: dict[str, dict[str, Any]]
    background_vars: list[str] = dataclasses.field(default_factory=list)
    invariant_vars: list[str] = dataclasses.field(default_factory=list)
    stats: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    grid: dict[str, Any] = dataclasses.field(default_factory=dict)
    conditions: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    sampler: dict[str, Any] = dataclasses.field(default_factory=dict)
    loss: dict[str, Any] = dataclasses.field(default_factory=dict)
    time_step: str | None = None  # forecasts: e.g. "1h"
    patch: list[int] | None = None  # training patch size (ph, pw) of patched diffusion
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def training_sigma(loss: dict[str, Any], kind: str):
    """The training noise distribution of ``spec.loss``: ``{"sigma_distribution": "lognormal", "P_mean",
    "P_std"}`` (ln sigma ~ N(P_mean, P_std^2); missing values: the kind's prior),
    ``{"sigma_distribution": "loguniform", "sigma_min", "sigma_max"}``, or a named one of
    :func:`xkmcast.diffusion.losses.sigma_distribution`."""
    from ..diffusion import losses
    from .kinds import get_kind

    name = loss.get("sigma_distribution", "lognormal")
    if name == "lognormal":
        row = get_kind(kind)
        p_mean, p_std = loss.get("P_mean"), loss.get("P_std")
        return losses.LogNormalSigma(row.P_mean if p_mean is None else p_mean, row.P_std if p_std is None else p_std)
    if name == "loguniform":
        bounds = {k: loss[k] for k in ("sigma_min", "sigma_max") if loss.get(k) is not None}
        return losses.LogUniformSigma(**bounds)
    return losses.sigma_distribution(name)


def sampler_config(spec: ModelSpec, sampler: str | None = None, num_steps: int | None = None, **options: Any):
    """The :class:`~xkmcast.diffusion.samplers.SamplerConfig` of one call: the bundle's settings
    (``spec.sampler``) unless the call names another sampler, which then brings its own default steps
    and rho; ``num_steps`` and the other options given (not None) win."""
    from ..diffusion.samplers import SamplerConfig

    return SamplerConfig.from_dict(spec.sampler).override(sampler, num_steps, **options)


def piecewise_linear(x: torch.Tensor, knots, values) -> torch.Tensor:
    """The piecewise-linear function through ``(knots[i], values[i])`` (knots increasing) at ``x``,
    constant beyond the first and the last knot."""
    k = torch.as_tensor(knots, dtype=x.dtype, device=x.device)
    v = torch.as_tensor(values, dtype=x.dtype, device=x.device)
    if k.numel() == 1:
        return v.expand_as(x).clone()
    i = torch.searchsorted(k, x.contiguous()).clamp(1, k.numel() - 1)
    x0, x1 = k[i - 1], k[i]
    w = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return v[i - 1] + w * (v[i] - v[i - 1])


class Pipeline(torch.nn.Module):
    """Base class: holds the spec and the stage networks (``self.stages``, a ModuleDict)."""

    def __init__(self, spec: ModelSpec, stages: dict[str, torch.nn.Module]):
        super().__init__()
        self.spec = spec
        self.stages = torch.nn.ModuleDict(stages)
        self.register_buffer("grid_lat", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("grid_lon", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("invariant", torch.zeros(0, 0, 0))
        self.source_path: str | None = None  # set by load_bundle
        self.bundle_integrity: dict[str, str] | None = None  # digests checked by load_bundle
        self._pad_periodic()

    def set_grid(self, lat, lon, **grid_info) -> None:
        """Attach the model grid: 2-D lat / lon (degrees) and ``grid_info`` to the spec: ``grid_mapping``,
        ``x`` / ``y``, ``latlon_dims``, ``periodic_x`` (:meth:`xkmcast.fields.grid.Grid.model_info`) and
        ``regrid`` (``{"method", "options"}``: how the inputs were regridded in training)."""
        lat_t, lon_t = torch.as_tensor(lat, dtype=torch.float64), torch.as_tensor(lon, dtype=torch.float64)
        self.grid_lat.resize_(lat_t.shape).copy_(lat_t)
        self.grid_lon.resize_(lon_t.shape).copy_(lon_t)
        self.spec.grid = {"shape": list(lat_t.shape), **{k: _plain(v) for k, v in grid_info.items()}}
        self._pad_periodic()

    @property
    def periodic_x(self) -> bool:
        """Whether the model grid closes the circle in longitude (``spec.grid["periodic_x"]``): then the
        networks pad circularly along x and patches wrap around (:func:`xkmcast.nn.set_periodic_x`)."""
        return bool(self.spec.grid.get("periodic_x", False))

    def _pad_periodic(self) -> None:
        from ..nn.layers import set_periodic_x

        set_periodic_x(self.stages, self.periodic_x)

    def set_invariants(self, values) -> None:
        """Attach the invariant fields ``(C_inv, H, W)`` (normalised) in the order of ``spec.invariant_vars``."""
        v = torch.as_tensor(values, dtype=torch.float32)
        self.invariant.resize_(v.shape).copy_(v)

    def stats_for(self, role: str):
        """The :class:`~xkmcast.data.stats.Stats` of ``role`` (input, output, background, invariant)."""
        from ..data.stats import Stats
        from ..errors import BundleError, explain

        if role not in self.spec.stats:
            raise BundleError(explain(f"The model has no normalisation statistics for its {role}",
                                      expected=f"spec.stats[{role!r}]", found=sorted(self.spec.stats),
                                      fix="re-export the bundle from its training run"))
        return Stats.from_dict(self.spec.stats[role])

    def residual_scale(self, like: torch.Tensor, sampling: bool = False) -> torch.Tensor:
        """``s`` of shape (1, C_out, 1, 1): the diffusion stage models ``r / s`` where ``r`` is the
        residual of the regression mean (``spec.extra["residual_scale"]``, one value per output
        channel, set when a diffusion run starts: ``s_c = RMS(r_c) / sigma_data_c`` over training
        samples, so the modelled residual has the spread the EDM preconditioner assumes). Ones when
        the spec has none (bundles from before, diffusion without a regression). ``sampling``: the
        scale members are drawn with, ``spec.extra["sample_scale"]`` when set (the same measure on
        the validation times: the regression's error on unseen times), else the training one."""
        scale = self.spec.extra.get("sample_scale") if sampling else None
        scale = scale if scale is not None else self.spec.extra.get("residual_scale")
        n = len(self.spec.output_vars)
        values = [1.0] * n if scale is None else [float(v) for v in scale]
        return torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(1, n, 1, 1)

    def members_about_mean(self, draws: torch.Tensor, centre: bool | None = None,
                           base: torch.Tensor | None = None) -> torch.Tensor:
        """The departures of M members from what the diffusion's residual is added to (the regression
        mean; Stormscope: the state), from its draws ``(M, ...)`` (dim 0: the members of one ensemble):
        ``shared + spread`` of :meth:`member_parts`."""
        shared, spread = self.member_parts(draws, centre, base)
        return shared if spread is None else shared + spread

    def member_parts(self, draws: torch.Tensor, centre: bool | None = None,
                     base: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(shared, spread)``: the members' departures ``d_k = shared + spread_k`` split into what all
        members share and their spread about the ensemble mean (zero mean over dim 0):

            d_k = s * (r_k - mean_j r_j)                        (centred: shared = 0)
            d_k = s * (mean_j r_j + a * (r_k - mean_j r_j))      (not centred)

        with ``s`` the sampling :meth:`residual_scale` and ``a`` the spread factor
        ``spec.extra["spread_factor"]`` (per channel, 1 when absent), shaped by spatial scale
        (:meth:`by_scale`), times, when ``base`` (what the residual is added to, broadcastable to one member)
        is given, the gain of the spread by the value of ``base`` (:meth:`value_gain`). ``centre`` (default
        ``spec.extra["centre_members"]``: on for the residual models xkmcast trains, off for published
        packages and older bundles) makes the ensemble mean the regression mean, the draws keeping their
        spread about it. Either makes member k depend on the other members of its ensemble (the same seed
        and member count give the same ensemble). ``spread`` is None when nothing splits the draws (one
        member, or neither centring, nor a factor, nor per-step gains to apply to the spread
        (:meth:`step_spread_gain`): ``shared = s * r_k``, the draws as they are)."""
        centre = self.members_centred if centre is None else centre
        factor = self.spec.extra.get("spread_factor")
        scale = self.residual_scale(draws, sampling=True)
        by_value = None if base is None else self.value_gain(base)
        shaped = any(self.spec.extra.get(key) for key in ("step_spread_gain", "spread_by_scale"))
        if draws.shape[0] < 2 or not (centre or factor is not None or by_value is not None or shaped):
            return draws * scale, None
        mean = draws.mean(dim=0, keepdim=True)
        spread = (draws - mean) * scale
        if factor is not None:
            n = len(self.spec.output_vars)
            spread = spread * torch.as_tensor(factor, dtype=draws.dtype, device=draws.device).reshape(1, n, 1, 1)
        spread = self.by_scale(spread)
        if by_value is not None:
            spread = spread * by_value.to(spread.dtype)
        return (torch.zeros_like(mean) if centre else mean * scale), spread

    def by_scale(self, spread: torch.Tensor) -> torch.Tensor:
        """``spread`` (..., C_out, H, W) with each output channel's gain by spatial scale
        (``spec.extra["spread_by_scale"]``: per channel None or ``{"knots": [...], "gains": [...]}`` in
        cycles per grid length, :func:`xkmcast.models.scale_filter.filter_by_scale`; calibrated on
        validation times by :func:`xkmcast.train.spread_by_scale.calibrated_scale_gains`); unchanged
        when the spec has none."""
        from .scale_filter import filter_by_scale

        table = self.spec.extra.get("spread_by_scale")
        if not table or not any(table):
            return spread
        channels = [spread[..., c:c + 1, :, :] if not entry else
                    filter_by_scale(spread[..., c:c + 1, :, :], entry["knots"], entry["gains"], self.periodic_x)
                    for c, entry in enumerate(table)]
        return torch.cat(channels, dim=-3)

    def value_gain(self, base: torch.Tensor) -> torch.Tensor | None:
        """The gain on the members' spread at each pixel as a function of ``base`` (``(..., C_out, H, W)``,
        normalised: what the residual is added to), from ``spec.extra["spread_by_value"]``: per output
        channel None (gain 1) or ``{"knots": [...], "gains": [...]}``, the gain at increasing values of the
        base, linear between knots and constant beyond them (calibrated on validation times by
        :func:`xkmcast.train.spread.calibrated_value_gains`: the residual's spread depends on the value,
        e.g. precipitation's on its rate). None when the spec has none."""
        table = self.spec.extra.get("spread_by_value")
        if not table or not any(table):
            return None
        gains = torch.ones_like(base)
        for c, entry in enumerate(table):
            if entry:
                gains[..., c, :, :] = piecewise_linear(base[..., c, :, :], entry["knots"], entry["gains"])
        return gains

    @staticmethod
    def mean_keys(batch: dict) -> torch.Tensor | None:
        """What the frozen regression mean of each row of a training batch depends on, as
        :meth:`frozen_mean` keys: the row's store time (``batch["time"]``: a whole field's; with a forecast
        pair's, the state's, which with the lead time fixes the background's), with its
        ``lead_time_label`` when the batch has one; None (no cache) without store times or for crops of
        a field (``batch["offset"]``)."""
        times = batch.get("time")
        if times is None or "offset" in batch:
            return None
        times = torch.as_tensor(times).reshape(-1)
        label = batch.get("lead_time_label")
        return times if label is None else torch.stack([times, torch.as_tensor(label).reshape(-1)], dim=1)

    @torch.no_grad()
    def frozen_mean(self, keys: torch.Tensor | None, compute, like: torch.Tensor) -> torch.Tensor:
        """The frozen regression's mean of the rows of a diffusion training batch: ``compute(rows)`` (the
        mean (len(rows), C, H, W) of the batch rows ``rows``, a list of indices), cached by ``keys`` (one
        row of :meth:`mean_keys` per batch row naming all its mean depends on; None: no cache, every row
        computed) up to ``MEAN_CACHE_BYTES``: an epoch after the first costs no regression forward. The
        regression is frozen and in eval mode, so the mean of a key is fixed. Cached rows come back on
        ``like``'s device and dtype."""
        if keys is None:
            return compute(list(range(like.shape[0])))
        keys = [tuple(k) if isinstance(k, list) else k for k in keys.tolist()]
        cache = self.__dict__.setdefault("_mean_cache", {})
        missing = [i for i, k in enumerate(keys) if k not in cache]
        if missing:
            fresh = compute(missing)
            if sum(v.numel() * v.element_size() for v in cache.values()) < MEAN_CACHE_BYTES:
                for i, m in zip(missing, fresh):
                    cache[keys[i]] = m.detach().clone()
            if len(missing) == len(keys):
                return fresh
            out = torch.stack([cache[k] if k in cache else fresh[missing.index(i)] for i, k in enumerate(keys)])
            return out.to(like.dtype)
        return torch.stack([cache[k] for k in keys]).to(device=like.device, dtype=like.dtype)

    def patched(self, net: torch.nn.Module, shape: tuple[int, int], patch=None) -> torch.nn.Module:
        """The diffusion denoiser ``net`` for a field of ``shape`` (H, W): run on overlapping patches of
        ``patch`` (default ``spec.patch``) fused with smooth weights when they cut the field
        (:class:`~xkmcast.diffusion.patched_denoiser.PatchedDenoiser`, options from
        ``spec.extra["patching"]``); ``net`` itself otherwise."""
        from ..diffusion.patched_denoiser import PatchedDenoiser
        from ..diffusion.patching import GridPatching, is_patched

        patch = patch if patch is not None else self.spec.patch
        if not is_patched(patch, shape):
            return net
        options = {"periodic_x": self.periodic_x, **self.spec.extra.get("patching", {})}
        return PatchedDenoiser(net, GridPatching(tuple(shape), tuple(patch), **options))

    def diffusion_loss(self, net: torch.nn.Module, target: torch.Tensor, condition: torch.Tensor, *,
                       channel_weights: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, **net_kwargs: Any):
        """The EDM denoising loss of ``net`` on ``target`` (B, C, H, W) given ``condition`` (B, Cc, H, W), the
        noise levels of ``spec.loss``: on whole fields, or, when ``spec.patch`` cuts the field (patched
        diffusion), on ``spec.extra["patches_per_sample"]`` (default 1) random patches per sample cut from
        the target and the condition at the same places, the whole condition resized to the patch size
        appended (every patch sees the large-scale situation), each row given its pixels' global index
        and the keyword tensors of its sample (:func:`~xkmcast.diffusion.patched_denoiser.patch_rows`). Rows
        patch-major."""
        from ..diffusion import losses
        from ..diffusion.patched_denoiser import patch_rows
        from ..diffusion.patching import extract_patches, is_patched, random_patches, row_index

        sigma_dist = training_sigma(self.spec.loss, self.spec.kind)
        patch = tuple(self.spec.patch) if self.spec.patch else None
        if not is_patched(patch, target.shape[-2:]):
            return losses.denoising_loss(net, target, condition, sigma_dist=sigma_dist, channel_weights=channel_weights,
                                         mask=mask, generator=generator, **net_kwargs)
        n, b = int(self.spec.extra.get("patches_per_sample", 1)), target.shape[0]
        pt = random_patches(target, condition, patch, n, context=condition, generator=generator,
                            periodic_x=self.periodic_x)
        pmask = None if mask is None else extract_patches(mask, pt.offsets, patch, self.periodic_x)
        return losses.denoising_loss(net, pt.target, pt.condition, sigma_dist=sigma_dist,
                                     channel_weights=channel_weights, mask=pmask, generator=generator,
                                     global_index=row_index(pt.global_index, b), **patch_rows(net_kwargs, b, n))

    @property
    def members_centred(self) -> bool:
        """Whether members are centred on what the diffusion's residual is added to by default
        (``spec.extra["centre_members"]``; their ensemble mean is then not the draws' to make)."""
        return bool(self.spec.extra.get("centre_members", False))

    def step_spread_gain(self, step_index: int, like: torch.Tensor) -> torch.Tensor | None:
        """The gain (1, C_out, 1, 1) on the members' spread about their ensemble mean at step
        ``step_index`` of a rollout (0: the first step from the initial state), from
        ``spec.extra["step_spread_gain"]`` (one row of per-channel gains per step, calibrated on validation
        rollouts: :func:`xkmcast.train.spread_steps.calibrated_step_gains`; steps past the last row take the last
        row); None when the spec has none (published packages, downscaling models)."""
        gains = self.spec.extra.get("step_spread_gain")
        if not gains:
            return None
        row = gains[min(max(int(step_index), 0), len(gains) - 1)]
        return torch.as_tensor(row, dtype=like.dtype, device=like.device).reshape(1, len(row), 1, 1)

    @property
    def diffuses_residual(self) -> bool:
        """Whether the diffusion stage models a residual (scaled by :meth:`residual_scale`): of the
        regression mean here; a kind may model another (Stormscope: the tendency from the state)."""
        return "regression" in self.stages and "diffusion" in self.stages

    def residual(self, batch: dict) -> torch.Tensor:
        """``target - regression mean`` of a training batch (B, C_out, H, W), unscaled."""
        raise NotImplementedError

    def regression_departure(self, batch: dict) -> torch.Tensor:
        """What the regression network learns on a training batch (B, C_out, H, W), normalised: the
        target less what the pipeline adds to the network's output (with ``spec.extra["input_skip"]``:
        the regridded input and mean detail of CorrDiff, the current state of a forecast model), else the
        target itself. Its mean square per channel weighs the regression loss
        (:mod:`xkmcast.train.loss_weights`)."""
        raise NotImplementedError

    def calibration_draws(self, batch: dict, seeds: list[list[int]]) -> tuple[torch.Tensor, ...] | None:
        """``(draws (M, B, C_out, H, W), residual (B, C_out, H, W), base (B, C_out, H, W))`` on a batch of
        the training datasets: the diffusion's residual draws before scaling (``seeds[b][k]``: member k of
        sample b, the sampler of inference), the true residual ``target - base`` (unscaled) and the base
        it is the residual of (the regression mean; Stormscope: the state); None
        when the diffusion models no residual. Used to calibrate the members' spread
        (:mod:`xkmcast.train.spread`)."""
        return None

    @property
    def model_kind(self):
        """The :class:`~xkmcast.models.kinds.ModelKind` row of ``spec.kind``."""
        from .kinds import get_kind

        return get_kind(self.spec.kind)

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The stages of the kind (the networks the pipeline holds may be fewer: ``stages``)."""
        return self.model_kind.stages

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def has_stage(self, name: str) -> bool:
        return name in self.stages

    def loss(self, stage: str, batch: dict, generator: torch.Generator | None = None):
        raise NotImplementedError
