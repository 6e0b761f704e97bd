"""Seeds of single samples: the noise of a sample depends on what it is, never on how it is batched.

A sample is named by ``(seed, member, *keys)``: the run's seed, the ensemble member and keys such as
its valid time (datetime64, or a ``cftime`` date of a model calendar such as ``noleap`` or ``360_day``,
hashed in ns since 1970-01-01 of its calendar) or a rollout step (an int). :func:`row_seed` hashes these
words with numpy's ``SeedSequence`` into a 63-bit seed; the sampler draws row i's initial noise and
every churn noise from a ``torch.Generator`` seeded by that row's seed alone (see
:func:`xkmcast.diffusion.samplers.sample`), so member k at valid time t is the same sample whatever
the batch size, the time chunking, or which other members and times are drawn with it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

__all__ = ["row_seed", "row_seeds", "row_generators", "time_key"]


def row_seed(seed: int, member: int, *keys) -> int:
    """The seed of one sample: a SeedSequence hash of (seed, member, keys...) (63 bits).

    Each word enters as its low 32 bits (keys as two 32-bit words: low, high); keys are integers or
    times, hashed by :func:`time_key`.
    """
    words = [int(seed) & 0xFFFFFFFF, int(member) & 0xFFFFFFFF]
    for key in keys:
        k = int(key) if isinstance(key, (int, np.integer)) else time_key(key)
        words += [k & 0xFFFFFFFF, (k >> 32) & 0xFFFFFFFF]
    return int(np.random.SeedSequence(words).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


def time_key(t) -> int:
    """A time as an integer: ns since 1970-01-01 of its calendar. datetime64 and ISO strings on the
    proleptic Gregorian calendar; ``cftime`` dates (``noleap``, ``360_day``, ...) counted in their own,
    which for the standard calendars gives the same number as the datetime64 of that instant."""
    if hasattr(t, "calendar") and hasattr(t, "timetuple"):  # a cftime.datetime
        import cftime

        return int(cftime.date2num(t, "microseconds since 1970-01-01", calendar=t.calendar)) * 1000
    try:
        return int(np.datetime64(t, "ns").astype(np.int64))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a sample key must be an integer or a time (datetime64, ISO string, cftime date), "
                        f"found {type(t).__name__} {t!r}") from exc


def row_seeds(seed: int, members: int | Iterable[int], *keys) -> list[int]:
    """``[row_seed(seed, k, *keys) for k in members]`` (``members``: a count M for 0..M-1, or indices)."""
    ids = range(members) if isinstance(members, int) else members
    return [row_seed(seed, int(k), *keys) for k in ids]


def row_generators(seeds: Iterable[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per row, row i seeded by ``seeds[i]``."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
