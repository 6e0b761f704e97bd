"""The registry of published model packages: names -> pinned, hash-verified files in the cache.

The table is data (``xkmcast/catalogs/published_models.yaml``, described there); a file named by
``$XKMCAST_MODEL_REGISTRY`` (or ``registry=``) in the same format adds entries or replaces them.
:func:`fetch_package` downloads every file of an entry into
``<cache>/models/<name>/<revision>/`` (``<cache>`` as for the data catalog: ``$XKMCAST_DATA_DIR``
or pooch's cache) through :func:`xkmcast.data.download.retrieve`, so each file is checked against
its SHA-256 before it is used, and returns that folder.

A file name ending in ``/`` (``rea6/: unknown``) stands for every file under that folder at the pinned
revision, as the Hugging Face API lists them there; their names are not known in advance (the COSMO-REA
checkpoints are named inside the package), so such an entry needs ``trust_host_hashes=True`` and each file
is verified against the checksum the host lists at that commit.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from ...errors import CatalogError, DownloadError, IntegrityError, explain

__all__ = ["PackageEntry", "REGISTRY_PATH", "entries", "published_models", "fetch_package", "file_url"]

REGISTRY_PATH = Path(__file__).resolve().parents[2] / "catalogs" / "published_models.yaml"
HOSTS = ("huggingface", "ngc")
_UNKNOWN = {"unknown", "-", "none", "?", None}
_DEFAULT_ENDPOINTS = {"huggingface": ("HF_ENDPOINT", "https://huggingface.co"),
                      "ngc": ("NGC_CLI_SEARCH_SERVICE_URL", "https://api.ngc.nvidia.com/")}


@dataclasses.dataclass(frozen=True)
class PackageEntry:
    """One published package: where its files live, pinned to ``revision``, and their SHA-256 (or None)."""

    name: str
    family: str
    host: str
    repo: str
    revision: str
    files: dict[str, str | None]
    description: str = ""


def _parse(path: Path) -> dict[str, PackageEntry]:
    import yaml

    from ...data.archive import check_member_name

    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(doc, dict):
        raise CatalogError(explain(f"The model registry {path} is malformed", expected="a mapping name -> entry",
                                   found=type(doc).__name__))
    out = {}
    for name, e in doc.items():
        where = f"{path.name}: {name}"
        if not isinstance(e, dict) or not {"family", "host", "repo", "revision", "files"} <= set(e):
            raise CatalogError(explain(f"Malformed model registry entry {where}",
                                       expected="family, host, repo, revision, files", found=e))
        if e["host"] not in HOSTS:
            raise CatalogError(explain(f"Unknown host in {where}", expected=HOSTS, found=e["host"]))
        revision = str(e["revision"])
        if e["host"] == "huggingface" and not re.fullmatch(r"[0-9a-f]{40}", revision):
            raise CatalogError(explain(f"{where}: a Hugging Face revision must be a commit id",
                                       expected="40 hexadecimal digits (a branch name can move)", found=revision))
        files = {}
        for fname, digest in dict(e["files"]).items():
            folder = fname.endswith("/")
            if str(check_member_name(fname, archive=where)) + ("/" if folder else "") != fname:
                raise CatalogError(explain(f"{where}: non-canonical file name", found=fname))
            files[fname] = _digest(digest, where, fname)
            if folder and files[fname] is not None:
                raise CatalogError(explain(f"{where}: a folder entry has no SHA-256 of its own", expected="unknown",
                                           found=digest))
        out[str(name)] = PackageEntry(str(name), e["family"], e["host"], e["repo"], revision, files,
                                      " ".join(str(e.get("description", "")).split()))
    return out


def _digest(value: Any, where: str, fname: str) -> str | None:
    text = None if value is None else str(value).lower().removeprefix("sha256:")
    if text in _UNKNOWN:
        return None
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise CatalogError(explain(f"{where}: invalid SHA-256 for {fname}", expected="64 hex digits or 'unknown'", found=value))
    return text


def entries(registry: str | os.PathLike | None = None) -> dict[str, PackageEntry]:
    """The packaged table, updated by ``registry`` or ``$XKMCAST_MODEL_REGISTRY``."""
    table = _parse(REGISTRY_PATH)
    override = registry if registry is not None else os.environ.get("XKMCAST_MODEL_REGISTRY")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise CatalogError(explain("The model registry file does not exist", found=str(path)))
        table.update(_parse(path))
    return table


def published_models(registry: str | os.PathLike | None = None) -> list[str]:
    """The names ``xkmcast.load_model`` fetches (``corrdiff-taiwan``, ``stormcast-v1``, ...)."""
    return sorted(entries(registry))


def lookup(name: str, registry=None) -> PackageEntry:
    table = entries(registry)
    if name not in table:
        raise CatalogError(explain(f"{name!r} is not a published model xkmcast knows",
                                   expected=sorted(table), found=name,
                                   fix="use one of these names, or load_model(PATH) for a package folder or archive"))
    return table[name]


# ------------------------------------------------------------------------------------------ URLs
def _endpoint(host: str) -> str:
    env, default = _DEFAULT_ENDPOINTS[host]
    return os.environ.get(env) or default


def file_url(entry: PackageEntry, fname: str) -> str:
    """The URL of ``fname`` at the pinned revision (for NGC: the API URL that answers with the download URL)."""
    base = _endpoint(entry.host).rstrip("/")
    if entry.host == "huggingface":
        return f"{base}/{entry.repo}/resolve/{entry.revision}/{fname}"
    org, team, model = _ngc_parts(entry.repo)
    return f"{base}/v2/models/org/{org}/team/{team}/{model}/{entry.revision}/files?path={fname}"


def _ngc_parts(repo: str) -> tuple[str, str, str]:
    parts = repo.split("/")
    if len(parts) != 3:
        raise CatalogError(explain("An NGC repository is org/team/model", found=repo))
    return parts[0], parts[1], parts[2]


def _download_url(entry: PackageEntry, fname: str) -> str:
    from ...data.download import get_json

    url = file_url(entry, fname)
    if entry.host != "ngc":
        return url
    answer = get_json(url, what=f"the download URL of {entry.name}/{fname}")
    urls = answer.get("urls") if isinstance(answer, dict) else None
    if not urls:
        raise CatalogError(explain(f"NGC gave no download URL for {entry.name}/{fname}", expected='{"urls": [...]}',
                                   found=answer))
    return str(urls[0])


# ---------------------------------------------------------------------------------------- hashes
def _host_hashes(entry: PackageEntry) -> dict[str, tuple[str, str]]:
    """{file: ("sha256" | "git-sha1", digest)} as the Hugging Face API lists them at the pinned commit."""
    from ...data.download import get_json

    if entry.host != "huggingface":
        raise IntegrityError(explain(f"{entry.host} publishes no checksums xkmcast can ask for",
                                     fix="pass known_hashes={file: 'sha256:...'} computed from a trusted copy"))
    url = f"{_endpoint('huggingface').rstrip('/')}/api/models/{entry.repo}/revision/{entry.revision}?blobs=true"
    answer = get_json(url, what=f"the file checksums of {entry.repo}@{entry.revision}")
    if not isinstance(answer, dict) or answer.get("sha") not in (None, entry.revision):
        raise IntegrityError(explain("The host answered for another revision", expected=entry.revision,
                                     found=answer.get("sha") if isinstance(answer, dict) else answer))
    out = {}
    for sib in answer.get("siblings", []):
        lfs = sib.get("lfs") or {}
        if lfs.get("sha256"):
            out[sib["rfilename"]] = ("sha256", str(lfs["sha256"]).lower())
        elif sib.get("blobId"):
            out[sib["rfilename"]] = ("git-sha1", str(sib["blobId"]).lower())
    return out


def _unknown_error(entry: PackageEntry, missing: list[str]) -> IntegrityError:
    return IntegrityError(
        explain(
            f"No known SHA-256 for {missing} of {entry.name} ({entry.repo}@{entry.revision}): "
            "xkmcast never uses an unverified download",
            found="'unknown' in the packaged model registry",
            fix=("pass load_model(NAME, known_hashes={file: 'sha256:<digest>'}) from a copy you trust, name a "
                 "registry file with $XKMCAST_MODEL_REGISTRY" +
                 (", or leave trust_host_hashes=True (the default) to verify against the checksums Hugging Face lists "
                  "at the pinned commit" if entry.host == "huggingface" else "")),
        )
    )


# ----------------------------------------------------------------------------------------- fetch
def fetch_package(name: str, *, cache_dir: str | os.PathLike | None = None, known_hashes: dict[str, str] | None = None,
                  trust_host_hashes: bool = True, registry=None, progress: bool = False,
                  extra_files: tuple[str, ...] | list[str] = ()) -> Path:
    """Download (once, verified) every file of package ``name``; returns the folder holding them.

    Each file is checked against, in this order: ``known_hashes``, the registry's SHA-256, and (Hugging
    Face, ``trust_host_hashes``) the checksum the host lists for it at the pinned commit. A file with
    none of these is refused (NGC publishes no checksums: its hashes must come from the registry or
    ``known_hashes``); ``trust_host_hashes=False`` refuses instead of asking the host.
    ``extra_files``: files the package's own index names (StormScope's registry.json), fetched at the
    same revision and verified the same way (the table has no hash for them)."""
    from ...data.catalog import default_cache_dir
    from ...data.download import git_blob_sha1, retrieve

    entry = lookup(name, registry)
    root = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
    folder = root / "models" / entry.name / entry.revision
    from ...data.archive import check_member_name

    folders = [f for f in entry.files if f.endswith("/")]
    if folders and not (trust_host_hashes and entry.host == "huggingface"):
        raise _unknown_error(entry, folders)
    host = _host_hashes(entry) if folders else {}
    files = {f: d for f, d in entry.files.items() if not f.endswith("/")}
    files.update(dict.fromkeys(_listed_under(entry, folders, host)))
    for fname in extra_files:
        if str(check_member_name(fname, archive=entry.name)) != fname:
            raise CatalogError(explain(f"{entry.name}: non-canonical file name", found=fname))
        files.setdefault(fname, None)
    hashes = {f: ("sha256", d) for f, d in files.items() if d}
    for fname, digest in (known_hashes or {}).items():
        if fname not in files:
            raise CatalogError(explain(f"known_hashes names a file {entry.name} does not have", expected=list(files), found=fname))
        hashes[fname] = ("sha256", _digest(digest, entry.name, fname))
    missing = [f for f in files if f not in hashes]
    if missing and trust_host_hashes and entry.host == "huggingface":
        host = host or _host_hashes(entry)
        hashes.update({f: host[f] for f in missing if f in host})
        missing = [f for f in files if f not in hashes]
    if missing:
        raise _unknown_error(entry, missing)
    for fname in files:
        kind, digest = hashes[fname]
        target = folder / fname
        if kind == "sha256":
            if not (target.exists() and _sha_ok(target, digest)):
                retrieve(_download_url(entry, fname), digest, target, progress=progress, what=f"{entry.name}/{fname}")
        elif not (target.exists() and git_blob_sha1(target) == digest):
            _retrieve_git_blob(_download_url(entry, fname), digest, target, what=f"{entry.name}/{fname}")
    return folder


def _listed_under(entry: PackageEntry, folders: list[str], host: dict) -> list[str]:
    """The files the host lists under each folder entry (CatalogError for a folder it lists nothing under)."""
    from ...data.archive import check_member_name

    out = []
    for prefix in folders:
        listed = sorted(f for f in host if f.startswith(prefix))
        for f in listed:  # names from the network land under the cache folder: refuse escaping ones
            if str(check_member_name(f, archive=f"{entry.repo}@{entry.revision}")) != f:
                raise CatalogError(explain(f"{entry.repo} lists a non-canonical file name", found=f))
        if not listed:
            raise CatalogError(explain(f"{entry.repo}@{entry.revision} lists no files under {prefix}",
                                       expected=f"files {prefix}...", found=sorted(host)[:20]))
        out += listed
    return out


def _sha_ok(path: Path, digest: str) -> bool:
    from ...data.download import sha256_of

    return sha256_of(path) == digest


def _retrieve_git_blob(url: str, blob_id: str, target: Path, *, what: str) -> None:
    """A small (non-LFS) file verified by its git blob id before it is moved into place."""
    import urllib.request

    from ...data.download import git_blob_sha1

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:  # noqa: S310
                out.write(response.read())
        except OSError as exc:
            raise DownloadError(explain(f"Downloading {what} failed", found=f"{type(exc).__name__}: {exc}",
                                        fix=f"check access to {url}")) from exc
        found = git_blob_sha1(tmp)
        if found != blob_id:
            raise IntegrityError(explain(f"The download of {what} does not match the host's git blob id; discarded",
                                         expected=blob_id, found=found))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
