"""Atomic writes of files and folders (zarr stores, model bundles): the one helper every writer uses.

Contract of :func:`atomic_path`: the caller writes the new file or folder at the temporary path it is
given, ``.tmp-<name>-<pid>-<random>`` in the same folder as the target (same file system, so the
final rename is atomic; the process id says who left it behind). When the block ends without error,
every file written is flushed to disk (``fsync``), an existing target is moved aside (``os.replace``)
and the temporary path is renamed into place, the folder entry is flushed, and the old copy removed.
On any error (a NaN found in a late chunk, a full disk, Ctrl-C) the temporary path is removed and the
target is left untouched: a reader sees either the previous complete target or the new one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import explain

__all__ = ["atomic_path", "atomic_write_text", "temporary_name"]


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
        raise FileExistsError(explain(f"{path} exists", fix="choose another output or pass overwrite=True (--overwrite)"))


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
