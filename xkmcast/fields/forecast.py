"""Autoregressive forecasts through the accessor: ``state.kmcast.forecast(model, steps, background)``.

For each initial time ``t0`` and member ``k`` the pipeline steps the state on its grid:

    x_0 = state(t0),   x_{n+1} = step(x_n, background(t0 + n dt); seed = row_seed(seed, k, t0, n))

(:func:`xkmcast.diffusion.seeds.row_seed`)

The initial times are ``init_times`` (labels or a slice of ``ds``'s times), by default every time of
``ds``; the states before them that a rollout reads are taken from ``ds`` too. A model that reads its
last n states (``pipeline.input_window``, NVIDIA's StormScope packages) starts at each initial time
whose n - 1 predecessors, dt apart, are in ``ds`` (named initial times without them are refused), and
steps the window (oldest dropped, newest predicted); a model with ``takes_valid_time`` also gets the
valid time of the newest state (its cos-zenith features). A model whose rollout reads the states
before its initial one only at its start (``pipeline.history``: a StormCast spread by activity)
starts at every initial time and passes what it derives from them (``pipeline.rollout_context``) to
every step; where ``ds`` lacks them they are NaN (a spread by activity is then not scaled, with a
warning).

where the background (coarse fields) at the input time of each step is regridded to the state grid
and the invariants come from the bundle. The result has dims ``(member, init_time, lead_time, y, x)``
with ``lead_time = 0, dt, ..., steps dt`` (lead 0 is the initial state) and a 2-D ``valid_time``.

Without ``output``, for a dask-backed state (``state.chunk(time=1)``), the result is lazy: one dask
task per initial time runs its whole rollout; a state in memory (numpy) gives a computed result, as
:func:`~xkmcast.fields.downscale.downscale` does.
With ``output=`` (a zarr path) the rollout runs now and each step is written as soon as it is
computed, with a ``completed`` flag per (init_time, lead_time); running the same call again
continues from the last completed step of each initial time. The store records the model's
identity (``xkmcast_model_sha256``, :func:`xkmcast.models.bundle.model_identity`) and the settings
that shape the result (``xkmcast_settings``: sampler, steps, precision, regrid method, with the
seed and members); a resume with another model or other settings is refused, and a second process
streaming to the same store fails while the first runs (:func:`xkmcast.atomic.writer_lock`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr

from ..errors import InvalidDataError, TimeCoverageError, XkmcastError, explain
from .calendar import (as_gregorian, is_calendar_time, require_same_calendar, time_index, time_step, time_steps,
                       time_text)
from .downscale import (ModelRef, _graph_handle, grid_dims, model_result, pole_values, require_task,
                        resolve_model, to_model_inputs)

__all__ = ["forecast"]


def forecast(
    ds: xr.Dataset,
    model,
    steps: int = 12,
    background: xr.Dataset | None = None,
    *,
    members: int = 1,
    seed: int = 0,
    output: str | Path | None = None,
    sampler: str | None = None,
    num_steps: int | None = None,
    batch_size: int | None = None,
    regrid_method: str = "bilinear",
    device: str | None = None,
    precision: str = "fp32",
    progress: bool = False,
    check_ranges: bool = True,
    centre: bool | None = None,
    init_times=None,
) -> xr.Dataset:
    """Roll ``model`` forward ``steps`` time steps from every time of ``ds``, or from its times that
    ``init_times`` selects (a label, a list of labels or a slice), reading the states before them that
    the model's rollouts need from ``ds`` too (see the module doc).

    ``centre``: at each step the members' residuals are centred on their mean (default: as the model
    records it; see :meth:`xkmcast.models.base.Pipeline.members_about_mean`).

    ``precision="amp-bf16"`` runs the networks under bfloat16 autocast (CUDA and CPU). The state and
    the background are checked as in :func:`xkmcast.fields.downscale.downscale` (``check_ranges``)."""
    from ..device import check_precision, resolve_precision
    from .validate import require_positive

    check_precision(precision)
    require_positive(steps=steps, members=members, num_steps=num_steps, batch_size=batch_size)
    pipeline = resolve_model(model, device)
    precision = resolve_precision(pipeline.device, precision)  # "auto": what this device runs (recorded)
    spec = pipeline.spec
    require_task(pipeline, forecast=True, centre=centre)
    dt = _time_step(pipeline)
    state = to_model_inputs(ds, pipeline, spec.input_vars, require_on_grid=True, check_ranges=check_ranges)
    state = _input_windows(state, _start_window(pipeline), dt, strict=getattr(pipeline, "input_window", 1) > 1,
                           starts=_initial_times(state, init_times))
    starts = state["time"].values  # the initial times that have what their rollouts read
    bg = _background(background, pipeline, starts, steps, dt, regrid_method, check_ranges)
    options = {"sampler": sampler, "num_steps": num_steps, "batch_size": batch_size, "centre": centre,
               "_precision": precision}
    options = {k: v for k, v in options.items() if v is not None}
    leads = np.array([dt * n for n in range(steps + 1)], dtype="timedelta64[ns]")
    if output is not None:
        from ..atomic import writer_lock

        with writer_lock(output):
            return _forecast_to_zarr(pipeline, state, bg, Path(output), leads, members, seed,
                                     dict(options, _regrid_method=regrid_method), progress)
    run = dask.delayed(functools.partial(_rollout_block, handle=_graph_handle(model, pipeline), steps=steps,
                                         members=members, seed=seed, options=options), pure=True)
    state_data = state.chunk({d: 1 if d == "time" else -1 for d in state.dims}).data
    bg_data = None if bg is None else bg.chunk({"init": 1, "step": -1, "channel": -1, "y": -1, "x": -1}).data
    c, h, w = state.shape[-3:]
    blocks = [
        dsa.from_delayed(run(state_data[i], None if bg_data is None else bg_data[i], starts[i]),
                         shape=(members, 1, steps + 1, c, h, w), dtype=np.float32)
        for i in range(len(starts))
    ]
    data = dsa.concatenate(blocks, axis=1)
    result = _forecast_result(pipeline, data, starts, leads)
    lazy = any(v.chunks is not None for v in ds.data_vars.values())
    return result if lazy else result.compute()


def _time_step(pipeline) -> pd.Timedelta:
    return pd.Timedelta(pipeline.spec.time_step or pipeline.model_kind.time_step)


def _start_window(pipeline) -> int:
    """The states a rollout of ``pipeline`` starts from: those its steps read (``input_window``) or
    those its start reads (``history``), whichever is more."""
    return max(int(getattr(pipeline, "input_window", 1)), int(getattr(pipeline, "history", 1)))


def _initial_times(state, init_times) -> pd.Index | None:
    """The times of ``state`` that ``init_times`` selects (None: every time), refused when it names a
    time ``state`` lacks or selects none."""
    if init_times is None:
        return None
    have = time_index(state["time"].values)
    try:
        picked = time_index(state["time"].sel(time=init_times).values)
    except (KeyError, ValueError, TypeError) as exc:
        picked, why = None, str(exc).splitlines()[0] if str(exc) else repr(init_times)
    else:
        why = "it selects none of them"
    if picked is None or picked.empty:
        raise TimeCoverageError(explain(f"The initial times {init_times!r} are not times of the input state",
                                        expected=f"times within {have.min()} .. {have.max()} ({len(have)} times)",
                                        found=why, fix="name times the state holds, or a slice of them"))
    return picked


def _input_windows(state, window: int, dt, strict: bool = True, starts: pd.Index | None = None):
    """For a model that reads the last ``window`` states (``pipeline.input_window``, StormScope
    packages): (time, window, channel, y, x) at every time of ``starts`` (default: of ``state``) whose
    ``window - 1`` predecessors, ``dt`` apart, are in ``state`` too (oldest first; named ``starts``
    without them are refused); ``state`` at ``starts`` for 1. Not ``strict`` (the states before only
    start a rollout: ``pipeline.history``): at every start, the missing predecessors NaN, with a
    warning."""
    have = time_index(state["time"].values)
    named = starts is not None
    starts = starts if named else have
    if window <= 1:
        return state.sel(time=starts) if named else state
    lags = [time_step(dt * k, have) for k in range(window - 1, -1, -1)]
    rows = [[have.get_loc(t - lag) if (t - lag) in have else -1 for lag in lags] for t in starts]
    missing = [str(t) for t, r in zip(starts, rows) if min(r) < 0]
    if not strict:
        if missing:
            import warnings

            warnings.warn(f"{len(missing)} of {len(starts)} initial times lack the state {dt} before them "
                          f"({missing[:3]}...): the members' spread there is not scaled by "
                          "the change over that step (spread by activity); give those states to scale it",
                          stacklevel=3)
        parts = [state.reindex(time=starts - lag).assign_coords(time=starts.values) for lag in lags]
        return xr.concat(parts, dim="window").transpose("time", "window", "channel", "y", "x")
    keep = [i for i, r in enumerate(rows) if min(r) >= 0]
    if not keep or (named and missing):
        raise TimeCoverageError(explain(
            f"The model starts from its last {window} states, {dt} apart, and "
            + (f"{len(missing)} of the initial times lack them" if keep else "no initial time has them all"),
            expected=f"{window} consecutive times every {dt}",
            found=f"initial times without them: {missing[:5]}",
            fix="give the initial state's history (a forecast starts at each time that has it)"))
    idx = xr.DataArray(np.array([rows[i] for i in keep]), dims=("time", "window"))
    out = state.isel(time=idx).transpose("time", "window", "channel", "y", "x")
    return out.assign_coords(time=("time", starts[keep].values))


def _background(background, pipeline, init_times, steps, dt, regrid_method, check_ranges=True):
    """The background at the input time of every step, on the model grid: (init, step, C_bg, y, x)."""
    spec = pipeline.spec
    # only the stages the model holds count (a regression bundle keeps the diffusion defaults)
    needed = bool(spec.background_vars) and any(
        "background" in names for stage, names in spec.conditions.items() if stage in pipeline.stages)
    if not needed:
        return None
    if background is None:
        raise TimeCoverageError(explain("This model needs a background (coarse) dataset",
                                        expected=f"background= with {spec.background_vars}", found=None))
    bg = to_model_inputs(background, pipeline, spec.background_vars, role="background", regrid_method=regrid_method,
                         check_ranges=check_ranges)
    starts = time_index(init_times)
    want = np.stack([np.asarray((starts + time_step(dt * n, starts)).values) for n in range(steps)], axis=1)
    have = time_index(bg["time"].values)
    require_same_calendar(starts, have, "state", "background")
    missing = list(time_index(want.ravel()).difference(have))
    if missing:
        raise TimeCoverageError(
            explain(
                "The background does not cover the forecast window",
                expected=f"times {want.min()} .. {want.max()} every {dt}",
                found=f"{len(have)} times {have.min()} .. {have.max()}; missing {[str(m) for m in missing[:5]]}",
                fix="give a background covering every step's input time (or fewer steps)",
            )
        )
    idx = have.get_indexer(time_index(want.ravel())).reshape(want.shape)
    return bg.isel(time=xr.DataArray(idx, dims=("init", "step"))).transpose("init", "step", "channel", "y", "x")


def _rollout(pipeline, state0: np.ndarray, bg: np.ndarray | None, init_time, members: int, seed: int,
             options: dict, start_step: int = 0, on_step=None, start_window: np.ndarray | None = None) -> np.ndarray:
    """Normalised rollout of one initial time: (members, C, H, W) per step; returns all states.
    ``start_window``: the initial states the rollout's context comes from (``pipeline.rollout_context``)
    when ``state0`` is a later state of it (a resumed forecast)."""
    import torch

    from ..diffusion.seeds import row_seeds

    windowed = getattr(pipeline, "input_window", 1) > 1  # x holds the last states: (members, window, C, H, W)
    starting = _start_window(pipeline) > 1 and start_window is None  # state0: the initial states, oldest first
    read = state0[-1] if starting and not windowed else state0
    if not np.isfinite(read).all():  # the states before the initial one only start a rollout (NaN: unknown)
        raise InvalidDataError(explain("The initial state holds NaN or infinite values",
                                       expected="finite values on the whole model grid",
                                       found=f"init time {init_time}", fix="fill or drop that time"))
    x = torch.from_numpy(np.ascontiguousarray(state0, dtype=np.float32)).to(pipeline.device)
    if x.ndim == (4 if starting or windowed else 3):
        x = x.unsqueeze(0).expand(members, *x.shape)
    if start_window is not None:  # a resumed rollout: the initial states come from the input again
        w = torch.from_numpy(np.ascontiguousarray(start_window, dtype=np.float32)).to(x.device)
        start_window = w.unsqueeze(0).expand(members, *w.shape)
    initial = x if starting else start_window  # (members, window, C, H, W) or None
    context = pipeline.rollout_context(initial) if initial is not None and hasattr(pipeline, "rollout_context") else {}
    if starting and not windowed:  # the states before the initial one were for the context only
        x = x[:, -1]
    states = [(x[:, -1] if windowed else x).cpu().numpy()]
    timed = {}
    if getattr(pipeline, "takes_valid_time", False):
        dt = time_step(_time_step(pipeline), init_time)
        init_time = init_time if is_calendar_time(init_time) else np.datetime64(init_time)
    from ..device import autocast

    options = dict(options)
    precision = options.pop("_precision", "fp32")
    n_steps = options.pop("_steps", None)
    n_steps = bg.shape[0] if bg is not None else n_steps
    with torch.no_grad(), autocast(pipeline.device, precision):
        for n in range(start_step, n_steps):
            b = None
            if bg is not None:
                b = torch.from_numpy(np.ascontiguousarray(bg[n], dtype=np.float32)).to(pipeline.device)
                b = b.unsqueeze(0).expand(members, -1, -1, -1)
            seeds = row_seeds(seed, members, init_time, n)
            if getattr(pipeline, "takes_valid_time", False):
                timed = {"valid_time": as_gregorian(init_time + n * dt)}  # for the Sun: a model date as Gregorian
            new = pipeline.step(x, b, seeds=seeds, step_index=n, **options, **timed, **context).float()
            x = torch.cat([x[:, 1:], new[:, None]], dim=1) if windowed else new
            states.append(new.cpu().numpy())
            if on_step is not None:
                on_step(n + 1, states[-1])
    return np.stack(states, axis=1)  # (members, steps + 1 - start_step, C, H, W)


def _rollout_block(state0, bg, init_time, *, handle, steps, members, seed, options):
    """One dask task: the whole rollout of one initial time, denormalised: (members, 1, steps+1, C, H, W)."""
    pipeline = handle.get() if isinstance(handle, ModelRef) else handle
    out = _rollout(pipeline, state0, bg, init_time, members, seed, dict(options, _steps=steps))
    phys = pipeline.stats_for("output").denormalise(out, pipeline.spec.output_vars, axis=2)
    return phys[:, None].astype(np.float32)


def _forecast_result(pipeline, data, init_times, leads) -> xr.Dataset:
    """:func:`xkmcast.fields.downscale.model_result` with the forecast's time coordinates."""
    coords = {
        "init_time": ("init_time", init_times, {"long_name": "initial time", "standard_name": "forecast_reference_time"}),
        "lead_time": ("lead_time", leads, {"long_name": "lead time", "standard_name": "forecast_period"}),
        "valid_time": (("init_time", "lead_time"), init_times[:, None] + time_steps(leads, init_times)[None, :],
                       {"standard_name": "time"}),
    }
    return model_result(pipeline, data, ("member", "init_time", "lead_time"), coords, "forecast")


