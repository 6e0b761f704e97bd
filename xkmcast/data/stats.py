"""Normalisation statistics: computed lazily with dask in one pass, stored as JSON, applied both ways.

For each variable ``v`` with values ``x``:

* plain variables:   ``n = (x - mean_v) / std_v``,  inverse ``x = n std_v + mean_v``;
* transformed variables (precipitation-like; ``transforms`` / ``log_eps`` set): first
  ``z = T_v(x)`` (:mod:`xkmcast.fields.transforms`: ``log1p(max(x, 0) / eps_v)``, ``sqrt(max(x, 0))``),
  then ``n = (z - mean_v) / std_v`` where ``mean_v`` / ``std_v`` are those of ``z``; inverse
  ``x = T_v^-1(n std_v + mean_v)``. The transforms are monotonic and exactly invertible for
  ``x >= 0``; they compress heavy tails (log1p: near-linear for ``x << eps``).

Every inverse is clipped to the variable's physical range (:func:`xkmcast.fields.transforms.clip_physical`:
``valid_min`` / ``valid_max`` of the variables table for canonical names, and the transform's
domain), so denormalised model outputs never leave it (no negative precipitation).

``std`` is the population standard deviation (ddof = 0, as ``numpy.std``) over ``dims`` (default:
all dims of each variable, e.g. time, y, x). A constant variable has ``std = 0``; normalising it
divides by 1 instead (it becomes ``x - mean = 0``).

JSON layout (``Stats.to_json``; the same mapping is ``ModelSpec.stats`` and the ``xkmcast_stats``
attribute of prepared stores and opened layouts)::

    {"t2m": {"mean": 288.1, "std": 7.2},
     "tp":  {"mean": 0.31, "std": 0.62, "transform": "log1p", "eps": 0.1},
     "q":   {"mean": 0.07, "std": 0.03, "transform": "sqrt"}}

Every function taking statistics accepts a :class:`Stats`, such a mapping, JSON text or a JSON path.

numpy / xarray / dask only: nothing here knows of torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import xarray as xr

from ..errors import InvalidDataError, MissingVariableError, explain
from ..fields.transforms import TRANSFORMS, clip_physical, get_transform

__all__ = ["Stats", "as_stats", "compute_stats", "normalise", "denormalise", "normalise_array",
           "denormalise_array", "stats_graph", "DEFAULT_LOG_EPS", "STATS_ATTR"]

#: default ``eps`` of the log transform, in the variable's units (kg m-2 for precipitation)
DEFAULT_LOG_EPS = 0.1
#: the Dataset / store attribute holding the statistics as JSON
STATS_ATTR = "xkmcast_stats"


@dataclasses.dataclass
class Stats:
    """Per-variable ``mean`` / ``std`` (of the transformed values), the transform of each transformed
    variable (``transforms``; a variable in ``log_eps`` alone is ``log1p``) and the log1p ``eps``."""

    mean: dict[str, float]
    std: dict[str, float]
    log_eps: dict[str, float] = dataclasses.field(default_factory=dict)
    transforms: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.transforms = {**{n: "log1p" for n in self.log_eps}, **{n: get_transform(t).name for n, t in
                                                                    self.transforms.items()}}
        self.transforms = {n: t for n, t in self.transforms.items() if t != "none"}
        missing = [n for n, t in self.transforms.items() if t == "log1p" and n not in self.log_eps]
        self.log_eps = {**self.log_eps, **{n: DEFAULT_LOG_EPS for n in missing}}

    def transform_of(self, name: str) -> str:
        """The transform name of ``name`` (``none`` when untransformed)."""
        return self.transforms.get(name, "none")

    # ----------------------------------------------------------------------------- container
    @property
    def names(self) -> list[str]:
        return list(self.mean)

    def __contains__(self, name: str) -> bool:
        return name in self.mean

    def subset(self, names: Iterable[str]) -> Stats:
        """The statistics of ``names`` only (MissingVariableError for unknown names)."""
        names = list(names)
        self._check(names)
        return Stats({n: self.mean[n] for n in names}, {n: self.std[n] for n in names},
                     {n: self.log_eps[n] for n in names if n in self.log_eps},
                     {n: self.transforms[n] for n in names if n in self.transforms})

    def rename(self, mapping: Mapping[str, str]) -> Stats:
        """The same statistics under new names (``{old: new}``; names not in ``mapping`` are kept)."""
        r = lambda n: mapping.get(n, n)  # noqa: E731
        return Stats({r(n): v for n, v in self.mean.items()}, {r(n): v for n, v in self.std.items()},
                     {r(n): v for n, v in self.log_eps.items()}, {r(n): v for n, v in self.transforms.items()})

    def merge(self, other: Stats) -> Stats:
        """Union of two sets of statistics (``other`` wins on shared names)."""
        return Stats({**self.mean, **other.mean}, {**self.std, **other.std}, {**self.log_eps, **other.log_eps},
                     {**self.transforms, **other.transforms})

    def arrays(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, safe_std, eps)`` as float64 arrays ``(C,)`` in the order of ``names``; eps 0 = no log."""
        self._check(names)
        mean = np.array([self.mean[n] for n in names], float)
        std = np.array([self.std[n] if self.std[n] > 0 else 1.0 for n in names], float)
        eps = np.array([self.log_eps.get(n, 0.0) for n in names], float)
        return mean, std, eps

    def _check(self, names: Iterable[str]) -> None:
        missing = [n for n in names if n not in self.mean]
        if missing:
            raise MissingVariableError(explain("No normalisation statistics for these variables",
                                               expected=list(names), found=f"missing {missing}; have {self.names}",
                                               fix="recompute the statistics including them (compute_stats)"))

    # ----------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        """``{var: {"mean", "std"[, "transform"[, "eps"]]}}`` (module docstring)."""
        out = {}
        for n in self.mean:
            entry = {"mean": float(self.mean[n]), "std": float(self.std[n])}
            if n in self.transforms:
                entry["transform"] = self.transforms[n]
            if self.transform_of(n) == "log1p":
                entry["eps"] = float(self.log_eps[n])
            out[n] = entry
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> Stats:
        bad = [n for n, e in d.items() if not (isinstance(e, Mapping) and "mean" in e and "std" in e)]
        transforms = {n: e.get("transform", "none") for n, e in d.items() if n not in bad}
        bad += [n for n, t in transforms.items() if t not in (*TRANSFORMS, None)]
        if bad:
            raise InvalidDataError(explain("Malformed normalisation statistics",
                                           expected=f'{{var: {{"mean": m, "std": s[, "transform": one of {sorted(TRANSFORMS)}, "eps": e]}}}}',
                                           found=f"entries {bad[:5]}: {str({n: d[n] for n in bad[:2]})[:200]}"))
        return cls({n: float(e["mean"]) for n, e in d.items()}, {n: float(e["std"]) for n, e in d.items()},
                   {n: float(e.get("eps", DEFAULT_LOG_EPS)) for n, e in d.items() if e.get("transform") == "log1p"},
                   {n: t for n, t in transforms.items() if t not in ("none", None)})

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> Stats:
        """Read JSON text or a JSON file."""
        s = str(text_or_path)
        if not s.lstrip().startswith("{"):
            with open(s) as f:
                s = f.read()
        return cls.from_dict(json.loads(s))

    @classmethod
    def from_attrs(cls, ds: xr.Dataset) -> Stats | None:
        """The statistics kept in ``ds.attrs["xkmcast_stats"]``, or None."""
        text = ds.attrs.get(STATS_ATTR)
        return cls.from_json(text) if text else None

    # ----------------------------------------------------------------------------- apply
    def normalise(self, obj, names: Sequence[str] | None = None, axis: int = 0):
        """Normalise a Dataset (per variable), a named DataArray, or an array with channels on ``axis``."""
        return _apply(self, obj, names, axis, inverse=False)

    def denormalise(self, obj, names: Sequence[str] | None = None, axis: int = 0):
        """Inverse of :meth:`normalise`."""
        return _apply(self, obj, names, axis, inverse=True)


