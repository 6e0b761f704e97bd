"""Power spectra, autocorrelation, decorrelation length and a patch size for patched diffusion.

Conventions (all wavenumbers in cycles per km, all lengths in km):

- :func:`power_spectrum` - the isotropic 2-D spectrum. Per field ``f`` on ``ny x nx`` points spaced
  ``dy, dx`` km (mean removed): ``P(kx, ky) = |FFT2(f)|^2 / (nx ny)^2``, then summed over annuli
  ``|k| in [k_j - dk/2, k_j + dk/2)`` with ``k_j = j dk``, ``dk = max(1/(nx dx), 1/(ny dy))`` (the
  coarser of the two fundamental wavenumbers), and divided by ``dk``: a spectral density
  ``E(k)`` in (field units)^2 km. The axis stops at the last ``k_j`` not above the ``nyquist``
  attribute, ``min(1/(2dx), 1/(2dy))``: beyond it annuli are only partly sampled (the corners of the
  FFT square), their power is dropped. Parseval: ``sum_j E(k_j) dk = mean((f - mean f)^2)``, the
  spatial variance, less the power in those corners (none for a field band-limited to Nyquist).
- :func:`periodogram` - the 1-D spectrum of the CorrDiff recipe's scoring / plotting scripts: along x
  (one row at a time) the one-sided periodogram density of ``scipy.signal.periodogram(f, fs=1/dx)``
  (constant detrend, boxcar window): ``S(f_k) = c_k |rfft(f - mean)|_k^2 dx / n`` with ``c_k = 2``
  except at 0 and at the Nyquist frequency (``c_k = 1``), ``f_k = k / (n dx)``; then averaged over the
  rows (and the other dims named by ``dim``). Parseval: ``sum_k S(f_k) df = mean((f - mean f)^2)``,
  ``df = 1/(n dx)``. The recipe averages every dim; here ``dim=None`` averages every dim but the
  members (pass ``dim=[...]`` to keep time etc.).
- :func:`autocorrelation` - Wiener-Khinchin: the circular autocorrelation of the rows is the inverse
  real FFT of the two-sided periodogram, ``r(l) = irfft(S_two-sided)(l) / irfft(...)(0)`` with the
  mean (frequency 0) set to zero, for lags ``l = 0..n//2`` (``l dx`` km).
- :func:`decorrelation_length` - the first lag where ``r`` drops below ``threshold`` (default 1/e),
  linearly interpolated between lags; NaN when it never does within half the domain.
- :func:`suggest_patch_size` - ``n_lengths`` (default 3) decorrelation lengths in grid points, rounded
  up to a multiple of ``multiple`` (default 16), at least ``multiple``, at most the domain size (rounded
  down to a multiple when the domain is larger than one). Three e-folding lengths is where an
  exponential autocorrelation is down to 5 %, the "drops to about zero" rule of the CorrDiff recipe.

Grid spacing: the ``dx`` / ``dy`` arguments (km), else 1-D x / y coordinates with length units
(m or km), else the mean great-circle spacing of the grid found by :func:`xkmcast.fields.grid.find_grid`.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import xarray as xr

from ..errors import CoordinateError, GridError, InvalidDataError, explain

__all__ = [
    "power_spectrum",
    "periodogram",
    "autocorrelation",
    "decorrelation_length",
    "suggest_patch_size",
    "radial_spectrum_kernel",
    "periodogram_kernel",
    "grid_spacing_km",
    "spatial_dims",
]

XArray = xr.DataArray | xr.Dataset
_LENGTH_UNITS = {"m": 1e-3, "metre": 1e-3, "meter": 1e-3, "metres": 1e-3, "meters": 1e-3, "km": 1.0,
                 "kilometre": 1.0, "kilometer": 1.0, "kilometres": 1.0, "kilometers": 1.0}


# --------------------------------------------------------------------------------------------- grid helpers


def _try_grid(obj: XArray):
    """The grid of ``obj`` from :func:`xkmcast.fields.grid.find_grid`, or None when it is not recognised."""
    try:
        from .grid import find_grid

        return find_grid(obj)
    except (ImportError, GridError, CoordinateError):
        return None


_UNSET = object()


def spatial_dims(obj: XArray, grid=_UNSET) -> tuple[Hashable, Hashable]:
    """(y_dim, x_dim): from :func:`xkmcast.fields.grid.find_grid` when it recognises the grid, else the last two dims."""
    grid = _try_grid(obj) if grid is _UNSET else grid
    if grid is not None and grid.y_dim in obj.dims and grid.x_dim in obj.dims:
        return grid.y_dim, grid.x_dim
    dims = list(obj.dims)
    if len(dims) < 2:
        raise GridError(explain("A spectrum needs a 2-D field", found=f"dims {dims}"))
    return dims[-2], dims[-1]


def _coord_spacing_km(obj: XArray, dim: Hashable) -> float | None:
    if dim not in obj.coords or obj[dim].ndim != 1 or obj.sizes[dim] < 2:
        return None
    scale = _LENGTH_UNITS.get(str(obj[dim].attrs.get("units", "")).strip().lower())
    if scale is None:
        return None
    d = np.diff(np.asarray(obj[dim].values, dtype=np.float64))
    return float(np.abs(d).mean() * scale)


def grid_spacing_km(
    obj: XArray, y_dim: Hashable, x_dim: Hashable, dx: float | None = None, dy: float | None = None, grid=_UNSET
) -> tuple[float, float]:
    """(dy, dx) in km: the arguments, else x / y coordinates in m or km, else great-circle spacing."""
    if dx is not None:
        return float(dy if dy is not None else dx), float(dx)
    sx, sy = _coord_spacing_km(obj, x_dim), _coord_spacing_km(obj, y_dim)
    if sx is not None and sy is not None:
        return sy, sx
    grid = _try_grid(obj) if grid is _UNSET else grid
    if grid is not None:
        gy, gx = grid.spacing_m()
        spacing = {grid.y_dim: gy / 1000.0, grid.x_dim: gx / 1000.0}
        if y_dim in spacing and x_dim in spacing and np.isfinite(gy) and np.isfinite(gx):
            return float(spacing[y_dim]), float(spacing[x_dim])
    raise GridError(
        explain(
            "Cannot tell the grid spacing of the field",
            expected=f"1-D coordinates {y_dim!r} / {x_dim!r} with units m or km, or latitude / longitude",
            found=f"coordinates {list(obj.coords)}",
            fix="pass dx= (and dy=) in km",
        )
    )


# --------------------------------------------------------------------------------------------- 2-D spectrum


def _radial_bins(ny: int, nx: int, dy: float, dx: float) -> tuple[np.ndarray, np.ndarray, float]:
    ky = np.fft.fftfreq(ny, dy)
    kx = np.fft.fftfreq(nx, dx)
    kmag = np.hypot(ky[:, None], kx[None, :])
    dk = max(1.0 / (nx * dx), 1.0 / (ny * dy))
    index = np.floor(kmag / dk + 0.5).astype(np.int64)  # annulus j holds [j - 1/2, j + 1/2) dk
    nbins = int(np.floor(min(0.5 / dx, 0.5 / dy) / dk * (1 + 1e-12))) + 1  # k_j <= Nyquist
    index = np.where(index < nbins, index, nbins)  # the corners go to a bin that is dropped
    return index.ravel(), np.arange(nbins) * dk, dk


def radial_spectrum_kernel(f: np.ndarray, dy: float, dx: float, detrend: bool = True) -> np.ndarray:
    """Isotropic spectral density ``E(k_j)`` of fields ``f[..., ny, nx]`` (see the module docstring)."""
    import scipy.sparse

    f = np.asarray(f, dtype=np.float64)
    ny, nx = f.shape[-2:]
    if detrend:
        f = f - f.mean(axis=(-2, -1), keepdims=True)
    power = np.abs(np.fft.fft2(f)) ** 2 / float(nx * ny) ** 2
    index, k, dk = _radial_bins(ny, nx, dy, dx)
    onehot = scipy.sparse.csr_matrix((np.ones(index.size), (index, np.arange(index.size))),
                                     shape=(k.size + 1, index.size))[: k.size]
    flat = power.reshape(-1, ny * nx)
    summed = (onehot @ flat.T).T
    return summed.reshape(*f.shape[:-2], k.size) / dk


def power_spectrum(
    field: XArray,
    dim=None,
    *,
    dx: float | None = None,
    dy: float | None = None,
    spatial: tuple[Hashable, Hashable] | None = None,
    member_dim: Hashable = "member",
    detrend: bool = True,
) -> XArray:
    """Radially integrated power spectral density ``E(k)`` over the dim ``wavenumber`` (cycles/km).

    ``spatial`` = (y_dim, x_dim), found from the grid when omitted. The spectra of the single fields
    are averaged over ``dim`` (None: every other dim except ``member_dim``; ``[]``: keep all). NaN in a
    field makes its spectrum NaN. Definition and Parseval identity: see the module docstring.
    """
    grid = _try_grid(field) if spatial is None or dx is None else None
    y_dim, x_dim = spatial if spatial is not None else spatial_dims(field, grid)
    dyk, dxk = grid_spacing_km(field, y_dim, x_dim, dx, dy, grid)
    ny, nx = field.sizes[y_dim], field.sizes[x_dim]
    _, k, dk = _radial_bins(ny, nx, dyk, dxk)
    spec = xr.apply_ufunc(
        radial_spectrum_kernel,
        field,
        input_core_dims=[[y_dim, x_dim]],
        output_core_dims=[["wavenumber"]],
        kwargs={"dy": dyk, "dx": dxk, "detrend": detrend},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"wavenumber": k.size}, "allow_rechunk": True},
    )
    from .metrics import _reduce_dims  # metrics imports this module

    spec = spec.mean(_reduce_dims(dim, member_dim, field, keep=(y_dim, x_dim)))
    spec = spec.assign_coords(
        wavenumber=("wavenumber", k, {"units": "km-1", "long_name": "wavenumber (cycles per km)"})
    )
    attrs = {"dk": dk, "dx_km": dxk, "dy_km": dyk, "nyquist": min(0.5 / dxk, 0.5 / dyk),
             "long_name": "isotropic power spectral density"}
    return _set_attrs(spec, field, attrs, "km")


# --------------------------------------------------------------------------------------------- 1-D periodogram


def periodogram_kernel(f: np.ndarray, dx: float, detrend: bool = True) -> np.ndarray:
    """One-sided periodogram density along the last axis, as ``scipy.signal.periodogram(f, fs=1/dx)``."""
    f = np.asarray(f, dtype=np.float64)
    n = f.shape[-1]
    if detrend:
        f = f - f.mean(axis=-1, keepdims=True)
    s = np.abs(np.fft.rfft(f, axis=-1)) ** 2 * dx / n
    last = s.shape[-1] - 1 if n % 2 == 0 else s.shape[-1]
    s[..., 1:last] *= 2.0
    return s


def periodogram(
    field: XArray,
    dim=None,
    *,
    along: Hashable | None = None,
    dx: float | None = None,
    member_dim: Hashable = "member",
    detrend: bool = True,
) -> XArray:
    """The CorrDiff recipe's 1-D spectrum: periodogram density along ``along`` (default: the x dim),
    averaged over rows and ``dim`` (None: every other dim except ``member_dim``).

    Result over the dim ``frequency`` (cycles/km) with attributes ``n`` (points along the transform)
    and ``dx_km`` that :func:`autocorrelation` uses. ``dx`` (km) is the spacing along ``along``.
    """
    grid = _try_grid(field) if along is None or dx is None else None
    if along is None:
        along = spatial_dims(field, grid)[1]
    if along not in field.dims:
        raise CoordinateError(explain(f"No dimension {along!r} to transform along", found=str(list(field.dims))))
    if dx is None:
        dx = _coord_spacing_km(field, along)
    if dx is None:
        ydim, xdim = spatial_dims(field, grid)
        dyk, dxk = grid_spacing_km(field, ydim, xdim, grid=grid)
        dx = dxk if along == xdim else dyk if along == ydim else None
    if dx is None:
        raise GridError(explain(f"Cannot tell the grid spacing along {along!r}", fix="pass dx= in km"))
    n = field.sizes[along]
    freq = np.fft.rfftfreq(n, dx)
    spec = xr.apply_ufunc(
        periodogram_kernel,
        field,
        input_core_dims=[[along]],
        output_core_dims=[["frequency"]],
        kwargs={"dx": float(dx), "detrend": detrend},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"frequency": freq.size}, "allow_rechunk": True},
    )
    from .metrics import _reduce_dims  # metrics imports this module

    spec = spec.mean(_reduce_dims(dim, member_dim, field, keep=(along,)))
    spec = spec.assign_coords(frequency=("frequency", freq, {"units": "km-1", "long_name": "frequency (cycles per km)"}))
    return _set_attrs(spec, field, {"n": n, "dx_km": float(dx), "long_name": "periodogram density"}, "km")


def _set_attrs(spec: XArray, field: XArray, attrs: dict, extra_unit: str) -> XArray:
    def units(src: xr.DataArray) -> str | None:
        u = src.attrs.get("units")
        return f"({u})^2 {extra_unit}" if u else None

    targets = spec.data_vars.items() if isinstance(spec, xr.Dataset) else [(None, spec)]
    for name, da in targets:
        da.attrs = dict(attrs)
        src = field[name] if name is not None else field
        if units(src):
            da.attrs["units"] = units(src).strip()
    if isinstance(spec, xr.Dataset):
        spec.attrs = dict(attrs)
    return spec


# --------------------------------------------------------------------------------------------- autocorrelation


def _acf_kernel(s: np.ndarray, n: int) -> np.ndarray:
    half = np.array(s, dtype=np.float64, copy=True)
    last = half.shape[-1] - 1 if n % 2 == 0 else half.shape[-1]
    half[..., 1:last] /= 2.0  # back to the two-sided values irfft expects
    half[..., 0] = 0.0
    cov = np.fft.irfft(half, n=n, axis=-1)[..., : n // 2 + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / cov[..., :1]


def autocorrelation(spectrum: XArray) -> XArray:
    """Autocorrelation over the dim ``lag`` (km) from a :func:`periodogram` (Wiener-Khinchin).

    ``r(l) = C(l) / C(0)``, ``C = irfft`` of the two-sided periodogram with frequency 0 set to zero:
    the circular autocorrelation of the (mean-removed) rows, for lags ``0 .. n//2`` grid steps.
    """
    n, dx = _spectrum_meta(spectrum)
    acf = xr.apply_ufunc(
        _acf_kernel,
        spectrum,
        input_core_dims=[["frequency"]],
        output_core_dims=[["lag"]],
        kwargs={"n": n},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"lag": n // 2 + 1}, "allow_rechunk": True},
    )
    lag = np.arange(n // 2 + 1) * dx
    acf = acf.assign_coords(lag=("lag", lag, {"units": "km", "long_name": "lag"}))
    for da in acf.data_vars.values() if isinstance(acf, xr.Dataset) else [acf]:
        da.attrs = {"units": "1", "long_name": "autocorrelation"}
    return acf


def _spectrum_meta(spectrum: XArray) -> tuple[int, float]:
    attrs = spectrum.attrs
    if "n" not in attrs or "dx_km" not in attrs or "frequency" not in spectrum.dims:
        raise InvalidDataError(
            explain(
                "autocorrelation needs a periodogram",
                expected="the output of xkmcast.fields.metrics.periodogram (dim 'frequency', attrs n and dx_km)",
                found=f"dims {list(spectrum.dims)}, attrs {sorted(attrs)}",
            )
        )
    return int(attrs["n"]), float(attrs["dx_km"])


def _first_crossing(r: np.ndarray, lag: np.ndarray, threshold: float) -> np.ndarray:
    below = r < threshold
    has = below.any(axis=-1)
    i = np.argmax(below, axis=-1)
    i0 = np.clip(i - 1, 0, None)
    r0 = np.take_along_axis(r, i0[..., None], -1)[..., 0]
    r1 = np.take_along_axis(r, i[..., None], -1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(i > 0, (r0 - threshold) / (r0 - r1), 0.0)
    length = lag[i0] + frac * (lag[i] - lag[i0])
    return np.where(has, length, np.nan)


def decorrelation_length(acf: XArray, threshold: float = float(np.exp(-1.0))) -> XArray:
    """The first lag (km) where the autocorrelation drops below ``threshold`` (default 1/e), linearly
    interpolated between lags; NaN where it stays above within the lags available."""
    lag = np.asarray(acf["lag"].values, dtype=np.float64)
    out = xr.apply_ufunc(
        _first_crossing,
        acf,
        input_core_dims=[["lag"]],
        kwargs={"lag": lag, "threshold": float(threshold)},
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    for da in out.data_vars.values() if isinstance(out, xr.Dataset) else [out]:
        da.attrs = {"units": "km", "long_name": "decorrelation length", "threshold": float(threshold)}
    return out


def suggest_patch_size(
    field: xr.DataArray | xr.Dataset,
    *,
    n_lengths: float = 3.0,
    multiple: int = 16,
    threshold: float = float(np.exp(-1.0)),
    dx: float | None = None,
    dy: float | None = None,
    spatial: tuple[Hashable, Hashable] | None = None,
) -> tuple[int, int]:
    """A patch shape ``(ny, nx)`` in grid points for patched diffusion on ``field``.

    Along each axis: the decorrelation length ``L`` (km, threshold ``threshold``) of the periodogram
    averaged over every other dim, ``size = multiple * ceil(n_lengths * L / d / multiple)``, at least
    ``multiple`` and at most the domain (the domain rounded down to a multiple of ``multiple`` when it
    is larger than ``multiple``). Where the field never decorrelates within half the domain the whole
    (rounded) domain is returned.

    A Dataset gives one combined recommendation: along each axis the largest of its variables'
    sizes (a patch must span the longest correlation of any variable the model generates); the
    per-variable sizes are what this function returns for ``ds[name]``.
    """
    kwargs = dict(n_lengths=n_lengths, multiple=multiple, threshold=threshold, dx=dx, dy=dy, spatial=spatial)
    if isinstance(field, xr.Dataset):
        names = [n for n, v in field.data_vars.items() if v.ndim >= 2 and np.issubdtype(v.dtype, np.number)]
        if not names:
            raise InvalidDataError(explain("suggest_patch_size found no gridded variable in the Dataset",
                                           expected="numeric variables with two spatial dims",
                                           found=list(field.data_vars)))
        per_variable = [suggest_patch_size(field[n], **kwargs) for n in names]
        return max(p[0] for p in per_variable), max(p[1] for p in per_variable)
    if not isinstance(field, xr.DataArray):
        raise InvalidDataError(explain("suggest_patch_size takes a variable or a Dataset", found=type(field).__name__,
                                       fix="pass ds (combined) or ds['t2m'] (one variable)"))
    grid = _try_grid(field) if spatial is None or dx is None else None
    y_dim, x_dim = spatial if spatial is not None else spatial_dims(field, grid)
    dyk, dxk = grid_spacing_km(field, y_dim, x_dim, dx, dy, grid)
    sizes = []
    for along, d in ((y_dim, dyk), (x_dim, dxk)):
        spec = periodogram(field, dim=[k for k in field.dims if k != along], along=along, dx=d)
        length = float(decorrelation_length(autocorrelation(spec), threshold).values)
        n = field.sizes[along]
        cap = n if n <= multiple else multiple * (n // multiple)
        if not np.isfinite(length):
            sizes.append(cap)
            continue
        pixels = n_lengths * length / d
        sizes.append(int(min(max(multiple * int(np.ceil(pixels / multiple)), multiple), cap)))
    return sizes[0], sizes[1]