# ------------------------------------------------------------------------------------- streaming


def _forecast_to_zarr(pipeline, state, bg, path: Path, leads, members, seed, options, progress) -> xr.Dataset:
    """Run now, writing each step to ``path`` as it is computed; continue a partial store."""
    stats = pipeline.stats_for("output")
    init_times = state["time"].values
    steps = len(leads) - 1
    template = _forecast_result(pipeline, dsa.zeros((members, len(init_times), steps + 1, *state.shape[-3:]),
                                                 chunks=(members, 1, 1, -1, -1, -1),
                                                 dtype=np.float32), init_times, leads)
    template["completed"] = (("init_time", "lead_time"), dsa.zeros((len(init_times), steps + 1), dtype=np.int8,
                                                                   chunks=(1, 1)))
    import json

    from ..models.bundle import model_identity

    settings = {"sampler": options.get("sampler"), "num_steps": options.get("num_steps"),
                "precision": options.get("_precision", "fp32"), "regrid_method": options.pop("_regrid_method", None)}
    template.attrs.update(xkmcast_seed=int(seed), xkmcast_members=int(members),
                          xkmcast_model_sha256=model_identity(pipeline),
                          xkmcast_settings=json.dumps(settings, sort_keys=True))
    done = _open_or_create(path, template)
    names = pipeline.spec.output_vars
    for i, t0 in enumerate(init_times):
        last = int(np.flatnonzero(done[i])[-1]) if done[i].any() else -1
        if last >= steps:
            continue
        if last > 0 and getattr(pipeline, "input_window", 1) > 1:
            raise XkmcastError(explain(f"{path}: resuming a forecast of a model that reads its last states is not supported",
                                       found=f"init {t0} completed up to lead {last}",
                                       fix="write to a new path, or delete the old store to start over"))
        if last > 0:  # continue from the last written state (denormalised on disk); from lead 0: the input's
            with xr.open_zarr(path, consolidated=False) as prev:
                x = np.stack([prev[n].isel(init_time=i, lead_time=last).values for n in names], axis=1)
            x0 = stats.normalise(x, names, axis=1)
        else:
            x0 = state.isel(time=i).values

        def write(n: int, x_n: np.ndarray, i=i) -> None:
            phys = pole_values(pipeline, stats.denormalise(x_n, names, axis=1).astype(np.float32), names)
            region = {"init_time": slice(i, i + 1), "lead_time": slice(n, n + 1)}
            step_ds = xr.Dataset({name: (("member", "init_time", "lead_time", *grid_dims(pipeline)), phys[:, None, None, c])
                                  for c, name in enumerate(names)})
            step_ds["completed"] = (("init_time", "lead_time"), np.ones((1, 1), np.int8))
            step_ds.to_zarr(path, region=region, consolidated=False)
            if progress:
                print(f"init {time_text(t0)[:16].replace(' ', 'T')} step {n}/{steps} written", flush=True)

        if last < 0:
            x_last = x0[-1] if x0.ndim == 4 else x0  # a window's newest state
            write(0, np.broadcast_to(x_last, (members, *x_last.shape)))
        start = max(last, 0)
        bg_i = None if bg is None else bg.isel(init=i).values
        _rollout(pipeline, x0, bg_i, t0, members, seed, dict(options, _steps=steps), start_step=start, on_step=write,
                 start_window=state.isel(time=i).values if last > 0 and _start_window(pipeline) > 1 else None)
    return xr.open_zarr(path, consolidated=False)


