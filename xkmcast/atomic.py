"""Atomic writes of files and folders (zarr stores, model bundles): the one helper every writer uses.

Contract of :func:`atomic_path`: the caller writes the new file or folder at the temporary path it is
given, ``.tmp-<name>-<pid>-<random>`` in the same folder as the target (same file system, so the
final rename is atomic; the process id says who left it behind). When the block ends without error,
every file written is flushed to disk (``fsync``), an existing target is moved aside (``os.replace``)
and the temporary path is renamed into place, the folder entry is flushed, and the old copy removed.
On any error (a NaN found in a late chunk, a full disk, Ctrl-C) the temporary path is removed and the
target is left untouched: a reader sees either the previous complete target or the new one.

Concurrent writers: while the block runs the writer holds ``.lock-<name>`` (created exclusively,
holding its PID), so a second writer of the same target fails at once with
:class:`~xkmcast.errors.OutputBusyError`; ``overwrite=False`` is checked again under the lock just
before the move. A lock whose process is gone is taken over.

Leftovers of a killed writer (``kill -9``): before writing, :func:`remove_stale` deletes the
``.tmp-<name>-<pid>-*`` entries of processes that no longer exist (live ones are left alone) and
restores or deletes their ``.old-<name>-<pid>-*`` copies (restored when the target is missing).
PIDs are those of this machine: do not share one output folder between hosts.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputBusyError, OutputExistsError, explain

__all__ = ["atomic_path", "atomic_write_text", "temporary_name", "writer_lock", "remove_stale", "pid_alive"]

_LEFTOVER = re.compile(r"^\.(tmp|old)-(?P<name>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def temporary_name(path: Path, tag: str = "tmp") -> Path:
    """``<folder>/.<tag>-<name>-<pid>-<random>``: a hidden sibling of ``path`` unique to this call."""
    return path.with_name(f".{tag}-{path.name}-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to ``path`` (see the module docstring).

    ``overwrite=False`` refuses (``FileExistsError``) a target that exists before or after writing.
    ``durable=False`` skips the ``fsync`` calls (for scratch outputs where speed matters more).
    """
    path = Path(path)
    _refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(path):
        remove_stale(path.parent, path.name)
        _refuse_existing(path, overwrite)
        yield from _write(path, overwrite, durable)


def _write(path: Path, overwrite: bool, durable: bool) -> Iterator[Path]:
    tmp = temporary_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary path {tmp} for {path}")
        _refuse_existing(path, overwrite)
        if durable:
            _fsync_tree(tmp)
        old = temporary_name(path, "old") if path.exists() else None
        if old is not None:
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    if durable:
        _fsync_entry(path.parent)
    if old is not None:
        _remove(old)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(explain(f"{path} exists", fix="choose another output or pass overwrite=True (--overwrite)"))


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (a process of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<folder>/.lock-<name>`` (exclusive create, holding the PID) while the block runs.

    Raises :class:`OutputBusyError` when a live process (this one included) holds it; the lock of a
    process that is gone is taken over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".lock-{path.name}")
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                owner = 0  # being written right now, or garbage: look again
            if owner and pid_alive(owner):
                raise OutputBusyError(explain(
                    f"{path} is being written by another process (pid {owner})",
                    expected="one writer per output", found=f"the lock file {lock}",
                    fix="wait for that run to finish, or write to another path "
                        "(delete the lock file only if that process is not an xkmcast run)",
                )) from None
            if owner:
                lock.unlink(missing_ok=True)  # its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        break
    else:
        raise OutputBusyError(explain(f"cannot take the lock {lock} of {path}", fix="retry"))
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def remove_stale(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporaries of dead processes in ``folder`` (those of target ``name`` or all).

    ``.tmp-*`` entries are deleted; an ``.old-*`` copy is renamed back to its target when the target
    is missing (the writer died between its two renames), else deleted. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        m = _LEFTOVER.match(entry.name)
        if not m or (name is not None and m["name"] != name) or pid_alive(int(m["pid"])):
            continue
        target = folder / m["name"]
        if entry.name.startswith(".old-") and not target.exists():
            with contextlib.suppress(OSError):
                os.replace(entry, target)
                continue
        _remove(entry)
        removed.append(entry)
    return removed


def _fsync_tree(tmp: Path) -> None:
    """Flush every file under ``tmp`` (or ``tmp`` itself) and every folder entry to disk."""
    if tmp.is_dir():
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                _fsync_file(Path(root) / name)
            _fsync_entry(Path(root))
    else:
        _fsync_file(tmp)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_entry(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)
