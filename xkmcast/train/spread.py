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

- gains by value (:func:`calibrated_value_gains`, for the channels ``model.spread_by_value`` names): one
  spread level per channel is right on average but not where the residual's spread depends on the
  value it is added to (precipitation: small in dry areas, a factor of two either way in log space in
  rain). On the validation samples, the pixels of channel c are sorted by the base ``mu`` (the
  regression mean; Stormscope: the state), cut into ``classes`` groups of equal count, and each group j
  gets the gain that makes the members' spread there match the error there,

      h_j^2 = mean_j (t - shared)^2 / (k mean_j var_k(d))      (k = 1 centred, 1 + 1/M otherwise)

  (``d`` the members' spread about their mean with the scales above, ``shared`` their common
  departure); the gain is linear in ``mu`` between the groups' medians (:meth:`Pipeline.value_gain`).

The step gains of a stepping model's rollouts are in :mod:`xkmcast.train.spread_steps`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from ..errors import ConfigError, explain

__all__ = ["residual_scale", "calibrated_sample_scale", "calibrated_spread_factor", "calibrated_value_gains",
           "value_channels", "validation_draws", "spread_balance", "member_split", "calibration_index",
           "draw_seeds", "draws_by_sample", "evenly_spread_batches", "valid_values", "CALIBRATION_MEMBERS",
           "CALIBRATION_SAMPLES", "CALIBRATION_PIXELS", "FEW_CALIBRATION_SAMPLES", "calibration_samples"]

#: draws per validation sample, and validation samples, of the spread calibrations at export
CALIBRATION_MEMBERS, CALIBRATION_SAMPLES = 8, 8
#: on a CPU, the pixels (samples x grid) those calibrations draw on at most: 8 samples of 128 x 128
CALIBRATION_PIXELS = 8 * 128 * 128
#: validation samples below which the export warns that the calibrated spread stands for little weather:
#: the Florence nowcast of bench/science.py, calibrated on 2 hourly pairs, had spread-skill 1.00 on them
#: and 0.65-0.83 on every other hour of its record (bench/science_cases.py)
FEW_CALIBRATION_SAMPLES = 4


