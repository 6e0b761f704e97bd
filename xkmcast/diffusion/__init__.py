"""Diffusion machinery in pure torch: EDM preconditioning, training losses, samplers, patching.

Knows nothing of xarray. The modules read like the papers: Karras et al. 2022 (EDM) for the
preconditioning, the loss and the Heun / Euler samplers; Lu et al. 2022 for DPM-Solver++(2M);
Mardani et al. 2023 (CorrDiff) for the regression + residual split and patching.
"""

from .edm import EDMPrecond, EDMPrecondSuperResolution, edm_coefficients
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
from .patching import (
    GridPatching,
    HaloWindows,
    RandomPatches,
    extract_patches,
    global_index,
    halo_windows,
    random_patch_offsets,
    random_patches,
    row_index,
)
from .samplers import CountingDenoiser, SamplerConfig, nfe, sample, solve, time_steps
from .seeds import row_generators, row_seed, row_seeds

__all__ = [
    "EDMPrecond",
    "EDMPrecondSuperResolution",
    "edm_coefficients",
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
    "HaloWindows",
    "halo_windows",
    "row_index",
    "sample",
    "solve",
    "time_steps",
    "nfe",
    "SamplerConfig",
    "row_seed",
    "row_seeds",
    "row_generators",
    "CountingDenoiser",
]
