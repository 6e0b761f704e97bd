"""The xkmcast catalog and hash-pinned downloads.

- :func:`open_catalog` opens the intake catalog shipped in the package (``xkmcast/catalogs/xkmcast.yaml``).
- :func:`fetch` downloads a registered file through pooch and returns its local path.

Contract of :func:`fetch`:

* Every download is pinned by a SHA-256 hash from ``xkmcast/catalogs/registry.txt`` (lines
  ``<key> <sha256> <url>``; ``unknown`` marks files whose hash has not been published yet), from a
  registry file named by ``$XKMCAST_REGISTRY`` or the ``registry=`` argument (its entries replace the
  packaged ones), or from ``known_hash=``. Without a known hash nothing is downloaded.
* The cache directory is ``cache_dir=``, else ``$XKMCAST_DATA_DIR``, else ``pooch.os_cache("xkmcast")``.
  Nothing is created or read at import time.
* A file whose hash does not match, freshly downloaded or already in the cache, is removed and
  :class:`~xkmcast.errors.IntegrityError` is raised: it is never returned.
* Archives (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``) are unpacked next to
  the archive into a folder named like the archive without its extension; that folder is returned.
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
]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
CATALOG_PATH = _PACKAGE_DIR / "catalogs" / "xkmcast.yaml"
REGISTRY_PATH = _PACKAGE_DIR / "catalogs" / "registry.txt"

_UNKNOWN_HASHES = {"unknown", "-", "none", "?"}


# ------------------------------------------------------------------------------------------ catalog


def default_cache_dir() -> Path:
    """``$XKMCAST_DATA_DIR`` if set, else ``pooch.os_cache("xkmcast")``. Computes a path, creates nothing."""
    env = os.environ.get("XKMCAST_DATA_DIR")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("xkmcast"))


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


def _parse_registry(path: Path) -> dict[str, RegistryEntry]:
    entries: dict[str, RegistryEntry] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 3:
                raise CatalogError(
                    explain(
                        f"Malformed line {lineno} of the registry {path}",
                        expected="<key> <sha256|unknown> <url>",
                        found=raw.strip(),
                    )
                )
            key, digest, url = parts
            _check_key(key, path, lineno)
            digest = digest.lower().removeprefix("sha256:")
            if digest in _UNKNOWN_HASHES:
                sha = None
            elif len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
                sha = digest
            else:
                raise CatalogError(
                    explain(
                        f"Line {lineno} of the registry {path} has an invalid hash",
                        expected="64 hexadecimal digits (SHA-256) or 'unknown'",
                        found=digest,
                    )
                )
            entries[key] = RegistryEntry(key, sha, url)
    return entries


def _check_key(key: str, path: Path, lineno: int) -> None:
    """Registry keys become paths in the cache: only plain relative names are allowed."""
    from .archive import check_member_name

    try:
        rel = check_member_name(key, archive=f"registry {path.name}")
    except Exception as exc:
        raise CatalogError(explain(f"Line {lineno} of the registry {path} has an unsafe key", expected="a plain relative name such as dir/file.nc",
                                   found=key)) from exc
    if str(rel) != key:
        raise CatalogError(explain(f"Line {lineno} of the registry {path} has a non-canonical key", expected=str(rel), found=key))


def load_registry(registry: Path | str | None = None) -> dict[str, RegistryEntry]:
    """The packaged registry, updated by ``registry`` (a file) or else by ``$XKMCAST_REGISTRY``."""
    entries = _parse_registry(REGISTRY_PATH)
    override = registry if registry is not None else os.environ.get("XKMCAST_REGISTRY")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise CatalogError(
                explain("The registry file does not exist", expected="a file of <key> <sha256> <url> lines", found=str(path))
            )
        entries.update(_parse_registry(path))
    return entries


def _resolve(name: str, entries: dict[str, RegistryEntry]) -> RegistryEntry:
    if name in entries:
        return entries[name]
    matches = [e for e in entries.values() if e.stem == name]
    if len(matches) == 1:
        return matches[0]
    raise CatalogError(
        explain(
            f"{name!r} is not in the download registry",
            expected=sorted(entries),
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
    entry = _resolve(name, load_registry(registry))
    sha = (known_hash or "").lower().removeprefix("sha256:") or entry.sha256
    if not sha:
        raise IntegrityError(
            explain(
                f"No known SHA-256 for {entry.key!r}: xkmcast never downloads an unpinned file",
                found=f"registry hash 'unknown' for {entry.url}",
                fix=(
                    "download it once by hand, compute `sha256sum` and pass "
                    f"xkmcast.fetch({name!r}, known_hash='sha256:<digest>'), or write "
                    f"'{entry.key} <digest> <url>' into a file named by $XKMCAST_REGISTRY"
                ),
            )
        )
    import pooch

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / entry.key
    if target.exists():
        _check_cached(target, sha)
    base_url = base_url if base_url is not None else os.environ.get("XKMCAST_BASE_URL")
    url = f"{base_url.rstrip('/')}/{entry.key}" if base_url else entry.url
    processor = _processor(entry)
    try:
        pooch.retrieve(
            url,
            known_hash=f"sha256:{sha}",
            fname=target.name,
            path=target.parent,
            processor=processor,
            progressbar=progress,
        )
    except ValueError as exc:
        if "hash" not in str(exc).lower():
            raise
        target.unlink(missing_ok=True)  # pooch keeps a bad download in a temp file only; be sure
        raise IntegrityError(
            explain(
                f"The download of {entry.key!r} does not match its registered SHA-256 and was discarded",
                expected=sha,
                found=str(exc).splitlines()[0],
                fix="retry later; if it persists the file changed upstream: update the registry hash",
            )
        ) from exc
    except XkmcastError:  # an unsafe archive: refused, nothing extracted
        raise
    except Exception as exc:  # network errors from requests / urllib
        raise DownloadError(
            explain(f"Downloading {entry.key!r} failed", found=f"{type(exc).__name__}: {exc}", fix=f"check access to {url}")
        ) from exc
    if entry.archive_suffix:
        return target.parent / Path(entry.stem).name
    return target


def _check_cached(path: Path, sha: str) -> None:
    import pooch

    found = pooch.file_hash(str(path), alg="sha256")
    if found != sha:
        path.unlink()
        raise IntegrityError(
            explain(
                f"The cached file {path} does not match its registered SHA-256; it was removed",
                expected=sha,
                found=found,
                fix="run the fetch again to download a fresh copy",
            )
        )


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
