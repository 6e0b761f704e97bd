"""A gain by spatial scale on fields (torch, no xarray): the members' spread shaped band by band.

A diffusion trained a few minutes draws residuals whose spread has roughly the right amplitude but the
wrong spectrum: too much at the smallest scales (members rougher than the weather, noise that a
rollout passes on from step to step), too little at large ones. The gain ``g(|k|)`` by radial
wavenumber corrects it,

    y = crop( F^-1[ g(|k|) F[E x] ] )

with ``E`` the even extension of ``x`` (the field mirrored along y and, unless the grid is periodic in
x, along x: ``2H x 2W``, continuous across its edges, so no wrap-around jump leaks power into the small
scales; the half-sample symmetric extension behind the DCT-II), ``F`` the 2-D DFT, ``|k|`` in cycles
per grid length (0 .. 0.5 along an axis) and ``log g`` piecewise linear between its knots (constant beyond).

Band power (:func:`band_power`) is the power of ``F[E x]`` summed over the rings of :func:`band_edges`:
``BANDS`` equal rings from 0 to the axes' Nyquist 0.5, the last one taking the corners beyond it; the
gains are calibrated on validation times (:mod:`xkmcast.train.spread_by_scale`) as the ratio, ring by
ring, of the error's power to the members' spread's, and the knots are the rings' centres.
"""

from __future__ import annotations

import math

import torch

from .base import piecewise_linear

__all__ = ["BANDS", "MIN_GAIN", "band_edges", "band_centres", "wavenumber", "mode_power", "ring_sum", "band_power",
           "gain_at", "filter_by_scale"]

#: rings of radial wavenumber the spread is calibrated in
BANDS = 8
#: the smallest gain (a ring without error power: its spread is removed, not made -inf in log g)
MIN_GAIN = 1e-3


def band_edges(bands: int = BANDS) -> list[float]:
    """The rings' edges in cycles per grid length: ``bands`` equal rings over 0 .. 0.5; the last ring
    extends to the corners (|k| up to 0.5 sqrt 2)."""
    return [0.5 * i / bands for i in range(bands)] + [float("inf")]


def band_centres(bands: int = BANDS) -> list[float]:
    """The knots of the gain: the middle of each ring (the last ring's: of its part below 0.5)."""
    return [0.5 * (i + 0.5) / bands for i in range(bands)]


def _extend(x: torch.Tensor, periodic_x: bool) -> torch.Tensor:
    """``E x``: mirrored along y, and along x unless ``periodic_x`` (..., 2H, 2W or W)."""
    x = torch.cat([x, x.flip(-2)], dim=-2)
    return x if periodic_x else torch.cat([x, x.flip(-1)], dim=-1)


def wavenumber(shape: tuple[int, int], periodic_x: bool = False, device=None,
               dtype=torch.float64) -> torch.Tensor:
    """|k| (cycles per grid length) at the modes of ``F[E x]`` (``rfft2`` layout) for an (H, W) field."""
    h, w = shape
    ky = torch.fft.fftfreq(2 * h, device=device, dtype=dtype)
    kx = torch.fft.rfftfreq(w if periodic_x else 2 * w, device=device, dtype=dtype)
    return torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


def mode_power(x: torch.Tensor, periodic_x: bool = False) -> torch.Tensor:
    """``|F[E x]|^2`` for ``x`` of shape (..., H, W), in the ``rfft2`` layout of :func:`wavenumber`."""
    return torch.fft.rfft2(_extend(x, periodic_x)).abs() ** 2


def ring_sum(power: torch.Tensor, k: torch.Tensor, bands: int = BANDS) -> torch.Tensor:
    """``(..., bands)``: ``power`` (..., modes as ``k``) summed over each ring of :func:`band_edges`."""
    edges = torch.tensor(band_edges(bands)[1:-1], device=k.device, dtype=k.dtype)
    ring = torch.bucketize(k, edges, right=True).reshape(-1).to(power.device)
    flat = power.reshape(*power.shape[:-2], -1)
    out = torch.zeros(*flat.shape[:-1], bands, dtype=flat.dtype, device=flat.device)
    return out.index_add_(-1, ring, flat)


def band_power(x: torch.Tensor, periodic_x: bool = False, bands: int = BANDS) -> torch.Tensor:
    """``(..., bands)``: the power of ``F[E x]`` (``x`` of shape (..., H, W)) summed over each ring of
    :func:`band_edges` (the half plane of ``rfft2``: ratios of two such powers are what is meaningful)."""
    k = wavenumber(tuple(x.shape[-2:]), periodic_x, x.device, x.dtype)
    return ring_sum(mode_power(x, periodic_x), k, bands)


def gain_at(k: torch.Tensor, knots, gains) -> torch.Tensor:
    """``g(|k|)``: through ``(knots[i], gains[i])``, linear in ``log g`` between the knots (gains span
    orders of magnitude from the largest scales to the smallest), constant beyond the ends."""
    logs = [math.log(max(float(g), MIN_GAIN)) for g in gains]
    return torch.exp(piecewise_linear(k, knots, logs))


def filter_by_scale(x: torch.Tensor, knots, gains, periodic_x: bool = False) -> torch.Tensor:
    """``crop(F^-1[g(|k|) F[E x]])`` of the module docstring for ``x`` of shape (..., H, W), ``g`` of
    :func:`gain_at`."""
    h, w = x.shape[-2:]
    extended = _extend(x, periodic_x)
    g = gain_at(wavenumber((h, w), periodic_x, x.device, x.dtype), knots, gains)
    out = torch.fft.irfft2(torch.fft.rfft2(extended) * g, s=tuple(extended.shape[-2:]))
    return out[..., :h, :w]
