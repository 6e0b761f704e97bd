"""Regridding xarray data: sparse weights built once, applied lazily over any leading dims.

A :class:`Regridder` holds ``W``, a ``scipy.sparse.csr_matrix`` of shape ``(n_target, n_source)``
acting on C-flattened ``(y, x)`` fields. Applying it computes, for every 2-D slice ``f``,

    out = (W @ where(valid, f, 0)) / (W @ valid)          valid = not NaN

so NaNs in the source are excluded and the remaining weights renormalised. A target value is NaN
only where the valid weight sum is at most ``MIN_VALID_WEIGHT`` (1e-10): that is, where every
contributor is NaN, or where the target is outside the source (``allow_outside=True``).

Global grids: a source whose longitudes close the circle is periodic (the cell between the last and
first longitude is used); bilinear weights from such a source reach the poles when its outermost rows
are cell centres within one spacing of them (extrapolated along the meridian, see
:func:`xkmcast.fields.regrid_weights.bilinear_rectilinear`), so a global 1-degree target is covered by a
global 4-degree source. Descending latitudes and any longitude convention are accepted.

Supported (builtin backend; the weight builders are in :mod:`xkmcast.fields.regrid_weights`):

============  =========================  ===========================================================
method        source grid                target grid
============  =========================  ===========================================================
bilinear      rectilinear lat/lon        any (rectilinear or curvilinear 2-D lat/lon); on a global
                                         source, periodic in longitude and out to the poles
bilinear      curvilinear (2-D lat/lon)  any; linear on the grid cells split in 2 triangles (no poles)
nearest       any                        any
conservative  rectilinear lat/lon        rectilinear lat/lon: exact spherical-rectangle overlaps
conservative  rectilinear lat/lon        curvilinear: approximate, only with ``subsample=n``
============  =========================  ===========================================================

``backend="xesmf"`` delegates the weights to xESMF (optional extra ``xesmf``); ``"auto"`` uses it
when it imports and the builtin weights otherwise. Saved files (:meth:`Regridder.to_netcdf`) are
plain netCDF: COO triplets ``regrid_row`` / ``regrid_col`` / ``regrid_weight``, the source lat/lon,
the target coordinates and the method and shapes as attributes. No pickle.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import scipy.sparse as sp
import xarray as xr

from . import regrid_weights as rw
from ..errors import ConfigError, DomainCoverageError, GridError, OptionalDependencyError, explain, require
from .grid import Grid, find_grid

__all__ = ["Regridder", "regrid", "check_options", "METHODS", "BACKENDS", "OPTIONS", "MIN_VALID_WEIGHT"]

METHODS = ("bilinear", "nearest", "conservative")
BACKENDS = ("auto", "builtin", "xesmf")
MIN_VALID_WEIGHT = 1e-10
#: keyword options of :class:`Regridder` besides the method, as recorded in a store or a bundle
OPTIONS = ("backend", "allow_outside", "subsample")
FORMAT_VERSION = 1
_TY, _TX = "__regrid_target_y", "__regrid_target_x"
_XESMF_METHODS = {"bilinear": "bilinear", "nearest": "nearest_s2d", "conservative": "conservative"}


class Regridder:
    """Regrid from the horizontal grid of ``source`` to that of ``target``.

    Parameters
    ----------
    source, target : Dataset, DataArray or :class:`~xkmcast.fields.grid.Grid`
        Only their grids are used (found by :func:`xkmcast.fields.grid.find_grid`).
    method : "bilinear" | "nearest" | "conservative"
    backend : "auto" | "builtin" | "xesmf"
    allow_outside : bool or "nearest"
        Targets not covered by the source become NaN (``True``) or take the value of the nearest
        source point (``"nearest"``: the ring of a fine grid outside the centres of its own block means,
        which a training store must not hold as NaN) instead of raising DomainCoverageError. A target
        farther from every source point than the source's largest neighbour spacing is no ring: it
        still raises DomainCoverageError with ``"nearest"`` (a region the source does not cover).
    subsample : int, optional
        Conservative to a curvilinear target: sample each target cell by ``n x n`` points
        (approximately conservative). Without it that case raises GridError.
    """

    def __init__(self, source: Any, target: Any, method: str = "bilinear", backend: str = "auto", *,
                 allow_outside: bool | str = False, subsample: int | None = None):
        if method not in METHODS:
            raise ConfigError(explain("Unknown regridding method", expected=METHODS, found=method))
        if backend not in BACKENDS:
            raise ConfigError(explain("Unknown regridding backend", expected=BACKENDS, found=backend))
        _check_outside_option(allow_outside)
        src, tgt = _as_grid(source), _as_grid(target)
        self.method = method
        self.backend = _resolve_backend(backend)
        if self.backend == "xesmf":
            weights, outside = _xesmf_weights(src, tgt, method)
        else:
            weights, outside = _builtin_weights(src, tgt, method, subsample)
        if outside.any() and not allow_outside:
            raise DomainCoverageError(_coverage_message(src, tgt, outside, method))
        if outside.any() and allow_outside == "nearest":
            weights = _nearest_outside(weights, outside, src, tgt, method)
        self.weights: sp.csr_matrix = weights
        #: target points the source does not cover (NaN, or the nearest source value with "nearest")
        self.n_outside = int(outside.sum())
        self.outside_nan = bool(outside.any()) and allow_outside is True
        self.source_dims = (src.y_dim, src.x_dim)
        self.source_shape = tuple(src.shape)
        self.source_lat, self.source_lon = src.lat, src.lon
        self.source_latlon_names = (src.lat_name, src.lon_name)
        self.target_dims = (tgt.y_dim, tgt.x_dim)
        self.target_shape = tuple(tgt.shape)
        self.target_coords, self.target_grid_mapping = _target_coords(target, tgt)

    # ------------------------------------------------------------------------------- applying

    def __call__(self, obj: xr.Dataset | xr.DataArray) -> xr.Dataset | xr.DataArray:
        """Regrid every variable of ``obj`` on the source grid; lazy when ``obj`` is dask-backed.

        Variables with both source horizontal dims are regridded (any other dims are kept, in
        order, with the target dims in place of the source ones); variables with neither pass
        through; variables with only one of them (cell bounds) and the source grid_mapping
        variable are dropped. The result carries the target coordinates and grid_mapping.
        """
        if isinstance(obj, xr.DataArray):
            name = obj.name if obj.name is not None else "__regrid_da__"
            out = self(obj.to_dataset(name=name))[name]
            return out.rename(obj.name)
        self._check_source(obj)
        ydim, xdim = self.source_dims
        hdims = {ydim, xdim}
        clash = (set(self.target_dims) - hdims) & set(obj.dims)
        if clash:
            raise GridError(explain("The target grid's dims are already used by other dims of the data",
                                    found=sorted(clash), fix="rename those dims of the data first"))
        source_gm = {v.attrs.get("grid_mapping") for v in obj.data_vars.values()}
        source_gm |= {n for n, v in obj.variables.items() if "grid_mapping_name" in v.attrs}
        out_vars = {}
        for name, da in obj.data_vars.items():
            if name in source_gm:
                continue
            if hdims <= set(da.dims):
                out_vars[name] = self._apply(da)
            elif not hdims & set(da.dims):
                out_vars[name] = da
        keep = {n: c for n, c in obj.coords.items() if not hdims & set(c.dims) and n not in source_gm}
        out = xr.Dataset(out_vars, coords=keep, attrs=obj.attrs)
        out = out.drop_vars([n for n in out.variables if n in hdims], errors="ignore")
        out = out.rename_dims({k: v for k, v in ((_TY, self.target_dims[0]), (_TX, self.target_dims[1]))
                               if k in out.dims})
        out = out.assign_coords(self.target_coords.coords)
        for name in out_vars:
            if hdims <= set(obj[name].dims):
                attrs = {k: v for k, v in obj[name].attrs.items() if k not in ("grid_mapping", "coordinates")}
                if self.target_grid_mapping:
                    attrs["grid_mapping"] = self.target_grid_mapping
                out[name].attrs = attrs
        return out

    def _apply(self, da: xr.DataArray) -> xr.DataArray:
        ydim, xdim = self.source_dims
        dtype = np.result_type(da.dtype, np.float32)
        kernel = functools.partial(_apply_weights, weights=self.weights, shape_out=self.target_shape,
                                   dtype=dtype)
        ny, nx = self.target_shape
        out = xr.apply_ufunc(
            kernel, da,
            input_core_dims=[[ydim, xdim]], output_core_dims=[[_TY, _TX]], exclude_dims={ydim, xdim},
            dask="parallelized", output_dtypes=[dtype],
            dask_gufunc_kwargs={"output_sizes": {_TY: ny, _TX: nx}, "allow_rechunk": True},
            keep_attrs=True,
        )
        order = [{ydim: _TY, xdim: _TX}.get(d, d) for d in da.dims]
        return out.transpose(*order)

    def _check_source(self, ds: xr.Dataset) -> None:
        ydim, xdim = self.source_dims
        found = (ds.sizes.get(ydim), ds.sizes.get(xdim))
        if found != self.source_shape:
            raise GridError(explain("The data is not on the grid this Regridder was built for",
                                    expected=f"dims {self.source_dims} of sizes {self.source_shape}",
                                    found=f"sizes {found} (dims {dict(ds.sizes)})",
                                    fix="build a Regridder from this data's grid"))
        lat_name, lon_name = self.source_latlon_names
        for name, ref in ((lat_name, self.source_lat), (lon_name, self.source_lon)):
            if not name or name not in ds.variables or ds[name].ndim not in (1, 2):
                continue
            vals = np.asarray(ds[name].values, float)
            ref = ref[:, 0] if vals.ndim == 1 and ds[name].dims == (ydim,) else (
                ref[0, :] if vals.ndim == 1 else ref)
            if vals.shape == ref.shape and not np.allclose(np.mod(vals - ref + 180.0, 360.0) - 180.0, 0.0,
                                                           atol=1e-6):
                raise GridError(explain(f"The data's {name!r} differs from the grid this Regridder was built for",
                                        fix="build a Regridder from this data's grid"))

    # ------------------------------------------------------------------------------- save / load

    def to_netcdf(self, path) -> None:
        """Write the weights (COO triplets), source lat/lon, target coordinates and metadata."""
        coo = self.weights.tocoo()
        ds = self.target_coords.copy()
        ds["regrid_row"] = ("regrid_n", coo.row.astype(np.int64))
        ds["regrid_col"] = ("regrid_n", coo.col.astype(np.int64))
        ds["regrid_weight"] = ("regrid_n", coo.data.astype(np.float64))
        ds["regrid_source_lat"] = (("regrid_src_y", "regrid_src_x"), self.source_lat)
        ds["regrid_source_lon"] = (("regrid_src_y", "regrid_src_x"), self.source_lon)
        ds.attrs = {
            "xkmcast_regrid_format": FORMAT_VERSION, "method": self.method, "backend": self.backend,
            "source_dims": list(self.source_dims), "source_shape": list(self.source_shape),
            "target_dims": list(self.target_dims), "target_shape": list(self.target_shape),
            "source_latlon_names": [n or "" for n in self.source_latlon_names],
            "target_grid_mapping": self.target_grid_mapping or "", "n_outside": self.n_outside,
        }
        ds.to_netcdf(path)

    @classmethod
    def from_file(cls, path) -> "Regridder":
        """Read a Regridder written by :meth:`to_netcdf`."""
        with xr.open_dataset(path) as f:
            ds = f.load()
        if int(ds.attrs.get("xkmcast_regrid_format", -1)) != FORMAT_VERSION:
            raise GridError(explain(f"{path} is not an xkmcast regridder file", expected=f"format {FORMAT_VERSION}",
                                    found=ds.attrs.get("xkmcast_regrid_format")))
        a = ds.attrs
        self = cls.__new__(cls)
        self.method, self.backend = str(a["method"]), str(a["backend"])
        self.source_dims = tuple(str(d) for d in np.atleast_1d(a["source_dims"]))
        self.source_shape = tuple(int(n) for n in a["source_shape"])
        self.target_dims = tuple(str(d) for d in np.atleast_1d(a["target_dims"]))
        self.target_shape = tuple(int(n) for n in a["target_shape"])
        self.source_latlon_names = tuple(str(n) or None for n in np.atleast_1d(a["source_latlon_names"]))
        self.target_grid_mapping = str(a["target_grid_mapping"]) or None
        self.n_outside = int(a["n_outside"])
        n_s, n_t = int(np.prod(self.source_shape)), int(np.prod(self.target_shape))
        self.weights = sp.csr_matrix((ds["regrid_weight"].values, (ds["regrid_row"].values, ds["regrid_col"].values)),
                                     shape=(n_t, n_s))
        self.source_lat = ds["regrid_source_lat"].values
        self.source_lon = ds["regrid_source_lon"].values
        meta = [n for n in ds.variables if str(n).startswith("regrid_")]
        tc = ds.drop_vars(meta)
        self.target_coords = xr.Dataset(coords={n: tc[n] for n in tc.variables})
        return self

    def __repr__(self) -> str:
        return (f"Regridder(method={self.method!r}, backend={self.backend!r}, "
                f"source {self.source_dims}={self.source_shape} -> target {self.target_dims}={self.target_shape}, "
                f"{self.weights.nnz} weights, {self.n_outside} target points outside)")


def check_options(options: dict | None) -> dict:
    """``options`` (None or a mapping of :data:`OPTIONS` keys) as a plain dict; ConfigError otherwise."""
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ConfigError(explain("Unknown regridding options", expected=OPTIONS, found=unknown,
                                  fix="e.g. regrid_options={'allow_outside': 'nearest'}"))
    _check_outside_option(opts.get("allow_outside", False))
    return opts


def _check_outside_option(value) -> None:
    if value not in (False, True, "nearest") or not isinstance(value, (bool, str)):
        raise ConfigError(explain("Unknown allow_outside", expected=[False, True, "nearest"], found=value,
                                  fix="allow_outside: nearest takes the nearest source value outside the source, "
                                      "true leaves NaN there"))


def _nearest_outside(weights: sp.csr_matrix, outside: np.ndarray, src: Grid, tgt: Grid,
                     method: str) -> sp.csr_matrix:
    """``weights`` with the rows of the ``outside`` targets replaced by nearest-neighbour rows (one 1 at
    the nearest source point on the sphere); DomainCoverageError when one of them is farther from it
    than the source's largest neighbour spacing (not an edge ring: a region the source lacks)."""
    rows = np.flatnonzero(outside)
    near, far = rw.nearest(src.lat, src.lon, tgt.lat.ravel()[rows], tgt.lon.ravel()[rows], margin=1.0)
    if far.any():
        beyond = np.zeros_like(outside)
        beyond[rows[far]] = True
        raise DomainCoverageError(_coverage_message(
            src, tgt, beyond, method, what="farther than one source grid spacing from it (allow_outside='nearest' "
                                           "fills only an edge ring)"))
    keep = sp.diags((~outside).astype(weights.dtype))
    scatter = sp.csr_matrix((np.ones(rows.size), (rows, np.arange(rows.size))), shape=(outside.size, rows.size))
    return (keep @ weights + scatter @ near).tocsr()


