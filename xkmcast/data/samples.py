"""torch Datasets over a prepared store (see :mod:`xkmcast.data.prepare`), read lazily per index.

* :class:`DownscalingSamples` (CorrDiff): ``{"input": (C_in, H, W), "target": (C_out, H, W),
  "time": int}``; the input channels are the coarse inputs on the fine grid followed by the
  invariants. When the targets have missing values (NaN: outside an observation network's domain,
  over the sea of a land-only analysis), every item also has ``"mask"`` (C_out, H, W), 1 where the
  target has a value and 0 where it is missing, and the missing target values are 0 (the losses and
  the calibrations weigh each pixel by the mask). Items are whole fields: patch-based training cuts
  its random patches from the batch inside the model (:func:`xkmcast.diffusion.patching.random_patches`),
  the one patch path.
* :class:`ForecastSamples` (StormCast / Stormscope): ``{"background": (C_bg, H, W), "state":
  [previous (C, H, W), next (C, H, W)], "invariant": (C_inv, H, W), "time": int}`` for pairs of times
  ``(t, t + k * step)``; a pair is only formed when both times exist, so gaps are skipped. With
  ``lead_time_steps=n`` the pairs of ``k = 1..n`` are all items and ``"lead_time_label" = k - 1``.
  A state is the next step's input: it may not have missing values (InvalidDataError).

Variable names are canonical; the store name is ``input_<v>`` / ``target_<v>`` when present,
otherwise ``<v>`` itself (so any Dataset with the coarse input already on the fine grid works).
Values are float32 tensors, normalised with the store's ``xkmcast_stats`` (or ``stats=`` given, or
computed once at construction when neither exists; ``stats=False`` turns normalisation off).

Speed: a store of at most ``IN_MEMORY_BYTES`` (1 GiB; ``in_memory=`` overrides) is read into memory
once per process on first use, so items are sliced from arrays instead of read chunk by chunk.

Worker safety: a path is opened lazily in each process, on first use, and re-opened when the process
id changes (fork); pickling (spawn) drops the open handle. Items depend only on the index, so any
``num_workers`` and any ``DistributedSampler`` split give the same items.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr

from ..errors import ConfigError, MissingVariableError, TimeCoverageError, explain
from ..fields.calendar import is_calendar_time, time_step, time_text
from .prepare import INPUT_PREFIX, MISSING_ATTR, TARGET_PREFIX, missing_state_error, open_store
from .stats import Stats, as_stats, compute_stats

__all__ = ["DownscalingSamples", "ForecastSamples", "IN_MEMORY_BYTES"]

#: stores up to this size are read into memory once per process (see the module docstring)
IN_MEMORY_BYTES = 1 << 30


class _StoreSamples(torch.utils.data.Dataset):
    """Lazy, fork/spawn-safe access to a store or an in-memory Dataset (shared by both datasets)."""

    def __init__(self, store_or_ds, stats, in_memory: bool | None = None):
        if isinstance(store_or_ds, xr.Dataset):
            self._path, self._mem = None, store_or_ds
        else:
            self._path, self._mem = os.fspath(store_or_ds), None
        self._ds: xr.Dataset | None = None
        self._pid: int | None = None
        self._inv_cache: np.ndarray | None = None
        self._stats_arg = stats
        self._in_memory = in_memory
        self._loading = False  # the metadata handle of __init__ is not loaded

    def _open(self) -> xr.Dataset:
        if self._mem is not None:
            return self._mem
        if self._ds is None or self._pid != os.getpid():
            ds = open_store(self._path)
            keep = self._in_memory if self._in_memory is not None else ds.nbytes <= IN_MEMORY_BYTES
            if keep and self._loading:
                ds = ds.load()
            self._ds, self._pid, self._inv_cache = ds, os.getpid(), None
        return self._ds

    def _close(self) -> None:
        """Close the handle opened for reading metadata in the main process (before any fork); items
        are read through a handle opened afterwards (in memory when the store is small)."""
        if self._path is not None and self._ds is not None:
            self._ds.close()
        self._ds, self._pid, self._inv_cache = None, None, None
        self._loading = True

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_ds=None, _pid=None, _inv_cache=None)
        return state

    @staticmethod
    def _resolve(ds: xr.Dataset, names: Sequence[str], prefix: str, what: str) -> list[str]:
        out, missing = [], []
        for v in names:
            if prefix + v in ds.data_vars:
                out.append(prefix + v)
            elif v in ds.data_vars:
                out.append(v)
            else:
                missing.append(v)
        if missing:
            raise MissingVariableError(explain(f"{what} variables are not in the store", expected=list(names),
                                               found=f"missing {missing}; the store has {list(ds.data_vars)}",
                                               fix="prepare the store with these variables (xkmcast.data.prepare)"))
        return out

    def _init_stats(self, ds: xr.Dataset, names: list[str], t_index: np.ndarray) -> Stats | None:
        stats = self._stats_arg
        if stats is False:
            return None
        if stats is None:
            stats = Stats.from_attrs(ds)
            if stats is None or any(n not in stats for n in names):
                sub = ds[names].isel(time=t_index) if "time" in ds.dims else ds[names]
                stats = compute_stats(sub.chunk() if self._path is not None else sub)
        return as_stats(stats).subset(names)

    def _missing(self, ds: xr.Dataset, names: list[str], t_index: np.ndarray) -> list[str]:
        """The variables of ``names`` with a missing value at the times ``t_index``: counted by
        :func:`~xkmcast.data.prepare.prepare` (its ``xkmcast_missing`` attribute, over all times), else
        looked for here in a Dataset or a store of up to IN_MEMORY_BYTES (a larger store without the
        count, such as a published layout, is taken as complete: a NaN there stops training with a
        non-finite loss)."""
        counts = json.loads(ds.attrs.get(MISSING_ATTR, "{}"))
        if all(n in counts for n in names):
            return [n for n in names if counts[n]]
        if self._path is not None and ds.nbytes > IN_MEMORY_BYTES:
            return []
        sub = ds[names].isel(time=t_index) if "time" in ds.dims else ds[names]
        found = (sub.chunk() if self._path is not None else sub).isnull().any().compute()
        return [n for n in names if bool(found[n])]

    def _read(self, names: Sequence[str], isel: dict) -> np.ndarray:
        ds = self._open()
        return np.stack([np.asarray(ds[n].isel(isel).values, dtype=np.float32) for n in names])

    def _norm(self, arr: np.ndarray, names: Sequence[str]) -> np.ndarray:
        if self.stats is None:
            return arr.astype(np.float32, copy=False)
        return self.stats.normalise(arr, names, axis=0).astype(np.float32, copy=False)

    def _invariants(self, names: Sequence[str]) -> np.ndarray:
        """Normalised invariants ``(C_inv, H, W)``, read once per process."""
        self._open()
        if self._inv_cache is None:
            self._inv_cache = self._norm(self._read(names, {}), names) if names else np.zeros((0, *self.shape), np.float32)
        return self._inv_cache


def _time_positions(ds: xr.Dataset, times) -> np.ndarray:
    """Positions on the store's time axis: None (all), a slice / list of positions or of labels."""
    n = ds.sizes["time"]
    if times is None:
        return np.arange(n)
    index = ds.indexes["time"]
    if isinstance(times, slice):
        if all(isinstance(b, (int, np.integer, type(None))) for b in (times.start, times.stop)):
            return np.arange(n)[times]
        sl = index.slice_indexer(times.start, times.stop, times.step)
        return np.arange(n)[sl]
    items = list(times)
    if all(isinstance(t, (int, np.integer)) for t in items):
        pos = np.asarray(items, int)
        bad = pos[(pos < -n) | (pos >= n)]
    else:
        pos = index.get_indexer(pd.DatetimeIndex(items) if isinstance(index, pd.DatetimeIndex) else items)
        bad = np.asarray(items)[pos < 0]
    if bad.size:
        raise TimeCoverageError(explain("Requested times are not in the store", found=list(bad[:5]),
                                        expected=f"{n} times from {index[0]} to {index[-1]}"))
    return np.asarray(pos) % n