def _open_or_create(path: Path, template: xr.Dataset) -> np.ndarray:
    """The ``completed`` flags of an existing compatible store, or of a newly created empty one."""
    if path.exists():
        existing = xr.open_zarr(path, consolidated=False)
        same = (
            existing.sizes.get("member") == template.sizes["member"]
            and existing.sizes.get("lead_time") == template.sizes["lead_time"]
            and np.array_equal(existing["init_time"].values, template["init_time"].values)
            and existing.attrs.get("xkmcast_seed") == template.attrs["xkmcast_seed"]
            and set(template.data_vars) <= set(existing.data_vars)
        )
        if not same:
            raise XkmcastError(
                explain(
                    f"{path} holds a different forecast",
                    expected=f"init times {template.init_time.values[:3]}..., {template.sizes['member']} members, "
                    f"{template.sizes['lead_time']} leads, seed {template.attrs['xkmcast_seed']}",
                    found=f"{dict(existing.sizes)}, seed {existing.attrs.get('xkmcast_seed')}",
                    fix="write to a new path, or delete the old store to start over",
                )
            )
        for key, what in (("xkmcast_model_sha256", "model"), ("xkmcast_settings", "sampler settings")):
            if existing.attrs.get(key) != template.attrs[key]:
                raise XkmcastError(explain(
                    f"{path} was written by another {what}: resuming would mix two in one forecast",
                    expected=f"{key} = {template.attrs[key]}",
                    found=f"{key} = {existing.attrs.get(key, '<not recorded>')}",
                    fix="resume with the model and settings that started it, write to a new path, "
                        "or delete the old store to start over",
                ))
        return existing["completed"].values.astype(bool)
    template.to_zarr(path, compute=False, consolidated=False)
    return np.zeros((template.sizes["init_time"], template.sizes["lead_time"]), bool)
