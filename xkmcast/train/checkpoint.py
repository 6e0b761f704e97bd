"""Training checkpoints: atomic, pickle-free, rotated, checked against the run's configuration.

A checkpoint is one file ``<run dir>/checkpoints/ckpt-<step>.pt`` written with ``torch.save`` and read
with ``torch.load(weights_only=True)``: it holds only tensors, numbers, strings, lists and dicts
(state dicts of the model, optimizer and EMA; the step and samples seen; the RNG states of torch,
numpy and Python and of every rank; the data position; the model signature of the configuration).

Writing is atomic (:func:`xkmcast.atomic.atomic_path`): the file is written under a temporary name in
the same folder, flushed to disk and renamed with ``os.replace``, so a process killed at any moment leaves either the previous complete
checkpoint or the new one, never half a file; temporaries left by killed runs are removed by the next
save (:func:`xkmcast.atomic.remove_stale`). Only ``max_keep`` newest checkpoints are kept (0: all).

Integrity: ``state["sha256"]`` is the SHA-256 of the model and EMA tensors
(:func:`xkmcast.digest.state_sha256`), recomputed on load; a mismatch is a :class:`CheckpointError`
naming the file.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path, remove_stale
from ..errors import CheckpointError, explain

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "resolve_resume",
    "check_signature",
    "rng_state",
    "set_rng_state",
]

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"ckpt-{int(step):09d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (temporary files are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def resolve_resume(resume: str | None, directory: str | os.PathLike) -> Path | None:
    """``"latest"``: the newest checkpoint in ``directory`` or None; a path: that file (must exist)."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(directory)
    path = Path(resume)
    if path.is_dir():
        path = latest_checkpoint(path) or path
    if not path.is_file():
        raise CheckpointError(explain(
            f"cannot resume from {resume}",
            expected="'latest', a checkpoint file, or a folder of checkpoints",
            found="no such file" if not path.exists() else "a folder without checkpoints",
            fix="set training.resume=latest (or null to start afresh)",
        ))
    return path


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any], step: int, max_keep: int = 0) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; delete all but the newest ``max_keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    remove_stale(directory)
    state = {**state, "sha256": _tensor_digest(state)}
    with atomic_path(final) as tmp:
        torch.save(state, tmp)
    if max_keep > 0:
        for old in list_checkpoints(directory)[:-max_keep]:
            old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | os.PathLike, signature: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint (``weights_only=True``: no code is unpickled) and check its signature."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(explain(
            f"cannot read checkpoint {path}",
            expected="a checkpoint written by `xkmcast train`",
            found=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            fix="delete the file to resume from the previous checkpoint, or set training.resume=null",
        )) from exc
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(explain(f"{path} is not an xkmcast training checkpoint",
                                      expected="keys model, step, ...", found=type(state).__name__))
    if "sha256" in state and state["sha256"] != _tensor_digest(state):
        raise CheckpointError(explain(
            f"checkpoint {path} is corrupted: its tensors do not match the SHA-256 recorded in it",
            expected=state["sha256"], found=_tensor_digest(state),
            fix="delete the file to resume from the previous checkpoint, or set training.resume=null",
        ))
    if signature is not None:
        check_signature(state.get("signature", {}), signature, where=str(path))
    return state


def _tensor_digest(state: dict[str, Any]) -> str:
    from ..digest import state_sha256

    return state_sha256({"model": state.get("model"), "ema": state.get("ema")})


def check_signature(found: dict[str, Any], expected: dict[str, Any], *, where: str = "the checkpoint") -> None:
    """Refuse a checkpoint whose model settings differ from the run's, naming the differing keys: each
    key of ``expected`` (the run's signature) must have the same value in ``found``. A key that only the
    checkpoint records is a setting this version no longer counts as shaping the weights (one applied at
    export, say) and is not compared."""
    keys = sorted(expected)
    differ = [k for k in keys if found.get(k, "<absent>") != expected.get(k, "<absent>")]
    if differ:
        detail = [f"{k}: checkpoint {found.get(k, '<absent>')!r} vs config {expected.get(k, '<absent>')!r}"
                  for k in differ[:12]]
        raise CheckpointError(explain(
            f"{where} was written for a different model configuration (differing keys: {', '.join(differ)})",
            expected="the same model / variable settings as the checkpoint",
            found="; ".join(detail),
            fix="use a new training.run_id (or training.resume=null) for a changed model, "
                "or restore the checkpoint's settings",
        ))


# ------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """The global random states of torch (CPU and CUDA), numpy and Python, as plain containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": list(py_state), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