class DownscalingSamples(_StoreSamples):
    """Pairs (coarse input on the fine grid + invariants, fine target), whole fields (one item per time)."""

    def __init__(self, store_or_ds, input_vars: Sequence[str], output_vars: Sequence[str],
                 invariants: Sequence[str] = (), *, stats=None, times=None, in_memory: bool | None = None):
        super().__init__(store_or_ds, stats, in_memory)
        ds = self._open()
        try:
            self.input_names = self._resolve(ds, input_vars, INPUT_PREFIX, "Input")
            self.output_names = self._resolve(ds, output_vars, TARGET_PREFIX, "Output")
            self.invariant_names = self._resolve(ds, invariants, "", "Invariant")
            self.input_vars, self.output_vars, self.invariants = list(input_vars), list(output_vars), list(invariants)
            first = ds[self.output_names[0]]
            self.y_dim, self.x_dim = first.dims[-2:]
            self.shape = (ds.sizes[self.y_dim], ds.sizes[self.x_dim])
            self.times = _time_positions(ds, times)
            self.stats = self._init_stats(ds, [*self.input_names, *self.output_names, *self.invariant_names],
                                          self.times)
            #: the targets have missing values: items carry a "mask" (see the module docstring)
            self.masked = bool(self._missing(ds, self.output_names, self.times))
        finally:
            self._close()

    def valid_pixels(self) -> np.ndarray:
        """``(C_out, H, W)`` bool: the pixels where each target has a value at one of the times at least."""
        ds = self._open()
        try:
            sub = ds[self.output_names].isel(time=self.times)
            return np.stack([np.asarray(sub[n].notnull().any("time").values) for n in self.output_names])
        finally:
            self._close()

    @property
    def input_channels(self) -> list[str]:
        return [*self.input_vars, *self.invariants]

    @property
    def output_channels(self) -> list[str]:
        return list(self.output_vars)

    def image_shape(self) -> tuple[int, int]:
        return self.shape

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        t = int(self.times[index % len(self)])
        sel: dict = {"time": t}
        x = self._norm(self._read(self.input_names, sel), self.input_names)
        y = self._norm(self._read(self.output_names, sel), self.output_names)
        inv = self._invariants(self.invariant_names)
        item = {"input": torch.from_numpy(np.concatenate([x, inv])), "time": t}
        if self.masked:
            valid = np.isfinite(y)
            y = np.where(valid, y, np.float32(0))
            item["mask"] = torch.from_numpy(valid.astype(np.float32))
        return {**item, "target": torch.from_numpy(y)}


