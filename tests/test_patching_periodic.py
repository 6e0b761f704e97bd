"""Wrap-around patches for fields periodic in x (global longitude): training patches cross the seam,
grid patches pad circularly and fuse the padded columns back onto the columns they copy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xkmcast.diffusion.patching import GridPatching, random_patches


def field(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_random_patches_wrap_around_the_seam():
    x = field(2, 3, 12, 20)
    offsets = torch.tensor([[1, 15], [0, 19], [4, 3]])
    rp = random_patches(x, x[:, :1], (8, 10), offsets=offsets, periodic_x=True)
    cols = (offsets[:, 1, None] + torch.arange(10)) % 20  # (P, pw)
    for p, (y0, _) in enumerate(offsets.tolist()):
        want = x[:, :, y0:y0 + 8][..., cols[p]]
        torch.testing.assert_close(rp.target[p * 2:(p + 1) * 2], want, rtol=0, atol=0)
        torch.testing.assert_close(rp.condition[p * 2:(p + 1) * 2], want[:, :1], rtol=0, atol=0)
        assert torch.equal(rp.global_index[p, 1, 0], cols[p])
    drawn = random_patches(x, None, (8, 10), 400, generator=torch.Generator().manual_seed(1), periodic_x=True)
    assert int(drawn.offsets[:, 1].max()) > 20 - 10  # corners beyond W - pw: patches across the seam
    assert int(drawn.global_index[:, 1].max()) < 20


def test_periodic_grid_split_fuse_identity_and_wrapped_index():
    gp = GridPatching((20, 37), (10, 12), overlap=4, boundary=2, periodic_x=True)
    x = field(2, 3, 20, 37)
    torch.testing.assert_close(gp.fuse(gp.split(x), batch_size=2), x, rtol=0, atol=1e-12)
    gi = gp.global_index()
    expected = x[:, :, gi[:, 0], gi[:, 1]].permute(2, 0, 1, 3, 4).reshape(-1, 3, 10, 12)
    assert torch.equal(gp.split(x), expected)
    assert gi[0, 1, 0, :2].tolist() == [35, 36]  # the first patch's left boundary is the last columns


def smooth(p: torch.Tensor) -> torch.Tensor:
    """A local operator run on each patch alone (zero padding at the patch edges)."""
    k = torch.full((1, 1, 3, 3), 1.0 / 9, dtype=p.dtype)
    return F.conv2d(p, k.expand(p.shape[1], 1, 3, 3).contiguous(), padding=1, groups=p.shape[1])


def test_periodic_patches_leave_no_seam_at_the_dateline():
    """With W a multiple of the x stride the layout of wrap-around patches is itself periodic, so any
    per-patch operator, fused, commutes with circular shifts by the stride: the seam columns are
    treated like every other column. Reflect padding shows the seam (mirrored neighbours there)."""
    H, W = 24, 40
    x = field(1, 2, H, W, seed=3)
    for periodic in (True, False):
        gp = GridPatching((H, W), (12, 16), overlap=4, boundary=2, periodic_x=periodic)
        assert gp.stride[1] == 10 and W % gp.stride[1] == 0

        def patched(f):
            return gp.fuse(smooth(gp.split(f)))

        for k in (10, 20, -10):
            diff = (patched(torch.roll(x, k, -1)) - torch.roll(patched(x), k, -1)).abs().max()
            assert (diff < 1e-12) if periodic else (diff > 1e-2), (periodic, k, float(diff))
