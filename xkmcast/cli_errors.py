"""How every ``xkmcast`` command reports a failure: ``error: <message>`` on stderr and exit code 2 for
an :class:`~xkmcast.errors.XkmcastError`; with ``--debug`` (or ``XKMCAST_DEBUG=1``) the traceback first.
The package's own warnings (issued from a file of xkmcast) are shown as ``warning: <message>``, without
the Python source line that ``warnings`` prints by default (with ``--debug``: the default form).
Training stopped by a signal exits ``128 + signal`` (130 for SIGINT, 143 for SIGTERM) after its checkpoint."""

from __future__ import annotations

import contextlib
import os
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import typer

from .errors import XkmcastError

__all__ = ["reported_errors", "set_debug", "EXIT_ERROR", "signal_exit_code"]

EXIT_ERROR = 2
_state = {"debug": False}
_PACKAGE = Path(__file__).resolve().parent


def set_debug(on: bool) -> None:
    """Show tracebacks of reported errors: the ``--debug`` option of this invocation, or ``XKMCAST_DEBUG``."""
    _state["debug"] = bool(on) or os.environ.get("XKMCAST_DEBUG", "") not in ("", "0")


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn an XkmcastError raised in the block into ``error: ...`` and exit code 2; the package's warnings
    in the block into ``warning: ...`` lines."""
    shown = warnings.showwarning
    if not _state["debug"]:
        warnings.showwarning = _plain(shown)
    try:
        yield
    except XkmcastError as exc:
        if _state["debug"]:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=EXIT_ERROR) from None
    finally:
        warnings.showwarning = shown


def _plain(default):
    """A ``warnings.showwarning`` that writes a warning issued from the package as ``warning: <message>``
    on stderr and leaves any other to ``default``."""

    def show(message, category, filename, lineno, file=None, line=None):
        if not Path(filename).resolve().is_relative_to(_PACKAGE):
            return default(message, category, filename, lineno, file, line)
        typer.echo(f"warning: {message}", err=True)

    return show


def signal_exit_code(stop_reason: str | None) -> int | None:
    """The shell's exit code of a run stopped by ``SIGINT`` / ``SIGTERM`` (128 + signal), else None."""
    import signal

    if stop_reason in ("SIGINT", "SIGTERM"):
        return 128 + int(getattr(signal, stop_reason))
    return None
