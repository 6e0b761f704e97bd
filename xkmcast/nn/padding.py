"""Pad a field to the multiple a network needs, and crop the network's output back.

A U-Net of N levels halves the grid N - 1 times, so it needs H and W multiples of m = 2**(N-1);
a transformer needs multiples of its patch size. :func:`pad_to_multiple` pads (B, C, H, W) up to
the next multiples, splitting the padding between the two sides (floor(n/2) before, the rest
after) so that the crop is centred; :func:`crop` undoes it. Rows are reflect-padded (mirror
without repeating the edge, ``numpy.pad(mode="reflect")``); columns too, or circularly when the
grid is periodic in x (a global longitude axis: ``numpy.pad(mode="wrap")``). A side too short for
reflect padding (pad >= length) is edge-padded instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["Padding", "pad", "pad_to_multiple", "crop", "is_periodic_x"]

Padding = tuple[int, int, int, int]  # left, right, top, bottom (F.pad order)


def is_periodic_x(module: torch.nn.Module) -> bool:
    """True when any sub-module of ``module`` pads circularly along x (the ``periodic_x`` switch of
    :class:`xkmcast.nn.layers.Conv2d`, set by ``set_periodic_x``)."""
    return any(getattr(m, "periodic_x", False) for m in module.modules())


def _sides(n: int, multiple: int) -> tuple[int, int]:
    total = -n % multiple
    return total // 2, total - total // 2


def _pad_1d(x: torch.Tensor, before: int, after: int, dim: int, mode: str) -> torch.Tensor:
    if not (before or after):
        return x
    if mode == "reflect" and max(before, after) >= x.shape[dim]:
        mode = "replicate"
    pad = (before, after, 0, 0) if dim == -1 else (0, 0, before, after)
    return F.pad(x, pad, mode=mode)


def pad_to_multiple(x: torch.Tensor, multiple: int | tuple[int, int], *, periodic_x: bool = False) -> tuple[torch.Tensor, Padding]:
    """(B, C, H, W) -> ((B, C, H', W'), padding) with H', W' the next multiples of ``multiple``
    ((my, mx) or one int); reflect along y, reflect or (``periodic_x``) circular along x."""
    my, mx = (multiple, multiple) if isinstance(multiple, int) else multiple
    top, bottom = _sides(x.shape[-2], my)
    left, right = _sides(x.shape[-1], mx)
    padding = (left, right, top, bottom)
    return pad(x, padding, periodic_x=periodic_x), padding


def pad(x: torch.Tensor, padding: Padding, *, periodic_x: bool = False) -> torch.Tensor:
    """(B, C, H, W) padded by ``padding`` (left, right, top, bottom) in the module docstring's modes;
    :func:`crop` with the same ``padding`` undoes it."""
    left, right, top, bottom = padding
    x = _pad_1d(x, left, right, -1, "circular" if periodic_x else "reflect")
    return _pad_1d(x, top, bottom, -2, "reflect")


def crop(x: torch.Tensor, padding: Padding) -> torch.Tensor:
    """Remove ``padding`` (left, right, top, bottom) from the last two dims of x."""
    left, right, top, bottom = padding
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]