def regrid(obj: xr.Dataset | xr.DataArray, target: Any, method: str = "bilinear", **kwargs) -> xr.Dataset | xr.DataArray:
    """Regrid ``obj`` to the grid of ``target`` in one call: ``Regridder(obj, target, method, **kwargs)(obj)``."""
    return Regridder(obj, target, method, **kwargs)(obj)


# ----------------------------------------------------------------------------------- kernels


def _apply_weights(arr: np.ndarray, *, weights: sp.csr_matrix, shape_out: tuple[int, int], dtype) -> np.ndarray:
    """(..., ny_s, nx_s) -> (..., ny_t, nx_t): the NaN-aware weighted sum of the module docstring."""
    lead = arr.shape[:-2]
    flat = np.ascontiguousarray(arr.reshape(-1, arr.shape[-2] * arr.shape[-1]).T, dtype=np.float64)
    nan = np.isnan(flat)
    if nan.any():
        num = weights @ np.where(nan, 0.0, flat)
        den = weights @ (~nan).astype(np.float64)
    else:
        num = weights @ flat
        den = np.asarray(weights.sum(axis=1))
    ok = den > MIN_VALID_WEIGHT
    out = np.divide(num, den, out=np.full(num.shape, np.nan), where=ok)
    return out.T.reshape(*lead, *shape_out).astype(dtype, copy=False)


