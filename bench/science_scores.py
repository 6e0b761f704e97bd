"""The columns of bench/science.py, computed with xkmcast.fields.metrics on (prediction, truth) pairs.

Every prediction is first put on the truth's grid coordinates (``on_truth``). Columns:

- ``mae``: MAE of the ensemble mean (of the field itself for one-member methods); ``rmse``: its RMSE
  (the mean is the minimiser of the squared error, the median of the absolute one: for a skewed variable
  such as precipitation the two can rank an ensemble mean and a regression differently); ``bias``: its
  mean error (prediction - truth);
- ``crps`` / ``crps_fair``: standard and fair CRPS (a one-member forecast: its absolute error);
- ``ssr``: spread-skill ratio (Fortin et al.; NaN for one member); ``ssr_lo`` / ``ssr_hi``: its 90 %
  bootstrap interval over the scored times (``xkmcast.fields.resampling``, 1000 resamples of whole fields);
- ``spec``: power of one member over the truth's, averaged over the finest resolved third of the
  wavenumbers (2/3 Nyquist .. Nyquist, grid units): 1 is right, < 1 too smooth, > 1 too noisy;
- ``seam``: mean |jump| between neighbouring pixels across the patch borders of the model's patching,
  over the truth's at the same places (NaN when the model is not patched);
- ``tails`` (``thresholds`` given): for each threshold, the fraction of member pixels above it over
  the truth's (1 is right); and ``member_max``: the median over the members of each member's maximum
  (over the same times and pixels as the truth's), over the truth's maximum. The members' pooled maximum
  (``hi``) is the largest of M times as many values as the truth's, so it exceeds the truth's even when
  every member is distributed like the truth; one member's maximum is the like-for-like comparison;
- ``lo`` / ``hi``: minimum and maximum of the members vs the truth's (printed side by side).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from xkmcast.fields import metrics
from xkmcast.fields.resampling import bootstrap_interval


def on_truth(pred: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
    """``pred`` with its last two dims renamed and re-labelled as the truth's spatial dims."""
    ydim, xdim = truth.dims[-2:]
    pred = pred.rename({pred.dims[-2]: ydim, pred.dims[-1]: xdim})
    keep = [c for c in pred.coords if set(pred[c].dims) & {ydim, xdim}]
    pred = pred.drop_vars(keep).assign_coords({ydim: truth[ydim], xdim: truth[xdim]}) \
        if ydim in truth.coords else pred.drop_vars(keep)
    if "time" in pred.dims and "time" in truth.dims:
        pred = pred.assign_coords(time=truth["time"].values)
    return pred


def top_third_power_ratio(pred: xr.DataArray, truth: xr.DataArray) -> float:
    """Power ratio (one member vs truth) over wavenumbers 2/3 Nyquist .. Nyquist (grid units). A truth
    with missing values (a conic domain on its rectangle) is compared on the largest rectangle where it
    has a value at every time (the spectrum of a field with holes is not the field's); NaN when that is
    smaller than 8 x 8."""
    ydim, xdim = truth.dims[-2:]
    if bool(truth.isnull().any()):
        rows, cols = largest_rectangle(truth.notnull().all([d for d in truth.dims if d not in (ydim, xdim)]).values)
        if rows.stop - rows.start < 8 or cols.stop - cols.start < 8:
            return float("nan")
        truth, pred = truth.isel({ydim: rows, xdim: cols}), pred.isel({pred.dims[-2]: rows, pred.dims[-1]: cols})
    one = pred.isel(member=0) if "member" in pred.dims else pred
    ps = metrics.power_spectrum(one, dx=1.0, dy=1.0, spatial=(ydim, xdim))
    pt = metrics.power_spectrum(truth, dx=1.0, dy=1.0, spatial=(ydim, xdim))
    k = ps["wavenumber"]
    band = (k >= 0.5 * 2 / 3) & (k <= 0.5)
    return float(ps.where(band).sum() / pt.where(band).sum())


