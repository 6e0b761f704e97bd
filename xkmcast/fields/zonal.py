"""Zonal power spectra of fields on global latitude / longitude grids (numpy + xarray, no torch).

On a grid periodic in longitude the natural spectral coordinate is the zonal wavenumber ``m``
(cycles around a latitude circle), not cycles per km: a circle of latitude ``phi`` is ``cos(phi)``
times shorter than the equator, so one km-scale isotropic spectrum over the whole globe mixes
different scales (use :func:`xkmcast.fields.spectra.power_spectrum` on regional grids).

:func:`zonal_spectrum`: for every row (latitude ``phi``) of ``nx`` equally spaced longitudes,
``P_m(phi) = c_m |rfft(f - mean_row f)_m / nx|^2`` with ``c_m = 2`` except at ``m = 0`` and, for even
``nx``, ``m = nx/2`` (``c_m = 1``); then the area-weighted mean over rows,
``S(m) = sum_phi cos(phi) P_m(phi) / sum_phi cos(phi)``. Parseval: ``sum_m S(m)`` is the
area-weighted mean over rows of the variance along each row (the eddy variance). Units:
(field units)^2 per unit of ``m``.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import xarray as xr

from ..errors import GridError, explain
from .metrics import _reduce_dims
from .spectra import XArray, _set_attrs, _try_grid

__all__ = ["zonal_spectrum", "zonal_spectrum_kernel"]


def zonal_spectrum_kernel(f: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``S(m)`` of fields ``f[..., ny, nx]`` with row weights ``weights[ny]`` (module docstring)."""
    f = np.asarray(f, dtype=np.float64)
    nx = f.shape[-1]
    f = f - f.mean(axis=-1, keepdims=True)
    p = np.abs(np.fft.rfft(f, axis=-1) / nx) ** 2
    last = p.shape[-1] - 1 if nx % 2 == 0 else p.shape[-1]
    p[..., 1:last] *= 2.0
    w = np.asarray(weights, dtype=np.float64)
    return np.einsum("...ym,y->...m", p, w / w.sum())


def zonal_spectrum(
    field: XArray,
    dim=None,
    *,
    spatial: tuple[Hashable, Hashable] | None = None,
    member_dim: Hashable = "member",
) -> XArray:
    """Zonal power spectrum ``S(m)`` over the dim ``zonal_wavenumber`` (see the module docstring).

    ``field`` is on a rectilinear latitude / longitude grid whose longitudes are equally spaced and
    close the circle (any order, any convention); ``spatial`` = (lat_dim, lon_dim) when the grid is
    not recognised. Spectra are averaged over ``dim`` (None: every other dim except ``member_dim``).
    Select a latitude band first (``field.sel(lat=slice(...))``) for a band spectrum.
    """
    grid = _try_grid(field)
    if grid is None or not grid.rectilinear:
        raise GridError(explain("A zonal spectrum needs a rectilinear latitude / longitude grid",
                                found="no lat/lon grid" if grid is None else "a curvilinear grid",
                                fix="use power_spectrum on projected grids, or regrid to a regular lat/lon grid"))
    y_dim, x_dim = spatial if spatial is not None else (grid.y_dim, grid.x_dim)
    lat, lon = grid.lat[:, 0], grid.lon[0, :]
    step = np.mod(np.diff(np.sort(np.mod(lon, 360.0)), append=np.min(np.mod(lon, 360.0)) + 360.0), 360.0)
    if not np.allclose(step, 360.0 / lon.size, rtol=1e-6, atol=1e-9):
        raise GridError(explain("A zonal spectrum needs equally spaced longitudes around the whole circle",
                                expected=f"{lon.size} longitudes every {360.0 / lon.size:g} degrees",
                                found=f"spacings {np.unique(np.round(step, 6))[:5].tolist()} degrees",
                                fix="regrid to a regular global grid, or use power_spectrum on a regional field"))
    weights = np.cos(np.deg2rad(lat))
    m = np.arange(lon.size // 2 + 1)
    spec = xr.apply_ufunc(
        zonal_spectrum_kernel,
        field,
        input_core_dims=[[y_dim, x_dim]],
        output_core_dims=[["zonal_wavenumber"]],
        kwargs={"weights": weights},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"zonal_wavenumber": m.size}, "allow_rechunk": True},
    )
    spec = spec.mean(_reduce_dims(dim, member_dim, field, keep=(y_dim, x_dim)))
    spec = spec.assign_coords(zonal_wavenumber=("zonal_wavenumber", m,
                                                {"units": "1", "long_name": "zonal wavenumber (cycles per circle)"}))
    attrs = {"lat_min": float(lat.min()), "lat_max": float(lat.max()), "nyquist": int(m[-1]),
             "long_name": "zonal power spectrum (area-weighted over latitude)"}
    return _set_attrs(spec, field, attrs, "")
