"""The exception types a user of xkmcast can catch.

Every error says what was expected, what was found and what to do. Code branches on these classes,
never on message text. Each class also derives from the closest builtin (KeyError, ValueError,
OSError) so that generic handlers keep working.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "XkmcastError",
    "MissingVariableError",
    "GridError",
    "DomainCoverageError",
    "CoordinateError",
    "UnitError",
    "TimeCoverageError",
    "InvalidDataError",
    "CatalogError",
    "DownloadError",
    "IntegrityError",
    "UnsafeArchiveError",
    "ConfigError",
    "CheckpointError",
    "BundleError",
    "OptionalDependencyError",
    "DataNotFoundError",
    "OutputExistsError",
    "OutputBusyError",
    "explain",
    "require",
]


def explain(problem: str, *, expected: object = None, found: object = None, fix: str | None = None) -> str:
    """Format an actionable message: the problem, then expected / found / what to do, one per line."""
    lines = [problem.rstrip(".") + "."]
    if expected is not None:
        lines.append(f"  expected: {_short(expected)}")
    if found is not None:
        lines.append(f"  found:    {_short(found)}")
    if fix:
        lines.append(f"  what to do: {fix}")
    return "\n".join(lines)


def _short(value: object, limit: int = 30) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        items = [str(v) for v in value]
        text = ", ".join(items[:limit])
        if len(items) > limit:
            text += f", ... ({len(items) - limit} more)"
        return f"[{text}]"
    return str(value)


class XkmcastError(Exception):
    """Base class of every error raised on purpose by xkmcast."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else self.__class__.__name__


class MissingVariableError(XkmcastError, KeyError):
    """A variable the model or the operation needs is not in the dataset."""


class GridError(XkmcastError, ValueError):
    """The horizontal grid (dims, lat/lon, CRS) cannot be found or is unusable."""


class DomainCoverageError(GridError):
    """The source grid does not cover the target grid."""


class CoordinateError(XkmcastError, ValueError):
    """A coordinate is non-monotonic, has duplicates or has the wrong shape."""


class UnitError(XkmcastError, ValueError):
    """Units are unknown or cannot be converted unambiguously."""


class TimeCoverageError(XkmcastError, ValueError):
    """Times do not match or do not cover the requested window."""


class InvalidDataError(XkmcastError, ValueError):
    """Values are unusable (NaN where none are allowed, wrong shape, wrong dtype)."""


class CatalogError(XkmcastError, KeyError):
    """An unknown catalog entry or a malformed catalog."""


class DownloadError(XkmcastError, OSError):
    """A download failed."""


class IntegrityError(DownloadError):
    """A downloaded or cached file does not match its registered hash (it was removed)."""


class UnsafeArchiveError(IntegrityError):
    """An archive holds a member that would land outside its folder, a link or a device: nothing was extracted."""


class ConfigError(XkmcastError, ValueError):
    """A training or inference configuration is invalid."""


class CheckpointError(XkmcastError, ValueError):
    """A checkpoint is unreadable or does not match the configuration."""


class BundleError(XkmcastError, ValueError):
    """A model bundle or imported checkpoint is malformed or does not match."""


class DataNotFoundError(XkmcastError, FileNotFoundError):
    """An input file or store named by the user does not exist."""


class OutputExistsError(XkmcastError, FileExistsError):
    """The output exists and overwriting was not asked for."""


class OutputBusyError(XkmcastError, OSError):
    """Another live process is writing the same output (its lock file names the process)."""


class OptionalDependencyError(XkmcastError, ImportError):
    """An optional package is needed; the message names the extra to install."""


def require(module: str, extra: str, purpose: str):
    """Import an optional module or raise OptionalDependencyError naming the pip extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise OptionalDependencyError(
            explain(
                f"{purpose} needs the optional package {module!r}",
                found=f"import failed: {exc}",
                fix=f"pip install 'xkmcast[{extra}]'",
            )
        ) from exc
