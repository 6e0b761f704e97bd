"""Patch-based training and inference ("multi-diffusion", as CorrDiff uses it).

Batch layout: patches are stacked patch-major, row ``p * B + b`` is patch p of sample b (PhysicsNeMo's
patching layout), and the global index has shape (P, 2, ph, pw): channel 0 the row (y) and channel 1
the column (x) of each patch pixel in the full grid. A positional-embedding network given a (P, ...)
index repeats it sample-major (row ``b * P + p``, PhysicsNeMo's convention too), so the pipelines give
it one index per row, :func:`row_index` (P*B, 2, ph, pw).

Training (:func:`random_patches`): P random top-left corners (shared by the samples of the batch),
uniform over the positions where the patch fits in the domain. The condition is cut at the same
place; the whole-domain context field (CorrDiff: the low-resolution input) is resized bilinearly
(align_corners=False) to the patch size and appended as extra channels, so that every patch sees
the large-scale situation.

Inference (:class:`GridPatching`): the domain (H, W) is reflect-padded by ``boundary`` pixels on the
top/left (and as much as needed on the bottom/right); patches of (ph, pw) tile it with stride
(ph - overlap - boundary, pw - overlap - boundary), ceil(H / stride_y) x ceil(W / stride_x) of
them, patch index p = ix * ny + iy. :meth:`GridPatching.fuse` blends the patches back with smooth
weights and crops the padding: each patch is weighted by the separable taper w(i, j) = t_y(i) t_x(j),
t(k) = sin^2(pi (k + 1/2) / (2 L)) over the L = overlap + boundary pixels at each end of the patch
(the width its neighbour shares) and 1 inside, and the weighted sum is divided by the sum of the
weights at each pixel, so the weights sum to 1, fusing the split of an image returns the image, a
constant field stays exactly constant, and a patch's own edge pixels (where a network sees its
zero padding) get almost no weight: no step at patch borders. ``blend="mean"`` gives every pixel
of a patch weight 1 (the flat average of PhysicsNeMo's ``GridPatching2D.fuse``, hard edges).
Rectangular patches and rectangular domains are allowed.

Periodic x (``periodic_x=True``, a global grid in longitude): training corners range over every
column and patches wrap around the last column to the first (global index columns modulo W);
in inference the domain is padded circularly along x (reflect along y) and the padded columns are
summed back onto the columns they copy, so patches across the seam blend like any others.

Windows with a halo (:func:`halo_windows`, a regression trained on patches of a whole field): a
window of (ph, pw) (clipped to the domain) is cut at a random corner (wrapping in periodic x) and
the network runs on the window alone, so its pixels near the window's edges see the network's
padding instead of their neighbours. The loss mask leaves out ``halo`` pixels along every window
edge that is not an edge of the domain; a window edge on the domain's edge (rows 0 and H - 1, the
poles of a global grid; columns 0 and W - 1 unless periodic) stays in, since the network pads
there on the whole field too. A window as wide as the domain is the whole axis (corner 0, no halo).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import GridError, explain

__all__ = [
    "is_patched",
    "random_patch_offsets",
    "global_index",
    "extract_patches",
    "resize_to",
    "RandomPatches",
    "random_patches",
    "GridPatching",
    "patch_stride",
    "patch_grid",
    "patched_pixels",
    "blend_window",
    "HaloWindows",
    "halo_windows",
    "row_index",
]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def random_patch_offsets(
    domain_shape: tuple[int, int],
    patch_shape: tuple[int, int] | int,
    num_patches: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    periodic_x: bool = False,
) -> Tensor:
    """(P, 2) long tensor of top-left corners (y0, x0), y0 ~ U{0..H-ph}, x0 ~ U{0..W-pw}
    (``periodic_x``: x0 ~ U{0..W-1}, the patch wrapping around)."""
    (H, W), (ph, pw) = _pair(domain_shape), _pair(patch_shape)
    if ph > H or pw > W:
        raise GridError(explain("the patch is larger than the domain", expected=f"patch <= {(H, W)}",
                                found=(ph, pw), fix="use a smaller patch_shape"))
    gdev = generator.device if generator is not None else (device or "cpu")
    y0 = torch.randint(0, H - ph + 1, (num_patches,), generator=generator, device=gdev)
    x0 = torch.randint(0, W if periodic_x else W - pw + 1, (num_patches,), generator=generator, device=gdev)
    return torch.stack([y0, x0], dim=1).to(device or gdev)


def global_index(offsets: Tensor, patch_shape: tuple[int, int] | int, periodic_width: int | None = None) -> Tensor:
    """(P, 2, ph, pw) pixel coordinates (y, x) in the full grid of patches with top-left ``offsets``;
    columns modulo ``periodic_width`` when given (patches wrapping around a periodic x)."""
    ph, pw = _pair(patch_shape)
    dy = torch.arange(ph, device=offsets.device).reshape(1, ph, 1)
    dx = torch.arange(pw, device=offsets.device).reshape(1, 1, pw)
    yy = (offsets[:, 0].reshape(-1, 1, 1) + dy).expand(-1, ph, pw)
    xx = (offsets[:, 1].reshape(-1, 1, 1) + dx).expand(-1, ph, pw)
    if periodic_width is not None:
        xx = torch.remainder(xx, periodic_width)
    return torch.stack([yy, xx], dim=1).long()


def is_patched(patch, shape) -> bool:
    """Does a patch shape ``patch`` ((ph, pw), or None: none) cut a field of ``shape`` (H, W) into patches?
    Not when it is None or the whole field."""
    return patch is not None and tuple(int(p) for p in patch) != tuple(int(n) for n in shape)


def row_index(index: Tensor, batch_size: int) -> Tensor:
    """(P, 2, ph, pw) -> (P*B, 2, ph, pw): the global index of every row of a patch-major batch (row
    p * B + b gets patch p's). Give a network this, not the (P, ...) index: a positional-embedding U-Net
    (PhysicsNeMo's too) repeats a (P, ...) index sample-major (row b * P + p), which mismatches
    patch-major rows whenever P > 1 and B > 1."""
    return index.repeat_interleave(int(batch_size), dim=0)


def extract_patches(x: Tensor, offsets: Tensor, patch_shape: tuple[int, int] | int, periodic_x: bool = False) -> Tensor:
    """Cut the patches at ``offsets`` (P, 2) from every sample of x (B, C, H, W): (P*B, C, ph, pw),
    row p * B + b = x[b, :, y0_p:y0_p+ph, x0_p:x0_p+pw] (columns modulo W with ``periodic_x``); a field
    of no channels (C = 0: a state-only model's empty background) gives (P*B, 0, ph, pw)."""
    gi = global_index(offsets.to(x.device), patch_shape, x.shape[-1] if periodic_x else None)  # (P, 2, ph, pw)
    patches = x[:, :, gi[:, 0], gi[:, 1]]  # advanced indexing -> (B, C, P, ph, pw)
    return patches.permute(2, 0, 1, 3, 4).reshape((gi.shape[0] * x.shape[0], x.shape[1]) + tuple(gi.shape[2:]))


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False) of (B, C, h, w) to (B, C, *size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class RandomPatches(NamedTuple):
    """Result of :func:`random_patches` (all patch-major, P*B rows)."""

    target: Tensor  # (P*B, C, ph, pw)
    condition: Tensor | None  # (P*B, Cc [+ Cx], ph, pw)
    offsets: Tensor  # (P, 2) top-left corners (y0, x0)
    global_index: Tensor  # (P, 2, ph, pw)


def random_patches(
    target: Tensor,
    condition: Tensor | None,
    patch_shape: tuple[int, int] | int,
    num_patches: int = 1,
    *,
    context: Tensor | None = None,
    generator: torch.Generator | None = None,
    offsets: Tensor | None = None,
    periodic_x: bool = False,
) -> RandomPatches:
    """Random training patches of a fine target (B, C, H, W) and its condition.

    ``condition`` (B, Cc, h, w) is cut at the same place; if it is not on the target's grid it is
    first resized bilinearly to (H, W). ``context`` (B, Cx, h', w'), e.g. the low-resolution input,
    is resized as a whole to the patch size and appended to the condition channels
    (cat([condition patch, context resized])). Give ``offsets`` (P, 2) to reuse positions.
    ``periodic_x``: corners anywhere along x, patches wrapping around (module docstring).
    """
    B, _, H, W = target.shape
    ph, pw = _pair(patch_shape)
    if offsets is None:
        offsets = random_patch_offsets((H, W), (ph, pw), num_patches, generator=generator, device=target.device,
                                       periodic_x=periodic_x)
    offsets = offsets.to(target.device)
    cond = None
    if condition is not None:
        cond = extract_patches(resize_to(condition, (H, W)), offsets, (ph, pw), periodic_x)
    if context is not None:
        ctx = resize_to(context, (ph, pw)).repeat(offsets.shape[0], 1, 1, 1)
        cond = ctx if cond is None else torch.cat([cond, ctx.to(cond.dtype)], dim=1)
    return RandomPatches(extract_patches(target, offsets, (ph, pw), periodic_x), cond, offsets,
                         global_index(offsets, (ph, pw), W if periodic_x else None))


class HaloWindows(NamedTuple):
    """Result of :func:`halo_windows`: P windows of shape (wh, ww)."""

    shape: tuple[int, int]  # (wh, ww), the patch clipped to the domain
    offsets: Tensor  # (P, 2) top-left corners (y0, x0)
    global_index: Tensor  # (P, 2, wh, ww)
    mask: Tensor  # (P, 1, wh, ww) float: 1 where the loss counts, 0 in the halo


def _interior(starts: Tensor, n: int, size: int, halo: int, wrap: bool) -> Tensor:
    """(P, n) bool: positions of a window of n along an axis of ``size`` at least ``halo`` from
    each window end that is not a domain end (with ``wrap`` only a whole axis has domain ends)."""
    k = torch.arange(n, device=starts.device)[None, :]
    whole = n == size
    lo = (starts[:, None] == 0) if (whole or not wrap) else torch.zeros_like(starts[:, None], dtype=torch.bool)
    hi = (starts[:, None] + n == size) if (whole or not wrap) else torch.zeros_like(lo)
    return ((k >= halo) | lo) & ((k < n - halo) | hi)


def halo_windows(
    domain_shape: tuple[int, int],
    patch_shape: tuple[int, int] | int,
    num_patches: int,
    halo: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    periodic_x: bool = False,
    offsets: Tensor | None = None,
) -> HaloWindows:
    """P random windows of ``patch_shape`` (clipped to the domain) with their loss mask: 0 within
    ``halo`` pixels of the window edges that are not domain edges (module docstring). Corners as
    :func:`random_patch_offsets` (wrapping along a periodic x narrower than the domain); give
    ``offsets`` (P, 2) to place them. Cut the fields with ``extract_patches(x, offsets, shape, periodic_x)``."""
    (H, W), (ph, pw) = _pair(domain_shape), _pair(patch_shape)
    ph, pw = min(ph, H), min(pw, W)
    wrap = periodic_x and pw < W
    for n, size, name in ((ph, H, "height"), (pw, W, "width")):
        if n < size and n <= 2 * halo:
            raise GridError(explain(f"the patch {name} leaves no pixel inside its halo", expected=f"> 2 * halo = {2 * halo}",
                                    found=n, fix="use larger patches or a smaller halo"))
    if offsets is None:
        offsets = random_patch_offsets((H, W), (ph, pw), num_patches, generator=generator, device=device,
                                       periodic_x=wrap)
    offsets = offsets.to(device or offsets.device)
    rows = _interior(offsets[:, 0], ph, H, halo, False)
    cols = _interior(offsets[:, 1], pw, W, halo, wrap)
    mask = (rows[:, :, None] & cols[:, None, :]).unsqueeze(1).to(torch.float32)
    return HaloWindows((ph, pw), offsets, global_index(offsets, (ph, pw), W if periodic_x else None), mask)


#: pixels neighbouring inference patches share, and pixels of padding around the domain (GridPatching's defaults)
OVERLAP, BOUNDARY = 4, 2


def patch_stride(patch_shape: tuple[int, int] | int, overlap: int = OVERLAP, boundary: int = BOUNDARY) -> tuple[int, int]:
    """The step between neighbouring inference patches: ``(ph - overlap - boundary, pw - overlap - boundary)``."""
    return tuple(p - overlap - boundary for p in _pair(patch_shape))


def patch_grid(domain_shape: tuple[int, int], patch_shape: tuple[int, int] | int, overlap: int = OVERLAP,
               boundary: int = BOUNDARY) -> tuple[int, int]:
    """The (rows, columns) of inference patches that tile ``domain_shape`` (module docstring):
    ``ceil(H / stride_y)`` by ``ceil(W / stride_x)`` (:func:`patch_stride`)."""
    return tuple(math.ceil(n / s) for n, s in zip(_pair(domain_shape), patch_stride(patch_shape, overlap, boundary)))


def patched_pixels(domain_shape: tuple[int, int], patch_shape: tuple[int, int] | int, overlap: int = OVERLAP,
                   boundary: int = BOUNDARY) -> int:
    """Pixels a network evaluates per denoising step to cover ``domain_shape`` with blended patches of
    ``patch_shape`` (:class:`GridPatching`): patches x ph x pw. (200, 400) with (80, 192): 9 patches,
    138,240 pixels (1.73 x the field's); with (112, 144): 6 patches, 96,768 (1.21 x)."""
    ny, nx = patch_grid(domain_shape, patch_shape, overlap, boundary)
    ph, pw = _pair(patch_shape)
    return ny * nx * ph * pw


#: ways :meth:`GridPatching.fuse` weighs the overlapping patches
BLENDS = ("taper", "mean")


def _taper(n: int, ramp: int) -> Tensor:
    """(n,) float64: sin^2(pi (k + 1/2) / (2 ramp)) for the first and last ``ramp`` entries, 1 between."""
    k = torch.arange(n, dtype=torch.float64)
    edge = torch.minimum(k, n - 1 - k)
    ramp = max(1, min(int(ramp), n // 2))
    return torch.where(edge < ramp, torch.sin(torch.pi * (edge + 0.5) / (2 * ramp)) ** 2, torch.ones_like(k))


def blend_window(patch_shape: tuple[int, int] | int, ramp: int) -> Tensor:
    """(ph, pw) float64 separable blending weights t_y(i) t_x(j) of a patch whose neighbours share
    ``ramp`` pixels at each end (strictly positive, 1 in the interior)."""
    ph, pw = _pair(patch_shape)
    return _taper(ph, ramp)[:, None] * _taper(pw, ramp)[None, :]


class GridPatching:
    """Overlapping grid patches of a (H, W) domain for inference, and their fusion.

    Parameters: ``domain_shape`` (H, W), ``patch_shape`` (ph, pw) or an int, ``overlap`` pixels
    shared by neighbouring patches (default 4), ``boundary`` pixels of padding (default 2),
    ``periodic_x`` circular padding along x with the padded columns fused back where they came from.
    ``blend`` "taper" (smooth weights, the default) or "mean" (flat average; module docstring).
    Needs ph > overlap + 2 boundary (and likewise for pw).
    """

    def __init__(
        self,
        domain_shape: tuple[int, int],
        patch_shape: tuple[int, int] | int,
        overlap: int = OVERLAP,
        boundary: int = BOUNDARY,
        periodic_x: bool = False,
        blend: str = "taper",
    ):
        if blend not in BLENDS:
            raise ValueError(f"unknown blend {blend!r}; expected one of {BLENDS}")
        self.periodic_x = bool(periodic_x)
        self.blend = blend
        self.domain_shape, self.patch_shape = _pair(domain_shape), _pair(patch_shape)
        self.overlap, self.boundary = int(overlap), int(boundary)
        for p, name in zip(self.patch_shape, ("height", "width")):
            if p <= self.overlap + 2 * self.boundary:
                raise GridError(explain(f"patch {name} too small for the overlap and boundary",
                                        expected=f"> overlap + 2*boundary = {self.overlap + 2 * self.boundary}",
                                        found=p, fix="use larger patches or smaller overlap/boundary"))
        self.stride = patch_stride(self.patch_shape, self.overlap, self.boundary)
        self.grid_shape = patch_grid(self.domain_shape, self.patch_shape, self.overlap, self.boundary)
        self.padded_shape = tuple(
            s * (n - 1) + p + self.boundary for s, n, p in zip(self.stride, self.grid_shape, self.patch_shape)
        )
        (H, W), (Hp, Wp), b = self.domain_shape, self.padded_shape, self.boundary
        self.padding = (b, Wp - W - b, b, Hp - H - b)  # left, right, top, bottom (F.pad order)
        if max(self.padding[0], self.padding[1]) >= W or max(self.padding[2], self.padding[3]) >= H:
            raise GridError(explain("the domain is too small for reflect padding with these patches",
                                    expected=f"padding < domain size {self.domain_shape}",
                                    found=f"padding (l, r, t, b) = {self.padding}",
                                    fix="use smaller patches, or no patching for such a small domain"))
        ramp = self.overlap + self.boundary
        self._window = blend_window(self.patch_shape, ramp) if blend == "taper" else torch.ones(self.patch_shape, dtype=torch.float64)
        ones = torch.ones((1, 1) + self.padded_shape, dtype=torch.float64)
        self._count = self._crop(self._fold(self._unfold(ones) * self._window))  # sum of the weights at each pixel

    @property
    def num_patches(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    def _unfold(self, padded: Tensor) -> Tensor:
        cols = F.unfold(padded, kernel_size=self.patch_shape, stride=self.stride)  # (B, C*ph*pw, ny*nx)
        B, C = padded.shape[0], padded.shape[1]
        (ph, pw), (ny, nx) = self.patch_shape, self.grid_shape
        cols = cols.reshape(B, C, ph, pw, ny, nx).permute(5, 4, 0, 1, 2, 3)  # (nx, ny, B, C, ph, pw)
        return cols.reshape(nx * ny * B, C, ph, pw)

    def _fold(self, patches: Tensor) -> Tensor:
        (ph, pw), (ny, nx) = self.patch_shape, self.grid_shape
        B = patches.shape[0] // (nx * ny)
        C = patches.shape[1]
        cols = patches.reshape(nx, ny, B, C, ph, pw).permute(2, 3, 4, 5, 1, 0).reshape(B, C * ph * pw, ny * nx)
        return F.fold(cols, output_size=self.padded_shape, kernel_size=self.patch_shape, stride=self.stride)

    def _pad(self, x: Tensor) -> Tensor:
        if self.periodic_x:
            left, right, top, bottom = self.padding
            return F.pad(F.pad(x, (left, right, 0, 0), mode="circular"), (0, 0, top, bottom), mode="reflect")
        return F.pad(x, self.padding, mode="reflect")

    def _crop(self, padded: Tensor) -> Tensor:
        """(B, C, Hp, Wp) sums over the padded domain -> (B, C, H, W): rows cropped; columns cropped,
        or with ``periodic_x`` every padded column added onto the column it copies."""
        (H, W), (left, _, top, _) = self.domain_shape, self.padding
        rows = padded[..., top:top + H, :]
        if not self.periodic_x:
            return rows[..., left:left + W]
        cols = torch.remainder(torch.arange(rows.shape[-1], device=rows.device) - left, W)
        return rows.new_zeros(rows.shape[:-1] + (W,)).index_add_(-1, cols, rows)

    def split(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> (P*B, C, ph, pw); ``context`` (B, Cx, h, w) resized to the patch size is
        appended to every patch as extra channels."""
        if tuple(x.shape[-2:]) != self.domain_shape:
            raise GridError(explain("the field does not have the domain shape of this patching",
                                    expected=self.domain_shape, found=tuple(x.shape[-2:])))
        patches = self._unfold(self._pad(x))
        if context is not None:
            ctx = resize_to(context, self.patch_shape).repeat(self.num_patches, 1, 1, 1)
            patches = torch.cat([patches, ctx.to(patches.dtype)], dim=1)
        return patches

    def fuse(self, patches: Tensor, batch_size: int | None = None) -> Tensor:
        """(P*B, C, ph, pw) -> (B, C, H, W): overlaps blended with the taper weights (normalised to
        sum to 1 at every pixel), padding cropped."""
        if batch_size is not None and patches.shape[0] != batch_size * self.num_patches:
            raise ValueError(f"{patches.shape[0]} patches for batch {batch_size} x {self.num_patches} patches")
        summed = self._crop(self._fold(patches * self._window.to(device=patches.device, dtype=patches.dtype)))
        return summed / self._count.to(device=summed.device, dtype=summed.dtype)

    def offsets(self, device: torch.device | str | None = None) -> Tensor:
        """(P, 2) top-left corners (y0, x0) of the patches in the unpadded grid (may be negative)."""
        (ny, nx), (sy, sx) = self.grid_shape, self.stride
        iy = torch.arange(ny).repeat(nx)  # p = ix * ny + iy
        ix = torch.arange(nx).repeat_interleave(ny)
        return torch.stack([iy * sy - self.boundary, ix * sx - self.boundary], dim=1).to(device)

    def global_index(self, device: torch.device | str | None = None) -> Tensor:
        """(P, 2, ph, pw) long: the (y, x) pixel of the full grid seen by each patch pixel; pixels in
        the padding carry the coordinates of the pixel reflected (or wrapped) into them."""
        H, W = self.domain_shape
        yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                                indexing="ij")
        grid = torch.stack([yy, xx]).unsqueeze(0)
        return self._unfold(self._pad(grid)).round().long().to(device)
