"""Downscaling with a time-window package (CorrDiff CMIP6 -> ERA5): the xarray side.

Input contract: ``ds`` holds the package's input variables on (or covering) its input grid, with a
time axis. A time ``c`` of ``ds`` is a window centre when every ``c + offset`` of the window
(``spec.extra["time_window"]["hours"]``, -24 h, 0, +24 h) is a time of ``ds`` too; every centre is
downscaled, at the valid times ``c + lead`` for each of ``lead_times`` (default -12 h; each within
[-12 h, +11 h]: the time features are those of the valid time, the inputs those of the window). So
daily data for days 1..5 give centres 2..4; to downscale one centre, pass the three days around it.

The result is :func:`xkmcast.fields.downscale.model_result`'s CF Dataset ``(member, time, lat, lon)``
on the package's output grid, ``time`` the valid times (sorted), with the coordinates
``window_centre`` and ``lead_time`` along ``time``. Members use the seeds ``row_seed(seed, k, valid
time)`` as every downscaling does. Computed eagerly (one regression + diffusion per valid time).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..errors import ConfigError, TimeCoverageError, explain
from .calendar import as_gregorian, time_index, time_step, time_steps
from .grid import find_grid
from .variables import select_variables

__all__ = ["downscale_window", "window_centres", "lead_times_of"]

_HOUR = np.timedelta64(1, "h")


def lead_times_of(pipeline, lead_times=None) -> np.ndarray:
    """``lead_times`` (hours as numbers, or timedeltas) as timedelta64[ns], checked against the package's range."""
    lo, hi = pipeline.spec.extra["time_window"]["lead_hours"]
    if lead_times is None:
        lead_times = [lo]
    raw = np.atleast_1d(np.asarray(lead_times))
    leads = (raw.astype(float) * 3.6e12).round().astype("timedelta64[ns]") if raw.dtype.kind in "iuf" else \
        raw.astype("timedelta64[ns]")
    hours = leads / _HOUR
    if leads.size == 0 or (hours < lo).any() or (hours > hi).any() or len(set(hours)) != len(hours):
        raise ConfigError(explain("lead_times must be distinct offsets within the package's window",
                                  expected=f"hours within [{lo}, {hi}] of the window centre", found=list(hours),
                                  fix="for a valid time outside that range, use the window centred on the nearest "
                                      "day (e.g. 00 UTC of day d is centre d 12 UTC with lead -12 h)"))
    return leads


def window_centres(times, hours) -> np.ndarray:
    """The times ``c`` of ``times`` (of any calendar) for which every ``c + h`` (``h`` in ``hours``) is
    in ``times``."""
    times = time_index(times)
    ok = np.ones(times.size, bool)
    for h in hours:
        ok &= (times + time_step(f"{int(h)}h", times)).isin(times)
    centres = np.asarray(times[ok].values)
    if centres.size == 0:
        shown = [str(t) for t in times[:6]] + (["..."] if times.size > 6 else [])
        raise TimeCoverageError(explain(
            "No time of the input has the package's whole input window",
            expected=f"for a window centre c, the times c {', c '.join(f'{int(h):+d} h' for h in hours)} in the input",
            found=f"{times.size} times: {shown}",
            fix="include the day before and the day after each time to downscale (daily data: three "
                "consecutive days give one centre, the middle one)"))
    return centres


def _window_array(ds: xr.Dataset, pipeline, regrid_method: str, check_ranges: bool) -> xr.DataArray:
    """The input variables on the package's input grid, (time, channel, lat, lon), checked."""
    from .downscale import onto_input_grid
    from .validate import as_dataset, check_times, checked_values

    spec = pipeline.spec
    names = list(spec.input_vars)
    selected = select_variables(as_dataset(ds, "input"), names)
    facts = spec.extra["time_window"]
    if facts.get("sai"):  # NaN sea-ice concentration (land) is read as 0, as in training
        sic = facts["sai"][0]
        selected[sic] = selected[sic].fillna(0.0)
    selected = onto_input_grid(selected, spec.extra["input_grid"], regrid_method)
    grid = find_grid(selected)
    if grid.time_dim is None:
        raise TimeCoverageError(explain("The input has no time axis", expected="a time dimension holding the window's times",
                                        found=list(selected.dims)))
    check_times(selected, grid.time_dim, "input")
    selected = checked_values(selected, names, check_ranges=check_ranges, time_dim=grid.time_dim)
    arr = selected[names].to_dataarray("channel").transpose(grid.time_dim, "channel", grid.y_dim, grid.x_dim)
    return arr.rename({grid.time_dim: "time"})


def downscale_window(ds, pipeline, members: int, *, seed: int = 0, lead_times=None, include_mean: bool = False,
                     regrid_method: str = "bilinear", check_ranges: bool = True, precision: str = "fp32",
                     **sample_options) -> xr.Dataset:
    """Downscale every window centre of ``ds`` at ``centre + lead_times`` (see the module docstring);
    ``sample_options`` (sampler, num_steps, patch, batch_size, centre; None = the package's) go to ``pipeline.sample``."""
    import torch

    from ..device import autocast
    from ..diffusion.seeds import row_seeds
    from ..models.published.cmip6_steps import finish, window_condition
    from .downscale import model_result

    hours = pipeline.spec.extra["time_window"]["hours"]
    leads = lead_times_of(pipeline, lead_times)
    arr = _window_array(ds, pipeline, regrid_method, check_ranges)
    times = time_index(arr["time"].values)
    centres = window_centres(times, hours)
    options = {k: v for k, v in sample_options.items() if v is not None}
    outs, means, valid, centre_of, lead_of = [], [], [], [], []
    for c in centres:
        idx = [times.get_loc(c + time_step(f"{int(h)}h", times)) for h in hours]
        win = torch.as_tensor(np.asarray(arr.isel(time=idx).values, dtype=np.float32)).to(pipeline.device)  # (L, C, h, w)
        valids = c + time_steps(leads, times)
        cond = window_condition(pipeline, win.unsqueeze(0).expand(len(leads), *win.shape), as_gregorian(valids))
        seeds = [row_seeds(seed, members, v) for v in valids]
        with torch.no_grad(), autocast(pipeline.device, precision):
            samples, mean = pipeline.sample(cond, seeds=seeds, **options)
        outs.append(finish(pipeline, samples.float()).cpu().numpy())  # (M, B, C, H, W)
        means.append(finish(pipeline, mean.float()).cpu().numpy())
        valid.extend(valids), centre_of.extend([c] * len(leads)), lead_of.extend(leads)
    valid = np.asarray(valid)
    if len(np.unique(valid)) != valid.size:
        raise ConfigError(explain("Two window centres give the same valid time",
                                  expected="window centres 24 h apart (daily data) or lead_times that do not overlap",
                                  found=f"centres {[str(c) for c in centres[:6]]} with lead_times {list(leads / _HOUR)} h",
                                  fix="subset the input times or choose other lead_times"))
    order = np.argsort(valid)
    data = np.concatenate(outs, axis=1)[:, order]
    coords = {"time": ("time", valid[order], {"standard_name": "time", "axis": "T"}),
              "window_centre": ("time", np.asarray(centre_of)[order],
                                {"long_name": "centre of the input time window"}),
              "lead_time": ("time", np.asarray(lead_of, "timedelta64[ns]")[order],
                            {"long_name": "valid time minus window centre"})}
    mean = np.concatenate(means, axis=0)[order] if include_mean else None
    return model_result(pipeline, data, ("member", "time"), coords, "downscaling", mean=mean)
