"""Synthetic, physically plausible km-scale weather on any grid, seeded and CF-annotated.

A :class:`SyntheticWeather` is a *world*: continuous fields defined at every latitude / longitude
(through a local plane ``x = R cos(lat_ref) (lon - lon_ref)``, ``y = R (lat - lat_ref)``, metres) as
sums of random Fourier modes ``f(p, t) = sum_m a_m cos(k_m . (p - c t) + phi_m + omega_m t)``, so the
same world can be sampled on a fine Lambert grid and averaged over the cells of a coarse lat/lon grid.

Fields (point values; ``h`` the orography, ``V`` the wind, ``n`` the upslope unit vector):

* ``orog`` [m]: ``h = H tanh(0.25 max(0, L - L*) exp(0.7 r))`` with ``L`` a large-scale "continent"
  field, ``r`` a multi-scale roughness field (8-300 km) and ``L*`` the threshold giving the requested
  sea fraction; ``lsm = 1[L > L*]`` and sea has zero height.
* ``t2m`` [K]: ``295 - 5 K/1000 km * y + 3 T_a + D(lsm) c + Gamma * h + 0.3 eps_T`` with the
  diurnal phase ``c = cos(2 pi (solar_hour - 15)/24)``; ``T_a`` advected large scale, ``D = 1 + 4 lsm``
  K, ``eps_T`` a small-scale (8-30 km) noise that decorrelates within an hour: the unpredictable part.
  ``Gamma = lapse_rate`` (-6.5 K/km) unless ``boundary_layer = k > 0`` (below).
* ``u10m, v10m`` [m s-1]: steering flow + ``(-d psi/dy, d psi/dx)`` from an advected stream function,
  then terrain effects: the upslope component is removed by the fraction ``s / (s + 0.03)`` on a slope
  ``s = |grad h|`` (flow deflected around hills), speed-up ``1 + 0.25 h/km``, friction ``0.75`` over
  land, plus 0.4 m s-1 small-scale noise.
* Diurnal boundary layer, ``boundary_layer = k`` (0 by default; the shipped sample uses 1): with
  ``sun = max(c, 0) (1 - 0.5 clip(q, 0, 1))`` (daytime heating, dimmed by cloud where the moisture
  field ``q`` is high) and ``night = max(-c, 0)``:

  - stability-dependent lapse rate ``Gamma = lapse_rate - k (3.3 sun - 4.0 night) K/km``: near dry
    adiabatic (-9.8 K/km) on a sunny afternoon, a shallow inversion-like -2.5 K/km at night;
  - thermal slope winds over land along the upslope unit vector ``n``:
    ``V += k lsm (2.5 sun - 1.0 night) tanh(s / 0.03) n`` m s-1 (anabatic by day, katabatic by night);
  - ``t850`` keeps no diurnal cycle (``D c`` is a boundary-layer term), so the coarse ``t2m - t850``
    carries the stability.

  The fine detail is then a product of the coarse state (time of day, stability, cloud) and the
  terrain (height, slope direction): a least-squares fit that is linear in the interpolated inputs
  and the invariants cannot represent it, a network that sees both can; the sub-grid part of ``q``
  makes part of it unpredictable.
* ``tp`` [kg m-2, i.e. mm, amount over the hour ending at the valid time]:
  ``2 max(0, q - 1 + 2 max(0, V . grad h) + 0.3 lsm cos(...))^1.5`` with ``q`` an advected,
  evolving moisture field: intermittent, enhanced on windward slopes.
* ``refc`` [dBZ]: Marshall-Palmer ``10 log10(200 R^1.6)`` of ``R = tp`` per hour, floored at -10 dBZ.
* Coarse extras: ``msl`` [Pa] ``101325 + 1000 psi``, ``tcwv`` [kg m-2] ``max(2, 30 + 8 q)``,
  ``z500`` [m2 s-2] ``g (5750 + 60 psi + 8 T_a)``, ``t850`` [K] the large-scale temperature - 12 K
  (without the diurnal term when ``boundary_layer > 0``).

The km-scale detail is therefore partly predictable from orography and the coarse fields (lapse rate,
terrain-steered winds, orographic rain) and partly not (the noise terms). :func:`synthetic_pair`
gives fine fields on a Lambert grid and coarse fields that are their exact block means;
:meth:`SyntheticWeather.dataset` with ``supersample=n`` gives area means over any lat/lon or projected
grid's cells (``n x n`` sub-points, cos(lat)-weighted on lat/lon grids).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import GridError, MissingVariableError, explain
from ..fields.grid import Grid, find_grid, make_lambert_grid
from ..fields.variables import variable_info

__all__ = [
    "SyntheticWeather",
    "synthetic_pair",
    "block_mean",
    "FINE_VARS",
    "COARSE_VARS",
    "INVARIANTS",
    "ALL_VARS",
]

FINE_VARS = ("t2m", "u10m", "v10m", "tp", "refc")
COARSE_VARS = ("t2m", "u10m", "v10m", "tp", "msl", "tcwv", "z500", "t850")
INVARIANTS = ("orog", "lsm")
ALL_VARS = ("t2m", "u10m", "v10m", "tp", "refc", "msl", "tcwv", "z500", "t850")
EARTH_RADIUS = 6371229.0
G = 9.80665
_HOUR = 3600.0


@dataclasses.dataclass(frozen=True)
class _Modes:
    """A random field ``sum_m a_m cos(kx_m x + ky_m y + phi_m + omega_m t)`` of unit standard deviation."""

    kx: np.ndarray
    ky: np.ndarray
    amp: np.ndarray
    phase: np.ndarray
    omega: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, wavelengths: tuple[float, float], slope: float,
             period: float | None = None) -> _Modes:
        """``n`` modes, wavelengths log-uniform in ``wavelengths`` (m), amplitude ~ wavelength**slope."""
        lo, hi = wavelengths
        lam = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
        theta = rng.uniform(0.0, 2 * np.pi, n)
        phase = rng.uniform(0.0, 2 * np.pi, n)
        omega = rng.normal(0.0, 2 * np.pi / period, n) if period else np.zeros(n)
        amp = (lam / hi) ** slope
        amp = amp / np.sqrt(0.5 * np.sum(amp**2))  # E[f^2] = sum a^2 / 2 = 1 with random phases
        k = 2 * np.pi / lam
        return cls(k * np.cos(theta), k * np.sin(theta), amp, phase, omega)

    def __call__(self, x: np.ndarray, y: np.ndarray, t: float = 0.0) -> np.ndarray:
        px, py = np.ravel(x), np.ravel(y)
        out = np.empty(px.size)
        shift = self.phase + self.omega * t
        for s in range(0, px.size, 4096):  # bounded memory: 4096 points x n modes at a time
            arg = np.multiply.outer(px[s:s + 4096], self.kx) + np.multiply.outer(py[s:s + 4096], self.ky)
            out[s:s + 4096] = np.cos(arg + shift) @ self.amp
        return out.reshape(np.shape(x))


class SyntheticWeather:
    """A seeded synthetic world (see the module docstring for the formulas).

    ``lat_ref`` / ``lon_ref`` anchor the world's plane; sample grids anywhere near them (within a few
    thousand km). ``steering`` (m s-1, eastward, northward) advects the large-scale patterns.
    ``boundary_layer``: strength of the diurnal boundary-layer terms (0: none; 1: as in the sample).
    """

    def __init__(self, seed: int = 0, *, lat_ref: float = 38.5, lon_ref: float = -97.5,
                 max_height: float = 2500.0, sea_fraction: float = 0.3, lapse_rate: float = -6.5e-3,
                 steering: tuple[float, float] = (6.0, 1.5), epoch: str = "2024-01-01",
                 boundary_layer: float = 0.0):
        self.seed, self.lat_ref, self.lon_ref = int(seed), float(lat_ref), float(lon_ref)
        self.boundary_layer = float(boundary_layer)
        self.max_height, self.lapse_rate = float(max_height), float(lapse_rate)
        self.steering = (float(steering[0]), float(steering[1]))
        self.epoch = np.datetime64(epoch, "ns")
        from scipy.special import ndtri

        self.land_threshold = float(ndtri(sea_fraction)) if 0.0 < sea_fraction < 1.0 else (
            -np.inf if sea_fraction <= 0.0 else np.inf)
        rng = np.random.default_rng(self.seed)
        km = 1000.0
        self._continent = _Modes.draw(rng, 24, (150 * km, 1500 * km), 1.0)
        self._rough = _Modes.draw(rng, 384, (8 * km, 300 * km), 0.6)
        self._temp = _Modes.draw(rng, 16, (400 * km, 3000 * km), 1.0, period=48 * _HOUR)
        self._psi = _Modes.draw(rng, 16, (400 * km, 3000 * km), 1.0, period=48 * _HOUR)
        self._moist = _Modes.draw(rng, 64, (20 * km, 400 * km), 0.8, period=12 * _HOUR)
        self._noise = [_Modes.draw(rng, 64, (8 * km, 30 * km), 0.0, period=1 * _HOUR) for _ in range(3)]
        self._psi_scale = 5.0 / (2 * np.pi / (800 * km))  # m2 s-1: winds of ~5 m s-1

    # ------------------------------------------------------------------------------- geometry
    def plane(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Plane coordinates (m) of the world: equirectangular about (lat_ref, lon_ref)."""
        dlon = (np.asarray(lon, float) - self.lon_ref + 180.0) % 360.0 - 180.0
        x = EARTH_RADIUS * np.cos(np.deg2rad(self.lat_ref)) * np.deg2rad(dlon)
        y = EARTH_RADIUS * np.deg2rad(np.asarray(lat, float) - self.lat_ref)
        return x, y

    def _height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        land = np.maximum(self._continent(x, y) - self.land_threshold, 0.0)
        return self.max_height * np.tanh(0.25 * land * np.exp(0.7 * self._rough(x, y)))

    def invariants(self, lat: np.ndarray, lon: np.ndarray) -> dict[str, np.ndarray]:
        """``orog`` (m), ``lsm`` (0/1) and the orography gradient ``dhdx, dhdy`` (m/m) at the points."""
        x, y = self.plane(lat, lon)
        d = 250.0
        h = self._height(x, y)
        dhdx = (self._height(x + d, y) - self._height(x - d, y)) / (2 * d)
        dhdy = (self._height(x, y + d) - self._height(x, y - d)) / (2 * d)
        lsm = (self._continent(x, y) > self.land_threshold).astype(float)
        return {"orog": h, "lsm": lsm, "dhdx": dhdx, "dhdy": dhdy}

    # ------------------------------------------------------------------------------- fields
    def fields(self, lat: np.ndarray, lon: np.ndarray, times, variables=ALL_VARS) -> dict[str, np.ndarray]:
        """Point values ``{name: array (time, *lat.shape)}`` of the time-dependent ``variables``."""
        unknown = sorted(set(variables) - set(ALL_VARS))
        if unknown:
            raise MissingVariableError(explain("The synthetic world cannot make these variables",
                                               expected=ALL_VARS, found=unknown))
        lat, lon = np.asarray(lat, float), np.asarray(lon, float)
        times = pd.DatetimeIndex(np.atleast_1d(np.asarray(times, dtype="datetime64[ns]")))
        inv = self.invariants(lat, lon)
        h, lsm, dhdx, dhdy = inv["orog"], inv["lsm"], inv["dhdx"], inv["dhdy"]
        x, y = self.plane(lat, lon)
        out = {v: np.empty((len(times), *lat.shape)) for v in variables}
        slope = np.hypot(dhdx, dhdy)
        nx_, ny_ = dhdx / np.maximum(slope, 1e-12), dhdy / np.maximum(slope, 1e-12)
        for i, time in enumerate(times):
            t = float((time.to_datetime64() - self.epoch) / np.timedelta64(1, "s"))
            ax, ay = x - self.steering[0] * t, y - self.steering[1] * t  # advected coordinates
            solar = (time.hour + time.minute / 60 + lon / 15.0) % 24.0
            diurnal = np.cos(2 * np.pi * (solar - 15.0) / 24.0)
            ta = self._temp(ax, ay, t)
            t_free = 295.0 - 5e-6 * y + 3.0 * ta  # above the boundary layer: no diurnal cycle
            t_large = t_free + (1.0 + 4.0 * lsm) * diurnal
            d = 2000.0
            psi = self._psi(ax, ay, t)
            dpsidx = (self._psi(ax + d, ay, t) - self._psi(ax - d, ay, t)) / (2 * d) * self._psi_scale
            dpsidy = (self._psi(ax, ay + d, t) - self._psi(ax, ay - d, t)) / (2 * d) * self._psi_scale
            u = self.steering[0] - dpsidy
            v = self.steering[1] + dpsidx
            upslope = u * dhdx + v * dhdy  # m s-1 of forced ascent
            along_n = u * nx_ + v * ny_
            keep = slope / (slope + 0.03)
            factor = (1.0 + 0.25 * h / 1000.0) * (1.0 - 0.25 * lsm)
            q = self._moist(ax, ay, t)
            k = self.boundary_layer
            sun = np.maximum(diurnal, 0.0) * (1.0 - 0.5 * np.clip(q, 0.0, 1.0))  # heating under cloud
            night = np.maximum(-diurnal, 0.0)
            lapse = self.lapse_rate - k * (3.3e-3 * sun - 4.0e-3 * night)  # K/m: -9.8 sunny noon, ~-2.5 night
            slope_wind = k * lsm * (2.5 * sun - 1.0 * night) * np.tanh(slope / 0.03)  # up / down the slope
            if "t2m" in out:
                out["t2m"][i] = t_large + lapse * h + 0.3 * self._noise[0](ax, ay, t)
            if "u10m" in out:
                out["u10m"][i] = ((u - keep * along_n * nx_) * factor + slope_wind * nx_
                                  + 0.4 * self._noise[1](ax, ay, t))
            if "v10m" in out:
                out["v10m"][i] = ((v - keep * along_n * ny_) * factor + slope_wind * ny_
                                  + 0.4 * self._noise[2](ax, ay, t))
            if "tp" in out or "refc" in out:
                rain = 2.0 * np.maximum(q - 1.0 + 2.0 * np.maximum(upslope, 0.0) + 0.3 * lsm * diurnal, 0.0) ** 1.5
                if "tp" in out:
                    out["tp"][i] = rain
                if "refc" in out:
                    with np.errstate(divide="ignore"):
                        out["refc"][i] = np.maximum(10.0 * np.log10(200.0 * rain**1.6), -10.0)
            if "msl" in out:
                out["msl"][i] = 101325.0 + 1000.0 * psi
            if "tcwv" in out:
                out["tcwv"][i] = np.maximum(30.0 + 8.0 * q, 2.0)
            if "z500" in out:
                out["z500"][i] = G * (5750.0 + 60.0 * psi + 8.0 * ta)
            if "t850" in out:
                out["t850"][i] = (t_free if k > 0 else t_large) - 12.0
        return out

    # ------------------------------------------------------------------------------- datasets
    def dataset(self, grid: xr.Dataset | xr.DataArray | Grid, times, variables=ALL_VARS, *,
                invariants=INVARIANTS, supersample: int = 1, dtype="float32") -> xr.Dataset:
        """The world on ``grid`` as a CF Dataset ``(time, y, x)`` plus invariants ``(y, x)``.

        ``supersample=1`` gives point values at the grid's points; ``n > 1`` gives area means over
        each cell from ``n x n`` sub-points (lat/lon grids: cos(lat)-weighted; projected grids with
        x/y and a CRS: uniform in x/y). The binary ``lsm`` then becomes the land fraction.
        """
        g = grid if isinstance(grid, Grid) else find_grid(grid)
        if supersample > 1:
            lat, lon, w = _subpoints(g, int(supersample))
        else:
            lat, lon, w = g.lat, g.lon, None
        inv = self.invariants(lat, lon)
        vals = self.fields(lat, lon, times, variables)
        vals.update({k: inv[k] for k in invariants})
        if w is not None:
            vals = {k: _block_weighted_mean(a, w, int(supersample)) for k, a in vals.items()}
        coords = _grid_coords(grid, g)
        tcoord = xr.DataArray(np.asarray(np.atleast_1d(times), "datetime64[ns]"), dims="time",
                              attrs={"standard_name": "time", "axis": "T"})
        ds = xr.Dataset(coords=coords).assign_coords(time=tcoord)
        gm = "crs" if "crs" in ds.coords else None
        for name, arr in vals.items():
            dims = ("time", *g.dims) if name not in invariants else g.dims
            attrs = dict(variable_info(name).attrs)
            if name == "lsm" and supersample > 1:
                attrs.update(standard_name="land_area_fraction", long_name="land fraction of the cell")
            if name == "tp":
                attrs["cell_methods"] = "time: sum (interval: 1 hour)"
            if gm:
                attrs["grid_mapping"] = gm
            ds[name] = xr.DataArray(arr.astype(dtype), dims=dims, attrs=attrs)
        ds.attrs.update(title="xkmcast synthetic weather", source=f"xkmcast.data.synthetic seed={self.seed}",
                        Conventions="CF-1.8")
        return ds


