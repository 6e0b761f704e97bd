"""Linear statistical downscaling: the least-squares baseline a learned model has to beat.

For each output variable ``v`` the fine truth is regressed on every interpolated input at the same
pixel (and, pooled, on the invariants), with coefficients fitted on training times only::

    per pixel (pooled=False):   y_v(t, p) = a_v(p) + sum_k b_{v,k}(p) x_k(t, p)
    per variable (pooled=True): y_v(t, p) = a_v + sum_k b_{v,k} x_k(t, p) + sum_j c_{v,j} z_j(p)

``x_k`` are the inputs already on the fine grid (e.g. the coarse fields regridded bilinearly), ``z_j``
the invariants (orography, land fraction, ...; in the per-pixel form they are constant at a pixel,
hence absorbed in ``a_v(p)`` and left out). The coefficients are the least-squares solution
``argmin sum_t (y - X beta)^2 + alpha |beta_{1:}|^2`` over the training samples (minimum-norm when the
system is underdetermined, e.g. fewer training times than predictors per pixel); predictors are
centred and scaled by their training spread before solving (this does not change the fitted values
when ``alpha=0``). The same regression steps a state forward when the inputs are the state at ``t``
and the target the state at ``t + dt``.

NaN samples are left out of the fit at that pixel. Only xarray and numpy are used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

import numpy as np
import xarray as xr

from ..errors import InvalidDataError, explain

__all__ = ["LinearDownscaling", "fit_linear"]


@dataclasses.dataclass
class LinearDownscaling:
    """A fitted linear baseline: ``predict(inputs)`` applies it to other times of the same grid."""

    predictors: list[str]
    outputs: list[str]
    invariant_names: list[str]
    coefficients: dict[str, np.ndarray]  # output -> (K+1,) pooled or (K+1, *space) per pixel, scaled space
    centre: np.ndarray  # (K,) or (K, *space)
    scale: np.ndarray
    sample_dim: Hashable
    space_dims: tuple[Hashable, ...]
    pooled: bool
    invariants: xr.Dataset | None = None

    def predict(self, inputs: xr.Dataset, invariants: xr.Dataset | None = None) -> xr.Dataset:
        """The fitted regression applied to ``inputs`` (same predictors): a Dataset of the output variables
        with the dims of the inputs. On the grid it was fitted on, or, pooled, on another grid with that
        grid's ``invariants`` (the same names; a region held out in space)."""
        if invariants is not None and not self.pooled:
            raise InvalidDataError(explain("a per-pixel fit holds its pixels' own coefficients: it predicts on "
                                           "its own grid only", found="invariants of another grid",
                                           fix="fit with pooled=True to apply it elsewhere"))
        invariants = self.invariants if invariants is None else invariants
        x = _design(inputs, self.predictors, invariants if self.pooled else None, self.invariant_names,
                    self.sample_dim, self.space_dims)  # (K, T, *space)
        z = (x - _expand(self.centre, x.ndim)) / _expand(self.scale, x.ndim)
        like = inputs[self.predictors[0]].transpose(self.sample_dim, *self.space_dims)
        out = {}
        for v in self.outputs:
            beta = self.coefficients[v]
            intercept = beta[0] if self.pooled else beta[0][None]
            value = intercept + np.sum(_expand(beta[1:], z.ndim) * z, axis=0)
            out[v] = like.copy(data=value.astype(like.dtype)).rename(v)
            out[v].attrs = {"long_name": f"linear statistical downscaling of {v}"}
        return xr.Dataset(out)


def _expand(a: np.ndarray, ndim: int) -> np.ndarray:
    """(K,) -> (K, 1, 1, ...) for pooled coefficients; (K, *space) -> (K, 1, *space) per pixel."""
    a = np.asarray(a)
    if a.ndim == 1:
        return a.reshape(a.shape + (1,) * (ndim - 1))
    return a[:, None]


def _design(inputs: xr.Dataset, predictors, invariants, inv_names, sample_dim, space_dims) -> np.ndarray:
    missing = [k for k in predictors if k not in inputs.data_vars]
    if missing:
        raise InvalidDataError(explain("the inputs lack predictors of the fitted baseline",
                                       expected=list(predictors), found=list(inputs.data_vars)))
    order = (sample_dim, *space_dims)
    cols = [np.asarray(inputs[k].transpose(*order).values, dtype=np.float64) for k in predictors]
    if invariants is not None:
        shape = cols[0].shape
        for j in inv_names:
            cols.append(np.broadcast_to(np.asarray(invariants[j].transpose(*space_dims).values, np.float64), shape))
    return np.stack(cols)


