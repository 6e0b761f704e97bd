"""The tensor steps around a time-window CorrDiff package (CorrDiff CMIP6 -> ERA5), before and after
the networks; the facts are in ``pipeline.spec.extra["time_window"]`` (see :mod:`.corrdiff_cmip6`).

:func:`window_condition` turns the physical inputs of each row's window ``(B, L, C, h, w)`` on the
package's input grid (rows south to north) and each row's valid time into the networks' condition
``(B, L*C + C_inv + 2, H + 47, W + 96)``, in Earth2Studio's order of operations (which matters: the
invariants end up flipped relative to the inputs). :func:`finish` crops, denormalises, clamps and
flips the networks' normalised output back onto the output grid. Torch and NumPy only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...fields.solar import cos_zenith

__all__ = ["window_condition", "finish", "hour_of_day", "sai_cover"]


def _facts(pipeline) -> dict:
    return pipeline.spec.extra["time_window"]


def hour_of_day(times) -> np.ndarray:
    """The (whole) UTC hour of each time, as float64."""
    t = np.asarray(times, dtype="datetime64[s]")
    return ((t - t.astype("datetime64[D]")) // np.timedelta64(1, "h")).astype(np.float64)


def sai_cover(x: Tensor, i_sic: int, i_snc: int) -> Tensor:
    """``x`` (B, C, L, h, w) with channel ``i_sic`` replaced by the sea-air-ice cover:
    ``clip(nan_to_0(sic) + nan_to_0(snc), 0, 100)`` averaged over 3 x 3 cells (padded circularly along
    columns, by edge replication along rows)."""
    cover = (torch.nan_to_num(x[:, i_sic], nan=0.0) + torch.nan_to_num(x[:, i_snc], nan=0.0)).clip(0.0, 100.0)
    b, l, h, w = cover.shape
    c = F.pad(cover.reshape(b * l, 1, h, w), (1, 1, 0, 0), mode="circular")
    c = F.avg_pool2d(F.pad(c, (0, 0, 1, 1), mode="replicate"), 3, stride=1)
    out = x.clone()
    out[:, i_sic] = c.reshape(b, l, h, w)
    return out


def _stat(table: dict, names, key: str, repeat: int = 1) -> Tensor:
    values = torch.tensor([table[n][key] for n in names for _ in range(repeat)], dtype=torch.float32)
    return values[None, :, None, None]


def window_condition(pipeline, window: Tensor, valid_times) -> Tensor:
    """The normalised, padded, reordered condition of each row (see the module docstring).

    ``window`` (B, L, C, h, w): the input variables (``spec.input_vars``) at the window's offsets, physical
    units, on the input grid; ``valid_times`` (B,) datetime64: the output time of each row."""
    facts, spec = _facts(pipeline), pipeline.spec
    b, n_t, n_v = window.shape[:3]
    lat, lon = pipeline.grid_lat.cpu().numpy(), pipeline.grid_lon.cpu().numpy()
    x = window.to(torch.float32).transpose(1, 2)  # (B, C, L, h, w)
    if facts.get("sai"):
        x = sai_cover(x, spec.input_vars.index(facts["sai"][0]), spec.input_vars.index(facts["sai"][1]))
    x = F.interpolate(x.reshape(b, n_v * n_t, *x.shape[-2:]), size=lat.shape, mode="bilinear")  # variable-major
    stats_in, stats_inv = spec.stats["input"], spec.stats["invariant"]
    x = (x - _stat(stats_in, spec.input_vars, "mean", n_t).to(x)) / _stat(stats_in, spec.input_vars, "std", n_t).to(x)
    inv = pipeline.invariant.to(x).flip(-2).unsqueeze(0).expand(b, -1, -1, -1).clone()  # stored flipped (as in training)
    hour = torch.as_tensor(hour_of_day(valid_times), dtype=torch.float32, device=x.device)[:, None, None]
    last = stats_inv[spec.invariant_vars[-1]]
    inv[:, -1] = ((hour - last["mean"]) / last["std"]).expand(-1, *lat.shape)  # the hod-in-last-invariant quirk
    feats = facts["time_features"]
    sza = torch.as_tensor(cos_zenith(np.asarray(valid_times, "datetime64[ns]"), lat, lon), dtype=torch.float32)
    sza = ((sza.to(x.device) - feats["sza"]["mean"]) / feats["sza"]["std"]).unsqueeze(1)
    hod = ((hour - feats["hod"]["mean"]) / feats["hod"]["std"]).expand(-1, *lat.shape).unsqueeze(1)
    x = torch.cat([x, inv, sza, hod], dim=1).flip(-2)
    (top, bottom), (left, right) = facts["pad"]
    x = F.pad(F.pad(x, (0, 0, top, bottom), mode="reflect"), (left, right, 0, 0), mode="circular")
    n_in, n_inv = n_v * n_t, inv.shape[1]
    order = [*range(n_in), n_in + n_inv, *range(n_in, n_in + n_inv - 1), n_in + n_inv - 1, n_in + n_inv + 1]
    return x[:, order].contiguous()


def finish(pipeline, y: Tensor) -> Tensor:
    """Physical outputs on the output grid from the normalised padded network output ``(..., C_out, Hp, Wp)``:
    crop the padding, ``y * std + mean``, clamp the non-negative variables at 0, flip rows back south to north."""
    facts, spec = _facts(pipeline), pipeline.spec
    (top, bottom), (left, right) = facts["pad"]
    y = y[..., top:y.shape[-2] - bottom, left:y.shape[-1] - right].to(torch.float32)
    stats = spec.stats["output"]
    y = y * _stat(stats, spec.output_vars, "std").to(y)[0] + _stat(stats, spec.output_vars, "mean").to(y)[0]
    idx = [spec.output_vars.index(v) for v in facts.get("nonnegative", [])]
    if idx:
        y[..., idx, :, :] = y[..., idx, :, :].clamp(min=0)
    return y.flip(-2)
