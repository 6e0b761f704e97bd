"""Sparse regridding weights from plain numpy latitude / longitude arrays (no xarray, no torch).

Every builder returns ``(W, outside)``: ``W`` a ``scipy.sparse.csr_matrix`` of shape
``(n_target, n_source)`` acting on C-ordered flattened ``(ny, nx)`` fields, so that
``target = W @ source``; ``outside`` a boolean array ``(n_target,)`` of target points that the source
grid does not cover (their rows of ``W`` are empty). Rows of covered points sum to one.

Methods and the grids they accept:

* :func:`bilinear_rectilinear` -- source rectilinear in lat/lon (1-D ``lat`` ascending or descending,
  1-D ``lon`` in any convention, crossing 0 or 180, global or regional), any target. Bilinear in
  (lat, lon), so any function ``a + b*lat + c*lon + d*lat*lon`` is reproduced exactly.
* :func:`bilinear_curvilinear` -- any 2-D source: barycentric (linear) weights on the grid's own
  cells, each split into two triangles, in the (lon - lon_c, lat) plane (lon_c the source's central
  longitude). Linear functions of (lat, lon) are reproduced exactly; a target in no cell is
  outside. Not for grids reaching within 1 degree of a pole.
* :func:`nearest` -- any source, any target: nearest source point in 3-D unit-sphere coordinates
  (KD-tree). A target farther than ``margin`` times the largest source spacing counts as outside.
* :func:`conservative_rectilinear` -- rectilinear lat/lon source and target: exact overlap areas of
  spherical rectangles, ``A = (sin lat2 - sin lat1) * (lon2 - lon1)``; separable, ``W = W_lat (x) W_lon``.
  Cell edges are the midpoints between centres (half a spacing beyond the outer centres, clipped at
  the poles). Target cells partly covered are averaged over their covered part.
* :func:`conservative_subsampled` -- rectilinear source, any target: each target cell is sampled by
  ``n x n`` points spread over the cell (corners from the mean of neighbouring centres on the unit
  sphere); the weight of a source cell is the share of samples that fall in it. Approximately
  conservative (the error shrinks like 1/n); exact for constant fields.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from ..errors import CoordinateError, GridError, explain

__all__ = [
    "LonAxis",
    "bilinear_rectilinear",
    "bilinear_curvilinear",
    "nearest",
    "conservative_rectilinear",
    "conservative_subsampled",
    "cell_edges",
    "cell_corners",
    "central_lon",
    "xyz",
]

_TOL = 1e-9  # degrees: targets this close to the source edge count as inside
_DROP = 1e-14  # weights below this are dropped (rows are renormalised)


def xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Unit-sphere Cartesian coordinates, shape ``lat.shape + (3,)``."""
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    c = np.cos(la)
    return np.stack([c * np.cos(lo), c * np.sin(lo), np.sin(la)], axis=-1)


# ------------------------------------------------------------------------------------------ axes


class LonAxis:
    """A 1-D longitude axis made monotonic: ``u`` increasing, ``order`` the original index of each.

    Longitudes in any convention (-180..180, 0..360, crossing Greenwich or the dateline) are unwrapped
    into ``u[0] <= u < u[0] + 360``. ``periodic`` is true for a global axis (the gap that closes
    the circle is at most 1.5 spacings); then the cell between the last and first point is used too.
    """

    def __init__(self, lon: np.ndarray):
        lon = np.asarray(lon, float)
        if lon.ndim != 1 or lon.size < 2:
            raise GridError(explain("A longitude axis needs at least 2 points", found=f"shape {lon.shape}"))
        order = np.arange(lon.size)
        if np.median(np.diff(lon) % 360.0) > 180.0:  # decreasing longitudes
            order, lon = order[::-1], lon[::-1]
        d = np.diff(lon) % 360.0
        if np.any(d == 0) or d.sum() >= 360.0:
            raise CoordinateError(
                explain(
                    "Longitudes are not monotonic (after unwrapping across 0 / 180 / 360)",
                    expected="strictly increasing or decreasing longitudes spanning less than 360 degrees",
                    found=f"{lon[:6].tolist()}...",
                    fix="sort by longitude (ds.sortby) and drop duplicated columns such as 0 and 360",
                )
            )
        self.order = order
        self.u = lon[0] + np.concatenate([[0.0], np.cumsum(d)])
        gap = self.u[0] + 360.0 - self.u[-1]
        self.periodic = bool(gap <= 1.5 * d.max() + _TOL)

    def normalise(self, lon: np.ndarray) -> np.ndarray:
        """Map longitudes into ``[u[0], u[0] + 360)``; values just below ``u[0]`` go to ``u[0]``."""
        t = self.u[0] + np.mod(np.asarray(lon, float) - self.u[0], 360.0)
        near_start = (t > self.u[0] + 360.0 - _TOL)
        t[near_start] = self.u[0]
        return t

    def extended(self) -> tuple[np.ndarray, np.ndarray]:
        """Points and original indices, with the first point repeated at +360 when periodic."""
        if self.periodic:
            return np.append(self.u, self.u[0] + 360.0), np.append(self.order, self.order[0])
        return self.u, self.order

    def edges(self) -> np.ndarray:
        """Cell edges (n + 1) of the unwrapped axis: midpoints; half a spacing outside, or wrapped."""
        u = self.u
        mid = 0.5 * (u[1:] + u[:-1])
        if self.periodic:
            lo = 0.5 * (u[-1] - 360.0 + u[0])
            return np.concatenate([[lo], mid, [lo + 360.0]])
        return np.concatenate([[u[0] - (mid[0] - u[0])], mid, [u[-1] + (u[-1] - mid[-1])]])


