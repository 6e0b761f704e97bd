"""Patch-major batches (row p * B + b) give every row its own patch's positions: positional-embedding
U-Nets repeat a (P, ...) global index sample-major, so the pipelines pass one index per row
(xkmcast.diffusion.patching.row_index). Both tests fail when the (P, ...) index is passed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _nets import randomise
from _tiny import FINE_SHAPE, INPUT_VARS, OUTPUT_VARS, tiny_corrdiff
from test_global_pipeline import LAT, LON, tiny_global


def test_patched_denoiser_gives_every_row_its_own_positions():
    """Two identical rows through the patched denoiser (learnable positional grid, non-trivial weights)
    give identical outputs: each patch row gets its patch's positions whatever the batch size (a (P, ...)
    index repeated sample-major gave the second row's patches the wrong positions)."""
    from xkmcast.diffusion.patched_denoiser import PatchedDenoiser

    pipe = randomise(tiny_global(patch=(16, 16)), seed=4)
    H, W = LAT.size, LON.size
    den = pipe.patched(pipe.stages["diffusion"], (H, W), (16, 16))
    assert isinstance(den, PatchedDenoiser) and den.patching.num_patches > 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, len(OUTPUT_VARS), H, W, generator=g).repeat(2, 1, 1, 1)
    cond = torch.randn(1, len(INPUT_VARS), H, W, generator=g).repeat(2, 1, 1, 1)
    with torch.no_grad():
        out = den(x, torch.full((2,), 0.7), condition=cond)
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)


def test_patched_diffusion_loss_with_several_patches_per_sample_uses_each_rows_positions():
    """patches_per_sample = 2 on a batch of 2 (4 patch-major rows): the loss of every row is the EDM
    loss recomputed by hand on its own patch with its own pixel indices (replaying the draws:
    corners, ln sigma, eps)."""

    pipe = tiny_corrdiff(patch=(8, 8))
    randomise(pipe.stages["diffusion"], seed=3)
    pipe.spec.extra["patches_per_sample"] = 2
    g = torch.Generator().manual_seed(9)
    cond = torch.cat([torch.randn(2, len(INPUT_VARS), *FINE_SHAPE, generator=g), pipe.invariant[None].expand(2, -1, -1, -1)], 1)
    target = torch.randn(2, len(OUTPUT_VARS), *FINE_SHAPE, generator=g)
    with torch.no_grad():
        loss, sigma = pipe.loss("diffusion", {"input": cond, "target": target}, generator=torch.Generator().manual_seed(0))
        replay = torch.Generator().manual_seed(0)
        y0 = torch.randint(0, FINE_SHAPE[0] - 8 + 1, (2,), generator=replay).tolist()
        x0 = torch.randint(0, FINE_SHAPE[1] - 8 + 1, (2,), generator=replay).tolist()
        torch.randn(4, generator=replay)
        eps = torch.randn((4, len(OUTPUT_VARS), 8, 8), generator=replay)
        residual = target - pipe.stages["regression"](torch.zeros_like(target), cond)
        net = pipe.stages["diffusion"]
        resized = F.interpolate(cond, size=(8, 8), mode="bilinear", align_corners=False)
        for p in range(2):
            for b in range(2):
                r = p * 2 + b
                patch = residual[b:b + 1, :, y0[p]:y0[p] + 8, x0[p]:x0[p] + 8]
                condition = torch.cat([cond[b:b + 1, :, y0[p]:y0[p] + 8, x0[p]:x0[p] + 8], resized[b:b + 1]], dim=1)
                rows, cols = torch.meshgrid(torch.arange(y0[p], y0[p] + 8), torch.arange(x0[p], x0[p] + 8), indexing="ij")
                s = sigma[r:r + 1]
                D = net(patch + s.reshape(-1, 1, 1, 1) * eps[r:r + 1], sigma=s, condition=condition,
                        global_index=torch.stack([rows, cols])[None])
                lam = (s**2 + net.sigma_data**2) / (s * net.sigma_data) ** 2
                torch.testing.assert_close(loss[r], (lam * ((D - patch) ** 2).mean())[0], rtol=1e-5, atol=1e-6)
