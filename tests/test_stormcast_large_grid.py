"""StormCast's diffusion on a large grid. Patched diffusion (trained on random patches and sampled on
overlapping blended patches, as CorrDiff's): the spec's channels, the loss replayed by hand on every
patch row, and rows of a batch that stay their own through the patches (the positions and the
per-sample keyword tensors of each patch row). The frozen regression's mean keyed by store time and
lead time (computed once per key: tests/test_residual_scale.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _nets import TINY_UNET, randomise
from _tiny import FINE_SHAPE, STATE_VARS, tiny_stormcast

from xkmcast.diffusion.edm import EDMPrecond
from xkmcast.diffusion.patched_denoiser import PatchedDenoiser
from xkmcast.diffusion.patching import GridPatching
from xkmcast.models.specs import LEARNABLE_GRID_CHANNELS, GRID_CHANNELS, stormcast_spec
from xkmcast.nn.unet_posembd import SongUNetPosLtEmbd

PATCH = (12, 12)


def _batch(pipe, n: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    c = len(STATE_VARS)
    return {"state": [torch.randn(n, c, *FINE_SHAPE, generator=g), torch.randn(n, c, *FINE_SHAPE, generator=g)],
            "background": torch.randn(n, 1, *FINE_SHAPE, generator=g)}


@pytest.mark.parametrize("patch, patched", [(PATCH, True), (FINE_SHAPE, False), (None, False)])
def test_spec_of_a_patched_stormcast_doubles_the_condition_and_learns_its_grid(patch, patched):
    """Patched: noisy state + condition + the whole condition resized + a learnable 100-channel grid;
    a patch of the whole field (or none) is the whole-field network (4 sinusoidal channels)."""
    spec = stormcast_spec(STATE_VARS, FINE_SHAPE, background_vars=["msl"], invariant_vars=["orog"], size="tiny",
                          patch=patch)
    kw = spec.networks["diffusion"]["kwargs"]
    c_cond = 3 + 1 + 1 + 3  # state, background, invariant, regression
    grid = LEARNABLE_GRID_CHANNELS if patched else GRID_CHANNELS
    assert kw["in_channels"] == 3 + c_cond * (2 if patched else 1) + grid
    assert kw["gridtype"] == ("learnable" if patched else "sinusoidal")
    assert spec.patch == (list(patch) if patched else None)


def test_patched_stormcast_loss_is_the_edm_loss_of_each_patch_row():
    """patches_per_sample = 2 on a batch of 2: each of the 4 patch-major rows' loss recomputed by hand
    (replaying corners, ln sigma and eps) on its patch of the scaled residual, its condition cut at the
    same place with the whole condition resized appended, and its own pixel indices."""
    pipe = tiny_stormcast(patch=PATCH)
    randomise(pipe.stages["diffusion"], seed=3)
    randomise(pipe.stages["regression"], seed=4)
    pipe.spec.extra["patches_per_sample"] = 2
    batch = _batch(pipe)
    prev, nxt = batch["state"]
    H, W = FINE_SHAPE
    with torch.no_grad():
        loss, sigma = pipe.loss("diffusion", batch, generator=torch.Generator().manual_seed(0))
        replay = torch.Generator().manual_seed(0)
        y0 = torch.randint(0, H - PATCH[0] + 1, (2,), generator=replay).tolist()
        x0 = torch.randint(0, W - PATCH[1] + 1, (2,), generator=replay).tolist()
        torch.randn(4, generator=replay)
        eps = torch.randn((4, 3, *PATCH), generator=replay)
        inv = pipe.invariant[None].expand(2, -1, -1, -1)
        mean = pipe.stages["regression"](torch.cat([prev, batch["background"], inv], 1))  # no input skip here
        cond = torch.cat([prev, batch["background"], inv, mean], 1)
        residual = (nxt - mean) / pipe.residual_scale(nxt)
        resized = F.interpolate(cond, size=PATCH, mode="bilinear", align_corners=False)
        net = pipe.stages["diffusion"]
        assert loss.shape == (4,)
        for p in range(2):
            for b in range(2):
                r, ys, xs = p * 2 + b, slice(y0[p], y0[p] + PATCH[0]), slice(x0[p], x0[p] + PATCH[1])
                target = residual[b:b + 1, :, ys, xs]
                condition = torch.cat([cond[b:b + 1, :, ys, xs], resized[b:b + 1]], dim=1)
                rows, cols = torch.meshgrid(torch.arange(y0[p], y0[p] + PATCH[0]),
                                            torch.arange(x0[p], x0[p] + PATCH[1]), indexing="ij")
                s = sigma[r:r + 1]
                D = net(target + s.reshape(-1, 1, 1, 1) * eps[r:r + 1], sigma=s, condition=condition,
                        global_index=torch.stack([rows, cols])[None])
                lam = (s**2 + net.sigma_data**2) / (s * net.sigma_data) ** 2
                torch.testing.assert_close(loss[r], (lam * ((D - target) ** 2).mean())[0], rtol=1e-5, atol=1e-6)


def test_patched_stormcast_steps_each_row_as_alone():
    """A step of 2 different states through the patched sampler equals each state stepped alone with
    its seed (each patch row has its sample's condition and positions); the step does go through the
    patches: its network sees patch-sized rows, P per member."""
    pipe = tiny_stormcast(patch=PATCH)
    randomise(pipe.stages["diffusion"], seed=5)
    randomise(pipe.stages["regression"], seed=6)
    batch = _batch(pipe, seed=2)
    prev, background = batch["state"][0], batch["background"]
    shapes = []
    hook = pipe.stages["diffusion"].register_forward_hook(lambda m, a, o: shapes.append(tuple(o.shape)))
    both = pipe.step(prev, background, seeds=[11, 12])
    hook.remove()
    patches = GridPatching(FINE_SHAPE, PATCH).num_patches
    assert patches > 1 and set(shapes) == {(2 * patches, 3, *PATCH)}
    for i, seed in enumerate([11, 12]):
        alone = pipe.step(prev[i:i + 1], background[i:i + 1], seeds=[seed])
        torch.testing.assert_close(both[i:i + 1], alone, rtol=1e-4, atol=1e-5)


def test_patched_denoiser_gives_each_patch_row_its_samples_lead_time():
    """A lead-time U-Net (one learnable map per lead) through the patched denoiser: two samples of
    different lead times together give what each gives alone (a label repeated sample-major instead of
    patch-major would give patch rows the other sample's lead)."""
    net = randomise(EDMPrecond(SongUNetPosLtEmbd(list(FINE_SHAPE), 3 + 2 * 2 + LEARNABLE_GRID_CHANNELS + 4, 3,
                                                 gridtype="learnable", N_grid_channels=LEARNABLE_GRID_CHANNELS,
                                                 lead_time_channels=4, lead_time_steps=3, **TINY_UNET)),
                    seed=7).eval()
    den = PatchedDenoiser(net, GridPatching(FINE_SHAPE, PATCH))
    g = torch.Generator().manual_seed(3)
    x, cond = torch.randn(2, 3, *FINE_SHAPE, generator=g), torch.randn(2, 2, *FINE_SHAPE, generator=g)
    sigma, labels = torch.tensor([0.8, 0.8]), torch.tensor([0, 2])
    with torch.no_grad():
        both = den(x, sigma, condition=cond, lead_time_label=labels)
        for i in range(2):
            alone = den(x[i:i + 1], sigma[i:i + 1], condition=cond[i:i + 1], lead_time_label=labels[i:i + 1])
            torch.testing.assert_close(both[i:i + 1], alone, rtol=1e-4, atol=1e-5)
        swapped = den(x, sigma, condition=cond, lead_time_label=labels.flip(0))
    assert (swapped - both).abs().max() > 1e-3  # the label matters: the test can fail


def test_the_mean_of_a_row_is_keyed_by_its_store_time_and_lead():
    """The lead time is part of the key (another lead, another mean); crops of a field are not cached."""
    from xkmcast.models.base import Pipeline

    keys = Pipeline.mean_keys({"time": torch.tensor([4, 4]), "lead_time_label": torch.tensor([0, 1])})
    assert keys.tolist() == [[4, 0], [4, 1]]
    assert Pipeline.mean_keys({"time": torch.tensor([4, 4])}).tolist() == [4, 4]
    assert Pipeline.mean_keys({"time": torch.tensor([4]), "offset": torch.tensor([[0, 3]])}) is None
    assert Pipeline.mean_keys({}) is None