# ------------------------------------------------------------------------------------ grids


def _as_grid(obj: Any) -> Grid:
    if isinstance(obj, Grid):
        return obj
    if isinstance(obj, (xr.Dataset, xr.DataArray)):
        return find_grid(obj)
    raise TypeError(explain("Cannot take a grid from this object", expected="xr.Dataset, xr.DataArray or Grid",
                            found=type(obj).__name__))


def _target_coords(obj: Any, grid: Grid) -> tuple[xr.Dataset, str | None]:
    """The coordinates of the target grid (lat/lon, x/y, grid_mapping) and the grid_mapping name."""
    if isinstance(obj, Grid):
        ds = obj.to_dataset()
        return ds, ("crs" if "crs" in ds.variables else None)
    ds = obj.to_dataset(name=obj.name or "__da__") if isinstance(obj, xr.DataArray) else obj
    dims = {grid.y_dim, grid.x_dim}
    names = [n for n, v in ds.coords.items() if v.dims and set(v.dims) <= dims]
    names += [n for n in (grid.lat_name, grid.lon_name) if n and n not in names and set(ds[n].dims) <= dims]
    gm = next((v.attrs["grid_mapping"].split(":")[0] for v in ds.data_vars.values()
               if isinstance(v.attrs.get("grid_mapping"), str) and v.attrs["grid_mapping"].split(":")[0] in ds.variables),
              None)
    gm = gm or next((n for n, v in ds.variables.items() if "grid_mapping_name" in v.attrs), None)
    if gm:
        names.append(gm)
    coords = {n: ds[n].variable for n in names}
    if not any(n in coords for n in (grid.lat_name, grid.lon_name) if n):  # projected x/y only: add lat/lon
        coords["lat"] = xr.Variable(grid.dims, grid.lat, {"standard_name": "latitude", "units": "degrees_north"})
        coords["lon"] = xr.Variable(grid.dims, grid.lon, {"standard_name": "longitude", "units": "degrees_east"})
    return xr.Dataset(coords=coords), gm


