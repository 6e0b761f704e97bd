"""Building a run from its configuration: datasets, statistics, grid and the pipeline.

``build_run(cfg)`` gives ``(pipeline, train, valid)``: the training store is ``data.source`` when it
is a prepared store, else it is prepared once (rank 0) into ``<run dir>/data/train.zarr`` from the
fine source and its coarse twin; statistics come from the store, one set per role (``input``,
``output``, ``background``, ``invariant``: the same variable has other statistics as a coarse input
than as the fine target); the pipeline's spec comes from the spec factories of
:mod:`xkmcast.models`. A diffusion run starts from its regression bundle (frozen, with its
statistics, grid and invariants).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, explain
from . import distributed as D
from .config import TrainConfig, run_dir, time_windows
from .time_split import time_split

__all__ = ["RunData", "build_run", "build_datasets", "build_pipeline_for", "seed_everything"]


@dataclasses.dataclass
class RunData:
    """The datasets of a run and what the model spec needs to know about them."""

    train: Any
    valid: Any
    stats: dict[str, Any] | None = None  # role -> xkmcast.data.stats.Stats keyed by canonical names
    shape: tuple[int, int] | None = None
    store: Any = None  # the xarray Dataset of the training store (grid, invariants), if any
    state_vars: list[str] | None = None  # channel names a user dataset class reports
    background_vars: list[str] | None = None


def build_run(cfg: TrainConfig, pipeline=None, train_data=None, valid_data=None, env: D.DistEnv | None = None):
    """``(pipeline, train, valid)`` for ``cfg``: what is not given is built from the configuration."""
    base = _regression_base(cfg)
    data = RunData(train_data, valid_data)
    if train_data is None:
        data = build_datasets(cfg, base.spec.stats if base is not None else None, env or D.DistEnv())
    if pipeline is None:
        pipeline = build_pipeline_for(cfg, data, base)
    return pipeline, data.train, data.valid


def _forecast(cfg: TrainConfig) -> bool:
    """The run's kind steps a state forward (else it downscales)."""
    from ..models.kinds import get_kind

    return get_kind(cfg.model.kind).forecast


def _regression_base(cfg: TrainConfig):
    """The regression bundle a diffusion run builds on (loaded, frozen), or None."""
    m = cfg.model
    if m.stage != "diffusion" or not m.regression_bundle:
        return None
    from ..models.bundle import load_bundle

    return load_bundle(m.regression_bundle)


def _import_class(path: str):
    import importlib

    module, _, name = path.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(explain(f"cannot import data.dataset_class {path!r}", found=str(exc),
                                  fix="give 'package.module:Class' importable from this Python")) from exc
    return obj


def build_datasets(cfg: TrainConfig, stats: dict | None, env: D.DistEnv) -> RunData:
    """Training / validation datasets of ``cfg.data`` (a user class, or a prepared training store)."""
    d = cfg.data
    if d.dataset_class is not None:
        return _user_datasets(cfg, stats)
    from ..data.prepare import open_store
    from ..data.samples import DownscalingSamples, ForecastSamples

    store_path = _training_store(cfg, env)
    ds = open_store(store_path)
    _check_invariants(d.invariants, [v for v in d.invariants if v not in ds.data_vars], str(store_path))
    train_t, valid_t = time_split(ds.indexes["time"], cfg.data, _forecast(cfg))
    roles = _role_stats(ds, cfg, stats, train_t)
    if not _forecast(cfg):
        args = (store_path, d.input_vars, d.output_vars, d.invariants)
        store_stats = _store_stats(roles, "input", d.input_vars, d.output_vars, d.invariants)
        train = DownscalingSamples(*args, stats=store_stats, times=train_t)
        valid = DownscalingSamples(*args, stats=store_stats, times=valid_t) if valid_t else None
    else:
        state = d.output_vars or d.input_vars
        args = (store_path, state, d.background_vars, d.invariants)
        store_stats = _store_stats(roles, "background", d.background_vars, state, d.invariants)
        step = cfg.model.time_step or 1
        train = ForecastSamples(*args, stats=store_stats, times=train_t, step=step)
        valid = ForecastSamples(*args, stats=store_stats, times=valid_t, step=step) if valid_t else None
    return RunData(train, valid, roles, tuple(train.shape), ds)


