"""The amplitude of a residual diffusion's members: the training scale and the calibrated sampling scale.

A diffusion stage on a frozen regression models ``r / s`` with ``r = y - mu`` (the regression's
residual, normalised units) and ``s`` one value per output channel (:meth:`Pipeline.residual_scale`):

- training scale (:func:`residual_scale`, when the run starts): ``s_c = RMS_c(r) / sigma_data_c`` over
  training samples, so the modelled residual has the spread the EDM preconditioner assumes;
- sampling scale (:func:`calibrated_sample_scale`, when the run exports, with validation times): the
  value that makes the members' spread about their mean equal the regression's RMS error on the
  validation times,

      s_c = RMS_c(y - mu) / sqrt( mean_{samples, pixels} var_k(r_k,c) )

  where ``r_k`` are M draws of the trained diffusion (the inference sampler, before scaling) for each
  validation sample and ``var_k`` their variance over the members (ddof 1). A regression fits the times
  it was trained on better than unseen ones, and part of a small-data diffusion's draws is a shared
  conditional mean rather than spread: measuring the spread itself on unseen times calibrates both;
- spread factor (:func:`calibrated_spread_factor`, a diffusion without a regression mean, e.g. the
  Stormscope tendency): members are spread about their own mean by a factor ``a_c`` that makes that
  spread match the error of the ensemble mean on the validation times, for an exchangeable ensemble
  of M members ``E[(y - mean)^2] = (1 + 1/M) sigma^2``:

      a_c^2 = mean (t - s r_mean)^2 / ((1 + 1/M) s^2 mean var_k(r_k))        (t: the true residual)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import ConfigError, explain

__all__ = ["residual_scale", "calibrated_sample_scale", "calibrated_spread_factor", "evenly_spread_batches"]


def evenly_spread_batches(dataset, max_samples: int, device, batch: int = 8) -> Iterator[tuple[list[int], dict]]:
    """``(indices, collated batch on device)`` of up to ``max_samples`` samples spread evenly over
    ``dataset`` (first and last included), ``batch`` at a time."""
    from torch.utils.data import default_collate

    n = len(dataset)
    index = sorted({int(i) for i in torch.linspace(0, n - 1, min(n, max_samples)).round().tolist()})
    for start in range(0, len(index), batch):
        part = index[start:start + batch]
        items = default_collate([dataset[i] for i in part])
        yield part, {k: (v.to(device) if torch.is_tensor(v) else [t.to(device) for t in v] if isinstance(v, list) else v)
                     for k, v in items.items()}


def _sigma_data(pipeline, n_out: int) -> torch.Tensor:
    sd = torch.as_tensor(pipeline.stages["diffusion"].sigma_data, dtype=torch.float64).reshape(-1).cpu()
    return sd.expand(n_out)


def residual_scale(pipeline, dataset, setting="auto", max_samples: int = 64) -> list[float] | None:
    """The training scale ``s_c = RMS_c(y - mu) / sigma_data_c`` over up to ``max_samples`` samples
    spread evenly over ``dataset``. ``setting``: ``"auto"`` (that), ``"none"`` (no scaling: None) or
    explicit values (one per output channel)."""
    if setting == "none" or dataset is None:
        return None
    n_out = len(pipeline.spec.output_vars)
    if setting != "auto":
        values = [float(v) for v in setting]
        if len(values) != n_out:
            raise ConfigError(explain("model.residual_scale needs one value per output variable",
                                      expected=n_out, found=values))
        return values
    total = torch.zeros(n_out, dtype=torch.float64)
    count = 0
    for _, batch in evenly_spread_batches(dataset, max_samples, pipeline.device):
        r = pipeline.residual(batch).double()
        total += r.pow(2).sum(dim=(0, 2, 3)).cpu()
        count += r.shape[0] * r.shape[2] * r.shape[3]
    scale = (total / max(count, 1)).sqrt() / _sigma_data(pipeline, n_out)
    return [float(v) if v > 0 else 1.0 for v in scale]


def _draw_moments(pipeline, dataset, members: int, max_samples: int, seed: int):
    """Per channel over up to ``max_samples`` samples: ``(mean true residual^2, mean var_k(draws),
    mean (t - s * draw mean)^2)`` (s: the training scale), or None (no residual draws, no samples)."""
    from ..diffusion.seeds import row_seeds

    if dataset is None or len(dataset) == 0 or members < 2:
        return None
    n_out = len(pipeline.spec.output_vars)
    sums = torch.zeros(3, n_out, dtype=torch.float64)
    count = 0
    for index, batch in evenly_spread_batches(dataset, max_samples, pipeline.device):
        got = pipeline.calibration_draws(batch, [row_seeds(seed, members, i) for i in index])
        if got is None:
            return None
        draws, residual = (t.double() for t in got)
        s = pipeline.residual_scale(residual).double()
        sums[0] += residual.pow(2).sum(dim=(0, 2, 3)).cpu()
        sums[1] += draws.var(dim=0, unbiased=True).sum(dim=(0, 2, 3)).cpu()
        sums[2] += (residual - s * draws.mean(dim=0)).pow(2).sum(dim=(0, 2, 3)).cpu()
        count += residual.shape[0] * residual.shape[2] * residual.shape[3]
    if count == 0 or bool((sums[1] <= 0).any()):
        return None
    return sums / count


@torch.no_grad()
def calibrated_sample_scale(pipeline, dataset, members: int = 8, max_samples: int = 8,
                            seed: int = 0) -> list[float] | None:
    """The sampling scale of the module docstring, measured with ``members`` draws on each of up to
    ``max_samples`` samples of ``dataset`` (the validation times); draw k of sample i is seeded by
    ``row_seed(seed, k, i)``. None when the pipeline's diffusion does not model a residual, the dataset
    is empty, or a channel's draws have no spread."""
    moments = _draw_moments(pipeline, dataset, members, max_samples, seed)
    return None if moments is None else [float(v) for v in (moments[0] / moments[1]).sqrt()]


@torch.no_grad()
def calibrated_spread_factor(pipeline, dataset, members: int = 8, max_samples: int = 8,
                             seed: int = 0) -> list[float] | None:
    """The spread factor ``a_c`` of the module docstring (same sampling as :func:`calibrated_sample_scale`)."""
    moments = _draw_moments(pipeline, dataset, members, max_samples, seed)
    if moments is None:
        return None
    s2 = pipeline.residual_scale(torch.zeros(1)).double().reshape(-1).cpu() ** 2
    return [float(v) for v in (moments[2] / ((1 + 1 / members) * s2 * moments[1])).sqrt()]
