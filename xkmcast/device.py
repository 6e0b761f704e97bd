"""Device and precision selection shared by training and inference.

``select_device(None | "auto")`` picks CUDA when present, then Apple MPS, then CPU. ``autocast(device,
precision)`` returns the autocast context for ``"amp-bf16"`` (CUDA and CPU both support bfloat16
autocast) or a no-op context for ``"fp32"``; ``"auto"`` is ``"amp-bf16"`` where the device computes
bfloat16 in hardware (:func:`native_bf16`) and ``"fp32"`` elsewhere (:func:`resolve_precision`).
:func:`allocator_warning` tells a process started with a glibc setting that slows torch on a CPU.
"""

from __future__ import annotations

import contextlib
import os

import torch

from .errors import ConfigError, explain

__all__ = ["select_device", "autocast", "check_precision", "resolve_precision", "native_bf16", "allocator_warning",
           "PRECISIONS", "SLOW_TRIM_THRESHOLD"]

PRECISIONS = ("fp32", "amp-bf16", "auto")


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


def native_bf16(device: torch.device) -> str | None:
    """What computes bfloat16 in hardware on ``device``, or None: on CUDA a GPU that supports it
    (Ampere and later); on a CPU the AMX tiles or the AVX-512 BF16 instructions (Intel Cooper Lake,
    Sapphire Rapids and later; AMD Zen 4 and later), which oneDNN's bf16 convolutions and matrix products
    use. Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":  # (torch's default also counts a GPU that only emulates bf16)
        return "CUDA" if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        for name, probe in (("AMX", "_is_amx_tile_supported"), ("AVX-512 BF16", "_is_avx512_bf16_supported")):
            if getattr(cpu, probe, lambda: False)():
                return name
    return None


def resolve_precision(device: torch.device, precision: str) -> str:
    """``precision`` with ``"auto"`` made ``"amp-bf16"`` where :func:`native_bf16` finds hardware for it
    on ``device``, else ``"fp32"`` (on the 2-core AMX CPU of the benchmarks, ``bench/bench_train.py``:
    1.09x the fp32 samples per second for the tiny U-Net preset, 2.26x for the mini one)."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return "amp-bf16" if native_bf16(device) else "fp32"


def autocast(device: torch.device, precision: str = "fp32"):
    """The autocast context of ``precision`` on ``device`` (bf16 on CUDA and CPU; ``"auto"``:
    :func:`resolve_precision`)."""
    if resolve_precision(device, precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


#: glibc's ``MALLOC_TRIM_THRESHOLD_`` below this (bytes) returns freed memory to the system so often that
#: torch's CPU allocations fault their pages in again at every step (:func:`allocator_warning`)
SLOW_TRIM_THRESHOLD = 1 << 20


def allocator_warning(environ=None) -> str | None:
    """A warning when this process started with ``MALLOC_TRIM_THRESHOLD_`` under
    :data:`SLOW_TRIM_THRESHOLD` (``environ``: ``os.environ``), else None. glibc reads it at start-up, so
    it is in effect for the whole process. dask.distributed's LocalCluster writes 65536 into its
    parent's environment for its worker processes, and every process started from that parent later
    (a training command run from the same notebook, torchrun's workers) inherits it: the mini U-Net's
    training step took 1.4x as long with it on 2 cores, the quickstart notebook's training about 2x."""
    value = (os.environ if environ is None else environ).get("MALLOC_TRIM_THRESHOLD_")
    try:
        threshold = int(value)
    except (TypeError, ValueError):
        return None
    if threshold >= SLOW_TRIM_THRESHOLD:
        return None
    return (f"warning: MALLOC_TRIM_THRESHOLD_={value} in this process's environment (a dask LocalCluster "
            "started by the parent process sets it) makes the C allocator return memory to the system at "
            "every free and torch fault it in again: training on a CPU can take 1.4-2x as long; unset it "
            "before starting the run (e.g. env -u MALLOC_TRIM_THRESHOLD_ xkmcast train ...)")
