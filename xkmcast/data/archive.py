"""Safe extraction of zip, tar and Debian (.deb) archives: the one place xkmcast unpacks anything.

Contract of :func:`extract` (the semantics of Python's ``tarfile`` "data" filter, applied the same way
on every supported Python version and to zip files too):

* Every member is checked **before** anything is written. A member whose name is absolute (``/x``,
  ``C:\\x``, ``\\\\server\\x``), contains a ``..`` component or otherwise resolves outside the target
  folder, a symbolic or hard link, a device, a FIFO, or any other non-regular member (directories
  excepted) makes the whole archive refused with :class:`~xkmcast.errors.UnsafeArchiveError`: nothing
  is written.
* Files are written with mode ``0o644`` (``0o755`` when the archive marks them executable): no
  set-uid / set-gid / sticky bits, no group- or world-writable files.
* Extraction goes into a temporary sibling folder that is renamed onto the target at the end, so an
  interrupted extraction never leaves a half-filled target; an existing target is replaced.
* ``nested=True``: when the archive's content is a single archive file (optionally inside a single
  folder), that inner archive is extracted the same way, in place of the outer content.
* A Debian binary package (``.deb``: an ``ar`` archive of ``debian-binary``, ``control.tar.*`` and
  ``data.tar.*``) is extracted as its ``data.tar.*`` member (the installed files, ``./usr/...``), under
  the same tar rules, but for its symbolic links to paths inside the package's tree (NCL's data:
  ``usr/lib/ncarg -> ../share/ncarg``), which are conveniences of the installed system and are left out
  (not created: the files they name are extracted under their own paths); a link pointing outside it,
  absolute or climbing out, still refuses the package. ``control.tar.*`` (maintainer scripts) is never
  unpacked. The tar root entry ``./`` of package tarballs is the target folder itself and is accepted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import UnsafeArchiveError, explain

__all__ = ["ARCHIVE_SUFFIXES", "archive_suffix", "check_member_name", "extract", "is_archive", "is_deb"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip", ".deb")
_AR_MAGIC = b"!<arch>\n"


def archive_suffix(name: str | os.PathLike) -> str | None:
    """The archive extension of ``name`` (``.tar.gz``, ``.zip``, ...) or None."""
    low = str(name).lower()
    return next((s for s in ARCHIVE_SUFFIXES if low.endswith(s)), None)


def is_archive(path: str | os.PathLike) -> bool:
    """True for an existing zip, tar or Debian package file (by content, not by name)."""
    path = Path(path)
    return path.is_file() and (is_deb(path) or zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def is_deb(path: str | os.PathLike) -> bool:
    """True for an existing ``ar`` archive (the container of a Debian package), by its magic bytes."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(_AR_MAGIC)) == _AR_MAGIC


def check_member_name(name: str, *, archive: str = "archive") -> PurePosixPath:
    """The member's relative path, or UnsafeArchiveError for absolute / escaping / empty names.

    Also used to validate registry keys: a plain relative name (``a/b.nc``) passes.
    """
    win = PureWindowsPath(name)
    posix = PurePosixPath(name.replace("\\", "/"))
    if not name or "\x00" in name or posix.is_absolute() or win.drive or win.root:
        _refuse(archive, name, "an absolute path")
    parts = [p for p in posix.parts if p not in ("", ".")]
    if not parts:
        _refuse(archive, name, "an empty name")
    if ".." in parts:
        _refuse(archive, name, "a '..' component (it would land outside the target folder)")
    return PurePosixPath(*parts)


def _refuse(archive: str, member: str, why: str) -> None:
    raise UnsafeArchiveError(
        explain(
            f"Refusing to extract {archive}: member {member!r} is {why}; nothing was extracted",
            expected="regular files and folders with relative names inside the archive's folder",
            found=member,
            fix="the archive is damaged or hostile; do not use it (download it again from the publisher)",
        )
    )


# -------------------------------------------------------------------------------------- planning
def _is_root(name: str) -> bool:
    """``.`` / ``./``: the archive's own root folder (package tarballs start with it), i.e. the target."""
    return name.replace("\\", "/").rstrip("/") == "."