def _user_datasets(cfg: TrainConfig, stats: dict | None) -> RunData:
    """A user class with the StormCast sample interface (``image_shape()``, ``state_channels()``,
    ``background_channels()``; items already normalised). Its ``stats`` attribute (Stats by role, or
    their JSON) goes into the model; without it the model records identity statistics, i.e. it expects
    normalised inputs at inference too."""
    from ..data.stats import Stats

    d = cfg.data
    cls = _import_class(d.dataset_class)
    train = cls(split="train", **d.params)
    try:
        valid = cls(split="valid", **d.params)
    except (ValueError, KeyError):
        valid = None
    for method in ("image_shape", "state_channels", "background_channels"):
        if not callable(getattr(train, method, None)):
            raise ConfigError(explain(f"data.dataset_class {d.dataset_class!r} lacks {method}()",
                                      expected="the StormCast sample interface: __len__, __getitem__, image_shape(), "
                                      "state_channels(), background_channels()", found=type(train).__name__))
    state, background = list(train.state_channels()), list(train.background_channels())
    own = stats or getattr(train, "stats", None)
    if own:
        roles = {r: (s if isinstance(s, Stats) else Stats.from_dict(s)) for r, s in own.items()}
    else:
        def identity(names):
            return Stats({n: 0.0 for n in names}, {n: 1.0 for n in names})

        roles = {"input": identity(state), "output": identity(state), "background": identity(background),
                 "invariant": identity(d.invariants)}
    return RunData(train, valid, roles, tuple(int(n) for n in train.image_shape()),
                   state_vars=state, background_vars=background)


def _training_store(cfg: TrainConfig, env: D.DistEnv) -> Path:
    """The prepared store of the run: ``data.source`` itself when it is one, else prepared (rank 0)
    into ``<run dir>/data/train.zarr`` from the fine source and its coarse twin, with the recipe it
    was built from (:mod:`xkmcast.train.store_recipe`), checked when the run directory is reused."""
    from ..data.layouts import is_zarr_store
    from ..data.prepare import open_store

    d = cfg.data
    src = Path(d.source) if d.source not in (None, "synthetic") else None
    if src is not None and is_zarr_store(src) and open_store(src).attrs.get("xkmcast_store"):  # stores are zarr
        _check_store_transforms(open_store(src), d.transforms)
        return src
    from .store_recipe import check_recipe, store_recipe, write_recipe

    out = run_dir(cfg) / "data" / "train.zarr"
    recipe = store_recipe(d)
    if out.exists():
        check_recipe(out, recipe)  # a changed data config: refuse rather than train on the old store
    if env.is_main and not out.exists():
        fine, coarse = _fine_and_coarse(cfg)
        _check_invariants(d.invariants, _missing_variables(fine, d.invariants), str(d.source))
        from ..data.prepare import prepare

        forecast = _forecast(cfg)
        inputs = d.background_vars if forecast else d.input_vars
        outputs = (d.output_vars or d.input_vars) if forecast else d.output_vars
        # prepare() needs at least one coarse input; a forecast without background stores an unused one
        inputs = inputs or outputs[:1]
        # the statistics of one training window are the store's own; other splits compute theirs (_role_stats)
        windows = time_windows(d.train_times)
        stats_times = slice(windows[0].start, windows[0].end) if len(windows) == 1 else None
        prepare(fine, coarse, out, input_vars=inputs, output_vars=outputs, invariants=d.invariants,
                regrid_method=d.regrid_method, regrid_options=d.regrid_options, stats_times=stats_times,
                transforms=d.transforms, states=forecast)
        write_recipe(out, recipe)
    D.barrier(env)
    return out


def _missing_variables(ds, names) -> list[str]:
    """The canonical ``names`` that ``ds`` does not hold (by name, alias or CF standard_name)."""
    from ..errors import MissingVariableError
    from ..fields.variables import select_variables

    missing = []
    for name in names:
        try:
            select_variables(ds, [name])
        except MissingVariableError:
            missing.append(name)
    return missing


def _check_invariants(wanted, missing, source: str) -> None:
    """ConfigError naming ``data.invariants`` when the data lacks some of them (a preset's defaults,
    orog / lsm, are often absent from a user's own data)."""
    if missing:
        keep = [v for v in wanted if v not in missing]
        raise ConfigError(explain(
            f"The invariants {missing} of data.invariants are not in the data",
            expected=f"data.invariants {list(wanted)} (the preset's default) in {source}",
            found=f"missing {missing}",
            fix=f"train without them: data.invariants={keep} (e.g. data.invariants=[]), or add them to the data",
        ))


