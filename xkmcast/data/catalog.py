"""The xkmcast catalog and hash-pinned downloads.

- :func:`open_catalog` opens the intake catalog shipped in the package (``xkmcast/catalogs/xkmcast.yaml``).
- :func:`fetch` downloads a registered file through pooch and returns its local path.

Contract of :func:`fetch`:

* The downloads go through one ``pooch.Pooch`` (:func:`registry_pooch`: ``pooch.create`` +
  ``load_registry``). Every download is pinned by a SHA-256 hash from ``xkmcast/catalogs/registry.txt``
  (pooch registry lines ``<key> <sha256> <url>``; ``unknown`` marks files whose hash has not been
  published yet), from a registry file named by ``$XKMCAST_REGISTRY`` or the ``registry=`` argument
  (its entries replace the packaged ones), or from ``known_hash=``. Without a known hash nothing is
  downloaded.
* The cache directory is ``cache_dir=``, else ``$XKMCAST_DATA_DIR``, else ``pooch.os_cache("xkmcast")``.
  Nothing is created or read at import time.
* A file whose hash does not match, freshly downloaded or already in the cache, is removed and
  :class:`~xkmcast.errors.IntegrityError` is raised: it is never returned.
* Archives (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``, Debian ``.deb``) are unpacked next to
  the archive into a folder named like the archive without its extension; that folder is returned.
  Unpacking is :func:`xkmcast.data.archive.extract`: members outside the folder, absolute paths, links
  and devices are refused before anything is written. Registry keys must be plain relative names.
* ``$XKMCAST_BASE_URL`` (or ``base_url=``) replaces every URL by ``<base_url>/<key>`` (a mirror).

``catalog_list`` and ``catalog_fetch`` are the plain functions behind ``xkmcast catalog list|fetch``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ..errors import CatalogError, DownloadError, IntegrityError, XkmcastError, explain

__all__ = [
    "CATALOG_PATH",
    "REGISTRY_PATH",
    "RegistryEntry",
    "catalog_fetch",
    "catalog_list",
    "default_cache_dir",
    "fetch",
    "load_registry",
    "open_catalog",
    "registry_pooch",
]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
CATALOG_PATH = _PACKAGE_DIR / "catalogs" / "xkmcast.yaml"
REGISTRY_PATH = _PACKAGE_DIR / "catalogs" / "registry.txt"

_UNKNOWN_HASHES = {"unknown", "-", "none", "?"}


# ------------------------------------------------------------------------------------------ catalog


def default_cache_dir() -> Path:
    """``$XKMCAST_DATA_DIR`` if set, else ``pooch.os_cache("xkmcast")``. Computes a path, creates nothing."""
    return Path(registry_pooch(packaged_only=True).abspath)


def _catalog_sources(path: Path | str | None = None) -> dict[str, dict]:
    import yaml

    path = Path(path) if path is not None else CATALOG_PATH
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    sources = doc.get("sources") if isinstance(doc, dict) else None
    if not isinstance(sources, dict):
        raise CatalogError(
            explain(
                f"The catalog {path} is malformed",
                expected="an intake v1 YAML catalog with a `sources:` mapping",
                found=type(sources).__name__,
            )
        )
    return sources


def open_catalog(path: Path | str | None = None, *, data_dir: Path | str | None = None):
    """Open the intake catalog (the packaged one by default).

    ``data_dir`` fills the catalog's ``{{ data_dir }}`` parameter: where :func:`fetch` unpacks the
    downloadable datasets (default :func:`default_cache_dir`). Returns an ``intake`` catalog:
    ``cat["sample"].to_dask()``.
    """
    import intake

    data_dir = Path(data_dir) if data_dir is not None else default_cache_dir()
    user_parameters = {
        "data_dir": {
            "description": "directory holding the downloaded datasets (xkmcast catalog fetch NAME)",
            "type": "str",
            "default": str(data_dir),
        }
    }
    return intake.open_catalog(str(path or CATALOG_PATH), user_parameters=user_parameters)


def catalog_list(path: Path | str | None = None) -> list[tuple[str, str]]:
    """``[(name, one-line description), ...]`` of the catalog entries, in catalog order."""
    return [
        (name, " ".join(str(entry.get("description", "")).split()))
        for name, entry in _catalog_sources(path).items()
    ]


def catalog_fetch(name: str, *, progress: bool = True, cache_dir: Path | str | None = None) -> Path:
    """Download the files of catalog entry ``name`` (see :func:`fetch`) and return their local path.

    Entries that are not downloadable (public cloud stores, user-built stores, the packaged sample)
    raise :class:`CatalogError` saying how to open them instead.
    """
    sources = _catalog_sources()
    if name not in sources:
        raise CatalogError(
            explain(f"Unknown catalog entry {name!r}", expected=list(sources), fix="see `xkmcast catalog list`")
        )
    key = (sources[name].get("metadata") or {}).get("fetch")
    if not key:
        raise CatalogError(
            explain(
                f"Catalog entry {name!r} has nothing to download",
                expected=f"one of {[n for n, s in sources.items() if (s.get('metadata') or {}).get('fetch')]}",
                fix=f"open it directly: xkmcast.open_catalog()[{name!r}].to_dask()",
            )
        )
    return fetch(key, progress=progress, cache_dir=cache_dir)


# ----------------------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class RegistryEntry:
    """One registry line: the file's key (relative path in the cache), its SHA-256 or None, its URL."""

    key: str
    sha256: str | None
    url: str

    @property
    def archive_suffix(self) -> str | None:
        from .archive import archive_suffix

        return archive_suffix(self.key)

    @property
    def stem(self) -> str:
        suffix = self.archive_suffix
        return self.key[: -len(suffix)] if suffix else self.key