def _lat_axis(lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted latitudes and their original indices (descending latitudes are common: ERA5)."""
    lat = np.asarray(lat, float)
    if lat.ndim != 1 or lat.size < 2:
        raise GridError(explain("A latitude axis needs at least 2 points", found=f"shape {lat.shape}"))
    order = np.argsort(lat, kind="stable")
    s = lat[order]
    if np.any(np.diff(s) <= 0) or not (np.all(np.diff(lat) > 0) or np.all(np.diff(lat) < 0)):
        raise CoordinateError(
            explain("Latitudes are not strictly monotonic", found=f"{lat[:6].tolist()}...",
                    fix="ds.sortby(latitude) and drop duplicates")
        )
    return s, order


def _lat_edges(s: np.ndarray) -> np.ndarray:
    mid = 0.5 * (s[1:] + s[:-1])
    e = np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])
    return np.clip(e, -90.0, 90.0)


def cell_edges(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges (n + 1) of 1-D lat / lon axes in the axes' own order (midpoints, see the module doc)."""
    lat_s, lat_o = _lat_axis(lat)
    e_lat = _lat_edges(lat_s)
    if lat_o[0] != 0:  # descending
        e_lat = e_lat[::-1]
    ax = LonAxis(lon)
    e_lon = ax.edges()
    if ax.order[0] != 0:
        e_lon = e_lon[::-1]
    return e_lat, e_lon


def _locate(points: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index i with points[i] <= t <= points[i+1] and the fraction a in [0, 1] (t assumed inside)."""
    i = np.clip(np.searchsorted(points, t, side="right") - 1, 0, points.size - 2)
    a = np.clip((t - points[i]) / (points[i + 1] - points[i]), 0.0, 1.0)
    return i, a


def _csr(rows, cols, vals, n_target: int, n_source: int) -> sp.csr_matrix:
    """Sum duplicates, drop tiny weights and renormalise each non-empty row to sum to one."""
    w = sp.coo_matrix((vals, (rows, cols)), shape=(n_target, n_source)).tocsr()
    w.sum_duplicates()
    w.data[np.abs(w.data) < _DROP] = 0.0
    w.eliminate_zeros()
    s = np.asarray(w.sum(axis=1)).ravel()
    scale = np.divide(1.0, s, out=np.zeros_like(s), where=s != 0)
    return sp.csr_matrix(sp.diags(scale) @ w)


# ------------------------------------------------------------------------------------- bilinear


def bilinear_rectilinear(src_lat: np.ndarray, src_lon: np.ndarray, tgt_lat: np.ndarray, tgt_lon: np.ndarray):
    """Bilinear weights from a rectilinear source (1-D ``src_lat``, ``src_lon``) to any target points.

    With ``i, j`` the cell holding the target and ``a, b`` its fractional position in lat and lon:
    ``f = (1-a)(1-b) f[i,j] + (1-a) b f[i,j+1] + a (1-b) f[i+1,j] + a b f[i+1,j+1]``.
    """
    lat_s, lat_o = _lat_axis(src_lat)
    ax = LonAxis(src_lon)
    lon_e, lon_o = ax.extended()
    t_lat = np.asarray(tgt_lat, float).ravel()
    t_lon = ax.normalise(np.asarray(tgt_lon, float).ravel())
    outside = (t_lat < lat_s[0] - _TOL) | (t_lat > lat_s[-1] + _TOL) | (t_lon > lon_e[-1] + _TOL)
    i, a = _locate(lat_s, np.clip(t_lat, lat_s[0], lat_s[-1]))
    j, b = _locate(lon_e, np.minimum(t_lon, lon_e[-1]))
    nx = ax.u.size
    rows, cols, vals = [], [], []
    tidx = np.flatnonzero(~outside)
    for di, wa in ((0, 1.0 - a), (1, a)):
        for dj, wb in ((0, 1.0 - b), (1, b)):
            rows.append(tidx)
            cols.append(lat_o[i[tidx] + di] * nx + lon_o[j[tidx] + dj])
            vals.append((wa * wb)[tidx])
    w = _csr(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), t_lat.size, lat_s.size * nx)
    return w, outside


def _plane(lat: np.ndarray, lon: np.ndarray, lon_c: float) -> np.ndarray:
    return np.column_stack([np.mod(np.ravel(lon) - lon_c + 180.0, 360.0) - 180.0, np.ravel(lat)])


def central_lon(lon: np.ndarray) -> float:
    z = np.exp(1j * np.deg2rad(np.ravel(lon))).mean()
    return float(np.rad2deg(np.angle(z)))


def bilinear_curvilinear(src_lat: np.ndarray, src_lon: np.ndarray, tgt_lat: np.ndarray, tgt_lon: np.ndarray,
                         *, chunk: int = 32768):
    """Linear (barycentric) weights on the triangles of a 2-D source grid.

    Each grid cell ``(i, j)..(i+1, j+1)`` is split into two triangles. In the plane
    ``(lon - lon_c, lat)`` a target inside triangle ``(p0, p1, p2)`` gets the weights ``(l0, l1, l2)``
    with ``sum l = 1`` and ``sum l_k p_k = target``. Candidate cells are the nearest cell centres on
    the unit sphere (8, then 32 for targets not found yet); a target in no cell is outside.
    """
    src_lat, src_lon = np.asarray(src_lat, float), np.asarray(src_lon, float)
    if src_lat.ndim != 2 or src_lat.shape != src_lon.shape or min(src_lat.shape) < 2:
        raise GridError(explain("A curvilinear source needs 2-D lat/lon of at least 2 x 2",
                                found=f"{src_lat.shape} / {src_lon.shape}"))
    if np.abs(src_lat).max() > 89.0:
        raise GridError(
            explain("Bilinear weights from a curvilinear source are built in the lat/lon plane, "
                    "which breaks down at the poles", found=f"source latitudes up to {np.abs(src_lat).max():.2f}",
                    fix="use method='nearest', or a rectilinear lat/lon source")
        )
    ny, nx = src_lat.shape
    lon_c = central_lon(src_lon)
    plane = _plane(src_lat, src_lon, lon_c)  # (ny*nx, 2)
    p3 = xyz(src_lat, src_lon)
    centres = 0.25 * (p3[:-1, :-1] + p3[:-1, 1:] + p3[1:, :-1] + p3[1:, 1:])
    tree = cKDTree(centres.reshape(-1, 3))
    n_cells = (ny - 1) * (nx - 1)
    corner = np.arange(ny * nx).reshape(ny, nx)
    a, b = corner[:-1, :-1].ravel(), corner[:-1, 1:].ravel()
    c, d = corner[1:, :-1].ravel(), corner[1:, 1:].ravel()
    tris = np.stack([np.stack([a, b, d], -1), np.stack([a, d, c], -1)], axis=1)  # (cells, 2, 3)

    pts = _plane(tgt_lat, tgt_lon, lon_c)
    txyz = xyz(np.ravel(tgt_lat), np.ravel(tgt_lon))
    m = pts.shape[0]
    verts = np.full((m, 3), -1, dtype=np.int64)
    lams = np.zeros((m, 3))
    pending = np.arange(m)
    for k in (8, 32):
        k = min(k, n_cells)
        found_all = []
        for start in range(0, pending.size, max(chunk // k, 1)):
            idx = pending[start:start + max(chunk // k, 1)]
            _, cand = tree.query(txyz[idx], k=k)
            cand = cand.reshape(idx.size, k)
            v = tris[cand].reshape(idx.size, 2 * k, 3)  # candidate triangles in nearest-first order
            lam = _barycentric(plane[v], pts[idx][:, None, :])  # (n, 2k, 3)
            hit = np.all(lam >= -1e-10, axis=-1)
            first = np.argmax(hit, axis=1)
            ok = hit[np.arange(idx.size), first]
            verts[idx[ok]] = v[ok, first[ok]]
            lams[idx[ok]] = lam[ok, first[ok]]
            found_all.append(idx[ok])
        pending = np.setdiff1d(pending, np.concatenate(found_all) if found_all else [])
        if pending.size == 0 or k == n_cells:
            break
    outside = verts[:, 0] < 0
    inside = np.flatnonzero(~outside)
    w = _csr(np.repeat(inside, 3), verts[inside].ravel(), lams[inside].ravel(), m, ny * nx)
    return w, outside


def _barycentric(tri: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Barycentric coordinates of points ``p`` (..., 2) in triangles ``tri`` (..., 3, 2); NaN if degenerate."""
    v0, e1, e2 = tri[..., 0, :], tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :]
    q = p - v0

    def cross(u, v):
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    det = cross(e1, e2)
    with np.errstate(divide="ignore", invalid="ignore"):
        l1 = cross(q, e2) / det
        l2 = cross(e1, q) / det
    return np.stack([1.0 - l1 - l2, l1, l2], axis=-1)


# -------------------------------------------------------------------------------------- nearest


def nearest(src_lat: np.ndarray, src_lon: np.ndarray, tgt_lat: np.ndarray, tgt_lon: np.ndarray,
            *, margin: float = 1.0):
    """Nearest-neighbour weights (one 1 per row) by a KD-tree on 3-D unit-sphere coordinates.

    ``src_lat`` / ``src_lon`` are 2-D ``(ny, nx)``. A target farther (chord distance) than ``margin``
    times the largest distance between grid neighbours of the source counts as outside.
    """
    src = xyz(np.asarray(src_lat, float), np.asarray(src_lon, float))
    spacing = 0.0
    for axis in (0, 1):
        if src.shape[axis] > 1:
            spacing = max(spacing, float(np.linalg.norm(np.diff(src, axis=axis), axis=-1).max()))
    tree = cKDTree(src.reshape(-1, 3))
    dist, idx = tree.query(xyz(np.ravel(tgt_lat), np.ravel(tgt_lon)))
    outside = dist > margin * spacing * (1 + 1e-9)
    inside = np.flatnonzero(~outside)
    w = _csr(inside, idx[inside], np.ones(inside.size), dist.size, src.shape[0] * src.shape[1])
    return w, outside


# --------------------------------------------------------------------------------- conservative


def _overlap(lo_t, hi_t, lo_s, hi_s) -> np.ndarray:
    """Lengths of overlap of every target interval with every source interval, shape (n_t, n_s)."""
    return np.clip(np.minimum(hi_t[:, None], hi_s[None, :]) - np.maximum(lo_t[:, None], lo_s[None, :]), 0.0, None)


def _wrap_from(lon: np.ndarray, start: float) -> np.ndarray:
    return start + np.mod(np.asarray(lon, float) - start, 360.0)


def _lon_outside(ax: LonAxis, lon: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Longitudes outside the source cells ``edges`` (never for a periodic axis)."""
    if ax.periodic:
        return np.zeros(np.shape(lon), bool)
    t = _wrap_from(lon, edges[0])
    return (t > edges[-1] + _TOL) & (t < edges[0] + 360.0 - _TOL)


def _normalise_rows(m: np.ndarray) -> np.ndarray:
    s = m.sum(axis=1, keepdims=True)
    return np.divide(m, s, out=np.zeros_like(m), where=s > 0)


def conservative_rectilinear(src_lat, src_lon, tgt_lat, tgt_lon):
    """Exact first-order conservative weights between two rectilinear lat/lon grids (1-D axes).

    ``W[t, s] = area(t & s) / area(t & source)`` with spherical-rectangle areas, separable into
    ``sin``-latitude and longitude overlaps. A target whose centre is outside the source cells is
    outside. Area-weighted means are preserved exactly where the target is fully covered.
    """
    lat_s, lat_o = _lat_axis(src_lat)
    ax = LonAxis(src_lon)
    tlat = np.asarray(tgt_lat, float)
    tlat_s, tlat_o = _lat_axis(tlat)
    tax = LonAxis(tgt_lon)

    # latitude: overlaps in sin(lat), rows and columns in the original orders
    es, et = np.sin(np.deg2rad(_lat_edges(lat_s))), np.sin(np.deg2rad(_lat_edges(tlat_s)))
    olat = np.empty((tlat.size, lat_s.size))
    olat[np.ix_(tlat_o, lat_o)] = _overlap(et[:-1], et[1:], es[:-1], es[1:])
    e_lat = _lat_edges(lat_s)
    out_lat = (tlat < e_lat[0] - _TOL) | (tlat > e_lat[-1] + _TOL)

    # longitude: target cells moved into [e0, e0 + 360) and compared at shifts 0 and -360
    e_src, e_tgt = ax.edges(), tax.edges()
    lo = _wrap_from(e_tgt[:-1], e_src[0])
    hi = lo + np.diff(e_tgt)
    olon_u = sum(_overlap(lo - k, hi - k, e_src[:-1], e_src[1:]) for k in (0.0, 360.0))
    olon = np.empty((tax.u.size, ax.u.size))
    olon[np.ix_(tax.order, ax.order)] = olon_u
    out_lon = _lon_outside(ax, np.asarray(tgt_lon, float), e_src)

    wlat = sp.csr_matrix(_normalise_rows(olat * ~out_lat[:, None]))
    wlon = sp.csr_matrix(_normalise_rows(olon * ~out_lon[:, None]))
    w = sp.kron(wlat, wlon, format="csr")
    w.eliminate_zeros()
    outside = (out_lat[:, None] | out_lon[None, :]).ravel()
    return w, outside


def cell_corners(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Cell corners (ny+1, nx+1, 3) on the unit sphere: means of the 4 surrounding centres, with one
    row / column of centres extrapolated linearly beyond each edge."""
    p = xyz(lat, lon)
    if p.shape[0] > 1:
        p = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]], axis=0)
    else:
        p = np.concatenate([p, p, p], axis=0)
    if p.shape[1] > 1:
        p = np.concatenate([2 * p[:, :1] - p[:, 1:2], p, 2 * p[:, -1:] - p[:, -2:-1]], axis=1)
    else:
        p = np.concatenate([p, p, p], axis=1)
    return 0.25 * (p[1:, 1:] + p[:-1, 1:] + p[1:, :-1] + p[:-1, :-1])