def _check_store_transforms(store, transforms: dict[str, str]) -> None:
    """A prepared store given as data.source must hold the data.transforms asked for (its statistics
    were computed with its own); ConfigError naming the difference otherwise."""
    from ..data.prepare import TARGET_PREFIX
    from ..data.stats import Stats

    stats = Stats.from_attrs(store)
    if stats is None or not transforms:
        return
    have = {n[len(TARGET_PREFIX):]: stats.transform_of(n) for n in stats.names if n.startswith(TARGET_PREFIX)}
    wrong = {v: have.get(v, "none") for v, t in transforms.items() if have.get(v, "none") != t}
    if wrong:
        raise ConfigError(explain("The prepared store was made with other transforms", expected=transforms,
                                  found=f"the store's: {wrong}",
                                  fix="prepare the store again with these transforms (xkmcast prepare --transform), "
                                      "or drop data.transforms"))


def _fine_and_coarse(cfg: TrainConfig):
    d = cfg.data
    if d.source == "synthetic":
        from ..data.synthetic import synthetic_pair

        coarse, fine = synthetic_pair(**d.params)
        return fine, coarse
    from ..data.prepare import open_pair

    return open_pair(d.source, d.coarse, d.coarsen)


def _role_stats(ds, cfg: TrainConfig, given: dict | None, train_times=None) -> dict[str, Any]:
    """Statistics per role (canonical names): the regression bundle's, else those of the store over
    the training times ``train_times`` (the store's own when they cover exactly these times, else
    computed here: no validation or evaluation time enters the normalisation)."""
    from ..data.prepare import STATS_TIMES_ATTR, select_times, split_stats, times_fingerprint
    from ..data.stats import Stats, compute_stats

    if given:
        return {role: Stats.from_dict(doc) for role, doc in given.items()}
    d = cfg.data
    forecast = _forecast(cfg)
    inputs = d.background_vars if forecast else d.input_vars
    outputs = (d.output_vars or d.input_vars) if forecast else d.output_vars
    store = Stats.from_attrs(ds)
    train = select_times(ds, train_times)
    covered = ds.attrs.get(STATS_TIMES_ATTR)
    covered = json.loads(covered) if covered else times_fingerprint(ds["time"])
    if store is None or covered != times_fingerprint(train["time"]):
        names = list(store.names) if store is not None else None
        logs = {n: e for n, e in store.log_eps.items()} if store is not None else {}
        store = compute_stats(train, names, log_vars=logs)
    coarse, fine = split_stats(store, inputs, outputs, d.invariants)
    roles = {"output": fine, "invariant": coarse.subset(d.invariants)}
    if forecast:  # the state is both the input and the output
        roles.update(input=fine, background=coarse.subset(d.background_vars))
    else:
        roles["input"] = coarse.subset(inputs)
    return roles


def _store_stats(roles: dict[str, Any], coarse_role: str, inputs, outputs, invariants):
    """Statistics keyed by the store's names (``input_<v>``, ``target_<v>``, invariants)."""
    from ..data.prepare import INPUT_PREFIX, TARGET_PREFIX

    parts = [roles[coarse_role].subset(inputs).rename({v: INPUT_PREFIX + v for v in inputs}),
             roles["output"].subset(outputs).rename({v: TARGET_PREFIX + v for v in outputs}),
             roles["invariant"].subset(invariants)]
    out = parts[0]
    for part in parts[1:]:
        out = out.merge(part)
    return out