def _zip_plan(path: Path) -> list[tuple[PurePosixPath, bool, bool, zipfile.ZipInfo]]:
    """[(relative path, is_dir, executable, info)] of a zip, every member checked."""
    plan = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir() and _is_root(info.filename):
                continue
            rel = check_member_name(info.filename, archive=path.name)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if kind == stat.S_IFLNK:
                _refuse(path.name, info.filename, "a symbolic link")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                _refuse(path.name, info.filename, "a device, FIFO or socket")
            is_dir = info.is_dir() or kind == stat.S_IFDIR
            plan.append((rel, is_dir, bool(mode & 0o111) and not is_dir, info))
    return plan


def _link_inside(rel: PurePosixPath, target: str) -> bool:
    """A symbolic link at ``rel`` to ``target`` names a path inside the archive's folder (relative, and
    its ``..`` do not climb above the folder)."""
    if not target or PurePosixPath(target).is_absolute() or PureWindowsPath(target).drive:
        return False
    parts = list(rel.parent.parts)
    for part in PurePosixPath(target).parts:
        if part == "..":
            if not parts:
                return False
            parts.pop()
        elif part != ".":
            parts.append(part)
    return True


def _tar_plan(path: Path, label: str | None = None,
              skip_inner_links: bool = False) -> list[tuple[PurePosixPath, bool, bool, tarfile.TarInfo]]:
    """[(relative path, is_dir, executable, info)] of a tar, every member checked; ``label`` names the
    archive in refusals (default: the file name); ``skip_inner_links``: symbolic links to paths inside
    the folder are left out of the plan instead of refused (a Debian package's)."""
    plan, label = [], label or path.name
    with tarfile.open(path) as tf:
        for info in tf.getmembers():
            if info.isdir() and _is_root(info.name):
                continue
            rel = check_member_name(info.name, archive=label)
            if skip_inner_links and info.issym() and _link_inside(rel, info.linkname):
                continue
            if info.issym() or info.islnk():
                _refuse(label, info.name, f"a {'symbolic' if info.issym() else 'hard'} link to {info.linkname!r}")
            if not (info.isfile() or info.isdir()):
                _refuse(label, info.name, "a device, FIFO or other special file")
            plan.append((rel, info.isdir(), bool(info.mode & 0o111) and info.isfile(), info))
    return plan


def _check_targets(plan, root: Path, archive: str) -> None:
    """No member may resolve outside ``root`` and no file may also be a folder of another member."""
    files = {rel for rel, is_dir, _, _ in plan if not is_dir}
    for rel, _, _, _ in plan:
        target = (root / rel).resolve()
        if target != root and root not in target.parents:
            _refuse(archive, str(rel), "outside the target folder once resolved")
        for parent in rel.parents:
            if parent in files:
                _refuse(archive, str(rel), f"inside {str(parent)!r}, which is also a file")


# ------------------------------------------------------------------------------------ extraction
def extract(archive: str | os.PathLike, dest: str | os.PathLike, *, nested: bool = False) -> Path:
    """Extract ``archive`` (zip, tar with any compression, or .deb) into the folder ``dest``; returns ``dest``.

    See the module docstring for what is refused. ``dest`` is replaced atomically.
    """
    archive, dest = Path(archive), Path(dest)
    if is_deb(archive):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _deb_data_tar(archive, dest.parent) as data_tar:
            label = f"{archive.name}:{data_tar.name}"
            plan = _tar_plan(data_tar, label, skip_inner_links=True)
            return _extract(data_tar, dest, nested, plan, _write_tar, label)
    if zipfile.is_zipfile(archive):
        plan, reader = _zip_plan(archive), _write_zip
    elif tarfile.is_tarfile(archive):
        plan, reader = _tar_plan(archive), _write_tar
    else:
        raise UnsafeArchiveError(explain(f"{archive} is not an archive", expected="a zip, tar or .deb file",
                                         found=archive.name))
    return _extract(archive, dest, nested, plan, reader, archive.name)


