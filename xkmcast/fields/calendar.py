"""Times of any CF calendar.

Reanalyses and observations decode to numpy ``datetime64`` (the standard, proleptic Gregorian
calendar); climate models often keep their own calendar (CESM and GFDL ``noleap``, HadGEM
``360_day``, ``all_leap``, ``julian``), which xarray decodes to ``cftime`` dates in a
:class:`xarray.CFTimeIndex`. Both are indexes of the same shape of operations (``+ timedelta``,
``get_indexer``, ``slice_indexer``, sets); this module is where xkmcast tells them apart, so that a
time step, a lookup, or a valid time ``t + n dt`` works in the calendar of the data:

- :func:`time_index`: the index of a time axis (``DatetimeIndex`` or ``CFTimeIndex``);
- :func:`time_step` / :func:`time_steps`: a time step (``"1h"``, ``np.timedelta64``, ``pd.Timedelta``)
  or an array of them in the type that adds to those times (``np.timedelta64`` or ``datetime.timedelta``);
- :func:`is_calendar_time`: whether times are ``cftime`` dates; :func:`calendar_name`,
  :func:`same_calendar`, :func:`require_same_calendar`: which calendar, and whether two time axes
  compare;
- :func:`as_gregorian`: times as Gregorian ``datetime64``, for what depends on the Sun (the solar
  zenith angle, the hour of day a published model is given).

A model calendar's day is always 24 h: stepping by hours is exact in all of them; months and years
are not a fixed step in any calendar.
"""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["as_gregorian", "calendar_name", "is_calendar_time", "labels_as", "require_same_calendar", "same_calendar",
           "time_index", "time_step", "time_steps", "time_text"]


def is_calendar_time(values) -> bool:
    """Whether ``values`` (an array, an index, or one time) are ``cftime`` dates of a model calendar."""
    if isinstance(values, xr.CFTimeIndex):
        return True
    array = np.asarray(values)
    if array.dtype != object:  # datetime64, numbers, strings
        return False
    first = array.ravel()[:1]
    return len(first) > 0 and hasattr(first[0], "calendar") and hasattr(first[0], "timetuple")


def time_index(values) -> pd.Index:
    """The index of times ``values``: a :class:`xarray.CFTimeIndex` for ``cftime`` dates, else a
    ``pd.DatetimeIndex``."""
    if isinstance(values, (pd.DatetimeIndex, xr.CFTimeIndex)):
        return values
    values = np.atleast_1d(np.asarray(values))
    return xr.CFTimeIndex(values) if is_calendar_time(values) else pd.DatetimeIndex(values)


def calendar_name(index: pd.Index) -> str:
    """The CF calendar of a time index: a ``CFTimeIndex``'s own, ``"standard"`` for datetime64."""
    return index.calendar if isinstance(index, xr.CFTimeIndex) else "standard"


def same_calendar(a: pd.Index, b: pd.Index) -> bool:
    """Whether the times of indexes ``a`` and ``b`` compare: both datetime64, or ``cftime`` dates of one
    calendar."""
    return type(a) is type(b) and calendar_name(a) == calendar_name(b)


def labels_as(labels, index: pd.Index) -> pd.Index:
    """Time labels (ISO strings, datetime64, datetimes, ``cftime`` dates) as times of ``index``'s kind:
    ``cftime`` dates of its calendar (each read by its date and time fields) or datetime64."""
    if not isinstance(index, xr.CFTimeIndex):
        return pd.DatetimeIndex(labels)

    def one(t):
        if is_calendar_time(t):
            return t
        stamp = pd.Timestamp(t)
        return index.date_type(stamp.year, stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second,
                               stamp.microsecond)

    return xr.CFTimeIndex([one(t) for t in labels])


def require_same_calendar(reference: pd.Index, other: pd.Index, reference_name: str, other_name: str) -> None:
    """TimeCoverageError unless ``other``'s times compare with ``reference``'s (:func:`same_calendar`),
    saying how to convert ``other`` (named ``other_name`` in the fix, as the user's variable)."""
    if same_calendar(reference, other):
        return
    from ..errors import TimeCoverageError, explain

    name = calendar_name(reference)
    raise TimeCoverageError(explain(
        f"The {other_name}'s times are on another calendar than the {reference_name}'s: two calendars do "
        "not compare",
        expected=f"the {reference_name}'s calendar, {name}", found=calendar_name(other),
        fix=f"convert the {other_name}: {other_name}.convert_calendar({name!r}, align_on='date', "
            f"use_cftime={isinstance(reference, xr.CFTimeIndex)})"))


def time_step(step, like) -> np.timedelta64 | datetime.timedelta:
    """``step`` as what adds to times like ``like``: ``datetime.timedelta`` for ``cftime`` dates,
    ``np.timedelta64[ns]`` else."""
    delta = pd.Timedelta(step)
    return delta.to_pytimedelta() if is_calendar_time(like) else delta.to_timedelta64()


def time_steps(steps: np.ndarray, like) -> np.ndarray:
    """timedelta64 ``steps`` as what adds to times like ``like`` (an object array of
    ``datetime.timedelta`` for ``cftime`` dates, else ``steps`` itself)."""
    steps = np.asarray(steps, dtype="timedelta64[ns]")
    return steps.astype("timedelta64[us]").astype(object) if is_calendar_time(like) else steps


def as_gregorian(times) -> np.ndarray:
    """``times`` as ``datetime64`` of the Gregorian calendar (same shape), for what depends on the Sun;
    ``[us]`` for ``cftime`` dates, so that a control run's year 1 or a paleo date fits. A model calendar's date (``noleap``, ``all_leap``, ``360_day``) reads as the same date and time
    of day, the day clamped to the month's length (Feb 29 of a common year, Feb 30 of a 360-day year:
    Feb 28), so that the season and the hour of the model's date are kept (within two days of the
    year); a ``julian`` date is converted to the same instant."""
    if not is_calendar_time(times):
        return np.asarray(times, dtype="datetime64[ns]")
    import calendar

    import cftime

    flat = np.asarray(times, dtype=object).ravel()
    out = np.empty(flat.size, dtype="datetime64[us]")
    for i, t in enumerate(flat):
        if t.calendar == "julian":
            since = cftime.date2num(t, "microseconds since 2000-01-01 12:00:00", calendar="julian")
            out[i] = _JULIAN_2000 + np.timedelta64(int(since), "us")
        else:
            day = min(t.day, calendar.monthrange(t.year, t.month)[1])
            out[i] = np.datetime64(datetime.datetime(t.year, t.month, day, t.hour, t.minute, t.second,
                                                     t.microsecond), "us")
    return out.reshape(np.shape(times))


#: 2000-01-01 12:00 of the Julian calendar on the Gregorian one (13 days later than the Gregorian date)
_JULIAN_2000 = np.datetime64("2000-01-14T12:00:00", "us")


def time_text(t) -> str:
    """One time as text, ``2005-02-28 06:00:00`` (``2005-02-30 06:00:00`` in a 360-day calendar)."""
    return str(t) if is_calendar_time(t) else str(pd.Timestamp(t))
