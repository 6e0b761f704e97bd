"""Content digests (SHA-256) of tensors, state dicts and JSON documents: the integrity and identity
checks of bundles, checkpoints and streamed outputs.

``state_sha256(obj)`` walks ``obj`` (dicts by sorted key, lists / tuples in order) and feeds, for
every tensor, its name path, dtype, shape and raw bytes (so a flipped bit, a reordered or renamed
tensor all change the digest); other leaves are fed as ``repr``. ``json_sha256(doc)`` hashes the
canonical JSON (sorted keys, no spaces) of ``doc``. Knows nothing of xarray.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["state_sha256", "json_sha256", "combine"]


def state_sha256(obj: Any) -> str:
    """Hex SHA-256 of a (nested) container of tensors (see the module docstring)."""
    h = hashlib.sha256()
    _feed(h, "", obj)
    return h.hexdigest()


def _feed(h, prefix: str, obj: Any) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"{prefix}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            _feed(h, f"{prefix}/{key}", obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{prefix}|seq{len(obj)}|".encode())
        for i, item in enumerate(obj):
            _feed(h, f"{prefix}[{i}]", item)
    else:
        h.update(f"{prefix}={obj!r}|".encode())


def json_sha256(doc: Any) -> str:
    """Hex SHA-256 of the canonical JSON of ``doc`` (sorted keys, compact separators)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def combine(*digests: str) -> str:
    """One hex SHA-256 naming several digests together (order matters)."""
    return hashlib.sha256("|".join(digests).encode()).hexdigest()
