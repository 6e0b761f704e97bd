"""Which times of the training store train and which validate (:func:`time_split`), from
``data.train_times`` / ``data.valid_times`` (:mod:`xkmcast.train.config_times`) and the fractions.

A window that holds no store time, a recurring window that picks none, or validation windows that
leave no training time are refused with what the store holds (a misspelt year would otherwise drop
a window silently).
"""

from __future__ import annotations

import numpy as np

from ..errors import TimeCoverageError, explain
from .config import DataConfig
from .config_times import RecurringWindow, time_windows

__all__ = ["time_split", "valid_positions", "window_positions"]


def window_positions(index, windows, setting: str) -> np.ndarray:
    """Sorted positions on a time ``index`` inside any of ``windows`` (inclusive); a window
    that holds no store time is refused (a misspelt year would otherwise drop it silently)."""
    parts = []
    for w in windows:
        sl = index.slice_indexer(w.start, w.end)
        positions = np.arange(len(index))[sl]
        if positions.size == 0:
            raise TimeCoverageError(explain(f"data.{setting} window {{start: {w.start}, end: {w.end}}} holds no time "
                                            "of the training store", expected=f"times from {index[0]} to {index[-1]}",
                                            fix=f"correct or remove that window of data.{setting}"))
        parts.append(positions)
    return np.unique(np.concatenate(parts))


def valid_positions(index, positions: np.ndarray, valid_times) -> np.ndarray | None:
    """The positions ``data.valid_times`` names on a time ``index`` (None when it names none): its windows,
    or of the training ``positions`` those its recurring window picks (refused when it picks none)."""
    if isinstance(valid_times, RecurringWindow):
        valid = positions[valid_times.mask(index[positions])]
        if valid.size == 0:
            raise TimeCoverageError(explain(
                f"data.valid_times {valid_times.model_dump()} selects none of the training times",
                found=f"{positions.size} times from {index[positions[0]]} to {index[positions[-1]]}",
                fix="give a longer length or a shorter every, so that the last length of a period holds a time"))
        return valid
    windows = time_windows(valid_times)
    return window_positions(index, windows, "valid_times") if windows else None


def time_split(index, d: DataConfig, forecast: bool):
    """``(train, valid)`` positions on the store's time ``index``: the configured windows (the validation times taken out of the
    training ones; a recurring window ``{every, length}`` picks them among the training times);
    training windows alone give up their last ``valid_fraction`` to validation (when
    they hold at least 4 times); no window: the last ``valid_fraction`` of the store validates.
    ``forecast``: the samples are pairs of consecutive times (validation takes 2 at least)."""
    train_w = time_windows(d.train_times)
    positions = window_positions(index, train_w, "train_times") if train_w else np.arange(len(index))
    valid = valid_positions(index, positions, d.valid_times)
    if valid is not None:
        train = np.setdiff1d(positions, valid)
        if train.size == 0:
            shown = d.valid_times.model_dump() if isinstance(d.valid_times, RecurringWindow) \
                else [w.model_dump() for w in time_windows(d.valid_times)]
            raise TimeCoverageError(explain("No training time is left once the validation times are taken out",
                                            found=f"data.train_times {[w.model_dump() for w in train_w] or '(all)'}, "
                                                  f"data.valid_times {shown}",
                                            fix="give training windows that the validation windows do not cover"))
        return train.tolist(), valid.tolist()
    n = positions.size
    n_valid = int(round(n * d.valid_fraction)) if n >= 4 else 0
    if forecast and d.valid_fraction > 0 and n_valid:
        n_valid = max(n_valid, 2)  # a forecast sample needs two consecutive times
    n_train = max(1, int(round((n - n_valid) * d.train_fraction)))
    train = positions[:n_train].tolist()
    return train, (positions[n - n_valid:].tolist() if n_valid else None)
