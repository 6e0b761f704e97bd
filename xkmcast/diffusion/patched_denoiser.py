"""A denoiser run on overlapping patches of the field and fused at every call (CorrDiff's and
StormCast's patched diffusion at inference), and the per-sample keyword tensors of patch-major rows.

Rows are patch-major (row ``p * B + b`` is patch p of sample b), the patches those of a
:class:`~xkmcast.diffusion.patching.GridPatching`, each row given its own pixels' global index
(:func:`~xkmcast.diffusion.patching.row_index`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .patching import GridPatching, row_index

__all__ = ["PatchedDenoiser", "patch_rows"]


def patch_rows(values: dict, batch_size: int, num_patches: int) -> dict:
    """``values`` (keyword arguments of a network) with every tensor of one row per sample (first dim
    ``batch_size``) repeated to the ``num_patches * batch_size`` patch-major rows (row p * B + b gets
    sample b's); other values as they are."""
    def rows(v):
        if torch.is_tensor(v) and v.ndim and v.shape[0] == batch_size:
            return v.repeat(num_patches, *([1] * (v.ndim - 1)))
        return v

    return {k: rows(v) for k, v in values.items()}


class PatchedDenoiser(torch.nn.Module):
    """A denoiser run on the overlapping patches of ``patching`` and fused (taper-weighted blend of the
    overlaps, :meth:`GridPatching.fuse`) at every call: ``D(x) = fuse(D_net(split(x); split(c) ++ c
    resized))``, each patch row given its own pixels' global index (:func:`row_index`), keyword tensors
    of one row per sample (e.g. a lead-time label (B,)) repeated to the patch rows (:func:`patch_rows`)."""

    def __init__(self, net: torch.nn.Module, patching: GridPatching):
        super().__init__()
        self.net, self.patching = net, patching
        for name in ("sigma_min", "sigma_max", "sigma_data"):
            if hasattr(net, name):
                setattr(self, name, getattr(net, name))

    def forward(self, x: Tensor, sigma: Tensor, condition: Tensor | None = None, **kwargs) -> Tensor:
        b, p = x.shape[0], self.patching.num_patches
        xp = self.patching.split(x, context=None)
        cp = self.patching.split(condition, context=condition) if condition is not None else None
        sig = sigma.reshape(-1).repeat(p) if sigma.numel() == b else sigma
        out = self.net(xp, sigma=sig, condition=cp, global_index=row_index(self.patching.global_index(x.device), b),
                       **patch_rows(kwargs, b, p))
        return self.patching.fuse(out, batch_size=b)