def _forward(x, mean, std, eps, transform, name):
    """Array kernel: transform then standardise (works on numpy, dask and xarray objects)."""
    return (get_transform(transform).forward(x, eps) - mean) / std


def _inverse(n, mean, std, eps, transform, name):
    """Array kernel: unstandardise, invert the transform, clip to the physical range."""
    return clip_physical(get_transform(transform).inverse(n * std + mean, eps), name, transform)


def _apply(stats: Stats, obj, names, axis: int, inverse: bool):
    kernel = _inverse if inverse else _forward
    if isinstance(obj, xr.Dataset):
        names = list(obj.data_vars) if names is None else list(names)
        mean, std, eps = stats.arrays(names)
        out = obj.copy()
        for n, m, s, e in zip(names, mean, std, eps):
            out[n] = kernel(obj[n], m, s, e, stats.transform_of(n), n).astype(obj[n].dtype, copy=False)
            out[n].attrs = dict(obj[n].attrs)
        return out
    if isinstance(obj, xr.DataArray):
        name = obj.name if names is None else names[0]
        mean, std, eps = stats.arrays([name])
        out = kernel(obj, mean[0], std[0], eps[0], stats.transform_of(name), name).astype(obj.dtype, copy=False)
        out.attrs = dict(obj.attrs)
        return out
    arr = np.asarray(obj)
    if names is None:
        raise InvalidDataError(explain("Normalising a plain array needs the channel names",
                                       fix="pass names=[...] listing the channels along `axis`"))
    names = list(names)
    if arr.shape[axis] != len(names):
        raise InvalidDataError(explain(f"The array has {arr.shape[axis]} channels on axis {axis}",
                                       expected=f"{len(names)} channels {names}", found=arr.shape))
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32
    out = np.empty(arr.shape, dtype=dtype)
    for i, (n, m, s, e) in enumerate(zip(names, *stats.arrays(names))):
        idx = [slice(None)] * arr.ndim
        idx[axis] = i
        # python floats keep float32 data in float32 (NEP 50); float64 data stays float64
        out[tuple(idx)] = kernel(arr[tuple(idx)].astype(dtype, copy=False), float(m), float(s), float(e),
                                 stats.transform_of(n), n)
    return out


