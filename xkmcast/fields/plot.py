"""Maps, member panels, power spectra and rollout animations (matplotlib + cartopy, imported lazily).

``import xkmcast.fields.plot`` imports neither matplotlib nor cartopy; each function does. Every function
returns the matplotlib Figure (``animate`` the path of the GIF) and saves it when given ``path``.

Maps are drawn in the grid's own projection: Lambert conformal built from the CF ``grid_mapping`` (x/y
in metres plotted natively), else Plate Carree with the 2-D latitude / longitude (``pcolormesh`` with
``transform=PlateCarree()``). Coastlines and borders come from the Natural Earth files shipped in
``xkmcast/naturalearth`` (public domain): :func:`use_packaged_naturalearth` points cartopy's
``pre_existing_data_dir`` there unless the user set it, and every call passes an explicit scale
("50m" or "110m"; borders always 50m), so that cartopy never tries to download.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InvalidDataError, MissingVariableError, explain

__all__ = ["use_packaged_naturalearth", "projection", "map", "members", "spectra", "animate", "NATURALEARTH_DIR"]

NATURALEARTH_DIR = Path(__file__).resolve().parents[1] / "naturalearth"
SCALES = ("50m", "110m")


# --------------------------------------------------------------------------------------------- cartopy set-up


def use_packaged_naturalearth() -> Path:
    """Point ``cartopy.config["pre_existing_data_dir"]`` at the shipped Natural Earth files, unless the
    user set it (a non-empty value other than ".", or the ``CARTOPY_DATA_DIR`` environment variable).
    Returns the directory cartopy will read."""
    import cartopy

    current = cartopy.config.get("pre_existing_data_dir")
    user_set = bool(os.environ.get("CARTOPY_DATA_DIR")) or (current not in (None, "") and str(current) != ".")
    if not user_set:
        cartopy.config["pre_existing_data_dir"] = NATURALEARTH_DIR
    return Path(cartopy.config["pre_existing_data_dir"])


def _cartopy():
    import cartopy.crs as ccrs

    use_packaged_naturalearth()
    return ccrs


def _new_figure(figsize: tuple[float, float], path) -> Any:
    """A figure to draw on. Written to ``path``: a plain ``Figure`` on its own Agg canvas, so saving a
    file neither needs nor switches a GUI backend and leaves no figure open in pyplot (the figure is
    still returned, and notebooks display it). Without ``path`` (interactive use): pyplot's figure,
    shown by ``plt.show()`` or the notebook backend in use."""
    if path is None:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def projection(obj: xr.Dataset | xr.DataArray):
    """The cartopy CRS to draw ``obj`` in and the grid (:class:`xkmcast.fields.grid.Grid`)."""
    from .grid import find_grid

    ccrs = _cartopy()
    grid = find_grid(obj)
    gm = grid.grid_mapping or {}
    if gm.get("grid_mapping_name") == "lambert_conformal_conic":
        sp = np.atleast_1d(gm.get("standard_parallel", gm.get("latitude_of_projection_origin", 0.0))).astype(float)
        radius = gm.get("earth_radius")
        globe = ccrs.Globe(ellipse=None, semimajor_axis=radius, semiminor_axis=radius) if radius else None
        kwargs = {"globe": globe} if globe is not None else {}
        proj = ccrs.LambertConformal(
            central_longitude=float(gm.get("longitude_of_central_meridian", 0.0)),
            central_latitude=float(gm.get("latitude_of_projection_origin", sp[0])),
            standard_parallels=tuple(sp[:2]),
            false_easting=float(gm.get("false_easting", 0.0)),
            false_northing=float(gm.get("false_northing", 0.0)),
            **kwargs,
        )
        return proj, grid, True
    lon360 = np.mod(np.asarray(grid.lon, float), 360.0)
    crosses_dateline = lon360.min() < 180.0 < lon360.max() and np.ptp(lon360) < 180.0
    central = 180.0 if crosses_dateline else 0.0
    return ccrs.PlateCarree(central_longitude=central), grid, False


# --------------------------------------------------------------------------------------------- selection


def _variable(obj, var) -> xr.DataArray:
    if isinstance(obj, xr.Dataset):
        if var is None:
            if len(obj.data_vars) != 1:
                raise MissingVariableError(explain("Name the variable to plot", expected=list(obj.data_vars)))
            var = next(iter(obj.data_vars))
        if var not in obj.data_vars:
            raise MissingVariableError(explain(f"No variable {var!r} to plot", expected=list(obj.data_vars)))
        return obj[var]
    return obj


def _field(obj, var, member, time, sel, member_dim, dims=None) -> tuple[xr.DataArray, str]:
    """The 2-D field to draw and a short description of the selection; ``dims`` = (y_dim, x_dim)."""
    da = _variable(obj, var)
    label = []
    if member_dim in da.dims:
        if member is None:
            da = da.mean(member_dim, keep_attrs=True)
            label.append("ensemble mean")
        else:
            da = da.isel({member_dim: member})
            label.append(f"{member_dim} {member}")
    for dim, value in dict(sel or {}).items():
        da = da.sel({dim: value}) if dim in da.indexes else da.isel({dim: value})
        label.append(f"{dim}={_format(da[dim].values) if dim in da.coords and da[dim].ndim == 0 else value}")
    from .grid import find_grid

    grid = find_grid(da) if dims is None else None
    y_dim, x_dim = grid.dims if grid is not None else dims
    extra = [d for d in da.dims if d not in (y_dim, x_dim)]
    preferred = grid.time_dim if grid is not None else next((d for d in extra if "time" in str(d).lower()), None)
    time_dim = preferred if preferred in extra else (extra[0] if extra else None)
    if time_dim is not None:
        if time is None or isinstance(time, (int, np.integer)):
            da = da.isel({time_dim: int(time or 0)})
        else:
            da = da.sel({time_dim: time})
        label.append(f"{time_dim}={_format(da[time_dim].values) if time_dim in da.coords else time}")
    left = [d for d in da.dims if d not in (y_dim, x_dim)]
    if left:
        raise InvalidDataError(
            explain(
                "The field to draw must be 2-D after selection",
                found=f"dims {list(da.dims)}",
                fix=f"select {left} with sel={{...}}",
            )
        )
    return da.transpose(y_dim, x_dim), ", ".join(str(s)[:40] for s in label)


def _format(value) -> str:
    from .scoring import format_coordinate

    return format_coordinate(value)


#: colormaps by kind of variable: precipitation-like fields (white-ish for dry, dark for heavy)
PRECIP_CMAP = "YlGnBu"
_PRECIP_STANDARD_NAMES = ("precipitation_amount", "precipitation_flux", "lwe_precipitation_rate",
                          "lwe_thickness_of_precipitation_amount", "rainfall_amount", "rainfall_rate")


def default_cmap(da: xr.DataArray) -> str | None:
    """:data:`PRECIP_CMAP` for a precipitation variable (by CF standard_name, or the canonical name
    ``tp``), else None (matplotlib's default)."""
    standard = da.attrs.get("standard_name") or ""
    if standard in _PRECIP_STANDARD_NAMES or da.name == "tp":
        return PRECIP_CMAP
    return None


def _label(da: xr.DataArray) -> str:
    name = da.attrs.get("long_name") or da.name or ""
    units = da.attrs.get("units")
    return f"{name} [{units}]" if units else str(name)


def _draw(ax, da: xr.DataArray, proj, grid, native: bool, *, coastlines=True, borders=True, scale="50m",
          coast_color="black", **kwargs):
    """pcolormesh of a 2-D (y, x) field on a GeoAxes, extent set to the grid, coastlines / borders."""
    ccrs = _cartopy()
    if scale not in SCALES:
        raise InvalidDataError(explain("Unknown Natural Earth scale", expected=SCALES, found=scale))
    values = np.asarray(da.values)
    if native and grid.x is not None and grid.y is not None:
        mesh = ax.pcolormesh(grid.x, grid.y, values, transform=proj, shading="auto", **kwargs)
        hx, hy = np.abs(np.diff(grid.x)).mean() / 2, np.abs(np.diff(grid.y)).mean() / 2
        ax.set_extent([grid.x.min() - hx, grid.x.max() + hx, grid.y.min() - hy, grid.y.max() + hy], crs=proj)
    else:
        mesh = ax.pcolormesh(grid.lon, grid.lat, values, transform=ccrs.PlateCarree(), shading="auto", **kwargs)
        lon = np.asarray(grid.lon, float)
        if getattr(proj, "proj4_params", {}).get("lon_0", 0) == 180:
            lon = np.mod(lon, 360.0)
        ax.set_extent([lon.min(), lon.max(), grid.lat.min(), grid.lat.max()], crs=ccrs.PlateCarree())
    if coastlines:
        ax.coastlines(resolution=scale, color=coast_color, linewidth=1.2)
    if borders:
        import cartopy.feature as cfeature

        feature = cfeature.NaturalEarthFeature("cultural", "admin_0_boundary_lines_land", "50m")
        ax.add_feature(feature, edgecolor=coast_color, facecolor="none", linewidth=0.8, linestyle=":")
    return mesh


def _save(fig, path):
    if path is not None:
        fig.savefig(path, dpi=fig.dpi)
    return fig


# --------------------------------------------------------------------------------------------- map


def map(  # noqa: A001 - the name users expect (ds.kmcast.plot.map)
    obj: xr.Dataset | xr.DataArray,
    var: str | None = None,
    ax=None,
    member: int | None = None,
    time: Any = None,
    *,
    sel: Mapping[Hashable, Any] | None = None,
    member_dim: Hashable = "member",
    coastlines: bool = True,
    borders: bool = True,
    scale: str = "50m",
    coast_color: str = "black",
    colorbar: bool = True,
    title: str | None = None,
    path: str | Path | None = None,
    figsize: tuple[float, float] = (6.0, 5.0),
    **pcolormesh_kwargs,
):
    """One field on a map in its own projection, with coastlines, borders and a colour bar in its units.

    ``member=None`` draws the ensemble mean; ``time`` is a position (int) or a label along the time dim
    (default: the first); ``sel`` selects any other dim (``{"lead_time": 3}``); other keywords go to
    ``pcolormesh`` (``cmap``, ``vmin``, ...): a keyword naming a dim or coordinate of the data is refused
    with the ``sel`` to write instead.
    """
    _refuse_selections(_variable(obj, var), pcolormesh_kwargs)
    proj, grid, native = projection(_variable(obj, var))
    da, label = _field(obj, var, member, time, sel, member_dim, grid.dims)
    if ax is None:
        fig = _new_figure(figsize, path)
        ax = fig.add_subplot(1, 1, 1, projection=proj)
    else:
        fig = ax.figure
    mesh = _draw(ax, da, proj, grid, native, coastlines=coastlines, borders=borders, scale=scale,
                 coast_color=coast_color, **pcolormesh_kwargs)
    if colorbar:
        fig.colorbar(mesh, ax=ax, shrink=0.8, label=_label(da))
    ax.set_title(title if title is not None else f"{da.name or ''} {label}".strip(), fontsize=9)
    return _save(fig, path)


def _refuse_selections(da: xr.DataArray, kwargs: Mapping[str, Any]) -> None:
    """A drawing keyword that is a dim or coordinate of ``da`` was meant as a selection."""
    named = {k: v for k, v in kwargs.items() if k in da.dims or k in da.coords}
    if named:
        raise InvalidDataError(explain(f"map() draws with pcolormesh, which takes no {sorted(named)}",
                                       found=f"keywords {sorted(named)}: dims / coordinates of {da.name!r}",
                                       fix=f"select with sel={named!r}"))


# --------------------------------------------------------------------------------------------- members


def members(
    ds: xr.Dataset | xr.DataArray,
    var: str | None = None,
    truth: xr.Dataset | xr.DataArray | None = None,
    n: int = 4,
    *,
    regression: xr.DataArray | None = None,
    baselines: Mapping[str, xr.DataArray] | None = None,
    time: Any = None,
    sel: Mapping[Hashable, Any] | None = None,
    member_dim: Hashable = "member",
    ncols: int | None = None,
    scale: str = "50m",
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    norm: Any = None,
    path: str | Path | None = None,
):
    """Panels side by side with one colour scale: truth (if given), ``baselines`` (``{title: field}``,
    e.g. the bilinear interpolation of the input), the regression mean (``regression``, or a variable
    ``<var>_regression`` in ``ds``) and the first ``n`` members (the prediction itself when it has no
    members). ``ncols`` panels per row (default: one row up to six panels, else 4).

    The scale: ``norm`` (a matplotlib Normalize, e.g. ``LogNorm``) if given, else ``vmin`` / ``vmax``
    (each defaulting to the extreme of all panels). ``cmap`` defaults to :func:`default_cmap`
    (a precipitation colormap for precipitation variables). The colour bar and its label stay inside
    the figure (constrained layout)."""
    proj, grid, native = projection(_variable(ds, var))
    dims = grid.dims
    panels: list[tuple[str, xr.DataArray]] = []
    if truth is not None:
        panels.append(("truth", _field(truth, var, None, time, sel, member_dim, dims)[0]))
    for title, field in (baselines or {}).items():
        panels.append((title, _field(field, None, None, time, sel, member_dim, dims)[0]))
    if regression is None and isinstance(ds, xr.Dataset) and var is not None and f"{var}_regression" in ds:
        regression = ds[f"{var}_regression"]
    if regression is not None:
        panels.append(("regression mean", _field(regression, None, None, time, sel, member_dim, dims)[0]))
    da = _variable(ds, var)
    m = da.sizes.get(member_dim, 0)
    if m == 0:
        panels.append(("prediction", _field(ds, var, None, time, sel, member_dim, dims)[0]))
    for i in range(min(n, m)):
        panels.append((f"{member_dim} {i}", _field(ds, var, i, time, sel, member_dim, dims)[0]))
    values = np.concatenate([np.ravel(p.values) for _, p in panels])
    scale_kw = {"norm": norm} if norm is not None else {
        "vmin": float(np.nanmin(values)) if vmin is None else vmin,
        "vmax": float(np.nanmax(values)) if vmax is None else vmax}

    cols = min(ncols or (len(panels) if len(panels) <= 6 else 4), len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig = _new_figure((3.2 * cols + 1.0, 3.0 * rows), path)
    fig.set_layout_engine("constrained")
    axes = [fig.add_subplot(rows, cols, i + 1, projection=proj) for i in range(len(panels))]
    mesh = None
    for ax, (name, field) in zip(axes, panels):
        mesh = _draw(ax, field, proj, grid, native, scale=scale, cmap=cmap or default_cmap(da), **scale_kw)
        ax.set_title(name, fontsize=9)
    fig.colorbar(mesh, ax=axes, shrink=0.8).set_label(_fit_label(_label(panels[-1][1]), 0.8 * fig.get_figheight()),
                                                       fontsize=_CBAR_FONTSIZE)
    return _save(fig, path)


_CBAR_FONTSIZE = 9


def _fit_label(text: str, length_inches: float) -> str:
    """``text`` wrapped onto lines that fit along a colour bar ``length_inches`` long (a character of
    the colour-bar font is taken as 0.6 of its size)."""
    import textwrap

    per_line = max(8, int(length_inches * 72 / (0.6 * _CBAR_FONTSIZE)))
    return textwrap.fill(text, per_line) if len(text) > per_line else text


# --------------------------------------------------------------------------------------------- spectra


def spectra(
    ds: xr.Dataset | xr.DataArray,
    var: str | None = None,
    truth: xr.Dataset | xr.DataArray | None = None,
    *,
    member_dim: Hashable = "member",
    dx: float | None = None,
    ax=None,
    path: str | Path | None = None,
):
    """Isotropic power spectra (:func:`xkmcast.fields.metrics.power_spectrum`, averaged over time) on log-log
    axes: each member thin, their mean thick, and the truth."""
    from . import metrics

    def pick(obj):
        return obj[var] if isinstance(obj, xr.Dataset) else obj

    if ax is None:
        fig = _new_figure((6.0, 4.5), path)
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    spec = metrics.power_spectrum(pick(ds), dx=dx, member_dim=member_dim).compute()
    k = spec["wavenumber"].values
    keep = k > 0
    if member_dim in spec.dims:
        for i in range(spec.sizes[member_dim]):
            ax.loglog(k[keep], spec.isel({member_dim: i}).values[keep], color="tab:blue", lw=0.6, alpha=0.5)
        spec = spec.mean(member_dim)
    ax.loglog(k[keep], spec.values[keep], color="tab:blue", lw=2.0, label="prediction")
    if truth is not None:
        ref = metrics.power_spectrum(pick(truth), dx=dx, member_dim=member_dim).compute()
        ax.loglog(ref["wavenumber"].values[keep], ref.values[keep], color="black", lw=2.0, label="truth")
    ax.axvline(spec.attrs["nyquist"], color="grey", ls=":", lw=1.0)
    ax.set_xlabel("wavenumber (cycles per km)")
    ax.set_ylabel(f"power spectral density [{spec.attrs.get('units', '')}]")
    ax.set_title(f"power spectrum {pick(ds).name or ''}".strip(), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- animation


def animate(
    ds: xr.Dataset | xr.DataArray,
    var: str | None = None,
    dim: Hashable = "lead_time",
    path: str | Path = "rollout.gif",
    *,
    member: int | None = None,
    member_dim: Hashable = "member",
    fps: float = 2.0,
    scale: str = "50m",
    cmap: str | None = None,
) -> Path:
    """A GIF of ``var`` stepping along ``dim`` (PillowWriter), one colour scale for all frames."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    da = _variable(ds, var)
    if dim not in da.dims:
        raise InvalidDataError(explain(f"No dimension {dim!r} to animate along", found=str(list(da.dims))))
    proj, grid, native = projection(da)
    frames = [_field(da.isel({dim: i}), None, member, None, None, member_dim, grid.dims)[0] for i in range(da.sizes[dim])]
    vmin = float(min(np.nanmin(f.values) for f in frames))
    vmax = float(max(np.nanmax(f.values) for f in frames))
    fig = _new_figure((6.0, 5.0), path)
    ax = fig.add_subplot(1, 1, 1, projection=proj)
    mesh = _draw(ax, frames[0], proj, grid, native, scale=scale, vmin=vmin, vmax=vmax, cmap=cmap)
    fig.colorbar(mesh, ax=ax, shrink=0.8, label=_label(frames[0]))
    coord = da[dim].values if dim in da.coords else np.arange(da.sizes[dim])

    def update(i):
        mesh.set_array(np.asarray(frames[i].values).ravel())
        ax.set_title(f"{da.name or ''} {dim}={_format(coord[i])}".strip(), fontsize=9)
        return (mesh,)

    update(0)
    anim = FuncAnimation(fig, update, frames=len(frames), blit=False)
    path = Path(path)
    anim.save(path, writer=PillowWriter(fps=fps))
    return path
