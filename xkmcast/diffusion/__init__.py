"""Diffusion machinery in pure torch: EDM preconditioning, training losses, samplers, patching.

Knows nothing of xarray. The modules read like the papers: Karras et al. 2022 (EDM) for the
preconditioning, the loss and the Heun / Euler samplers; Lu et al. 2022 for DPM-Solver++(2M);
Mardani et al. 2023 (CorrDiff) for the regression + residual split and patching.
"""

from .edm import EDMPrecond, EDMPrecondSuperResolution, edm_coefficients, round_sigma
from .losses import (
    LogNormalSigma,
    LogUniformSigma,
    LossOutput,
    SigmaDistribution,
    denoising_loss,
    edm_loss,
    edm_weight,
    reduce_per_sample,
    regression_loss,
    residual_loss,
    sigma_distribution,
)
from .patching import GridPatching, RandomPatches, extract_patches, global_index, random_patch_offsets, random_patches
from .samplers import CountingDenoiser, member_generators, member_seed, nfe, sample, solve, time_steps

__all__ = [
    "EDMPrecond",
    "EDMPrecondSuperResolution",
    "edm_coefficients",
    "round_sigma",
    "SigmaDistribution",
    "LogNormalSigma",
    "LogUniformSigma",
    "sigma_distribution",
    "edm_weight",
    "reduce_per_sample",
    "LossOutput",
    "regression_loss",
    "denoising_loss",
    "residual_loss",
    "edm_loss",
    "GridPatching",
    "RandomPatches",
    "random_patches",
    "random_patch_offsets",
    "extract_patches",
    "global_index",
    "sample",
    "solve",
    "time_steps",
    "nfe",
    "member_seed",
    "member_generators",
    "CountingDenoiser",
]
