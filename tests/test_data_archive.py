"""Safe archive extraction: one test per attack; nothing is written when an archive is refused."""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
import zipfile

import pytest

from xkmcast.data.archive import extract
from xkmcast.errors import CatalogError, UnsafeArchiveError

from _http import http_server  # noqa: F401  (pytest fixture)


def _tar(path, members):
    """members: [(TarInfo, bytes | None)]"""
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _file(name, data=b"payload", mode=0o644):
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def _nothing_written(tmp_path, dest):
    assert not dest.exists()
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


@pytest.mark.parametrize(
    "members, why",
    [
        ([_file("ok.txt"), _file("../x")], "'..'"),
        ([_file("ok.txt"), _file("a/../../x")], "'..'"),
        ([_file("/tmp/x")], "absolute"),
        ([_file("ok.txt"), _special("link", tarfile.SYMTYPE, "/etc/passwd")], "symbolic link"),
        ([_file("ok.txt"), _special("inner", tarfile.SYMTYPE, "ok.txt")], "symbolic link"),
        ([_file("ok.txt"), _special("hard", tarfile.LNKTYPE, "ok.txt")], "hard link"),
        ([_special("dev", tarfile.CHRTYPE)], "device"),
        ([_special("blk", tarfile.BLKTYPE)], "device"),
        ([_special("fifo", tarfile.FIFOTYPE)], "device"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-in", "hardlink", "chardev", "blockdev", "fifo"],
)
def test_hostile_tar_is_refused_and_nothing_is_written(tmp_path, members, why):
    archive = _tar(tmp_path / "bad.tar.gz", members)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=why):
        extract(archive, dest)
    _nothing_written(tmp_path, dest)


@pytest.mark.parametrize(
    "name, mode, why",
    [
        ("../x", None, "'..'"),
        ("/abs/x", None, "absolute"),
        ("C:/x", None, "absolute"),
        ("..\\x", None, "'..'"),
        ("link", stat.S_IFLNK | 0o777, "symbolic link"),
        ("fifo", stat.S_IFIFO | 0o644, "device"),
    ],
    ids=["dotdot", "absolute", "drive", "backslash-dotdot", "symlink", "fifo"],
)
def test_hostile_zip_is_refused_and_nothing_is_written(tmp_path, name, mode, why):
    archive = _zip(tmp_path / "bad.zip", [("ok.txt", b"fine", None), (name, b"/etc/passwd", mode)])
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=why):
        extract(archive, dest)
    _nothing_written(tmp_path, dest)


def test_file_and_folder_of_the_same_name_is_refused(tmp_path):
    archive = _tar(tmp_path / "bad.tar", [_file("a"), _file("a/b")])
    with pytest.raises(UnsafeArchiveError, match="also a file"):
        extract(archive, tmp_path / "out")


def test_modes_are_sanitised_and_content_kept(tmp_path):
    archive = _tar(tmp_path / "ok.tgz", [_file("d/run.sh", b"#!/bin/sh\n", 0o4777), _file("d/data.bin", b"\x00\x01", 0o666)])
    out = extract(archive, tmp_path / "out")
    assert (out / "d/data.bin").read_bytes() == b"\x00\x01"
    assert stat.S_IMODE((out / "d/run.sh").stat().st_mode) == 0o755  # no set-uid, not world-writable
    assert stat.S_IMODE((out / "d/data.bin").stat().st_mode) == 0o644


def test_existing_target_is_replaced_atomically(tmp_path):
    dest = tmp_path / "out"
    extract(_zip(tmp_path / "a.zip", [("old.txt", b"1", None)]), dest)
    extract(_zip(tmp_path / "b.zip", [("new.txt", b"2", None)]), dest)
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]


def test_nested_zip_is_unpacked_and_checked(tmp_path):
    inner = _zip(tmp_path / "inner.zip", [("pkg/checkpoints/a.mdlus", b"weights", None)])
    outer = _zip(tmp_path / "outer.zip", [("inner.zip", inner.read_bytes(), None)])
    out = extract(outer, tmp_path / "out", nested=True)
    assert (out / "pkg/checkpoints/a.mdlus").read_bytes() == b"weights"
    hostile = _zip(tmp_path / "hostile.zip", [("../x", b"evil", None)])
    outer2 = _zip(tmp_path / "outer2.zip", [("folder/hostile.zip", hostile.read_bytes(), None)])
    with pytest.raises(UnsafeArchiveError):
        extract(outer2, tmp_path / "out2", nested=True)
    assert not (tmp_path / "out2").exists() and not (tmp_path / "x").exists()


def test_fetch_refuses_a_hash_pinned_hostile_tarball(tmp_path, http_server, monkeypatch):
    """The catalog's download path: a tarball with the right hash but a traversal member is refused."""
    from xkmcast.data.catalog import fetch

    served = tmp_path / "served"
    served.mkdir()
    archive = _tar(served / "evil.tar.gz", [_file("ok.txt"), _file("../../escaped.txt")])
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    server = http_server(served)
    registry = tmp_path / "registry.txt"
    registry.write_text(f"evil.tar.gz {digest} {server.url}/evil.tar.gz\n")
    cache = tmp_path / "cache" / "deep"
    with pytest.raises(UnsafeArchiveError):
        fetch("evil.tar.gz", cache_dir=cache, registry=registry, progress=False)
    assert not (tmp_path / "cache" / "escaped.txt").exists() and not (cache / "evil").exists()


@pytest.mark.parametrize("key", ["../../dir/file", "/abs/file", "a/../../b", "./a"])
def test_registry_keys_must_be_plain_relative_names(tmp_path, key):
    from xkmcast.data.catalog import load_registry

    registry = tmp_path / "registry.txt"
    registry.write_text(f"{key} unknown http://127.0.0.1/x\n")
    with pytest.raises(CatalogError, match="key"):
        load_registry(registry)