def calibration_samples(shape, device) -> int:
    """Validation samples the export's spread calibrations draw on: ``CALIBRATION_SAMPLES``; on a CPU, for a
    grid of ``shape`` (H, W), ``max(2, min(CALIBRATION_SAMPLES, CALIBRATION_PIXELS // (H W)))``. Their cost
    is members x solver steps x pixels: 5 samples of a 200 x 400 grid took about 4 minutes per calibration
    on 2 cores, after 2 minutes of training; 2 samples still hold 160,000 pixels.
    ``shape`` None (unknown): ``CALIBRATION_SAMPLES``."""
    if shape is None or torch.device(device).type != "cpu":
        return CALIBRATION_SAMPLES
    pixels = int(shape[0]) * int(shape[1])
    return max(2, min(CALIBRATION_SAMPLES, CALIBRATION_PIXELS // pixels))


def _evenly_spread(n: int, k: int) -> list[int]:
    """Up to ``k`` of the indices 0..n-1, spread evenly (first and last included)."""
    return sorted({int(i) for i in torch.linspace(0, n - 1, min(n, k)).round().tolist()})


def calibration_index(n: int, samples: int, starts=()) -> list[int]:
    """The ``samples`` of ``n`` validation samples (at most) the export's calibrations draw on, sorted:
    ``starts`` (the first samples of a stepping model's validation rollouts, whose draws are then also the
    rollouts' first steps: :func:`draws_by_sample`), then others spread evenly over the rest."""
    chosen = list(dict.fromkeys(int(i) for i in starts))[:samples]
    rest = [i for i in range(n) if i not in chosen]
    if len(chosen) < samples and rest:
        chosen += [rest[j] for j in _evenly_spread(len(rest), samples - len(chosen))]
    return sorted(chosen)


def evenly_spread_batches(dataset, max_samples: int, device, batch: int = 8, rank: int = 0,
                          world_size: int = 1, index: list[int] | None = None) -> Iterator[tuple[list[int], dict]]:
    """``(indices, collated batch on device)`` of up to ``max_samples`` samples spread evenly over
    ``dataset`` (first and last included; ``index``: those samples instead), ``batch`` at a time; of
    those, process ``rank`` of ``world_size`` takes every ``world_size``-th."""
    from torch.utils.data import default_collate

    index = (_evenly_spread(len(dataset), max_samples) if index is None else list(index))[rank::world_size]
    for start in range(0, len(index), batch):
        part = index[start:start + batch]
        items = default_collate([dataset[i] for i in part])
        yield part, {k: (v.to(device) if torch.is_tensor(v) else [t.to(device) for t in v] if isinstance(v, list) else v)
                     for k, v in items.items()}


def valid_values(values: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values with non-finite or masked entries set to 0, where they are valid)`` for per-channel
    values (B, C, H, W) of a batch (its ``mask``, when it has one, 1 where the target is valid)."""
    ok = torch.isfinite(values)
    if batch.get("mask") is not None:
        ok = ok & batch["mask"].to(torch.bool)
    return torch.where(ok, values, torch.zeros_like(values)), ok


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
    count = torch.zeros(n_out, dtype=torch.float64)
    for _, batch in evenly_spread_batches(dataset, max_samples, pipeline.device):
        r, ok = valid_values(pipeline.residual(batch).double(), batch)
        total += r.pow(2).sum(dim=(0, 2, 3)).cpu()
        count += ok.sum(dim=(0, 2, 3)).cpu()
    scale = (total / count.clamp(min=1)).sqrt() / _sigma_data(pipeline, n_out)
    return [float(v) if v > 0 else 1.0 for v in scale]


def _draw_moments(pipeline, dataset, members: int, max_samples: int, seed: int, drawn=None):
    """Per channel over up to ``max_samples`` samples: ``(mean true residual^2, mean var_k(draws),
    mean (t - s * draw mean)^2)`` (s: the training scale), or None (no residual draws, no samples)."""
    if dataset is None or len(dataset) == 0 or members < 2:
        return None
    n_out = len(pipeline.spec.output_vars)
    sums = torch.zeros(3, n_out, dtype=torch.float64)
    count = 0
    for draws, residual, _ in validation_draws(pipeline, dataset, members, max_samples, seed, drawn):
        draws, residual = draws.double(), residual.double()
        s = pipeline.residual_scale(residual).double()
        sums[0] += residual.pow(2).sum(dim=(0, 2, 3)).cpu()
        sums[1] += draws.var(dim=0, unbiased=True).sum(dim=(0, 2, 3)).cpu()
        sums[2] += (residual - s * draws.mean(dim=0)).pow(2).sum(dim=(0, 2, 3)).cpu()
        count += residual.shape[0] * residual.shape[2] * residual.shape[3]
    if count == 0 or bool((sums[1] <= 0).any()):
        return None
    return sums / count


@torch.no_grad()
def calibrated_sample_scale(pipeline, dataset, members: int = CALIBRATION_MEMBERS,
                            max_samples: int = CALIBRATION_SAMPLES, seed: int = 0,
                            drawn: list | None = None) -> list[float] | None:
    """The sampling scale of the module docstring, measured with ``members`` draws on each of up to
    ``max_samples`` samples of ``dataset`` (the validation times); draw k of sample i is seeded by
    ``row_seed(seed, k, i)``. None when the pipeline's diffusion does not model a residual, the dataset
    is empty, or a channel's draws have no spread. ``drawn``: :func:`validation_draws` of the same
    arguments, drawn once for several calibrations."""
    moments = _draw_moments(pipeline, dataset, members, max_samples, seed, drawn)
    return None if moments is None else [float(v) for v in (moments[0] / moments[1]).sqrt()]


@torch.no_grad()
def calibrated_spread_factor(pipeline, dataset, members: int = CALIBRATION_MEMBERS,
                             max_samples: int = CALIBRATION_SAMPLES, seed: int = 0,
                             drawn: list | None = None) -> list[float] | None:
    """The spread factor ``a_c`` of the module docstring (same sampling as :func:`calibrated_sample_scale`)."""
    moments = _draw_moments(pipeline, dataset, members, max_samples, seed, drawn)
    if moments is None:
        return None
    s2 = pipeline.residual_scale(torch.zeros(1)).double().reshape(-1).cpu() ** 2
    return [float(v) for v in (moments[2] / ((1 + 1 / members) * s2 * moments[1])).sqrt()]


@torch.no_grad()
def calibrated_value_gains(pipeline, dataset, channels: list[int], members: int = CALIBRATION_MEMBERS,
                           max_samples: int = CALIBRATION_SAMPLES, seed: int = 0, classes: int = 8,
                           drawn: list | None = None) -> list[dict | None] | None:
    """The gains by value of the module docstring for the output channels ``channels`` (the others None),
    as ``spec.extra["spread_by_value"]``; measured with ``members`` draws (seeded as in
    :func:`calibrated_sample_scale`) on up to ``max_samples`` samples of ``dataset``, with the scales the
    spec already holds. A channel with a value transform (:mod:`xkmcast.fields.transforms`) is calibrated
    in its physical units: each group's gain is the one at which the spread of the members mapped back
    (``T^-1``) matches the error of their mean there (found by bisection), as the members are
    scored. None when there is nothing to calibrate (no channel, no residual draws, no samples, one member)."""
    if not channels or dataset is None or len(dataset) == 0 or members < 2:
        return None
    parts: dict[int, list[list[torch.Tensor]]] = {c: [[], [], [], []] for c in channels}
    for draws, residual, base in validation_draws(pipeline, dataset, members, max_samples, seed, drawn):
        shared, spread = member_split(pipeline, draws)
        for c in channels:  # base + shared + spread_k: member k; base + residual: the truth
            for i, t in enumerate((base[:, c], shared[:, c], residual[:, c], spread[:, :, c])):
                parts[c][i].append(t.double().reshape(*t.shape[:t.ndim - 3], -1).cpu())
    if not parts[channels[0]][0]:  # no residual draws
        return None
    table: list[dict | None] = [None] * len(pipeline.spec.output_vars)
    for c in channels:
        b, sh, r = (torch.cat(p) for p in parts[c][:3])
        d = torch.cat(parts[c][3], dim=-1)
        # pixels whose target is missing have all-zero draws and residual (validation_draws): they add
        # nothing to a group's sums, and are left out of the groups by value (not to shift their knots)
        drawn = (d != 0).any(dim=0) | (r != 0)
        b, sh, r, d = b[drawn], sh[drawn], r[drawn], d[:, drawn]
        to_physical = _physical_units(pipeline, c)
        if to_physical is not None:
            def moments(idx, g, b=b, sh=sh, r=r, d=d, to_physical=to_physical):
                return _physical_moments(b[idx] + sh[idx], d[:, idx], b[idx] + r[idx], g, to_physical)

            table[c] = _gains_by_value(b, moments, 1 + 1 / members, classes, linear=False)
        else:
            error2, var = (r - sh) ** 2, d.var(dim=0, unbiased=True)
            table[c] = _gains_by_value(b, lambda idx, g: (float(error2[idx].sum()), g * g * float(var[idx].sum())),
                                       spread_balance(pipeline, members), classes, linear=True)
    return table if any(table) else None


def validation_draws(pipeline, dataset, members: int, max_samples: int, seed: int,
                     drawn: list | None = None, index: list[int] | None = None) -> Iterator[tuple]:
    """``(draws (M, B, C, H, W), true residual, base)`` of :meth:`calibration_draws` for the batches of up to
    ``max_samples`` samples spread evenly over ``dataset`` (``index``: those samples, in order; see
    :func:`calibration_index`), draw k of sample i seeded by
    ``row_seed(seed, k, i)``; nothing when the pipeline's diffusion models no residual. ``drawn``: the
    list of these items drawn before with the same arguments, yielded instead of drawing again (the
    draws are those of the network before any scale or gain, so every calibration of one export can
    share them: they are most of its cost, minutes on a 200 x 400 grid). Where a sample's target is
    missing (its ``mask``) the draws and the true residual are 0: every calibration balances sums of
    the error and of the spread over pixels, to which such pixels add nothing."""
    if drawn is not None:
        yield from drawn
        return

    for part, batch in evenly_spread_batches(dataset, max_samples, pipeline.device, index=index):
        got = pipeline.calibration_draws(batch, [draw_seeds(seed, members, i) for i in part])
        if got is None:
            return
        if batch.get("mask") is not None:  # no error and no spread where the target is missing
            draws, residual, base = got
            valid = batch["mask"].to(draws.dtype)
            got = draws * valid, residual * valid.to(residual.dtype), base
        yield got


def draw_seeds(seed: int, members: int, sample: int) -> list[int]:
    """The seeds of the ``members`` validation draws of ``sample`` (draw k: ``row_seed(seed, k, sample)``),
    the first steps of the calibration rollouts from that sample too
    (:func:`~xkmcast.train.spread_steps.rollout_seeds`)."""
    from ..diffusion.seeds import row_seeds

    return row_seeds(seed, members, sample)


def draws_by_sample(index: list[int], drawn: list) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``{sample: (its draws (M, C, H, W), base (C, H, W))}`` of :func:`validation_draws`' items ``drawn``
    on the samples ``index`` (in that order)."""
    rows = [(draws[:, b], base[b]) for draws, _, base in drawn for b in range(draws.shape[1])]
    return dict(zip(index, rows))


def spread_balance(pipeline, members: int) -> float:
    """``k`` of ``mean (error of the ensemble mean)^2 = k mean var_k`` (ddof 1) in normalised units: 1 when
    the members are centred on the base (their mean is not estimated from them), ``1 + 1/M`` for an
    exchangeable ensemble of M."""
    return 1.0 if pipeline.members_centred else 1 + 1 / members


def member_split(pipeline, draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shared, spread)`` of M draws (M, N, C, H, W) as members make them
    (:meth:`Pipeline.member_parts`, without gains by value): their common departure (N, C, H, W, float64)
    and each member's spread about their mean; draws taken as they are split about their own mean."""
    shared, spread = pipeline.member_parts(draws, centre=pipeline.members_centred or None)
    if spread is None:
        spread, shared = shared - shared.mean(dim=0, keepdim=True), shared.mean(dim=0, keepdim=True)
    return shared.double().mean(dim=0), spread


def value_channels(pipeline, setting: str) -> list[int]:
    """The output channels whose spread is calibrated by value: ``"transformed"`` those with a value
    transform (precipitation-like: :func:`_physical_units`), ``"all"``, or ``"none"``."""
    channels = range(len(pipeline.spec.output_vars))
    if setting == "none":
        return []
    return [c for c in channels if setting == "all" or _physical_units(pipeline, c) is not None]


def _physical_units(pipeline, channel: int):
    """``z -> T^-1(z std + mean)`` (torch, normalised to physical units) of output ``channel`` when it has
    a value transform (:mod:`xkmcast.fields.transforms`), else None."""
    if "output" not in pipeline.spec.stats:
        return None
    stats, name = pipeline.stats_for("output"), pipeline.spec.output_vars[channel]
    if stats.transform_of(name) == "none":
        return None

    def to_physical(z: torch.Tensor) -> torch.Tensor:
        with np.errstate(over="ignore"):  # a gain at the end of the range may overflow: inf, then clipped
            return torch.from_numpy(stats.denormalise(z.numpy()[None], [name], axis=0)[0])

    return to_physical


def _physical_moments(centre, spread, truth, gain: float, to_physical) -> tuple[float, float]:
    """``(sum (y - mean_k x_k)^2, sum var_k x_k)`` in physical units over pixels, with members
    ``x_k = T^-1(centre_k + gain d_k)`` (``centre`` one for all members or one each) and truth
    ``y = T^-1(truth)``."""
    x = to_physical(centre + gain * spread)
    y = to_physical(truth)
    return float((y - x.mean(dim=0)).pow(2).sum()), float(x.var(dim=0, unbiased=True).sum())


#: the range of gains searched for a channel calibrated in physical units (ratios of the spread as drawn)
GAIN_RANGE = (1e-2, 1e2)


def _balance_gain(moments, k: float, iterations: int = 40) -> float:
    """The gain g in :data:`GAIN_RANGE` with ``k var(g) = error2(g)`` for ``moments(g) -> (sum error2, sum
    var)``, by bisection on ``log g`` (the spread grows with g faster than the error of the mean); the
    end of the range nearest the balance when it lies outside."""
    def excess(g: float) -> float:
        error2, var = moments(g)
        return math.log(max(k * var, 1e-300)) - math.log(max(error2, 1e-300))

    lo, hi = (math.log(g) for g in GAIN_RANGE)
    if excess(math.exp(lo)) >= 0:
        return math.exp(lo)
    if excess(math.exp(hi)) <= 0:
        return math.exp(hi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(math.exp(mid)) < 0 else (lo, mid)
    return math.exp(0.5 * (lo + hi))


def _gains_by_value(value: torch.Tensor, moments, k: float, classes: int, linear: bool) -> dict | None:
    """``{"knots", "gains"}``: the pixels sorted by ``value`` in ``classes`` groups of equal count (groups
    with the same median merged: e.g. the many dry pixels of a precipitation field), each group's median
    and the gain g with ``error2 = k var`` where ``moments(indices, g) -> (sum error2, sum var)`` at gain g:
    ``sqrt(error2 / (k var))`` at g = 1 when ``linear`` (the error does not depend on g and the spread
    grows as g^2), else the g that balances them (:func:`_balance_gain`); None when no group has spread."""
    order = torch.argsort(value)
    groups: dict[float, list[torch.Tensor]] = {}
    for part in torch.tensor_split(order, max(1, min(classes, value.numel()))):
        if part.numel():
            groups.setdefault(float(value[part].median()), []).append(part)
    knots, gains = [], []
    for knot in sorted(groups):
        idx = torch.cat(groups[knot])
        error2, var = moments(idx, 1.0)
        if var <= 0:
            continue
        if linear:
            gain = (error2 / (k * var)) ** 0.5
        else:
            gain = _balance_gain(lambda g: moments(idx, g), k)
        knots.append(knot)
        gains.append(gain)
    return {"knots": knots, "gains": gains} if knots else None
