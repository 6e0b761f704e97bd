"""Seam-free patched inference on a real field: the tapered blend leaves no step at patch borders."""

from __future__ import annotations

import pytest
import torch
import xarray as xr
from _nets import TINY_UNET, randomise
from conftest import GUAM

from xkmcast.diffusion.patching import GridPatching, blend_window
from xkmcast.nn import SongUNet

needs_guam = pytest.mark.skipif(not GUAM.exists(), reason=f"real test data not found at {GUAM} (set XKMCAST_SHARED)")


def _border_jump(field: torch.Tensor, gp: GridPatching) -> float:
    """Mean |difference| between neighbouring pixels across every patch border inside the domain
    (rows and columns where a patch starts or ends)."""
    (H, W), (ph, pw), (sy, sx), b = gp.domain_shape, gp.patch_shape, gp.stride, gp.boundary
    rows = {c for i in range(gp.grid_shape[0]) for c in (i * sy - b, i * sy - b + ph)} & set(range(1, H))
    cols = {c for i in range(gp.grid_shape[1]) for c in (i * sx - b, i * sx - b + pw)} & set(range(1, W))
    jumps = [(field[..., r, :] - field[..., r - 1, :]).abs().mean() for r in sorted(rows)]
    jumps += [(field[..., :, c] - field[..., :, c - 1]).abs().mean() for c in sorted(cols)]
    return float(torch.stack(jumps).mean())


def test_blend_weights_sum_to_one_and_keep_a_constant():
    gp = GridPatching((37, 50), (16, 20), overlap=4, boundary=2)
    const = torch.full((gp.num_patches, 1, 16, 20), 3.25, dtype=torch.float64)
    torch.testing.assert_close(gp.fuse(const), torch.full((1, 1, 37, 50), 3.25, dtype=torch.float64),
                               rtol=1e-15, atol=0)  # exact up to round-off
    w = blend_window((16, 20), 6)
    assert float(w.min()) > 0 and float(w[6:-6, 6:-6].min()) == 1.0
    # the taper pairs with its neighbour's: over a shared ramp the two weights sum to 1
    t = w[8, :]
    torch.testing.assert_close(t[:6] + t[-6:], torch.ones(6, dtype=torch.float64))


@needs_guam
@pytest.mark.parametrize("variable", ["T2_present", "U10_present"])
def test_patched_result_has_no_seams_on_a_real_field(variable):
    """WRF 2-m temperature and 10-m wind around Guam through a U-Net with non-trivial weights: the
    mean jump across patch borders of the patched result is within 1.2x the unpatched one's (a
    flat average of the patches, PhysicsNeMo's fuse, is far above)."""
    with xr.open_dataset(GUAM) as ds:
        f = torch.as_tensor(ds[variable].isel(Time=0).values, dtype=torch.float32)
    f = ((f - f.mean()) / f.std())[None, None]  # (1, 1, 68, 62)
    net = randomise(SongUNet(list(f.shape[-2:]), 1, 1, **TINY_UNET), seed=3).eval()
    noise = torch.zeros(1)
    with torch.no_grad():
        whole = net(f, noise)
        results = {}
        for blend in ("taper", "mean"):
            gp = GridPatching(f.shape[-2:], (24, 24), overlap=4, boundary=2, blend=blend)
            patches = gp.split(f)
            out = net(patches, noise.repeat(patches.shape[0]))
            results[blend] = _border_jump(gp.fuse(out, batch_size=1), gp)
    reference = _border_jump(whole, gp)
    print(variable, "unpatched", reference, results)
    assert results["taper"] <= 1.2 * reference
    assert results["mean"] > 1.2 * reference  # the test can fail: hard edges do leave steps