def _extract(archive: Path, dest: Path, nested: bool, plan, reader, label: str) -> Path:
    """Write the checked ``plan`` of ``archive`` into a temporary sibling of ``dest``, then rename it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent)).resolve()
    try:
        _check_targets(plan, tmp, label)
        reader(archive, plan, tmp)
        if nested:
            inner = _single_inner_archive(tmp)
            if inner is not None:
                unpacked = extract(inner, tmp.with_name(tmp.name + ".inner"), nested=True)
                shutil.rmtree(tmp)
                os.replace(unpacked, tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp.with_name(tmp.name + ".inner"), ignore_errors=True)
        raise
    return dest


# ----------------------------------------------------------------------------- Debian packages
def _ar_members(path: Path) -> dict[str, tuple[int, int]]:
    """``{name: (offset, size)}`` of the members of the ``ar`` archive ``path`` (headers checked)."""
    members, total = {}, path.stat().st_size
    with open(path, "rb") as f:
        f.seek(len(_AR_MAGIC))
        while header := f.read(60):
            size = header[48:58].decode("ascii", "replace").strip()
            if len(header) < 60 or header[58:60] != b"`\n" or not size.isdigit() or f.tell() + int(size) > total:
                _malformed(path, f"a damaged ar member header at byte {f.tell() - len(header)}")
            name = header[:16].decode("ascii", "replace").rstrip(" ").removesuffix("/")  # GNU ar ends names with /
            members[name] = (f.tell(), int(size))
            f.seek(int(size) + int(size) % 2, os.SEEK_CUR)  # member data is padded to an even length
    return members


def _malformed(path: Path, found: str) -> None:
    raise UnsafeArchiveError(
        explain(f"Refusing to extract {path.name}: it is not a valid Debian package; nothing was extracted",
                expected="an ar archive holding debian-binary, control.tar.* and one data.tar.{xz,gz,bz2}",
                found=found, fix="the download is damaged or not a .deb; download it again from the publisher"))


@contextlib.contextmanager
def _deb_data_tar(path: Path, workdir: Path):
    """The ``data.tar.*`` member of the .deb ``path``, copied to a temporary file in ``workdir``."""
    members = _ar_members(path)
    data = [name for name in members if name.startswith("data.tar")]
    if "debian-binary" not in members or len(data) != 1:
        _malformed(path, f"members {sorted(members)}")
    compression = data[0].removeprefix("data.tar").lstrip(".")
    if compression not in {"", "gz", "bz2", "xz", "zst"} & {"", *tarfile.TarFile.OPEN_METH}:  # zst: Python >= 3.14
        raise UnsafeArchiveError(explain(
            f"Cannot extract {path.name}: its {data[0]} is compressed with {compression!r}, which this "
            "Python's tarfile cannot read; nothing was extracted",
            expected="data.tar.xz, data.tar.gz, data.tar.bz2 or data.tar",
            found=data[0],
            fix=f"use Python >= 3.14 (tarfile reads zstd), or repack it by hand: `ar x {path.name} {data[0]} && "
                f"zstd -d {data[0]}` and open data.tar; or download a .deb built with xz (most Debian packages)"))
    offset, size = members[data[0]]
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=workdir) as tmp:
        target = Path(tmp) / data[0]
        with open(path, "rb") as src, open(target, "wb") as out:
            src.seek(offset)
            while size > 0:
                chunk = src.read(min(size, 1 << 20))
                if not chunk:
                    _malformed(path, f"{data[0]} truncated")
                out.write(chunk)
                size -= len(chunk)
        if not tarfile.is_tarfile(target):
            _malformed(path, f"{data[0]} is not a tar file")
        yield target


def _single_inner_archive(root: Path) -> Path | None:
    """The only file under ``root`` (through single folders) when it is an archive, else None."""
    entries = list(root.iterdir())
    while len(entries) == 1 and entries[0].is_dir():
        entries = list(entries[0].iterdir())
    if len(entries) == 1 and entries[0].is_file() and archive_suffix(entries[0].name) and is_archive(entries[0]):
        return entries[0]
    return None


def _mode(executable: bool) -> int:
    return 0o755 if executable else 0o644


def _write_members(plan, root: Path, open_member) -> None:
    """Write the checked ``plan`` under ``root``; ``open_member(info)`` opens one member for reading."""
    for rel, is_dir, executable, info in plan:
        target = root / rel
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with open_member(info) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.chmod(target, _mode(executable))


def _write_zip(archive: Path, plan, root: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        _write_members(plan, root, zf.open)


def _write_tar(archive: Path, plan, root: Path) -> None:
    with tarfile.open(archive) as tf:
        _write_members(plan, root, tf.extractfile)