def _grid_coords(grid, g) -> dict:
    """The horizontal coordinates of ``grid`` (2-D lat/lon, x/y, crs), without any time coordinate."""
    if isinstance(grid, Grid):
        return dict(grid.to_dataset().coords)
    src = grid if isinstance(grid, xr.Dataset) else grid.to_dataset(name="__tmp__")
    keep = {k: v for k, v in src.coords.items() if set(v.dims) <= set(g.dims) and k != "time"}
    if not any(set(v.dims) == set(g.dims) or v.dims == (g.y_dim,) for v in keep.values()):
        keep = dict(g.to_dataset().coords)
    return keep


def _subpoints(g, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-point lat/lon ``(ny*n, nx*n)`` and area weights spread over each cell of grid ``g``."""
    frac = (np.arange(n) + 0.5) / n - 0.5  # offsets in units of the cell width
    if g.x is not None and g.y is not None and g.crs is not None:
        from pyproj import Transformer

        xs = (g.x[:, None] + np.gradient(g.x)[:, None] * frac[None, :]).ravel()
        ys = (g.y[:, None] + np.gradient(g.y)[:, None] * frac[None, :]).ravel()
        xx, yy = np.meshgrid(xs, ys)
        lon, lat = Transformer.from_crs(g.crs, "EPSG:4326", always_xy=True).transform(xx, yy)
        return lat, lon, np.ones_like(lat)
    if g.rectilinear:
        lat1, lon1 = g.lat[:, 0], g.lon[0, :]
        lats = (lat1[:, None] + np.gradient(lat1)[:, None] * frac[None, :]).ravel()
        lons = (lon1[:, None] + np.gradient(lon1)[:, None] * frac[None, :]).ravel()
        lon, lat = np.meshgrid(lons, lats)
        return lat, lon, np.cos(np.deg2rad(lat))
    raise GridError(explain("Area means need a lat/lon grid or a projected grid with x/y and a CRS",
                            found=f"a curvilinear grid on dims {g.dims} without projection coordinates",
                            fix="use supersample=1 (point values) or add x/y and a grid_mapping"))


def _block_weighted_mean(a: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
    """Weighted mean over ``n x n`` blocks of the last two axes."""
    ny, nx = a.shape[-2] // n, a.shape[-1] // n
    ab = (a * w).reshape(*a.shape[:-2], ny, n, nx, n).sum(axis=(-3, -1))
    return ab / w.reshape(ny, n, nx, n).sum(axis=(1, 3))


def block_mean(ds: xr.Dataset, factor: int, *, grid: Grid | None = None) -> xr.Dataset:
    """Area mean over ``factor x factor`` blocks of an equal-area (projected) grid: the coarse twin.

    Every data variable becomes the exact mean of its ``factor**2`` fine values; x/y become the block
    centres and the 2-D lat/lon are recomputed from the CRS at those centres (block means when there
    is no CRS). ``lsm`` becomes the land fraction. The grid's size must be a multiple of ``factor``.
    ``grid`` (the :class:`~xkmcast.fields.grid.Grid` of ``ds``) saves finding it again.
    """
    g = grid or find_grid(ds)
    ydim, xdim = g.dims
    if ds.sizes[ydim] % factor or ds.sizes[xdim] % factor:
        raise GridError(explain(f"The grid is not a multiple of the block factor {factor}",
                                found=f"{ydim}={ds.sizes[ydim]}, {xdim}={ds.sizes[xdim]}",
                                fix="crop the grid or choose a factor that divides both sizes"))
    data = ds.drop_vars([c for c in ds.coords if set(ds[c].dims) & {ydim, xdim}])
    out = data.coarsen({ydim: factor, xdim: factor}).mean(keep_attrs=True)
    if g.x is not None and g.y is not None:
        x = g.x.reshape(-1, factor).mean(axis=1)
        y = g.y.reshape(-1, factor).mean(axis=1)
        out = out.assign_coords({xdim: (xdim, x, dict(ds[xdim].attrs) if xdim in ds.coords else {}),
                                 ydim: (ydim, y, dict(ds[ydim].attrs) if ydim in ds.coords else {})})
    if g.crs is not None and g.x is not None:
        from pyproj import Transformer

        xx, yy = np.meshgrid(out[xdim].values, out[ydim].values)
        lon, lat = Transformer.from_crs(g.crs, "EPSG:4326", always_xy=True).transform(xx, yy)
    else:
        lat = g.lat.reshape(g.shape[0] // factor, factor, -1, factor).mean(axis=(1, 3))
        lon = g.lon.reshape(g.shape[0] // factor, factor, -1, factor).mean(axis=(1, 3))
    names = (g.lat_name or "lat", g.lon_name or "lon")
    out = out.assign_coords({names[0]: ((ydim, xdim), lat, dict(ds[names[0]].attrs) if names[0] in ds else {}),
                             names[1]: ((ydim, xdim), lon, dict(ds[names[1]].attrs) if names[1] in ds else {})})
    for c in ds.coords:
        if ds[c].ndim == 0 and c not in out.coords:
            out = out.assign_coords({c: ds[c]})
    if "lsm" in out:
        out["lsm"].attrs.update(standard_name="land_area_fraction", long_name="land fraction of the cell")
    out.attrs = dict(ds.attrs, coarsening=f"block mean over {factor}x{factor} fine cells")
    return out


def synthetic_pair(nx: int = 64, ny: int = 64, dx: float = 3000.0, factor: int = 8, times=24, *,
                   start: str = "2024-07-01", freq: str = "1h", seed: int = 0, lat0: float = 38.5,
                   lon0: float = -97.5, fine_vars=FINE_VARS, coarse_vars=COARSE_VARS,
                   **world) -> tuple[xr.Dataset, xr.Dataset]:
    """``(coarse, fine)``: fine point fields on a Lambert grid of ``ny x nx`` points spaced ``dx`` m
    centred on (lat0, lon0), and coarse fields that are their exact ``factor x factor`` block means.

    ``times`` is a count (of ``freq`` steps from ``start``) or explicit datetimes. Both datasets hold
    the invariants ``orog`` and ``lsm`` (a fraction on the coarse grid). Same seed, same bytes.
    """
    if np.isscalar(times):
        times = pd.date_range(start, periods=int(times), freq=freq)
    grid = find_grid(make_lambert_grid(nx, ny, dx, lat0, lon0))
    w = SyntheticWeather(seed, lat_ref=lat0, lon_ref=lon0, **world)
    full = w.dataset(grid, times, tuple(dict.fromkeys((*fine_vars, *coarse_vars))), dtype="float64")
    coarse = block_mean(full[[*coarse_vars, *INVARIANTS]], factor, grid=grid).astype("float32")
    fine = full[[*fine_vars, *INVARIANTS]].astype("float32")
    return coarse, fine
