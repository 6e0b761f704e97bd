"""Moving the token grid of a patch-token denoiser from one noise level to the next.

A transformer denoiser that cuts the field into p x p tokens (the DiT) writes each token's pixels from
one token vector. An under-trained one leaves a trace of that p-periodic grid on each evaluation, and
a sampler that calls it with the same alignment at every noise level stamps the trace into the sample
(seams at the token period: :func:`xkmcast.fields.blockiness.blockiness`). :class:`TokenJitter`
evaluates instead

    D'(x; sigma, condition) = crop_o( D(pad_o(x); sigma, condition = pad_o(condition)) )

with ``o = (o_y, o_x)`` rows / columns added at the top / left (reflect; circular along a periodic x)
and cropped off the output, so the token grid starts ``o`` pixels before the field. The offset is a
function of the noise level alone (that of the batch's first row),

    k = floor(1000 |ln sigma|) mod (p_y p_x),   o = (k // p_x, k mod p_x),

so a sampler's evaluations (each at another sigma) see the grid at other places and their traces
average out, the same sigma gives the same offset however the rows are batched, and training (sigma
drawn at random) sees all offsets. With ``average`` (at sampling) each evaluation is instead the mean
over the token's diagonal offsets ``(o mod p_y, o mod p_x)``, ``o < max(p_y, p_x)``: a trace made of
seams along y and seams along x is then spread evenly over the period (its seams average out within
each evaluation), for max(p_y, p_x) evaluations of the network. Within the field the denoiser is
unchanged; a Stormscope bundle records its setting (``spec.extra["token_jitter"]``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..nn.padding import crop, pad

__all__ = ["TokenJitter", "token_offset", "shifted", "averaged"]


def token_offset(sigma: float, patch: tuple[int, int]) -> tuple[int, int]:
    """``(o_y, o_x)`` of the module docstring for noise level ``sigma`` and token size ``(p_y, p_x)``
    ((0, 0) at sigma 0)."""
    py, px = (int(p) for p in patch)
    if py * px < 2 or not sigma > 0:
        return 0, 0
    k = int(math.floor(1000.0 * abs(math.log(float(sigma))))) % (py * px)
    return k // px, k % px


def averaged(fn, patch: tuple[int, int], x: Tensor, *others: Tensor | None, periodic_x: bool = False) -> Tensor:
    """The mean of :func:`shifted` ``fn`` over the token's diagonal offsets ``(o mod p_y, o mod p_x)``,
    ``o < max(p_y, p_x)`` (``patch`` = (p_y, p_x)): max(p_y, p_x) evaluations."""
    py, px = (int(p) for p in patch)
    offsets = [(o % py, o % px) for o in range(max(py, px))]
    return sum(shifted(fn, o, x, *others, periodic_x=periodic_x) for o in offsets) / len(offsets)


def shifted(fn, offset: tuple[int, int], x: Tensor, *others: Tensor | None, periodic_x: bool = False) -> Tensor:
    """``crop_o(fn(pad_o(x), *pad_o(others)))``: ``fn`` with the token grid starting ``offset`` = (o_y, o_x)
    pixels before the field (rows / columns added at the top / left, reflect; circular along a periodic
    x). Of ``others``, those on x's grid are padded alike, the rest (None, other shapes) passed as they are."""
    oy, ox = offset
    if not (oy or ox):
        return fn(x, *others)
    padding = (ox, 0, oy, 0)  # left, right, top, bottom
    others = tuple(pad(t, padding, periodic_x=periodic_x) if t is not None and t.shape[-2:] == x.shape[-2:] else t
                   for t in others)
    return crop(fn(pad(x, padding, periodic_x=periodic_x), *others), padding)


class TokenJitter:
    """``denoiser`` (called ``denoiser(x, sigma=..., condition=..., **kwargs)``) with its token grid moved
    by the offset of each call's noise level, or (``average``) averaged over the diagonal offsets (module
    docstring); ``patch``: the token size (p_y, p_x). Keeps the denoiser's sigma range and ``sigma_data``
    (samplers and losses read them)."""

    def __init__(self, denoiser: Any, patch: tuple[int, int], periodic_x: bool = False, average: bool = False):
        self.denoiser, self.patch, self.periodic_x = denoiser, tuple(int(p) for p in patch), bool(periodic_x)
        self.average = bool(average)
        for name in ("sigma_min", "sigma_max", "sigma_data"):
            if hasattr(denoiser, name):
                setattr(self, name, getattr(denoiser, name))

    def __call__(self, x: Tensor, sigma: Tensor | float, condition: Tensor | None = None, **kwargs: Any) -> Tensor:
        def fn(x, condition):
            return self.denoiser(x, sigma=sigma, condition=condition, **kwargs)

        if self.average:
            return averaged(fn, self.patch, x, condition, periodic_x=self.periodic_x)
        first = float(sigma.reshape(-1)[0]) if torch.is_tensor(sigma) else float(sigma)
        return shifted(fn, token_offset(first, self.patch), x, condition, periodic_x=self.periodic_x)