def _builtin_weights(src: Grid, tgt: Grid, method: str, subsample: int | None):
    if method == "nearest":
        return rw.nearest(src.lat, src.lon, tgt.lat, tgt.lon)
    if method == "bilinear":
        if src.rectilinear:
            return rw.bilinear_rectilinear(src.lat[:, 0], src.lon[0, :], tgt.lat, tgt.lon)
        return rw.bilinear_curvilinear(src.lat, src.lon, tgt.lat, tgt.lon)
    if not src.rectilinear:
        raise GridError(explain("Builtin conservative regridding needs a rectilinear lat/lon source",
                                found=f"a curvilinear source grid {src.shape}",
                                fix="use method='bilinear' or 'nearest', or backend='xesmf' (pip install 'xkmcast[xesmf]')"))
    if tgt.rectilinear:
        return rw.conservative_rectilinear(src.lat[:, 0], src.lon[0, :], tgt.lat[:, 0], tgt.lon[0, :])
    if not subsample:
        raise GridError(explain("Builtin conservative regridding to a curvilinear target is only approximate",
                                found=f"a curvilinear target grid {tgt.shape}",
                                fix="pass subsample=n (e.g. 4) to sample each target cell by n x n points, "
                                    "or use backend='xesmf'"))
    return rw.conservative_subsampled(src.lat[:, 0], src.lon[0, :], tgt.lat, tgt.lon, n=int(subsample))


