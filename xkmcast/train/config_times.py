"""The training and validation times of a run's configuration (``data.train_times``,
``data.valid_times``): inclusive windows ``{start, end}`` (:class:`TimeRange`, one or a list; a bare
time ``2017-01-02T00:00`` is the window of that time alone, a bare partial one ``2005-08`` that month,
``2005-01..2005-08`` or ``2005-01/2005-08`` the months January to August), or for
validation spread over the record a recurring window ``{every: 4D, length: 1D}``
(:class:`RecurringWindow`: the last day of every four). :mod:`xkmcast.train.setup` applies them.
"""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Discriminator, Tag, field_validator, model_validator

__all__ = ["RANGE", "split_range", "StrictModel", "TimeRange", "TimeWindows", "RecurringWindow", "ValidTimes",
           "time_windows"]


class StrictModel(BaseModel):
    """A configuration section: unknown keys are errors (with the nearest valid key: :mod:`xkmcast.train.config`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


#: a time range as text: ``START..END`` (the command line's ``--times`` too) or ISO 8601's ``START/END``;
#: either end may be empty (open)
RANGE = re.compile(r"^(?P<start>[^/]*?)(?:\.\.|/)(?P<end>[^/]*)$")


def split_range(text: str) -> tuple[str | None, str | None] | None:
    """``"2005-01..2005-08"`` or ``"2005-01/2005-08"`` -> ``("2005-01", "2005-08")`` (an empty end:
    None); None when ``text`` is not a range."""
    m = RANGE.match(text.strip())
    return None if m is None else (m.group("start").strip() or None, m.group("end").strip() or None)


class TimeRange(StrictModel):
    """An inclusive time window ``[start, end]`` (ISO strings, partial ones as pandas reads them: ``2005``,
    ``2005-08``, ``2005-08-31`` take the whole year, month or day); ``None`` leaves that end open. An
    unquoted date on the command line or in YAML (``{start: 2005-01-01}``, which YAML reads as a date)
    is taken as its ISO string. A bare time instead of the mapping is ``{start: it, end: it}``, a range
    as text (:data:`RANGE`: ``2005-01..2005-08``, ``2005-01/2005-08``) ``{start, end}``."""

    start: str | None = None
    end: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_time(cls, value: Any) -> Any:
        if isinstance(value, str) and (bounds := split_range(value)) is not None:
            return {"start": bounds[0], "end": bounds[1]}
        if isinstance(value, (str, datetime.date)):  # datetime.datetime is a date too
            return {"start": value, "end": value}
        return value

    @field_validator("start", "end", mode="before")
    @classmethod
    def _iso(cls, value: Any) -> Any:
        if isinstance(value, datetime.datetime):  # YAML's timestamps; an offset is converted to UTC
            stamp = pd.Timestamp(value)
            return (stamp.tz_convert("UTC").tz_localize(None) if stamp.tz is not None else stamp).isoformat()
        if isinstance(value, datetime.date):
            return value.isoformat()
        if isinstance(value, str):
            try:
                pd.Timestamp(value)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a date or time ({exc}); write e.g. 2005-01-01 or "
                                 "2005-01-01T06:00") from None
        return value

    @property
    def is_set(self) -> bool:
        return self.start is not None or self.end is not None


#: ``data.train_times`` / ``data.valid_times``: one window ``{start, end}`` or a list of them
TimeWindows = TimeRange | list[TimeRange]


class RecurringWindow(StrictModel):
    """Validation spread over the record (``data.valid_times={every: 4D, length: 1D}``): of the training
    times, those in the last ``length`` of every ``every``, the periods counted from the first of them.
    Both are time spans as pandas reads them (``4D``, ``1D``, ``12h``, ``90min``)."""

    every: str
    length: str

    @model_validator(mode="after")
    def _spans(self):
        spans = {}
        for name in ("every", "length"):
            try:
                spans[name] = pd.Timedelta(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}={getattr(self, name)!r} is not a time span ({exc}); "
                                 "write e.g. 4D, 1D, 12h") from None
        if not pd.Timedelta(0) < spans["length"] < spans["every"]:
            raise ValueError(f"length ({self.length}) must be positive and shorter than every ({self.every}), "
                             "e.g. {every: 4D, length: 1D}: one day in four validates")
        return self

    def mask(self, times: pd.DatetimeIndex) -> np.ndarray:
        """Boolean per time of ``times`` (sorted): inside the last ``length`` of its period."""
        every, length = pd.Timedelta(self.every), pd.Timedelta(self.length)
        return np.asarray(((times - times[0]) % every) >= every - length)


def _valid_times_kind(value) -> str:
    keys = value if isinstance(value, dict) else vars(value) if isinstance(value, BaseModel) else {}
    return "recurring" if "every" in keys or "length" in keys else "windows"


#: ``data.valid_times``: windows as ``train_times``, or a :class:`RecurringWindow` (told apart by its keys)
ValidTimes = Annotated[Annotated[TimeWindows, Tag("windows")] | Annotated[RecurringWindow, Tag("recurring")],
                       Discriminator(_valid_times_kind)]


def time_windows(value: TimeWindows) -> list[TimeRange]:
    """The windows of a ``train_times`` / ``valid_times`` setting (empty when it sets none)."""
    items = value if isinstance(value, list) else [value]
    return [w for w in items if w.is_set]