def registry_pooch(registry: Path | str | None = None, *, cache_dir: Path | str | None = None,
                   base_url: str | None = None, packaged_only: bool = False):
    """The ``pooch.Pooch`` of the downloads: ``pooch.create`` + ``load_registry`` of the registry files.

    Cache folder: ``cache_dir``, else ``$XKMCAST_DATA_DIR`` (pooch's ``env=``), else
    ``pooch.os_cache("xkmcast")``. Registry: the packaged file, then ``registry`` or else
    ``$XKMCAST_REGISTRY`` (its lines replace or extend the packaged ones). Mirror: ``base_url`` or
    ``$XKMCAST_BASE_URL`` makes every URL ``<mirror>/<key>``. Updates of a cached file are disallowed:
    a cached file whose hash differs is an error (see :func:`fetch`), never silently replaced.
    Hashes are checked to be SHA-256 or ``unknown``; nothing is read from the network or the cache.
    """
    import pooch

    mirror = base_url if base_url is not None else os.environ.get("XKMCAST_BASE_URL")
    pup = pooch.create(path=Path(cache_dir) if cache_dir is not None else pooch.os_cache("xkmcast"),
                       base_url=mirror or "", env=None if cache_dir is not None else "XKMCAST_DATA_DIR",
                       allow_updates=False)
    if packaged_only:
        return pup
    _load(pup, REGISTRY_PATH)
    override = registry if registry is not None else os.environ.get("XKMCAST_REGISTRY")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise CatalogError(
                explain("The registry file does not exist", expected="a file of <key> <sha256> <url> lines", found=str(path))
            )
        _load(pup, path)
    if mirror:
        pup.urls.clear()
    return pup


def _load(pup, path: Path) -> None:
    """``pup.load_registry(path)``, with pooch's errors and malformed hashes as :class:`CatalogError`."""
    before = dict(pup.registry)
    try:
        pup.load_registry(path)
    except OSError as exc:
        raise CatalogError(explain(f"The registry {path} is malformed", expected="<key> <sha256|unknown> <url>",
                                   found=str(exc))) from exc
    for key, digest in pup.registry.items():
        if before.get(key) != digest:
            check_registry_key(key, path)
        if before.get(key) != digest and _sha256(digest) is None and digest not in _UNKNOWN_HASHES:
            raise CatalogError(
                explain(
                    f"The entry {key!r} of the registry {path} has an invalid hash",
                    expected="64 hexadecimal digits (SHA-256, optionally 'sha256:<digest>') or 'unknown'",
                    found=digest,
                )
            )


def check_registry_key(key: str, registry: Path | str = "the registry") -> str:
    """``key`` if it is a plain relative name inside the cache (``a/b/file.nc``), else CatalogError:
    no absolute path, drive, backslash, empty part, ``.`` or ``..`` (a key is a path under the cache)."""
    parts = key.split("/")
    if (not key or key.startswith("/") or "\\" in key or ":" in parts[0] or "\0" in key
            or any(part in ("", ".", "..") for part in parts)):
        raise CatalogError(explain(
            f"The registry key {key!r} of {registry} is not a plain relative name",
            expected="a relative path such as 'hrrr/2024/file.nc' (no '..', no leading '/', no drive)",
            found=key, fix="fix the registry line; keys name files inside the download cache"))
    return key


def _sha256(digest: str | None) -> str | None:
    """The bare hex SHA-256 of ``digest`` ("sha256:<hex>" or "<hex>"), None if it is not one."""
    hexa = (digest or "").lower().removeprefix("sha256:")
    return hexa if len(hexa) == 64 and all(c in "0123456789abcdef" for c in hexa) else None


