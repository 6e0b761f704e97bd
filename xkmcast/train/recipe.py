"""Recipes: one run that trains the regression, then the diffusion on it, and exports one bundle.

``training.stages: [regression, diffusion]`` (the ``corrdiff-cpu`` and ``stormcast-cpu`` presets) turns a
run into two stage runs inside its run directory ``R = <outdir>/<experiment>/<run_id>``::

    R/regression/0/      the regression run (it prepares the training store, R/regression/0/data)
    R/                   the diffusion run on that bundle and store; R/model holds both stages

The total ``training.time_budget`` is shared: ``training.regression_share`` of it (default 0.5) to the
regression, the rest to the diffusion; ``training.duration`` caps each. Running the same command again
resumes both (a finished stage only re-exports). Empty ``data.output_vars`` / ``data.input_vars`` are
filled from the datasets (every canonical variable each one holds: the fine source's are the
outputs, the coarse one's the inputs; a forecast's state is the source's); empty ``data.invariants`` are
the :data:`STATIC` fields the fine source holds, named ones must all be there (ConfigError otherwise). A forecast recipe (``stormcast-cpu``) steps by the
source's time step and is state-only, unless ``data.coarse`` is given: then the coarse variables are
its background and both stages are conditioned on it.

Large grids train on windows: a fine grid of more than ``2 * WINDOW_PIXELS`` pixels, with ``data.patch``
unset, trains on random windows of about ``WINDOW_PIXELS`` pixels (:func:`auto_window`; the regression
with its halo, the diffusion of both recipes as patched diffusion, sampled on overlapping blended
patches), so a step costs about what a 128 x 128 field does whatever the grid: a whole 200 x 400 field
costs the tiny U-Net ~13 s per step of 8 samples on 2 cores (its bottleneck attention is quadratic in
the pixels), a window about 14x less (``bench/bench_large_grid.py``). Of such windows the one whose
blended patches tile the grid best is taken (200 x 400: 112 x 144, 6 patches per denoising step where
the grid's aspect, 80 x 192, needs 9). ``data.patch=[H, W]`` (the whole grid) keeps whole fields.
"""

from __future__ import annotations

import math
import re

from ..errors import ConfigError, explain
from .config import TrainConfig, run_dir, validate

__all__ = ["train_stages", "available_variables", "auto_window", "WINDOW_PIXELS"]

#: the invariants a recipe takes from the fine source when ``data.invariants`` is empty
STATIC = ("orog", "lsm")
#: pixels of a recipe's training window on a large grid (module docstring); grids up to twice this train whole
WINDOW_PIXELS = 128 * 128
#: a window's sides are multiples of this (the normal U-Net halves the grid 4 times: no padding then)
WINDOW_MULTIPLE = 16


def auto_window(shape: tuple[int, int], pixels: int | None = None, multiple: int = WINDOW_MULTIPLE) -> list[int] | None:
    """The training window ``[h, w]`` of a recipe on a grid of ``shape`` (H, W): None (whole fields) when
    ``H * W <= 2 * pixels``; else, of the windows inside the grid with sides multiples of ``multiple``
    and ``pixels / 2 < h w <= pixels``, the one whose blended inference patches
    (:func:`~xkmcast.diffusion.patching.patched_pixels`) cover the grid with the fewest pixels evaluated
    -- the patched diffusion samples on windows of that size, so a window that tiles the grid badly costs
    every denoising step -- ties to the one closest to the grid's aspect. (200, 400) -> [112, 144]: 6
    patches, 1.21 x the field's pixels per step (the aspect's [80, 192]: 9 patches, 1.73 x);
    (180, 360) -> [96, 128]; (100, 1000) -> [32, 512]. ``pixels``: WINDOW_PIXELS."""
    from ..diffusion.patching import patched_pixels

    pixels = WINDOW_PIXELS if pixels is None else int(pixels)
    H, W = (int(n) for n in shape)
    if H * W <= 2 * pixels:
        return None
    heights, widths = ([*range(multiple, n + 1, multiple)] or [n] for n in (H, W))  # a side under `multiple`: whole
    sides = [(h, w) for h in heights for w in widths if pixels / 2 < h * w <= pixels]
    best = min(sides, key=lambda s: (patched_pixels((H, W), s), abs(math.log(s[0] * W / (s[1] * H)))))
    return list(best)


def available_variables(ds, *, static: bool = False) -> list[str]:
    """The canonical variables ``ds`` holds (found by name, alias or standard_name), in the order of
    the table, then those on pressure levels (``z500``: a variable of that name, or ``z`` on a level
    dimension holding 500 hPa); ``static=True``: those without a time dimension (invariants), else those
    with one."""
    from ..errors import MissingVariableError
    from ..fields.grid import find_grid
    from ..fields.variables import _level_dim, _level_values_hpa, _table, canonical_alias, find_variable

    surface, levels = _table()
    names = list(surface)
    for var in ds.data_vars:  # pressure-level variables stored one per level (u500, z850, ...)
        m = re.fullmatch(r"([a-z]+)(\d+)", str(var))
        if m and m.group(1) in levels:
            names.append(str(var))
        base, dim = canonical_alias(str(var), pressure_level=True), _level_dim(ds[var])
        if base is not None and dim is not None and dim in ds[var].coords:  # on a level dim: z (time, pressure, y, x)
            names += [f"{base}{level:g}" for level in _level_values_hpa(ds[var], dim) if float(level).is_integer()]
    try:
        time_dim = find_grid(ds).time_dim
    except Exception:  # noqa: BLE001 - no grid: judge by a dim named time
        time_dim = "time"
    out = []
    for name in names:
        try:
            src = find_variable(ds, name)
        except MissingVariableError:
            continue
        has_time = time_dim is not None and time_dim in ds[src].dims
        if has_time != static and name not in out:
            out.append(name)
    return out


