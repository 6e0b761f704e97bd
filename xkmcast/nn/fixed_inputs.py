"""Fixed input channels a network was trained with but its caller does not pass (pure torch).

CorrDiff-Taiwan's regression network receives, after the normalised inputs, four sinusoidal grid
channels built outside the network. :class:`AppendGridChannels` holds them (not as weights) and
appends them to the conditioning image ``img_lr`` before calling the wrapped network ``net``.
For an image of H rows and W columns, with ``u_j = 2 pi j / (W - 1)`` and ``v_i = 2 pi i / (H - 1)``
(``numpy.linspace(0, 2 pi, n)``), the channels are, in this order (Earth2Studio's ``CorrDiffTaiwan``)::

    sin(u_j),  sin(v_i),  cos(u_j),  cos(v_i)

:class:`ConditionAsInput` is the other fixed input: a regression network called as ``net(condition,
t = 0)`` (CorrDiff COSMO-REA's mean DiT) where a CorrDiff regression stage passes ``(zero latents,
condition)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["GRID_CHANNELS", "AppendGridChannels", "ConditionAsInput", "sinusoidal_grid"]

#: kinds of fixed channels and how many there are
GRID_CHANNELS = {"sinusoidal": 4}


def sinusoidal_grid(shape: tuple[int, int]) -> torch.Tensor:
    """The four channels ``(4, H, W)`` of the module docstring, float32 (computed in float64)."""
    h, w = int(shape[0]), int(shape[1])
    cols, rows = np.linspace(0, 2 * np.pi, w), np.linspace(0, 2 * np.pi, h)
    u = np.broadcast_to(cols[None, :], (h, w))
    v = np.broadcast_to(rows[:, None], (h, w))
    return torch.as_tensor(np.stack([np.sin(u), np.sin(v), np.cos(u), np.cos(v)]), dtype=torch.float32)


class AppendGridChannels(nn.Module):
    """``net(x, cat(img_lr, grid), **kw)``; ``grid`` is a non-persistent buffer (not in state dicts)."""

    def __init__(self, net: nn.Module, kind: str, shape: tuple[int, int]):
        super().__init__()
        if kind not in GRID_CHANNELS:
            raise ValueError(f"unknown grid channels {kind!r}; expected one of {sorted(GRID_CHANNELS)}")
        self.net, self.kind = net, kind
        self.register_buffer("grid", sinusoidal_grid(shape), persistent=False)

    def forward(self, x: torch.Tensor, img_lr: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        grid = self.grid.to(img_lr).unsqueeze(0).expand(img_lr.shape[0], -1, -1, -1)
        return self.net(x, torch.cat([img_lr, grid], dim=1), **kwargs)


class ConditionAsInput(nn.Module):
    """``net(img_lr, zeros(B))``: the latents ``x`` only give the batch size; the noise label is 0."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, img_lr: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.net(img_lr, img_lr.new_zeros(img_lr.shape[0]), **kwargs)