def load_registry(registry: Path | str | None = None) -> dict[str, RegistryEntry]:
    """The registry entries (packaged, updated by ``registry`` or else ``$XKMCAST_REGISTRY``) by key."""
    pup = registry_pooch(registry, base_url="")
    return {key: RegistryEntry(key, _sha256(digest), pup.get_url(key)) for key, digest in pup.registry.items()}


def _resolve(name: str, keys) -> str:
    """The registry key of ``name``: the key itself or, if unique, a key without its archive suffix."""
    if name in keys:
        return name
    matches = [k for k in keys if RegistryEntry(k, None, "").stem == name]
    if len(matches) == 1:
        return matches[0]
    raise CatalogError(
        explain(
            f"{name!r} is not in the download registry",
            expected=sorted(keys),
            found=name if not matches else f"{len(matches)} entries named {name!r}",
            fix="use one of the names above, or add a line to a registry file named by $XKMCAST_REGISTRY",
        )
    )


# -------------------------------------------------------------------------------------------- fetch


def fetch(
    name: str,
    *,
    progress: bool = True,
    cache_dir: Path | str | None = None,
    known_hash: str | None = None,
    registry: Path | str | None = None,
    base_url: str | None = None,
) -> Path:
    """Download ``name`` (a registry key, or a key without its archive extension) and return its path.

    See the module docstring for the hash, cache and archive rules. ``known_hash`` ("sha256:..." or
    the bare hex digest) overrides the registry's hash, e.g. for the NGC files whose hash is unknown.
    """
    pup = registry_pooch(registry, cache_dir=cache_dir, base_url=base_url)
    key = _resolve(name, pup.registry)
    entry = RegistryEntry(key, _sha256(known_hash) or _sha256(pup.registry[key]), pup.get_url(key))
    if not entry.sha256:
        raise IntegrityError(
            explain(
                f"No known SHA-256 for {entry.key!r}: xkmcast never downloads an unpinned file",
                found=f"registry hash {known_hash or pup.registry[key]!r} for {entry.url}",
                fix=(
                    "download it once by hand, compute `sha256sum` and pass "
                    f"xkmcast.fetch({name!r}, known_hash='sha256:<digest>'), or write "
                    f"'{entry.key} <digest> <url>' into a file named by $XKMCAST_REGISTRY"
                ),
            )
        )
    if not entry.url.partition("://")[1]:
        raise CatalogError(explain(f"The registry entry {key!r} has no URL", expected="<key> <sha256> <url>",
                                   fix="add the URL, or set $XKMCAST_BASE_URL to a mirror"))
    pup.registry[key] = f"sha256:{entry.sha256}"
    target = Path(pup.abspath) / key
    try:
        pup.fetch(key, processor=_processor(entry), progressbar=progress)
    except ValueError as exc:
        if "updates are disallowed" in str(exc):
            target.unlink(missing_ok=True)
            raise IntegrityError(
                explain(
                    f"The cached file {target} does not match its registered SHA-256; it was removed",
                    expected=entry.sha256,
                    fix="run the fetch again to download a fresh copy",
                )
            ) from exc
        if "hash" not in str(exc).lower():
            raise
        target.unlink(missing_ok=True)  # pooch keeps a bad download in a temp file only; be sure
        raise IntegrityError(
            explain(
                f"The download of {entry.key!r} does not match its registered SHA-256 and was discarded",
                expected=entry.sha256,
                found=str(exc).splitlines()[0],
                fix="retry later; if it persists the file changed upstream: update the registry hash",
            )
        ) from exc
    except XkmcastError:  # an unsafe archive: refused, nothing extracted
        raise
    except Exception as exc:  # network errors from requests / urllib
        raise DownloadError(
            explain(f"Downloading {entry.key!r} failed", found=f"{type(exc).__name__}: {exc}",
                    fix=f"check access to {entry.url}")
        ) from exc
    if entry.archive_suffix:
        return target.parent / Path(entry.stem).name
    return target


def _processor(entry: RegistryEntry) -> Any:
    """A pooch processor unpacking an archive with :func:`xkmcast.data.archive.extract` (safe)."""
    if entry.archive_suffix is None:
        return None
    return unpack_processor(Path(entry.stem).name)


def unpack_processor(folder_name: str):
    """pooch processor: extract the downloaded archive (safely) into the sibling ``folder_name``."""
    from .archive import extract

    def unpack(fname: str, action: str, _pooch) -> str:
        dest = Path(fname).parent / folder_name
        if action in ("download", "update") or not dest.exists():
            extract(fname, dest)
        return str(dest)

    return unpack
