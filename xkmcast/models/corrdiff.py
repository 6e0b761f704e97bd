"""CorrDiff: a regression U-Net predicts the mean, an EDM diffusion model adds the residual.

With the coarse input regridded to the fine grid and normalised, ``c = cat(input, invariants)``:

    mu = R(c)                              (regression stage, noise label 0)
    r ~ p(r | c[, mu])                     (diffusion stage, EDM sampler on the residual)
    y = mu + r                             (one ensemble member)

Training: the regression stage minimises ||R(c) - y||^2; the diffusion stage learns the residual
``y - mu`` with ``mu`` from the frozen regression (ln sigma ~ N(0, 1.2^2)). Patched diffusion
(``spec.patch``) trains on random patches with the whole condition resized to patch size appended,
and samples on overlapping grid patches fused by averaging at every denoiser call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..diffusion import losses
from ..diffusion.patching import GridPatching, extract_patches, random_patches
from ..diffusion.samplers import sample as sample_rows
from ..errors import ConfigError, explain
from .base import ModelSpec, Pipeline, sampler_config, training_sigma
from .stages import build_stage

__all__ = ["CorrDiff", "PatchedDenoiser"]


class CorrDiff(Pipeline):
    @classmethod
    def from_spec(cls, spec: ModelSpec) -> CorrDiff:
        return cls(spec, {name: build_stage(entry) for name, entry in spec.networks.items()})

    # ---------------------------------------------------------------------------------- inputs
    def condition(self, inputs: Tensor) -> Tensor:
        """``cat(inputs, invariants)``: the invariants stored with the model, broadcast over the batch."""
        if self.invariant.numel() == 0:
            return inputs
        inv = self.invariant.to(inputs).unsqueeze(0).expand(inputs.shape[0], -1, -1, -1)
        return torch.cat([inputs, inv], dim=1)

    def regression_mean(self, cond: Tensor) -> Tensor:
        """mu = R(c) [+ interp(x)] on the whole grid (B, C_out, H, W); zeros without a regression stage."""
        b, _, h, w = cond.shape
        zeros = cond.new_zeros((b, len(self.spec.output_vars), h, w))
        if "regression" not in self.stages:
            return zeros
        mean = self.stages["regression"](zeros, cond)
        return mean + self.interpolation(cond) if self.spec.extra.get("input_skip") else mean

    def interpolation(self, cond: Tensor) -> Tensor:
        """The regridded coarse input of each output variable, in output normalisation:
        ``(x_n s_in + m_in - m_out) / s_out`` in transformed units (channels whose input and output
        transforms differ contribute 0)."""
        names = self.spec.output_vars
        idx = [self.spec.input_vars.index(v) for v in names]
        sin, sout = self.stats_for("input"), self.stats_for("output")
        m_in, s_in, e_in = sin.arrays(names)
        m_out, s_out, e_out = sout.arrays(names)
        linear = np.array([sin.transform_of(n) == sout.transform_of(n) for n in names]) & (e_in == e_out)
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
        **extra_options: Any,
    ) -> tuple[Tensor, Tensor]:
        """Ensemble members for each condition.

        ``inputs`` (B, C_in, H, W) normalised on the model grid (without invariants); ``seeds[b][k]``
        is the seed of member k of condition b. Returns ``(samples (M, B, C_out, H, W), mean (B,
        C_out, H, W))`` normalised. ``batch_size`` rows go through the denoiser at once (default all).
        """
        cond = self.condition(inputs.to(self.device, torch.float32))
        mean = self.regression_mean(cond)
        members = len(seeds[0]) if seeds else 0
        if "diffusion" not in self.stages or members == 0:
            return mean.unsqueeze(0).expand(max(members, 1), -1, -1, -1, -1), mean
        dcond = self._diffusion_condition(cond, mean)
        rows_cond = dcond.unsqueeze(0).expand(members, -1, -1, -1, -1).reshape(-1, *dcond.shape[1:])
        row_seeds = [seeds[b][k] for k in range(members) for b in range(len(seeds))]
        config = sampler_config(self.spec, sampler, num_steps, **extra_options)
        patch = patch if patch is not None else (tuple(self.spec.patch) if self.spec.patch else None)
        residual = sample_rows(
            self._denoiser(patch, tuple(cond.shape[-2:])), mean.shape[1:], row_seeds, condition=rows_cond,
            config=config, batch_size=batch_size,
        ).to(torch.float32)
        samples = residual.reshape(members, *mean.shape) + mean.unsqueeze(0)
        return samples, mean

    def _denoiser(self, patch, shape):
        net = self.stages["diffusion"]
        if patch is None or tuple(patch) == tuple(shape):
            return net
        return PatchedDenoiser(net, GridPatching(shape, patch, **self.spec.extra.get("patching", {})))

    # -------------------------------------------------------------------------------- training
    def loss(self, stage: str, batch: dict, generator: torch.Generator | None = None):
        """Per-sample loss of ``stage`` on a batch ``{"input": (B, C_in+C_inv, H, W), "target": ...}``."""
        cond, target = batch["input"], batch["target"]
        mask = batch.get("mask")
        weights = self._channel_weights(target)
        if stage == "regression":
            error = (self.regression_mean(cond) - target) ** 2
            return losses.LossOutput(losses.reduce_per_sample(error, weights, mask), None)
        if stage != "diffusion":
            raise ConfigError(explain("Unknown training stage for CorrDiff", expected=self.stage_names, found=stage))
        with torch.no_grad():
            mean = self.regression_mean(cond)
        sigma_dist = training_sigma(self.spec.loss, self.spec.kind)
        patch = tuple(self.spec.patch) if self.spec.patch else None
        if patch is None or patch == tuple(target.shape[-2:]):
            return losses.residual_loss(
                self.stages["diffusion"], target, cond, mean=mean,
                condition_on_mean=self.spec.loss.get("condition_on_mean", False), sigma_dist=sigma_dist,
                channel_weights=weights, mask=mask, generator=generator,
            )
        # patched: cut the residual and its condition at the same random places; the whole condition,
        # resized to the patch size, is appended so every patch sees the large-scale situation
        dcond = self._diffusion_condition(cond, mean)
        n = int(self.spec.extra.get("patches_per_sample", 1))
        pt = random_patches(target - mean, dcond, patch, n, context=dcond, generator=generator)
        pmask = None if mask is None else extract_patches(mask, pt.offsets, patch)
        return losses.denoising_loss(
            self.stages["diffusion"], pt.target, pt.condition, sigma_dist=sigma_dist,
            channel_weights=weights, mask=pmask, generator=generator, global_index=pt.global_index,
        )

    def _channel_weights(self, like: Tensor) -> Tensor | None:
        w = self.spec.loss.get("channel_weights")
        return None if w is None else torch.as_tensor(w, dtype=like.dtype, device=like.device)


class PatchedDenoiser(torch.nn.Module):
    """Run a denoiser on overlapping patches and fuse them (taper-weighted blend of the overlaps,
    :meth:`GridPatching.fuse`) at every call."""

    def __init__(self, net: torch.nn.Module, patching: GridPatching):
        super().__init__()
        self.net, self.patching = net, patching
        for name in ("sigma_min", "sigma_max", "sigma_data"):
            if hasattr(net, name):
                setattr(self, name, getattr(net, name))

    def forward(self, x: Tensor, sigma: Tensor, condition: Tensor | None = None, **kwargs: Any) -> Tensor:
        b = x.shape[0]
        xp = self.patching.split(x, context=None)
        cp = self.patching.split(condition, context=condition) if condition is not None else None
        p = self.patching.num_patches
        sig = sigma.reshape(-1).repeat(p) if sigma.numel() == b else sigma
        out = self.net(xp, sigma=sig, condition=cp, global_index=self.patching.global_index(x.device), **kwargs)
        return self.patching.fuse(out, batch_size=b)

