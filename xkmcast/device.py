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


def select_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """The torch device to run on: ``None`` / ``"auto"`` -> cuda, else mps, else cpu.

    On CUDA the process takes GPU ``local_rank`` (modulo the GPUs present; torchrun's LOCAL_RANK)
    and makes it the current device."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                explain(
                    f"Device {device!r} was asked for but CUDA is not available",
                    expected="a machine with a CUDA GPU and a CUDA build of torch",
                    found=f"torch {torch.__version__}, cuda available: False",
                    fix="use device 'cpu' or 'auto' (training.device=auto)",
                )
            )
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(explain(f"Device {device!r} was asked for but MPS is not available",
                                  fix="use device 'cpu' or 'auto'"))
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