def fit_linear(inputs: xr.Dataset, target: xr.Dataset, *, sample_dim: Hashable = "time",
               invariants: xr.Dataset | None = None, pooled: bool = False, alpha: float = 0.0,
               outputs: list[str] | None = None) -> LinearDownscaling:
    """Fit the linear baseline of the module docstring on the training samples given.

    ``inputs``: the predictors on the fine grid, dims ``(sample_dim, *space)``; ``target``: the fine
    truth on the same grid and samples; ``invariants``: 2-D fields on that grid (used when
    ``pooled``); ``alpha``: ridge penalty in the scaled predictor space (0: plain least squares).
    """
    outputs = list(outputs or target.data_vars)
    predictors = list(inputs.data_vars)
    first = inputs[predictors[0]]
    if sample_dim not in first.dims:
        raise InvalidDataError(explain("the inputs have no sample dimension", expected=sample_dim,
                                       found=first.dims, fix="pass sample_dim= the name of the time dimension"))
    space = tuple(d for d in first.dims if d != sample_dim)
    inv_names = list(invariants.data_vars) if (pooled and invariants is not None) else []
    x = _design(inputs, predictors, invariants if pooled else None, inv_names, sample_dim, space)
    axes = (1, *range(2, x.ndim)) if pooled else (1,)
    centre = np.nanmean(x, axis=axes)
    scale = np.nanstd(x, axis=axes)
    scale = np.where(scale > 0, scale, 1.0)
    z = (x - _expand(centre, x.ndim)) / _expand(scale, x.ndim)
    coefficients = {}
    for v in outputs:
        y = np.asarray(target[v].transpose(sample_dim, *space).values, dtype=np.float64)
        coefficients[v] = _solve_pooled(z, y, alpha) if pooled else _solve_per_pixel(z, y, alpha)
    return LinearDownscaling(predictors, outputs, inv_names, coefficients, centre, scale, sample_dim, space,
                             pooled, invariants if pooled else None)


def _solve_pooled(z: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """One coefficient vector (K+1,) from all samples and pixels (rows with a NaN left out)."""
    a = np.concatenate([np.ones((1, *z.shape[1:])), z]).reshape(z.shape[0] + 1, -1).T  # (N, K+1)
    b = y.reshape(-1)
    ok = np.isfinite(b) & np.isfinite(a).all(axis=1)
    return _ridge(a[ok], b[ok], alpha)


def _solve_per_pixel(z: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Coefficients (K+1, *space): one least-squares problem per pixel over the samples."""
    k, t = z.shape[:2]
    space = z.shape[2:]
    zz = z.reshape(k, t, -1)
    yy = y.reshape(t, -1)
    beta = np.full((k + 1, zz.shape[-1]), np.nan)
    finite = np.isfinite(yy) & np.isfinite(zz).all(axis=0)
    full = finite.all(axis=0)
    if full.any():  # every sample valid: one batched pseudo-inverse
        a = np.concatenate([np.ones((1, t, int(full.sum()))), zz[:, :, full]]).transpose(2, 1, 0)  # (P, T, K+1)
        beta[:, full] = _ridge_batched(a, yy[:, full].T, alpha).T
    for p in np.flatnonzero(~full):
        rows = finite[:, p]
        if rows.any():
            a = np.concatenate([np.ones((int(rows.sum()), 1)), zz[:, rows, p].T], axis=1)
            beta[:, p] = _ridge(a, yy[rows, p], alpha)
    return beta.reshape(k + 1, *space)


def _ridge(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    if alpha > 0:
        pen = np.sqrt(alpha) * np.eye(a.shape[1])[1:]  # the intercept is not penalised
        a, b = np.concatenate([a, pen]), np.concatenate([b, np.zeros(len(pen))])
    return np.linalg.lstsq(a, b, rcond=None)[0]


def _ridge_batched(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """(P, T, K) systems and (P, T) right-hand sides -> (P, K) minimum-norm least-squares solutions."""
    if alpha > 0:
        k = a.shape[-1]
        pen = np.broadcast_to(np.sqrt(alpha) * np.eye(k)[1:], (a.shape[0], k - 1, k))
        a = np.concatenate([a, pen], axis=1)
        b = np.concatenate([b, np.zeros((b.shape[0], k - 1))], axis=1)
    return np.einsum("pkt,pt->pk", np.linalg.pinv(a), b)