def conservative_subsampled(src_lat, src_lon, tgt_lat2d, tgt_lon2d, *, n: int = 4):
    """Approximately conservative weights from a rectilinear source to a 2-D (curvilinear) target.

    Each target cell is sampled by ``n x n`` points at the centres of an ``n x n`` split of the cell
    (bilinear in its 4 corners on the unit sphere); ``W[t, s]`` is the share of the samples of ``t``
    that fall in source cell ``s``. A target whose centre is outside the source cells is outside.
    """
    lat_s, lat_o = _lat_axis(src_lat)
    ax = LonAxis(src_lon)
    e_lat, e_lon = _lat_edges(lat_s), ax.edges()
    tlat, tlon = np.asarray(tgt_lat2d, float), np.asarray(tgt_lon2d, float)
    ny, nx = tlat.shape
    c = cell_corners(tlat, tlon)
    f = (np.arange(n) + 0.5) / n
    v, u = np.meshgrid(f, f, indexing="ij")  # fractional positions in y, x
    u, v = u.ravel()[None, None, :, None], v.ravel()[None, None, :, None]
    pts = ((1 - v) * (1 - u) * c[:-1, :-1, None] + (1 - v) * u * c[:-1, 1:, None]
           + v * (1 - u) * c[1:, :-1, None] + v * u * c[1:, 1:, None])  # (ny, nx, n*n, 3)
    plat = np.rad2deg(np.arcsin(np.clip(pts[..., 2] / np.linalg.norm(pts, axis=-1), -1, 1))).ravel()
    plon = np.rad2deg(np.arctan2(pts[..., 1], pts[..., 0])).ravel()
    plon = _wrap_from(plon, e_lon[0])
    ok = (plat >= e_lat[0]) & (plat <= e_lat[-1]) & (plon <= e_lon[-1])
    i = np.clip(np.searchsorted(e_lat, plat, side="right") - 1, 0, lat_s.size - 1)
    j = np.clip(np.searchsorted(e_lon, plon, side="right") - 1, 0, ax.u.size - 1)
    rows = np.repeat(np.arange(ny * nx), n * n)
    cols = lat_o[i] * ax.u.size + ax.order[j]
    w = _csr(rows[ok], cols[ok], np.ones(int(ok.sum())), ny * nx, lat_s.size * ax.u.size)
    tl = tlat.ravel()
    outside = (tl < e_lat[0] - _TOL) | (tl > e_lat[-1] + _TOL) | _lon_outside(ax, tlon.ravel(), e_lon)
    w = sp.csr_matrix(sp.diags((~outside).astype(float)) @ w)
    w.eliminate_zeros()
    return w, outside