def build_pipeline_for(cfg: TrainConfig, data: RunData, base=None):
    """A fresh pipeline for the run (its spec from the config and the data); a diffusion run copies
    the regression stage, statistics, grid and invariants of ``base`` (frozen)."""
    from .. import models

    spec = _spec(cfg, data, base)
    pipeline = models.build_pipeline(spec)
    if base is not None:
        pipeline.stages["regression"].load_state_dict(base.stages["regression"].state_dict())
        for name, buf in base.named_buffers(recurse=False):
            getattr(pipeline, name).resize_(buf.shape).copy_(buf)
    elif data.store is not None:
        _attach_grid(pipeline, data, cfg)
    if base is None and getattr(data.train, "masked", False) and hasattr(pipeline, "output_valid"):
        valid = torch.from_numpy(data.train.valid_pixels().astype("float32"))
        pipeline.output_valid.resize_(valid.shape).copy_(valid)
    if cfg.model.stage == "regression" and cfg.model.mean_detail and pipeline.spec.extra.get("input_skip") \
            and hasattr(pipeline, "mean_detail"):
        _attach_mean_detail(pipeline, data)
    weighting = cfg.model.loss.channel_weights
    if weighting == "auto":
        weighting = "balanced" if pipeline.model_kind.balanced_regression else None
    if cfg.model.stage == "regression" and weighting == "balanced" and pipeline.spec.extra.get("input_skip"):
        from .loss_weights import balanced_channel_weights

        weights = balanced_channel_weights(pipeline, data.train)
        if weights is not None:
            pipeline.spec.loss["channel_weights"] = weights
    if cfg.model.stage == "diffusion" and pipeline.diffuses_residual:
        from .spread import residual_scale

        scale = residual_scale(pipeline, data.train, cfg.model.residual_scale)
        if scale is not None:
            pipeline.spec.extra["residual_scale"] = scale
        if "regression" in pipeline.stages:  # members centred on the regression mean
            pipeline.spec.extra["centre_members"] = bool(cfg.model.centre_members)
    return pipeline


def _attach_mean_detail(pipeline, data: RunData) -> None:
    """The CorrDiff regression's training-mean fine detail (:mod:`xkmcast.train.mean_detail`) in its
    ``mean_detail`` buffer, its weights per output variable in ``spec.extra["mean_detail_weights"]``."""
    from .mean_detail import mean_detail

    found = mean_detail(pipeline, data.train, data.valid)
    if found is not None:
        detail, weights = found
        pipeline.mean_detail.resize_(detail.shape).copy_(detail)
        pipeline.spec.extra["mean_detail_weights"] = dict(zip(pipeline.spec.output_vars, weights))


def _spec(cfg: TrainConfig, data: RunData, base):
    """The spec of the run (:func:`xkmcast.models.specs.spec_from_config`), with the statistics of the
    data, or the regression stage, statistics and grid of ``base``."""
    from ..models.specs import spec_from_config
    from .run_checks import check_base_grid, check_network_overrides

    d = cfg.data
    shape = tuple(data.shape or base.spec.grid["shape"])
    if data.state_vars is not None:  # a user dataset class names its channels
        d = d.model_copy(update={"output_vars": d.output_vars or data.state_vars,
                                 "background_vars": d.background_vars or data.background_vars})
    if base is not None and data.shape is not None:
        check_base_grid(base, data.shape, data.store, cfg.model.regression_bundle)
    spec = spec_from_config(cfg.model, d, shape)
    check_network_overrides(spec, cfg.model.network, skip=("regression",) if base is not None else ())
    if base is not None:
        spec.networks["regression"] = base.spec.networks["regression"]
        spec.stats, spec.grid = base.spec.stats, base.spec.grid
        spec.extra["input_skip"] = bool(base.spec.extra.get("input_skip", False))  # how the regression was trained
    elif data.stats is not None:
        spec.stats = {role: stats.to_dict() for role, stats in data.stats.items()}
    return spec


def _attach_grid(pipeline, data: RunData, cfg: TrainConfig) -> None:
    """The model grid (lat / lon buffers, ``spec.grid``) and normalised invariants from the store."""
    import numpy as np

    from ..fields.grid import find_grid

    ds = data.store
    g = find_grid(ds)
    pipeline.set_grid(g.lat, g.lon, **g.model_info(), regrid=_store_regrid(ds, cfg))
    inv = cfg.data.invariants if pipeline.spec.invariant_vars else []
    if inv:
        fields = np.stack([np.asarray(ds[v].values, dtype=np.float64) for v in inv])
        normed = data.stats["invariant"].normalise(fields, inv, axis=0).astype(np.float32)
        t = torch.from_numpy(np.ascontiguousarray(normed))
        pipeline.invariant.resize_(t.shape).copy_(t)


def _store_regrid(ds, cfg: TrainConfig) -> dict:
    """How the store's inputs were regridded (its ``regrid_method`` / ``regrid_options`` attributes,
    else the config's): the bundle records it and ``downscale`` uses it by default."""
    import json

    method = ds.attrs.get("regrid_method", cfg.data.regrid_method)
    options = ds.attrs.get("regrid_options")
    options = json.loads(options) if isinstance(options, str) else dict(cfg.data.regrid_options)
    return {"method": str(method), "options": options}


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's ``random``."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