class ForecastSamples(_StoreSamples):
    """Consecutive states ``(t, t + k step)`` with background and invariants (StormCast interface).

    ``step``: a time difference (``"1h"``, ``np.timedelta64``, ``pd.Timedelta``) or an int, the
    number of the store's smallest time spacings. ``background_at``: ``"current"`` (time t, the
    default) or ``"next"`` (time t + k step).
    """

    def __init__(self, store_or_ds, state_vars: Sequence[str], background_vars: Sequence[str] = (),
                 invariants: Sequence[str] = (), *, stats=None, step=1, times=None,
                 lead_time_steps: int | None = None, background_at: str = "current",
                 in_memory: bool | None = None):
        super().__init__(store_or_ds, stats, in_memory)
        if background_at not in ("current", "next"):
            raise ConfigError(explain("Unknown background_at", expected=["current", "next"], found=background_at))
        ds = self._open()
        try:
            self.state_names = self._resolve(ds, state_vars, TARGET_PREFIX, "State")
            self.background_names = self._resolve(ds, background_vars, INPUT_PREFIX, "Background")
            self.invariant_names = self._resolve(ds, invariants, "", "Invariant")
            self.state_vars, self.background_vars = list(state_vars), list(background_vars)
            self.invariants = list(invariants)
            first = ds[self.state_names[0]]
            self.y_dim, self.x_dim = first.dims[-2:]
            self.shape = (ds.sizes[self.y_dim], ds.sizes[self.x_dim])
            positions = _time_positions(ds, times)
            values = ds.indexes["time"].values
            self.step = self._step(values, step)
            self.lead_time_steps = lead_time_steps
            self.pairs = self._pairs(values, positions, self.step, lead_time_steps or 1)
            self.time_values = values  # the store's times: pairs hold positions on it
            self.stats = self._init_stats(ds, [*self.state_names, *self.background_names, *self.invariant_names],
                                          positions)
            missing = self._missing(ds, self.state_names, positions)
            gaps = [v for v, n in zip(state_vars, self.state_names) if n in missing]
            if gaps:
                raise missing_state_error(gaps)
        finally:
            self._close()
        self.background_at = background_at
        if not self.pairs:
            given = values[positions]
            spacings = np.unique(np.diff(np.sort(values))) if np.issubdtype(values.dtype, np.datetime64) else []
            # uneven: spacings that are not multiples of the smallest (calendar months, years), not gaps
            ticks = np.asarray(spacings).astype("int64")
            uneven = len(ticks) > 1 and bool((ticks % max(int(ticks[0]), 1)).any())
            raise TimeCoverageError(explain(
                "No pair of times (t, t + step) among the times given"
                + (": the record's times are not evenly spaced, and no two are one step apart" if uneven else ""),
                found=f"step {pd.Timedelta(self.step)}; {len(given)} times"
                      + (f" from {time_text(given[0])} to {time_text(given[-1])}" if len(given) else "")
                      + (f"; spacings from {pd.Timedelta(spacings[0])} to {pd.Timedelta(spacings[-1])}" if uneven else ""),
                fix=("a forecaster steps by a fixed time (model.time_step): calendar months or years are not one; "
                     "to step one record time at a time, label the times at a fixed spacing first (e.g. "
                     "ds.assign_coords(time=pd.date_range(start, periods=n, freq='30D')))") if uneven else
                    "use a smaller step or more times; validation windows (data.valid_times) need two consecutive "
                    "times each: a recurring window's length at least two time steps"))

    @staticmethod
    def _step(values: np.ndarray, step):
        if isinstance(step, (int, np.integer)):
            diffs = np.diff(np.sort(values))
            diffs = diffs[diffs > diffs[0] * 0] if diffs.size else diffs  # the zero of the diffs' type
            if diffs.size == 0:
                raise TimeCoverageError(explain("Need at least two distinct times", found=values.size))
            step = diffs.min() * int(step)
        timed = np.issubdtype(values.dtype, np.datetime64) or is_calendar_time(values)
        return time_step(step, values) if timed else step

    @staticmethod
    def _pairs(values, positions, step, n_lead) -> list[tuple[int, int, int]]:
        """``(i, j, k)``: positions i, j with ``time[j] == time[i] + k step``, k = 1..n_lead."""
        lookup = {v: p for p, v in zip(positions, values[positions])}
        pairs = []
        for k in range(1, n_lead + 1):
            for p in positions:
                q = lookup.get(values[p] + step * k)
                if q is not None:
                    pairs.append((int(p), int(q), k))
        return pairs

    def background_channels(self) -> list[str]:
        return list(self.background_vars)

    def state_channels(self) -> list[str]:
        return list(self.state_vars)

    def image_shape(self) -> tuple[int, int]:
        return self.shape

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        i, j, k = self.pairs[index]
        prev = self._norm(self._read(self.state_names, {"time": i}), self.state_names)
        nxt = self._norm(self._read(self.state_names, {"time": j}), self.state_names)
        if self.background_names:
            tb = i if self.background_at == "current" else j
            bg = self._norm(self._read(self.background_names, {"time": tb}), self.background_names)
        else:
            bg = np.zeros((0, *self.shape), np.float32)
        item = {"background": torch.from_numpy(bg), "state": [torch.from_numpy(prev), torch.from_numpy(nxt)],
                "invariant": torch.from_numpy(self._invariants(self.invariant_names).copy()), "time": i}
        if self.lead_time_steps is not None:
            item["lead_time_label"] = k - 1
        return item