def _lon_range(lon: np.ndarray) -> str:
    """The longitudes a grid spans, in the data's own convention: ``"0.000..359.000 (global)"``, or from
    the point after the largest gap to the point before it (``"350.000..10.000"`` across 0)."""
    u = np.unique(np.mod(np.ravel(lon), 360.0))
    if u.size < 2:
        return f"{float(np.ravel(lon)[0]):.3f}"
    gaps = np.diff(np.append(u, u[0] + 360.0))
    k = int(np.argmax(gaps))
    own = -180.0 if np.min(lon) < 0 else 0.0  # the data's convention: -180..180 or 0..360

    def conv(v: float) -> float:
        return own + np.mod(v - own, 360.0)

    if gaps[k] <= 1.5 * np.median(gaps) + 1e-9:  # no gap that stands out: the circle is closed
        return f"{np.min(lon):.3f}..{np.max(lon):.3f} (global)"
    lo, hi = conv(u[(k + 1) % u.size]), conv(u[k])
    return f"{lo:.3f}..{hi:.3f}" + (f" (across {'180' if own else '0/360'})" if hi < lo else "")


def _coverage_message(src: Grid, tgt: Grid, outside: np.ndarray, method: str, what: str = "") -> str:
    def ext(g: Grid) -> str:
        return f"lat {g.lat.min():.3f}..{g.lat.max():.3f}, lon {_lon_range(g.lon)}"

    lat_o, lon_o = tgt.lat.ravel()[outside], tgt.lon.ravel()[outside]
    return explain(
        f"The source grid does not cover {int(outside.sum())} of {outside.size} target points ({method})"
        + (f", {what}" if what else ""),
        expected=f"every target point inside the source: {ext(src)}",
        found=f"target {ext(tgt)}; e.g. outside at (lat, lon) "
              + ", ".join(f"({a:.3f}, {b:.3f})" for a, b in list(zip(lat_o, lon_o))[:3]),
        fix="use a source subset that covers the target; or allow_outside='nearest' (a training run: "
            "data.regrid_options={allow_outside: nearest}) to take the nearest source value there, e.g. the "
            "edge ring of a fine grid outside the centres of its block means; or allow_outside=True for NaN there",
    )


