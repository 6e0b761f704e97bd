"""xkmcast.atomic: a failed write leaves the previous target whole; a successful one replaces it."""

from __future__ import annotations

import os

import pytest

from xkmcast.atomic import atomic_path, atomic_write_text, temporary_name


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_temporary_name_is_a_hidden_sibling_carrying_the_pid(tmp_path):
    target = tmp_path / "out.zarr"
    a, b = temporary_name(target), temporary_name(target)
    assert a.parent == tmp_path and a.name.startswith(f".tmp-out.zarr-{os.getpid()}-")
    assert a != b  # random suffix: two writers in one process do not collide


def test_file_replaced_whole_and_no_temporaries_left(tmp_path):
    target = tmp_path / "config.yaml"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_error_mid_write_keeps_the_previous_file_and_cleans_up(tmp_path):
    target = tmp_path / "a.nc"
    target.write_text("previous")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "previous"
    assert _leftovers(tmp_path) == []


def test_folder_replaced_as_a_whole(tmp_path):
    target = tmp_path / "store.zarr"
    for content in ("one", "two"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "sub").mkdir()
            (tmp / "sub" / "chunk").write_text(content)
            assert not target.exists() or (target / "sub" / "chunk").read_text() == "one"
    assert (target / "sub" / "chunk").read_text() == "two"
    assert sorted(p.name for p in target.rglob("*")) == ["chunk", "sub"]  # no mix of old and new
    assert _leftovers(tmp_path) == []


def test_failed_folder_write_removes_the_partial_folder(tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_bytes(b"x")
            raise KeyboardInterrupt
    assert not target.exists() and _leftovers(tmp_path) == []


def test_overwrite_false_refuses_before_writing(tmp_path):
    target = tmp_path / "x.nc"
    target.write_text("keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_path(target, overwrite=False) as tmp:
            tmp.write_text("never")
    assert target.read_text() == "keep"


def test_nothing_written_is_an_error_not_a_deletion(tmp_path):
    target = tmp_path / "x.nc"
    target.write_text("keep")
    with pytest.raises(FileNotFoundError):
        with atomic_path(target):
            pass
    assert target.read_text() == "keep"
