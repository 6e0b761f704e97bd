"""One verified download: a URL, its SHA-256, a target path in the cache (pooch underneath).

:func:`retrieve` never returns a file whose SHA-256 differs from the one given: a cached file that
does not match is removed and downloaded again; a fresh download that does not match is discarded
and :class:`~xkmcast.errors.IntegrityError` is raised. Without a hash nothing is downloaded.
:func:`git_blob_sha1` is the hash Git (and the Hugging Face API, as ``blobId``) gives small files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import DownloadError, IntegrityError, XkmcastError, explain

__all__ = ["retrieve", "sha256_of", "git_blob_sha1", "get_json"]


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_blob_sha1(path: str | os.PathLike) -> str:
    """Git's object id of a file: sha1(b"blob <size>\\0" + content)."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def retrieve(url: str, sha256: str, target: str | os.PathLike, *, progress: bool = False, what: str | None = None) -> Path:
    """``target`` holding the file of ``url`` whose SHA-256 is ``sha256`` (downloaded unless cached)."""
    import pooch

    target = Path(target)
    what = what or target.name
    sha = sha256.lower().removeprefix("sha256:")
    if target.exists() and sha256_of(target) != sha:
        target.unlink()  # a stale or tampered cache entry: fetch it again
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        pooch.retrieve(url, known_hash=f"sha256:{sha}", fname=target.name, path=target.parent, progressbar=progress)
    except ValueError as exc:
        if "hash" not in str(exc).lower():
            raise
        target.unlink(missing_ok=True)
        raise IntegrityError(
            explain(
                f"The download of {what} does not match its pinned SHA-256 and was discarded",
                expected=sha,
                found=str(exc).splitlines()[0],
                fix="retry later; if it persists the file changed upstream: check the revision and the hash",
            )
        ) from exc
    except XkmcastError:
        raise
    except Exception as exc:  # network errors from requests / urllib
        raise DownloadError(explain(f"Downloading {what} failed", found=f"{type(exc).__name__}: {exc}",
                                    fix=f"check access to {url}")) from exc
    return target


def get_json(url: str, *, what: str, timeout: float = 60.0):
    """The JSON document at ``url`` (a host API answer); DownloadError on failure."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - https/http URLs only
            return json.loads(response.read().decode("utf-8"))
    except Exception as exc:
        raise DownloadError(explain(f"Asking the host for {what} failed", found=f"{type(exc).__name__}: {exc}",
                                    fix=f"check access to {url}")) from exc