def as_stats(stats) -> Stats:
    """A :class:`Stats` from a Stats, a ``{var: {"mean", "std", ...}}`` mapping, JSON text or a path."""
    if isinstance(stats, Stats):
        return stats
    if isinstance(stats, Mapping):
        return Stats.from_dict(stats)
    if isinstance(stats, (str, os.PathLike)):
        return Stats.from_json(stats)
    raise InvalidDataError(explain("Cannot read normalisation statistics from this object",
                                   expected="Stats, a mapping, JSON text or a JSON file path",
                                   found=type(stats).__name__))


def normalise(obj, stats, names: Sequence[str] | None = None, axis: int = 0):
    """Normalise ``obj`` (Dataset: each variable by name; named DataArray; or array with channels
    ``names`` on ``axis``) with ``stats`` (anything :func:`as_stats` reads). Lazy on dask input."""
    return as_stats(stats).normalise(obj, names, axis)


def denormalise(obj, stats, names: Sequence[str] | None = None, axis: int = 0):
    """Inverse of :func:`normalise`."""
    return as_stats(stats).denormalise(obj, names, axis)


def normalise_array(arr, names: Sequence[str], stats, channel_axis: int = 0) -> np.ndarray:
    """Normalise a numpy array whose ``channel_axis`` holds the channels ``names``."""
    return as_stats(stats).normalise(arr, names, channel_axis)


def denormalise_array(arr, names: Sequence[str], stats, channel_axis: int = 0) -> np.ndarray:
    """Physical values of a normalised numpy array whose ``channel_axis`` holds the channels ``names``."""
    return as_stats(stats).denormalise(arr, names, channel_axis)


def compute_stats(ds: xr.Dataset, variables: Sequence[str] | None = None, *, dims: Sequence[str] | None = None,
                  log_vars: Iterable[str] | Mapping[str, float] = (), eps: float = DEFAULT_LOG_EPS,
                  transforms: Mapping[str, str] | None = None) -> Stats:
    """Mean and std of each variable over ``dims`` (default: all its dims) in ONE dask compute,
    of the transformed values for transformed variables.

    ``transforms`` maps variables to a transform name (:mod:`xkmcast.fields.transforms`); ``log_vars`` names
    variables under ``log1p(x/eps)`` (a mapping gives each its own ``eps``; also the eps of
    ``log1p`` entries of ``transforms``). Accumulates in float64. NaNs are skipped.
    """
    import dask

    graph, finish = stats_graph(ds, variables, dims=dims, log_vars=log_vars, eps=eps, transforms=transforms)
    (values,) = dask.compute(graph)
    return finish(values)


def stats_graph(ds: xr.Dataset, variables: Sequence[str] | None = None, *, dims: Sequence[str] | None = None,
                log_vars: Iterable[str] | Mapping[str, float] = (), eps: float = DEFAULT_LOG_EPS,
                transforms: Mapping[str, str] | None = None) -> tuple[dict, Callable[[dict], Stats]]:
    """``(lazy moments, finish)`` of :func:`compute_stats` (same arguments): compute the lazy moments
    with other reductions of the same data in one ``dask.compute``, then ``finish(computed)`` is the
    :class:`Stats`."""
    variables = list(ds.data_vars) if variables is None else list(variables)
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise MissingVariableError(explain("Cannot compute statistics of absent variables",
                                           expected=variables, found=f"missing {missing}; have {list(ds.data_vars)}"))
    log_eps = dict(log_vars) if isinstance(log_vars, Mapping) else {v: float(eps) for v in log_vars}
    named = {v: get_transform(t).name for v, t in (transforms or {}).items()}
    log_eps.update({v: float(eps) for v, t in named.items() if t == "log1p" and v not in log_eps})
    unknown = [v for v in [*log_eps, *named] if v not in variables]
    if unknown:
        raise MissingVariableError(explain("transformed variables must be among the variables", expected=variables,
                                           found=unknown))
    kinds = {**{v: "log1p" for v in log_eps}, **named}
    lazy = {}
    for v in variables:
        x = ds[v].astype("float64")
        if v in kinds:
            x = get_transform(kinds[v]).forward(x, log_eps.get(v, eps))
        d = [k for k in (dims or x.dims) if k in x.dims]
        lazy[v] = (x.mean(d).data, x.std(d).data)

    def finish(values: dict) -> Stats:
        return Stats({v: float(values[v][0]) for v in variables}, {v: float(values[v][1]) for v in variables},
                     log_eps, kinds)

    return lazy, finish