# ----------------------------------------------------------------------------------- xesmf


def _resolve_backend(backend: str) -> str:
    if backend == "builtin":
        return "builtin"
    try:
        require("xesmf", "xesmf", "Regridding with backend='xesmf'")
    except OptionalDependencyError:
        if backend == "xesmf":
            raise
        return "builtin"
    return "xesmf"


def _xesmf_weights(src: Grid, tgt: Grid, method: str):
    """Weights from xESMF (``unmapped_to_nan``; rows without weights count as outside)."""
    import xesmf

    def grid_ds(g: Grid) -> xr.Dataset:
        ds = xr.Dataset(coords={"lat": (("y", "x"), g.lat), "lon": (("y", "x"), g.lon)})
        if method == "conservative":
            if g.rectilinear:  # exact edges: midpoints in the data's own order
                lat_b, lon_b = rw.cell_edges(g.lat[:, 0], g.lon[0, :])
                lon_bb, lat_bb = np.meshgrid(lon_b, lat_b)
            else:
                c = rw.cell_corners(g.lat, g.lon)
                lat_bb = np.rad2deg(np.arcsin(c[..., 2] / np.linalg.norm(c, axis=-1)))
                lon_bb = np.rad2deg(np.arctan2(c[..., 1], c[..., 0]))
            ds.coords["lat_b"] = (("y_b", "x_b"), lat_bb)
            ds.coords["lon_b"] = (("y_b", "x_b"), lon_bb)
        return ds

    periodic = bool(src.rectilinear and rw.LonAxis(src.lon[0, :]).periodic)
    r = xesmf.Regridder(grid_ds(src), grid_ds(tgt), _XESMF_METHODS[method], periodic=periodic, unmapped_to_nan=True)
    w = r.weights.data
    coo = sp.coo_matrix((w.data, (w.coords[0], w.coords[1])), shape=w.shape)
    weights = coo.tocsr()
    outside = np.asarray(weights.sum(axis=1)).ravel() <= MIN_VALID_WEIGHT
    return weights, outside
