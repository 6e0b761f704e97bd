"""CorrDiff: a regression U-Net predicts the mean, an EDM diffusion model adds the residual.

With the coarse input regridded to the fine grid and normalised, ``c = cat(input, invariants)``:

    mu = R(c)                              (regression stage, noise label 0)
    r ~ p(r | c[, mu])                     (diffusion stage, EDM sampler on the residual)
    y = mu + r                             (one ensemble member)

Training: the regression stage minimises ||R(c) - y||^2 (on whole fields, or on random windows
with a halo: :mod:`xkmcast.models.regression_windows`); the diffusion stage learns the residual
``y - mu`` with ``mu`` from the frozen regression (ln sigma ~ N(0, 1.2^2)). Patched diffusion
(``spec.patch``) trains on random patches with the whole condition resized to patch size appended,
and samples on overlapping grid patches blended with smooth weights at every denoiser call
(:meth:`~xkmcast.models.base.Pipeline.patched`).

Missing target values (a batch's ``mask``, :class:`~xkmcast.data.samples.DownscalingSamples`) are
left out of both losses; the output is NaN where the training targets never had a value
(``output_valid``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..diffusion import losses
from ..diffusion.samplers import sample as sample_rows
from ..errors import ConfigError, explain
from .base import ModelSpec, Pipeline, sampler_config
from .regression_windows import position_kwargs, window_setting, windowed_loss
from .stages import build_stage

__all__ = ["CorrDiff"]


class CorrDiff(Pipeline):
    def __init__(self, spec: ModelSpec, stages):
        super().__init__(spec, stages)
        #: D of regression_mean, (C_out, H, W) normalised; empty: none (:mod:`xkmcast.train.mean_detail`)
        self.register_buffer("mean_detail", torch.zeros(0, 0, 0))
        #: (C_out, H, W), 1 where the training targets had a value at some time; the output is missing
        #: (NaN) elsewhere (:meth:`sample`); empty: valid everywhere
        self.register_buffer("output_valid", torch.zeros(0, 0, 0))

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> CorrDiff:
        return cls(spec, {name: build_stage(entry) for name, entry in spec.networks.items()})

    # ---------------------------------------------------------------------------------- inputs
    def condition(self, inputs: Tensor, times=None) -> Tensor:
        """``cat(inputs, invariants)``: the invariants stored with the model, broadcast over the batch.

        Time-window packages (``spec.extra["time_window"]``, CorrDiff CMIP6) are given their whole
        condition, invariants included (:func:`xkmcast.models.published.cmip6_steps.window_condition`).
        With ``spec.extra["time_channels"] = {"at": k, "hours": h}`` (CorrDiff COSMO-REA) the channel
        ``max(cos_zenith(t - h), cos_zenith(t))`` on the model grid at the valid times ``times`` (B,) is
        inserted before invariant ``k``: ``cat(inputs, invariants[:k], cos_zenith, invariants[k:])``."""
        if self.spec.extra.get("time_window"):
            return inputs
        inv = self.invariant.to(inputs).unsqueeze(0).expand(inputs.shape[0], -1, -1, -1)
        feature = self.spec.extra.get("time_channels")
        if feature is None:
            return inputs if self.invariant.numel() == 0 else torch.cat([inputs, inv], dim=1)
        if times is None or len(times) != inputs.shape[0]:
            raise ConfigError(explain("This model has a solar-zenith input channel and needs the valid times",
                                      expected=f"times= with one valid time per condition ({inputs.shape[0]})",
                                      found=None if times is None else len(times)))
        from ..fields.solar import cos_zenith_window_max

        lat, lon = self.grid_lat.cpu().numpy(), self.grid_lon.cpu().numpy()
        cz = cos_zenith_window_max(np.asarray(times), lat, lon, float(feature.get("hours", 1.0)))
        cz = torch.as_tensor(cz, dtype=torch.float32).to(inputs).unsqueeze(1)
        k = int(feature["at"])
        if self.invariant.numel() == 0:
            inv = inputs.new_zeros((inputs.shape[0], 0, *inputs.shape[-2:]))
        return torch.cat([inputs, inv[:, :k], cz, inv[:, k:]], dim=1)

    def regression_mean(self, cond: Tensor, global_index: Tensor | None = None) -> Tensor:
        """mu = R(c) [+ interp(x) + D] on the whole grid (B, C_out, H, W), or on windows of it placed by
        ``global_index`` (one (2, h, w) index per row, :func:`~xkmcast.diffusion.patching.row_index`);
        zeros without a regression stage. ``D``: the ``mean_detail`` buffer (the training-mean fine
        detail, :mod:`xkmcast.train.mean_detail`), gathered at the windows' pixels; 0 when empty."""
        b, _, h, w = cond.shape
        zeros = cond.new_zeros((b, len(self.spec.output_vars), h, w))
        if "regression" not in self.stages:
            return zeros
        net = self.stages["regression"]
        mean = net(zeros, cond, **({} if global_index is None else position_kwargs(net, global_index)))
        if not self.spec.extra.get("input_skip"):
            return mean
        return mean + self.interpolation(cond) + self._mean_detail(mean, global_index)

    def _mean_detail(self, like: Tensor, global_index: Tensor | None) -> Tensor | float:
        if self.mean_detail.numel() == 0:
            return 0.0
        d = self.mean_detail.to(like)
        if global_index is None:
            return d.unsqueeze(0)
        rows, cols = global_index[:, 0].long(), global_index[:, 1].long()  # (B, h, w)
        return d[:, rows, cols].transpose(0, 1)

    def interpolation(self, cond: Tensor) -> Tensor:
        """The regridded coarse input of each output variable, in output normalisation:
        ``(x_n s_in + m_in - m_out) / s_out`` in transformed units (channels whose input and output
        transforms differ, and outputs that are not inputs, contribute 0)."""
        names = self.spec.output_vars
        shared = np.array([v in self.spec.input_vars for v in names])
        idx = [self.spec.input_vars.index(v) if v in self.spec.input_vars else 0 for v in names]
        sin, sout = self.stats_for("input"), self.stats_for("output")
        m_in, s_in, e_in = _shared_arrays(sin, names, shared)
        m_out, s_out, e_out = sout.arrays(names)
        same = np.array([bool(v in self.spec.input_vars and sin.transform_of(v) == sout.transform_of(v)) for v in names])
        linear = shared & same & (e_in == e_out)
        shape = (1, len(names), 1, 1)
        a = torch.as_tensor(np.where(linear, s_in / s_out, 0.0), dtype=cond.dtype, device=cond.device).reshape(shape)
        b = torch.as_tensor(np.where(linear, (m_in - m_out) / s_out, 0.0), dtype=cond.dtype, device=cond.device)
        return cond[:, idx] * a + b.reshape(shape)

    def _diffusion_condition(self, cond: Tensor, mean: Tensor) -> Tensor:
        return torch.cat([mean, cond], dim=1) if self.spec.loss.get("condition_on_mean", False) else cond

    # -------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        inputs: Tensor,
        *,
        seeds: list[list[int]],
        sampler: str | None = None,
        num_steps: int | None = None,
        patch: tuple[int, int] | None = None,
        batch_size: int | None = None,
        times=None,
        centre: bool | None = None,
        **extra_options: Any,
    ) -> tuple[Tensor, Tensor]:
        """Ensemble members for each condition.

        ``inputs`` (B, C_in, H, W) normalised on the model grid (without invariants); ``seeds[b][k]``
        is the seed of member k of condition b. Returns ``(samples (M, B, C_out, H, W), mean (B,
        C_out, H, W))`` normalised. ``batch_size`` rows go through the denoiser at once (default all).
        ``times``: the valid time of each condition, for models with time channels (:meth:`condition`).
        ``centre``: the members' residuals about their mean (:meth:`members_about_mean`).
        """
        cond = self.condition(inputs.to(self.device, torch.float32), times)
        mean = self.regression_mean(cond)
        members = len(seeds[0]) if seeds else 0
        if "diffusion" not in self.stages or members == 0:
            mean = self.where_valid(mean)
            return mean.unsqueeze(0).expand(max(members, 1), -1, -1, -1, -1), mean
        draws = self._draws(cond, mean, seeds, sampler=sampler, num_steps=num_steps, patch=patch,
                            batch_size=batch_size, **extra_options)
        return self.where_valid(self.members_about_mean(draws, centre, base=mean) + mean.unsqueeze(0)), \
            self.where_valid(mean)

    def where_valid(self, values: Tensor) -> Tensor:
        """``values`` (..., C_out, H, W) with NaN where ``output_valid`` is 0: pixels where the training
        targets never had a value (a land-only analysis's sea), which the model never learned."""
        if self.output_valid.numel() == 0:
            return values
        return torch.where(self.output_valid.to(values.device).bool(), values, torch.full_like(values, float("nan")))

    def _draws(self, cond: Tensor, mean: Tensor, seeds: list[list[int]], *, sampler=None, num_steps=None,
               patch=None, batch_size=None, **extra_options: Any) -> Tensor:
        """The diffusion's residual draws (M, B, C_out, H, W) before scaling; ``seeds[b][k]``."""
        members = len(seeds[0])
        dcond = self._diffusion_condition(cond, mean)
        rows_cond = dcond.unsqueeze(0).expand(members, -1, -1, -1, -1).reshape(-1, *dcond.shape[1:])
        row_seeds = [seeds[b][k] for k in range(members) for b in range(len(seeds))]
        config = sampler_config(self.spec, sampler, num_steps, **extra_options)
        residual = sample_rows(
            self.patched(self.stages["diffusion"], tuple(cond.shape[-2:]), patch), mean.shape[1:], row_seeds,
            condition=rows_cond, config=config, batch_size=batch_size,
        ).to(torch.float32)
        return residual.reshape(members, *mean.shape)

    @torch.no_grad()
    def calibration_draws(self, batch: dict, seeds: list[list[int]]) -> tuple[Tensor, Tensor, Tensor] | None:
        if not self.diffuses_residual:
            return None
        cond = batch["input"]
        mean = self.regression_mean(cond)
        return self._draws(cond, mean, seeds), batch["target"] - mean, mean

    # -------------------------------------------------------------------------------- training
    def loss(self, stage: str, batch: dict, generator: torch.Generator | None = None):
        """Per-sample loss of ``stage`` on a batch ``{"input": (B, C_in+C_inv, H, W), "target": ...}``."""
        cond, target = batch["input"], batch["target"]
        mask = batch.get("mask")
        weights = self._channel_weights(target)
        if stage == "regression":
            setting = window_setting(self.spec, target.shape[-2:])
            if setting is not None:  # random windows of the whole field, the loss inside their halo
                loss = windowed_loss(lambda f, gi, _: self.regression_mean(f[0], gi), [cond], target, setting,
                                     periodic_x=self.periodic_x, channel_weights=weights, mask=mask,
                                     generator=generator)
                return losses.LossOutput(loss, None)
            error = (self.regression_mean(cond) - target) ** 2
            return losses.LossOutput(losses.reduce_per_sample(error, weights, mask), None)
        if stage != "diffusion":
            raise ConfigError(explain("Unknown training stage for CorrDiff", expected=self.stage_names, found=stage))
        mean = self._training_mean(batch)
        residual = (target - mean) / self.residual_scale(target)  # the residual the diffusion models
        if mask is not None:  # 0 where the target is missing: the noise alone there, left out of the loss
            residual = residual * mask
        return self.diffusion_loss(self.stages["diffusion"], residual, self._diffusion_condition(cond, mean),
                                   channel_weights=weights, mask=mask, generator=generator)

    @torch.no_grad()
    def residual(self, batch: dict) -> Tensor:
        return batch["target"] - self._training_mean(batch)

    @torch.no_grad()
    def regression_departure(self, batch: dict) -> Tensor:
        target = batch["target"]
        if not self.spec.extra.get("input_skip"):
            return target
        return target - self.interpolation(batch["input"]) - self._mean_detail(target, None)

    def _training_mean(self, batch: dict) -> Tensor:
        """The frozen regression's mean of a training batch, computed once per store time
        (:meth:`~xkmcast.models.base.Pipeline.frozen_mean`: the training scale's pass warms it)."""
        cond = batch["input"]
        return self.frozen_mean(self.mean_keys(batch), lambda rows: self.regression_mean(cond[rows]), like=cond)

    def _channel_weights(self, like: Tensor) -> Tensor | None:
        w = self.spec.loss.get("channel_weights")
        return None if w is None else torch.as_tensor(w, dtype=like.dtype, device=like.device)


def _shared_arrays(stats, names, shared):
    """``stats.arrays(names)`` with neutral values (mean 0, std 1, no transform) where not ``shared``."""
    m, sd, e = np.zeros(len(names)), np.ones(len(names)), np.zeros(len(names))
    for i, v in enumerate(names):
        if shared[i]:
            m[i], sd[i], e[i] = (a[0] for a in stats.arrays([v]))
    return m, sd, e
