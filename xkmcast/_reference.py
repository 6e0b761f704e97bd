"""Access to the optional PhysicsNeMo reference implementation (the ``reference`` extra).

PhysicsNeMo is never a dependency of xkmcast: it is used by the parity tests and the benchmark
to check that our networks reproduce the published architecture number for number.

On CPU-only machines the torchvision wheel that PhysicsNeMo pulls in may be linked against CUDA
and fail at import with "operator torchvision::nms does not exist". Declaring the two operator
schemas that its Python side registers fake kernels for (``nms`` and ``qnms``) before torchvision
is imported makes the import succeed; the operators themselves are never called by our code.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from xkmcast.errors import OptionalDependencyError, explain

__all__ = ["import_physicsnemo", "skip_without_physicsnemo", "REFERENCE_EXTRA"]

REFERENCE_EXTRA = "reference"

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keep the torch.library.Library alive: dropping it unregisters the schemas


def _define_torchvision_schemas() -> None:
    """Declare ``torchvision::nms`` / ``torchvision::qnms`` if nothing has declared them yet.

    Safe to call many times. Does nothing when torchvision is already imported (its own
    extension then registered the operators, or failed in a way we cannot repair any more).
    """
    global _LIBRARY
    import torch

    if _LIBRARY is not None or "torchvision" in sys.modules:
        return
    missing = [name for name in _SCHEMAS if not _has_op(torch, name)]
    if not missing:
        return
    lib = torch.library.Library("torchvision", "DEF")
    for name in missing:
        lib.define(_SCHEMAS[name])
    _LIBRARY = lib


def _has_op(torch, name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def import_physicsnemo() -> ModuleType:
    """Import and return the ``physicsnemo`` package, applying the torchvision schema fix first.

    Raises
    ------
    OptionalDependencyError
        When PhysicsNeMo (or one of its imports) is not available; the message names the
        ``reference`` extra.
    """
    try:
        _define_torchvision_schemas()
        module = importlib.import_module("physicsnemo")
        # the subpackages the parity tests use; importing them surfaces torchvision problems here
        importlib.import_module("physicsnemo.models.diffusion_unets")
        return module
    except (ImportError, RuntimeError) as exc:
        raise OptionalDependencyError(
            explain(
                "The PhysicsNeMo reference implementation is not importable",
                expected="nvidia-physicsnemo==2.2.2 (with an importable torchvision)",
                found=f"{type(exc).__name__}: {exc}",
                fix=f"pip install 'xkmcast[{REFERENCE_EXTRA}]' (name torch==2.13.0 in the same command)",
            )
        ) from exc


def skip_without_physicsnemo() -> ModuleType:
    """For tests: return ``physicsnemo`` or skip the calling test with the reason it is missing."""
    import pytest

    try:
        return import_physicsnemo()
    except OptionalDependencyError as exc:
        pytest.skip(f"PhysicsNeMo reference extra not available: {str(exc).splitlines()[0]}")
