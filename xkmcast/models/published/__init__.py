"""NVIDIA's published model packages, loaded by name or from a local folder / archive.

``load(source)`` is what :func:`xkmcast.load_model` calls: ``source`` is

* a name of :func:`published_models` (``"corrdiff-taiwan"``, ``"stormcast-v1"``, ...): the package is
  fetched once (pinned revision, every file verified, see :mod:`.registry`) and loaded;
* a folder: an xkmcast bundle, or an unpacked package of one of the :data:`FAMILIES`;
* an archive (``.zip`` / ``.tar*``) of such a folder: unpacked safely (:mod:`xkmcast.data.archive`)
  into the cache, keyed by its SHA-256, then loaded.

A package family is one module here with ``NAME``, ``detect(folder) -> package root | None`` and
``load(root, *, device) -> Pipeline``; adding a family is that module, a line in :data:`FAMILIES` and
its entries in ``catalogs/published_models.yaml``. Each loader maps the package onto an existing
pipeline (CorrDiff, StormCast) with its own preprocessing facts, and refuses, with a clear
:class:`~xkmcast.errors.BundleError`, whatever it cannot reproduce.
A family whose package names further files in an index of its own (StormScope's registry.json) also
has ``referenced_files(root, **options) -> [file]``: fetched by name, they follow the index.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ...errors import BundleError, explain
from .registry import fetch_package, lookup, published_models

__all__ = ["FAMILIES", "published_models", "load", "load_package", "detect_family", "fetch_package"]

#: package family -> module (relative to this package)
FAMILIES: dict[str, str] = {
    "corrdiff_taiwan": ".corrdiff_taiwan",
    "corrdiff_package": ".corrdiff_package",
    "stormcast_v1": ".stormcast_v1",
    "stormscope": ".stormscope",
    "corrdiff_cosmo": ".corrdiff_cosmo",
}


def _family(name: str):
    if name not in FAMILIES:
        raise BundleError(explain("Unknown package family", expected=sorted(FAMILIES), found=name))
    return importlib.import_module(FAMILIES[name], __name__)


def detect_family(folder: str | os.PathLike) -> tuple[str, Path] | None:
    """(family, package root) of the package in ``folder``, or None."""
    for name in FAMILIES:
        root = _family(name).detect(Path(folder))
        if root is not None:
            return name, root
    return None


def load_package(path: str | os.PathLike, *, device="cpu", family: str | None = None, **options):
    """Load the package in folder or archive ``path`` (its family detected, or ``family``); ``options``
    go to the family's ``load`` (e.g. ``hrrr_window`` of StormCast v1)."""
    from ...data.archive import is_archive

    path = Path(path).expanduser()
    if path.is_file() and is_archive(path):
        path = _unpacked(path)
    if family is not None:
        root = _family(family).detect(path)
        found = (family, root) if root is not None else None
    else:
        found = detect_family(path)
    if found is None:
        raise BundleError(
            explain(
                f"{path} is neither an xkmcast bundle nor a published package xkmcast knows",
                expected="a bundle (config.json + weights.safetensors) or the layout of one of "
                f"{sorted(FAMILIES)} (see the xkmcast.models.published modules)",
                found=sorted(p.name for p in path.iterdir())[:20] if path.is_dir() else "no such folder",
                fix="point at the unpacked package folder or its archive",
            )
        )
    name, root = found
    pipeline = _family(name).load(root, device=device, **options)
    # reloadable by path in dask workers (ModelRef) unless options made it differ from the default load
    from ..bundle import mark_source

    return mark_source(pipeline, None if options else str(path.resolve()))


def _unpacked(archive: Path) -> Path:
    """The safe extraction of ``archive`` in the cache (``<cache>/unpacked/<sha256[:16]>``), done once."""
    from ...data.archive import extract
    from ...data.catalog import default_cache_dir
    from ...data.download import sha256_of

    dest = default_cache_dir() / "unpacked" / sha256_of(archive)[:16]
    if not dest.exists():
        extract(archive, dest, nested=True)
    return dest


def load(source: str | os.PathLike, *, device="cpu", package_options: dict | None = None, **fetch_options):
    """A pipeline from a published name, a bundle or package folder, or a package archive.

    ``fetch_options`` go to :func:`fetch_package` (names only); ``package_options`` to the family loader."""
    from ..bundle import CONFIG, load_bundle, mark_source

    text = os.fspath(source)
    path = Path(text).expanduser()
    if not path.exists() and isinstance(source, str) and "/" not in text and text in published_models(fetch_options.get("registry")):
        entry = lookup(text, fetch_options.get("registry"))
        index = getattr(_family(entry.family), "referenced_files", None)  # files the package's own index names
        first = dict(fetch_options)
        if index is not None and first.get("known_hashes"):  # the hashes of the indexed files apply below
            first["known_hashes"] = {f: d for f, d in first["known_hashes"].items() if f in entry.files}
        folder = fetch_package(text, **first)
        if index is not None:
            folder = fetch_package(text, **fetch_options, extra_files=index(folder, **(package_options or {})))
        pipeline = load_package(folder, device=device, family=entry.family, **(package_options or {}))
        return mark_source(pipeline, None if package_options else str(folder))
    if fetch_options:
        raise BundleError(explain("Download options only apply to published names", found=sorted(fetch_options),
                                  expected=published_models()))
    if path.is_dir() and (path / CONFIG).exists() and detect_family(path) is None:  # StormScope has a config.json
        return load_bundle(path, device=device)
    if not path.exists():
        raise BundleError(explain(f"{text!r} is neither a published model name nor an existing path",
                                  expected=published_models(), found=text,
                                  fix="use one of the names above, a bundle folder or a package folder / archive"))
    return load_package(path, device=device, **(package_options or {}))
