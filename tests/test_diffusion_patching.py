"""Patching: random training patches pull the right pixels; grid patches split and fuse exactly."""

from __future__ import annotations

import pytest
import torch

from xkmcast.diffusion.patching import GridPatching, extract_patches, global_index, random_patch_offsets, random_patches
from xkmcast.errors import GridError


def _field(B, C, H, W, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, C, H, W, generator=g, dtype=dtype)


@pytest.mark.parametrize(
    "domain,patch", [((32, 32), (16, 16)), ((20, 37), (10, 12)), ((37, 20), (12, 10)), ((16, 16), (16, 16))]
)
def test_grid_fuse_of_split_is_the_identity(domain, patch):
    gp = GridPatching(domain, patch, overlap=4, boundary=2)
    x = _field(2, 3, *domain)
    patches = gp.split(x)
    assert patches.shape == (gp.num_patches * 2, 3) + patch
    torch.testing.assert_close(gp.fuse(patches, batch_size=2), x, rtol=0, atol=1e-12)
    x32 = x.float()
    torch.testing.assert_close(gp.fuse(gp.split(x32)), x32, rtol=1e-6, atol=1e-6)


def test_grid_patches_are_the_pixels_named_by_the_global_index():
    """Every patch pixel (padding included, which reflects the image) is x at its global index."""
    gp = GridPatching((20, 37), (10, 12), overlap=4, boundary=2)
    x = _field(2, 3, 20, 37)
    gi = gp.global_index()
    assert gi.shape == (gp.num_patches, 2, 10, 12)
    assert gi.min() >= 0 and gi[:, 0].max() < 20 and gi[:, 1].max() < 37
    expected = x[:, :, gi[:, 0], gi[:, 1]].permute(2, 0, 1, 3, 4).reshape(-1, 3, 10, 12)
    assert torch.equal(gp.split(x), expected)
    # inside the image the global index is offset + (row, column)
    off = gp.offsets()
    p = gp.num_patches - 1
    assert gi[p, 0, 0, 0] == off[p, 0] and gi[p, 1, 0, 0] == off[p, 1]
    assert off[0].tolist() == [-2, -2]  # first patch starts in the boundary padding


def test_grid_layout_numbers():
    gp = GridPatching((448, 448), (64, 64), overlap=4, boundary=2)
    assert gp.stride == (58, 58) and gp.grid_shape == (8, 8)  # ceil(448 / 58) = 8
    gp = GridPatching((100, 50), (30, 20), overlap=4, boundary=2)
    assert gp.stride == (24, 14) and gp.grid_shape == (5, 4) and gp.num_patches == 20
    # every pixel is seen by at least one patch, overlaps by more
    count = gp.fuse(torch.ones(20, 1, 30, 20) * 0 + 1)  # weighted average of ones is one
    torch.testing.assert_close(count, torch.ones(1, 1, 100, 50), rtol=1e-6, atol=0)


def test_grid_fuse_averages_the_overlaps():
    gp = GridPatching((10, 10), (6, 6), overlap=2, boundary=0, blend="mean")  # stride 4, patches at 0, 4, 8
    patches = torch.arange(gp.num_patches, dtype=torch.float64).reshape(-1, 1, 1, 1).expand(-1, 1, 6, 6)
    fused = gp.fuse(patches)
    # patch p = ix * ny + iy; pixel (4, 0) is covered by (iy, ix) = (0, 0) and (1, 0): (0 + 1) / 2
    assert fused[0, 0, 4, 0].item() == pytest.approx(0.5)
    # pixel (5, 5): patches (0,0)=0, (1,0)=1, (0,1)=3, (1,1)=4 -> mean 2
    assert fused[0, 0, 5, 5].item() == pytest.approx(2.0)
    assert fused[0, 0, 0, 0].item() == 0.0


def test_grid_context_is_appended():
    gp = GridPatching((16, 24), (8, 8), overlap=2, boundary=1)
    x, ctx = _field(1, 2, 16, 24), _field(1, 3, 4, 4)
    out = gp.split(x, context=ctx)
    assert out.shape == (gp.num_patches, 5, 8, 8)
    assert torch.equal(out[:, :2], gp.split(x))
    assert torch.equal(out[0, 2:], out[-1, 2:])  # the same context on every patch
    const = torch.tensor([1.0, -2.0, 3.5], dtype=torch.float64).reshape(1, 3, 1, 1).expand(1, 3, 4, 4)
    resized = gp.split(x, context=const)[0, 2:]  # resizing a constant field keeps it
    torch.testing.assert_close(resized, const[0, :, :1, :1].expand(3, 8, 8), rtol=0, atol=1e-12)


