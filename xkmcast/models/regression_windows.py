"""Regression training on random windows of the whole field, the loss kept away from their borders.

A regression stage trained on whole fields costs one whole-field forward and backward per sample
(a 1-degree global field is 64,800 pixels per sample). With ``spec.extra["regression_patch"] =
{"shape": [ph, pw], "halo": h, "per_sample": n}`` each sample gives n windows
(:func:`xkmcast.diffusion.patching.halo_windows`): the conditions and the target are cut at the same
random place (wrapping around a periodic x; rows stop at the poles), the network runs on the
windows alone with their global index (a positional grid is gathered at the window's pixels in the
whole grid, the channels it sees there at inference), and the loss of window row r is

    L_r = sum_{c,i,j} w_c m_ij (R(c_win)_cij - y_win,cij)^2 / sum_{c,i,j} m_ij

with m = 0 in the halo: the ``h`` pixels along each window edge that is not a domain edge, where
the network sees its own padding (zeros, or the window's other side when it pads circularly)
instead of the neighbouring field. Rows are patch-major (row p * B + b: window p of sample b).

Inference stays whole-field: the U-Net is fully convolutional and its position channels come from
the whole grid. Its group norms (and bottleneck attention) see the field the network is given, so
a window's prediction is close to, not bit-for-bit, the crop of the whole-field one; inside the
halo the difference is several times smaller than at the window's edge (tests/test_regression_windows.py).
Small windows cost skill (no context beyond the window; docs/guide/training.md gives numbers on a
real field): use them for fields too large to train whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..diffusion.losses import reduce_per_sample
from ..diffusion.patching import extract_patches, halo_windows, is_patched, row_index

__all__ = ["window_setting", "training_window", "position_kwargs", "windowed_loss"]


def window_setting(spec, shape: Sequence[int]) -> dict[str, Any] | None:
    """``spec.extra["regression_patch"]`` when its window is smaller than the field ``shape`` (H, W)
    along some axis; None when the regression trains on whole fields."""
    setting = spec.extra.get("regression_patch")
    if not setting:
        return None
    return setting if any(int(p) < int(n) for p, n in zip(setting["shape"], shape)) else None


def training_window(spec, stage: str, shape: Sequence[int] | None) -> list[int] | None:
    """The window ``[h, w]`` the ``stage`` of ``spec`` trains on in a field of ``shape`` (H, W): the
    regression's (:func:`window_setting`), the patched diffusion's ``spec.patch``; None: whole fields."""
    if shape is None:
        return None
    if stage == "regression":
        setting = window_setting(spec, shape)
        return None if setting is None else [int(p) for p in setting["shape"]]
    return [int(p) for p in spec.patch] if is_patched(spec.patch, shape) else None


def position_kwargs(net: torch.nn.Module, global_index: Tensor) -> dict[str, Tensor]:
    """``{"global_index": ...}`` when ``net`` (or the U-Net it holds under ``model``) gathers a
    positional grid, else ``{}`` (a plain SongUNet is translation invariant: a window needs no position)."""
    inner = getattr(net, "model", net)
    return {"global_index": global_index} if getattr(inner, "pos_embd", None) is not None else {}


def windowed_loss(
    predict: Callable[[list[Tensor | None], Tensor, int], Tensor],
    fields: Sequence[Tensor | None],
    target: Tensor,
    setting: dict[str, Any],
    *,
    periodic_x: bool = False,
    channel_weights: Tensor | None = None,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    offsets: Tensor | None = None,
) -> Tensor:
    """Per-window losses (P*B,) of a regression on random windows (module docstring).

    ``fields``: the whole-field inputs (B, C_k, H, W) (None passes through), cut like ``target``;
    ``predict(cut fields, global_index (P*B, 2, wh, ww) of each row, P)`` returns the prediction on the windows.
    ``mask`` (B or 1, 1 or C, H, W): valid target pixels. ``offsets`` (P, 2) places the windows.
    """
    B, _, H, W = target.shape
    win = halo_windows((H, W), setting["shape"], int(setting.get("per_sample", 1)), int(setting["halo"]),
                       generator=generator, device=target.device, periodic_x=periodic_x, offsets=offsets)

    def cut(x: Tensor | None) -> Tensor | None:
        return None if x is None else extract_patches(x, win.offsets, win.shape, periodic_x)

    P = win.offsets.shape[0]
    prediction = predict([cut(f) for f in fields], row_index(win.global_index, B), P)
    m = win.mask.to(target.dtype).repeat_interleave(B, dim=0)  # row p * B + b: window p
    if mask is not None:
        m = m * cut(mask.expand(B, -1, -1, -1)).to(target.dtype)
    return reduce_per_sample((prediction - cut(target)) ** 2, channel_weights, m)
