"""Safe archive extraction: one test per attack; nothing is written when an archive is refused."""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from xkmcast.data.archive import archive_suffix, extract, is_archive, is_deb
from xkmcast.errors import CatalogError, UnsafeArchiveError

from _http import http_server  # noqa: F401  (pytest fixture)


def _tar(path, members, mode="w:gz"):
    """members: [(TarInfo, bytes | None)]"""
    with tarfile.open(path, mode) as tf:
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


def write_deb(path, data_members, *, data_name="data.tar.xz", gnu_names=False):
    """A Debian binary package written by hand: an ``ar`` archive ("!<arch>\\n", 60-byte member headers,
    data padded to an even length) of debian-binary, control.tar.gz and ``data_name`` holding
    ``data_members`` [(TarInfo, bytes | None)] (a ``.zst`` member gets a zstd magic only)."""
    path = Path(path)
    work = path.with_name(path.name + ".parts")
    work.mkdir()
    control = _tar(work / "control.tar.gz", [_file("./control", b"Package: r-cran-stars\nVersion: 0.6-0-4\n")])
    mode = {"data.tar.xz": "w:xz", "data.tar.gz": "w:gz", "data.tar": "w"}.get(data_name)
    data = _tar(work / data_name, data_members, mode).read_bytes() if mode else b"\x28\xb5\x2f\xfd" + b"\0" * 32
    with open(path, "wb") as f:
        f.write(b"!<arch>\n")
        for name, blob in (("debian-binary", b"2.0\n"), ("control.tar.gz", control.read_bytes()), (data_name, data)):
            name += "/" if gnu_names else ""
            f.write(f"{name:<16}{1674768337:<12}{0:<6}{0:<6}{100644:<8}{len(blob):<10}`\n".encode("ascii"))
            f.write(blob + b"\n" * (len(blob) % 2))
    for part in work.iterdir():
        part.unlink()
    work.rmdir()
    return path


def _dir(name):
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, None


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


# ------------------------------------------------------------------------------- Debian packages
NC = "./usr/lib/R/site-library/stars/nc/test_stageiv_xyt.nc"


@pytest.mark.parametrize("data_name, gnu_names", [("data.tar.xz", False), ("data.tar.gz", True), ("data.tar", False)])
def test_deb_is_extracted_as_its_data_tar(tmp_path, data_name, gnu_names):
    members = [_dir("./"), _dir("./usr/"), _file(NC, b"CDF\x01netcdf", 0o4777), _file("./usr/share/doc/README", b"odd")]
    deb = write_deb(tmp_path / "r-cran-stars_0.6-0-4_all.deb", members, data_name=data_name, gnu_names=gnu_names)
    assert archive_suffix(deb.name) == ".deb" and is_archive(deb) and is_deb(deb)
    out = extract(deb, tmp_path / "r-cran-stars_0.6-0-4_all")
    assert (out / NC).read_bytes() == b"CDF\x01netcdf"
    assert (out / "usr/share/doc/README").read_bytes() == b"odd"  # odd length: the ar padding is skipped
    assert stat.S_IMODE((out / NC).stat().st_mode) == 0o755
    assert sorted(p.name for p in out.iterdir()) == ["usr"]  # neither control.tar nor debian-binary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r-cran-stars_0.6-0-4_all", "r-cran-stars_0.6-0-4_all.deb"]


def test_a_debs_links_inside_its_tree_are_left_out(tmp_path):
    """NCL's libncarg-data has usr/lib/ncarg -> ../share/ncarg and usr/share/ncarg/lib/ncarg -> ..:
    conveniences of the installed system, left out (no link is created); the files are there under
    their own paths."""
    members = [_dir("./"), _file("./usr/share/ncarg/data/x.nc", b"CDF\x01"),
               _special("./usr/lib/ncarg", tarfile.SYMTYPE, "../share/ncarg"),
               _special("./usr/share/ncarg/lib/ncarg", tarfile.SYMTYPE, "..")]
    out = extract(write_deb(tmp_path / "libncarg-data_6.6.2.dfsg.1-1_all.deb", members), tmp_path / "out")
    assert (out / "usr/share/ncarg/data/x.nc").read_bytes() == b"CDF\x01"
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert not (out / "usr/lib/ncarg").exists() and not (out / "usr/share/ncarg/lib/ncarg").exists()


@pytest.mark.parametrize(
    "members, why",
    [
        ([_file(NC), _file("../evil")], "'..'"),
        ([_file(NC), _file("./usr/../../evil")], "'..'"),
        ([_file(NC), _special("./usr/lib/link", tarfile.SYMTYPE, "../../../etc")], "symbolic link"),
        ([_file("/etc/evil")], "absolute"),
        ([_file(NC), _special("./usr/lib/link", tarfile.SYMTYPE, "/etc/passwd")], "symbolic link"),
        ([_file(NC), _special("./usr/hard", tarfile.LNKTYPE, NC)], "hard link"),
        ([_special("./dev/x", tarfile.CHRTYPE)], "device"),
    ],
    ids=["dotdot", "nested-dotdot", "climbing-symlink", "absolute", "symlink", "hardlink", "chardev"],
)
def test_hostile_deb_is_refused_and_nothing_is_written(tmp_path, members, why):
    deb = write_deb(tmp_path / "bad.deb", members)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=why) as info:
        extract(deb, dest)
    assert "bad.deb:data.tar.xz" in str(info.value)
    _nothing_written(tmp_path, dest)
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


@pytest.mark.skipif("zst" in tarfile.TarFile.OPEN_METH, reason="this Python's tarfile reads zstd")
def test_deb_with_zstd_data_is_refused_with_a_fix(tmp_path):
    deb = write_deb(tmp_path / "z.deb", [], data_name="data.tar.zst")
    with pytest.raises(UnsafeArchiveError, match="zstd") as info:
        extract(deb, tmp_path / "out")
    assert "what to do: use Python >= 3.14" in str(info.value) and "zstd -d data.tar.zst" in str(info.value)
    _nothing_written(tmp_path, tmp_path / "out")


def test_damaged_deb_is_refused(tmp_path):
    deb = write_deb(tmp_path / "ok.deb", [_file(NC, b"x" * 1000)])
    truncated = tmp_path / "cut.deb"
    truncated.write_bytes(deb.read_bytes()[:-100])
    no_data = tmp_path / "nodata.deb"
    no_data.write_bytes(b"!<arch>\n" + f"{'debian-binary':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{4:<10}`\n".encode() + b"2.0\n")
    for bad in (truncated, no_data):
        with pytest.raises(UnsafeArchiveError, match="not a valid Debian package"):
            extract(bad, tmp_path / "out")
        _nothing_written(tmp_path, tmp_path / "out")
