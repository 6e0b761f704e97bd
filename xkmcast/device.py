"""Device and precision selection shared by training and inference.

``select_device(None | "auto")`` picks CUDA when present, then Apple MPS, then CPU. ``autocast(device,
precision)`` returns the autocast context for ``"amp-bf16"`` (CUDA and CPU both support bfloat16
autocast) or a no-op context for ``"fp32"``.
"""

from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError, explain

__all__ = ["select_device", "autocast", "check_precision", "PRECISIONS"]

PRECISIONS = ("fp32", "amp-bf16")


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to run on: ``None`` / ``"auto"`` -> cuda, else mps, else cpu."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            explain(
                f"Device {device!r} was asked for but CUDA is not available",
                expected="a machine with a CUDA GPU and a CUDA build of torch",
                found=f"torch {torch.__version__}, cuda available: False",
                fix="pass device='cpu' (or leave it unset to pick automatically)",
            )
        )
    return dev


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else ConfigError."""
    if precision not in PRECISIONS:
        raise ConfigError(explain("Unknown precision", expected=list(PRECISIONS), found=precision))
    return precision


def autocast(device: torch.device, precision: str = "fp32"):
    """The autocast context of ``precision`` on ``device`` (bf16 on CUDA and CPU)."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