def _fill_variables(cfg: TrainConfig) -> TrainConfig:
    """The configuration with empty variable lists filled from the data (module docstring)."""
    d = cfg.data
    forecast = cfg.model.kind != "corrdiff"
    if d.dataset_class is not None or d.source in (None, "synthetic"):
        return cfg
    from ..data.prepare import open_pair

    fine, coarse = open_pair(d.source, d.coarse, d.coarsen if (d.coarse or d.coarsen) else (1 if forecast else None))
    update, model = {}, {}
    if forecast:
        model = _forecast_settings(cfg, fine, coarse)
        if d.coarse is None and d.coarsen is None:
            update["coarsen"] = 1  # the store needs a coarse part; a state-only model does not read it
        if d.coarse is not None and not d.background_vars:
            update["background_vars"] = [v for v in available_variables(coarse) if v not in STATIC]
    outputs = d.output_vars or [v for v in available_variables(fine) if v not in STATIC]
    if not outputs:
        raise ConfigError(explain("the fine dataset holds no variable xkmcast can name", found=list(fine.data_vars),
                                  fix="set data.output_vars, or rename / add standard_name attributes"))
    update["output_vars"] = outputs
    if forecast:
        update["input_vars"] = d.input_vars or outputs
    else:
        update["input_vars"] = d.input_vars or [v for v in available_variables(coarse) if v not in STATIC]
    statics = set(available_variables(fine, static=True)) | set(available_variables(fine))
    missing = [v for v in d.invariants if v not in statics]
    if missing:
        raise ConfigError(explain(f"data.invariants names {missing}, which data.source does not hold",
                                  expected="fields on the fine grid, with or without a time dim (orog: standard_name "
                                           "surface_altitude or an alias such as HSURF; lsm: land_binary_mask, FR_LAND)",
                                  found=f"{d.source}: {list(fine.data_vars)}",
                                  fix="add them to data.source on its grid (e.g. cropped from the model's "
                                      "orography file), or leave data.invariants empty to use those it holds"))
    update["invariants"] = list(d.invariants) or [v for v in STATIC if v in statics]
    if d.patch is None:
        from ..fields.grid import find_grid

        update["patch"] = auto_window(find_grid(fine).shape)
    if not update["invariants"]:  # no invariant in the data: no invariant condition either
        for field in ("regression_conditions", "diffusion_conditions"):
            model[field] = [c for c in model.get(field, getattr(cfg.model, field)) or [] if c != "invariant"]
    return cfg.model_copy(update={"data": d.model_copy(update=update),
                                  "model": cfg.model.model_copy(update=model)})


def _forecast_settings(cfg: TrainConfig, fine, coarse) -> dict:
    """A forecast recipe's model settings from the data: the time step of the source (unless
    ``model.time_step`` is set) and, when a coarse dataset is given, the background condition."""
    import numpy as np

    from ..fields.grid import find_grid

    out = {}
    if cfg.model.time_step is None:
        time = fine[find_grid(fine).time_dim or "time"].values
        if time.size < 2:
            raise ConfigError(explain("a forecast needs at least two times in data.source", found=time.size))
        step = int(np.median(np.diff(time).astype("timedelta64[s]").astype(np.int64)))
        out["time_step"] = f"{step // 3600}h" if step % 3600 == 0 else f"{step}s"
    if cfg.data.coarse is not None:
        for field in ("regression_conditions", "diffusion_conditions"):
            names = list(getattr(cfg.model, field) or [])
            out[field] = names if "background" in names else ["background", *names]
    return out


def _sub(cfg: TrainConfig, **changes) -> TrainConfig:
    """A validated copy of ``cfg`` with dotted-key ``changes`` (e.g. ``model__stage="diffusion"``)."""
    raw = cfg.model_dump(mode="json", by_alias=True)
    for key, value in changes.items():
        node = raw
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return validate(raw)


def train_stages(cfg: TrainConfig, **kwargs):
    """Train ``cfg.training.stages`` in order (module docstring); returns the diffusion run's result,
    whose bundle ``<run dir>/model`` holds both stages."""
    from .trainer import train

    t = cfg.training
    if list(t.stages) != ["regression", "diffusion"]:
        raise ConfigError(explain("training.stages must be [regression, diffusion] (or unset for one stage)",
                                  found=t.stages))
    cfg = _fill_variables(cfg)
    root = run_dir(cfg)
    budget = t.time_budget
    share = t.regression_share
    reg_cfg = _sub(cfg, model__stage="regression", training__stages=None, training__outdir=str(root),
                   training__experiment="regression", training__run_id="0",
                   training__time_budget=None if budget is None else budget * share)
    reg = train(reg_cfg, **kwargs)
    store = run_dir(reg_cfg) / "data" / "train.zarr"
    source = str(store) if store.exists() else cfg.data.source
    dif_cfg = _sub(cfg, model__stage="diffusion", model__regression_bundle=str(reg.bundle), training__stages=None,
                   data__source=source, training__time_budget=None if budget is None else budget * (1 - share))
    return train(dif_cfg, **kwargs)


def is_recipe(cfg: TrainConfig) -> bool:
    """Does ``cfg`` train several stages in one run?"""
    return bool(cfg.training.stages) and len(cfg.training.stages) > 1