def largest_rectangle(valid: np.ndarray) -> tuple[slice, slice]:
    """(rows, cols) of the largest all-true rectangle of the 2-D boolean ``valid`` (each row's column
    heights of trues ending there, and the widest bar under each height: O(rows x cols^2))."""
    best, found = 0, (slice(0, 0), slice(0, 0))
    heights = np.zeros(valid.shape[1], int)
    for r, row in enumerate(np.asarray(valid, bool)):
        heights = np.where(row, heights + 1, 0)
        for c0 in range(valid.shape[1]):
            h = heights[c0]
            for c1 in range(c0, valid.shape[1]):
                h = min(h, heights[c1])
                if h == 0:
                    break
                if h * (c1 - c0 + 1) > best:
                    best, found = h * (c1 - c0 + 1), (slice(r - h + 1, r + 1), slice(c0, c1 + 1))
    return found


def seam_ratio(pred: xr.DataArray, truth: xr.DataArray, borders: tuple[list[int], list[int]] | None) -> float:
    """Mean |f[i] - f[i-1]| across the patch borders (rows, cols) of pred over that of truth."""
    if not borders or not (borders[0] or borders[1]):
        return float("nan")
    ydim, xdim = truth.dims[-2:]

    def jumps(f: xr.DataArray) -> float:
        a = np.asarray(f.transpose(..., ydim, xdim).values, dtype=np.float64)
        parts = [np.abs(a[..., r, :] - a[..., r - 1, :]).ravel() for r in borders[0] if 0 < r < a.shape[-2]]
        parts += [np.abs(a[..., :, c] - a[..., :, c - 1]).ravel() for c in borders[1] if 0 < c < a.shape[-1]]
        return float(np.mean(np.concatenate(parts)))

    return jumps(pred) / jumps(truth)


def patch_borders(model) -> tuple[list[int], list[int]] | None:
    """Rows and columns of the grid where a patched model's inference patches meet (None: unpatched)."""
    spec = model.spec
    if not spec.patch or tuple(spec.patch) == tuple(spec.grid["shape"]):
        return None
    from xkmcast.diffusion.patching import GridPatching

    g = GridPatching(tuple(spec.grid["shape"]), tuple(spec.patch), **spec.extra.get("patching", {}))
    (sy, sx), b = g.stride, g.boundary
    # patch j covers padded [j*s, j*s + p); its own interior ends where the next one's begins
    rows = [j * sy - b + g.overlap // 2 for j in range(1, g.grid_shape[0])]
    cols = [j * sx - b + g.overlap // 2 for j in range(1, g.grid_shape[1])]
    return rows, cols


def scores(pred: xr.DataArray, truth: xr.DataArray, borders=None, thresholds=()) -> dict[str, float]:
    """The columns for one method and one variable (see the module docstring)."""
    ens = "member" in pred.dims and pred.sizes["member"] > 1
    mean = pred.mean("member") if "member" in pred.dims else pred
    out = {"mae": float(metrics.mae(mean, truth)), "rmse": float(metrics.rmse(mean, truth)),
           "bias": float(metrics.bias(mean, truth))}
    if ens:
        out["crps"] = float(metrics.crps(pred, truth))
        out["crps_fair"] = float(metrics.crps(pred, truth, fair=True))
        out["ssr"] = float(metrics.spread_skill(pred, truth))
        out["ssr_lo"], out["ssr_hi"] = (float(q) for q in bootstrap_interval(metrics.spread_skill, pred, truth))
    else:
        out["crps"] = out["crps_fair"] = out["mae"]
        out["ssr"] = out["ssr_lo"] = out["ssr_hi"] = float("nan")
    out["spec"] = top_third_power_ratio(pred, truth)
    out["seam"] = seam_ratio(pred, truth, borders)
    if thresholds:
        out["tails"] = {t: float((pred > t).mean() / (truth > t).mean()) for t in thresholds}
        if ens:
            per_member = pred.max([d for d in pred.dims if d != "member"])
            out["member_max"] = float(per_member.median() / truth.max())
    out["lo"], out["hi"] = float(pred.min()), float(pred.max())
    out["tlo"], out["thi"] = float(truth.min()), float(truth.max())
    return out
