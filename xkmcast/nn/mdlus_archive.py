"""The ``.mdlus`` archive itself: read and write its three members, no network involved.

A ``.mdlus`` file is a zip archive (older ones: a tar archive) holding ``model.pt`` (a state dict,
read with ``torch.load(weights_only=True)`` only), ``args.json`` and ``metadata.json``.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xkmcast.errors import BundleError, explain

__all__ = ["MdlusContents", "read_mdlus", "write_archive"]

_FILES = ("model.pt", "args.json", "metadata.json")
_FILE_VERSION = "0.1.0"


@dataclass(frozen=True)
class MdlusContents:
    """The three parts of a ``.mdlus`` file, parsed."""

    name: str
    module: str
    args: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any]


def read_mdlus(path: str | Path, map_location: str | torch.device = "cpu") -> MdlusContents:
    """Parse a ``.mdlus`` file (zip or tar) without building any network."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(explain("checkpoint file not found", expected="a .mdlus file", found=str(path)))
    raw = _read_archive(path)
    try:
        args = json.loads(raw["args.json"].decode("utf-8"))
        metadata = json.loads(raw["metadata.json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(explain(f"{path.name}: args.json or metadata.json is not valid JSON", found=str(exc))) from exc
    if not isinstance(args, dict) or not isinstance(args.get("__name__"), str) or not isinstance(args.get("__args__"), dict):
        raise BundleError(
            explain(f"{path.name}: args.json is malformed", expected='{"__name__": ..., "__args__": {...}}', found=_short(args))
        )
    try:
        state = torch.load(io.BytesIO(raw["model.pt"]), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad payloads
        raise BundleError(
            explain(
                f"{path.name}: model.pt cannot be read as a plain state dict",
                found=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                fix="only tensors are loaded (weights_only=True); re-export the checkpoint with a state dict",
            )
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(explain(f"{path.name}: model.pt is not a state dict", expected="{name: tensor}", found=type(state).__name__))
    return MdlusContents(args["__name__"], str(args.get("__module__", "")), args, dict(state), metadata)


def _read_archive(path: Path) -> dict[str, bytes]:
    """The bytes of the three members; tar first (old files can look like both)."""
    found: dict[str, bytes] = {}
    try:
        if tarfile.is_tarfile(path):
            with tarfile.open(path, "r") as tar:
                for member in tar.getmembers():
                    base = Path(member.name).name
                    if member.isfile() and base in _FILES:
                        found[base] = tar.extractfile(member).read()
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    base = Path(name).name
                    if base in _FILES and not name.endswith("/"):
                        found[base] = archive.read(name)
        else:
            raise BundleError(explain(f"{path.name} is not a .mdlus checkpoint", expected="a zip or tar archive", found="neither"))
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise BundleError(explain(f"{path.name}: the archive is damaged", found=str(exc))) from exc
    missing = [f for f in _FILES if f not in found]
    if missing:
        raise BundleError(explain(f"{path.name}: incomplete .mdlus archive", expected=list(_FILES), found=sorted(found)))
    return found


def write_archive(path: Path, args: dict[str, Any], state: dict[str, torch.Tensor], *, legacy_format: bool = False,
                  versions: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write the three members (zip, or tar with ``legacy_format``) and return ``path``.

    ``versions``: file-version entries of metadata.json (default ``mdlus_file_version`` 0.1.0).
    """
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {"mdlus_file_version": _FILE_VERSION, **(versions or {}), "exported_by": "xkmcast"}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    members = {"model.pt": buffer.getvalue(), "args.json": json.dumps(args).encode(), "metadata.json": json.dumps(metadata).encode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy_format:
        with tarfile.open(path, "w") as tar:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for member, data in members.items():
                archive.writestr(member, data)
    return path


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