def test_grid_rejects_impossible_layouts():
    with pytest.raises(GridError, match="expected"):
        GridPatching((64, 64), (8, 8), overlap=4, boundary=2)
    with pytest.raises(GridError):
        GridPatching((4, 64), (16, 16), overlap=4, boundary=2)
    with pytest.raises(GridError):
        GridPatching((32, 32), (16, 16)).split(torch.zeros(1, 1, 32, 30))


def test_random_patches_pull_the_right_pixels():
    B, H, W, ph, pw = 3, 24, 40, 8, 12
    y, cond = _field(B, 2, H, W), _field(B, 4, H, W) + 10
    lowres = _field(B, 5, H // 2, W // 2)
    out = random_patches(y, cond, (ph, pw), num_patches=4, context=lowres, generator=torch.Generator().manual_seed(3))
    assert out.target.shape == (4 * B, 2, ph, pw) and out.condition.shape == (4 * B, 4 + 5, ph, pw)
    for p, (y0, x0) in enumerate(out.offsets.tolist()):
        assert 0 <= y0 <= H - ph and 0 <= x0 <= W - pw
        for b in range(B):
            row = p * B + b
            assert torch.equal(out.target[row], y[b, :, y0:y0 + ph, x0:x0 + pw])
            assert torch.equal(out.condition[row, :4], cond[b, :, y0:y0 + ph, x0:x0 + pw])
        assert torch.equal(out.global_index[p, 0, :, 0], torch.arange(y0, y0 + ph))
        assert torch.equal(out.global_index[p, 1, 0, :], torch.arange(x0, x0 + pw))
    # the whole low-res field resized to the patch: (12, 20) -> (8, 12) is not an integer factor,
    # so check a case that is: a (16, 24) field halved is the mean of 2 x 2 blocks
    big = _field(B, 5, 2 * ph, 2 * pw)
    out2 = random_patches(y, None, (ph, pw), 2, context=big, generator=torch.Generator().manual_seed(4))
    blocks = big.reshape(B, 5, ph, 2, pw, 2).mean((3, 5))
    torch.testing.assert_close(out2.condition[:B], blocks)
    torch.testing.assert_close(out2.condition[B:], blocks)


def test_random_patches_condition_on_a_coarser_grid_is_resized_first():
    y = _field(1, 1, 16, 16)
    coarse = _field(1, 2, 8, 8)
    out = random_patches(y, coarse, 4, 1, offsets=torch.tensor([[4, 8]]))
    fine = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.equal(out.condition[0], fine[0, :, 4:8, 8:12])


def test_random_offsets_cover_the_valid_range():
    off = random_patch_offsets((10, 30), (4, 30), 2000, generator=torch.Generator().manual_seed(0))
    assert off[:, 0].min() == 0 and off[:, 0].max() == 6 and torch.all(off[:, 1] == 0)
    counts = torch.bincount(off[:, 0], minlength=7).double()
    assert counts.min() > 2000 / 7 * 0.7  # roughly uniform
    with pytest.raises(GridError):
        random_patch_offsets((10, 10), (12, 4), 1)


def test_extract_and_index_helpers_agree():
    x = _field(2, 1, 9, 11)
    off = torch.tensor([[0, 0], [5, 7]])
    gi = global_index(off, (4, 4))
    patches = extract_patches(x, off, (4, 4))
    assert torch.equal(patches[3], x[1, :, 5:9, 7:11])
    assert torch.equal(gi[1, :, -1, -1], torch.tensor([8, 10]))


@pytest.mark.reference
@pytest.mark.slow  # importing PhysicsNeMo takes ~20 s on a loaded machine
def test_grid_and_random_patching_match_physicsnemo():
    from xkmcast._reference import skip_without_physicsnemo

    skip_without_physicsnemo()
    from physicsnemo.diffusion.multi_diffusion import GridPatching2D, RandomPatching2D

    x, ctx = _field(2, 3, 40, 56).float(), _field(2, 2, 10, 14).float()
    ref = GridPatching2D((40, 56), (16, 24), overlap_pix=4, boundary_pix=2)
    ours = GridPatching((40, 56), (16, 24), overlap=4, boundary=2, blend="mean")
    assert ours.num_patches == ref.patch_num
    torch.testing.assert_close(ours.split(x, context=ctx), ref.apply(x, additional_input=ctx))
    assert torch.equal(ours.global_index(), ref.global_index())
    patches = torch.randn(ours.num_patches * 2, 3, 16, 24)
    torch.testing.assert_close(ours.fuse(patches, 2), ref.fuse(patches, batch_size=2))

    rp = RandomPatching2D((40, 56), (16, 24), patch_num=5)
    rp.reset_patch_indices(generator=torch.Generator().manual_seed(9))
    got = random_patches(x, None, (16, 24), 5, context=ctx, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(torch.cat([got.target, got.condition], 1), rp.apply(x, additional_input=ctx))
    assert torch.equal(got.global_index, rp.global_index())
