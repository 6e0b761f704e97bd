"""Regression training on windows of the whole field with a halo (xkmcast.models.regression_windows):
windows wrap around a periodic longitude and stop at the poles, the loss is the hand-computed masked
MSE of the network on the wrapped crop (positions from the whole grid), the configuration turns it
on, and training on windows of a real field lowers the whole-field error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from _nets import randomise
from _tiny import FINE_SHAPE, INPUT_VARS, OUTPUT_VARS, STATE_VARS, state_only_stormcast, stats_for, tiny_stormcast
from conftest import NCL_STORM
from test_global_pipeline import LAT, LON, tiny_global

from xkmcast.data.stats import Stats
from xkmcast.diffusion.patching import halo_windows, random_patch_offsets
from xkmcast.errors import GridError
from xkmcast.models import build_pipeline, corrdiff_spec


def _hand_mask(y0, x0, shape, domain, halo, periodic):
    """(wh, ww) loss mask by the rule: halo pixels off along window edges that are not domain edges."""
    (wh, ww), (H, W) = shape, domain
    m = np.ones(shape)
    if y0 > 0:
        m[:halo] = 0
    if y0 + wh < H:
        m[wh - halo:] = 0
    if ww < W and (periodic or x0 > 0):
        m[:, :halo] = 0
    if ww < W and (periodic or x0 + ww < W):
        m[:, ww - halo:] = 0
    return m


def test_halo_windows_wrap_at_the_dateline_and_keep_the_poles():
    offsets = torch.tensor([[0, 15], [4, 3], [2, 19]])  # top row (pole), bottom row, across the seam
    w = halo_windows((12, 20), (8, 10), 3, 2, offsets=offsets, periodic_x=True)
    for p, (y0, x0) in enumerate(offsets.tolist()):
        assert w.global_index[p, 0, :, 0].tolist() == list(range(y0, y0 + 8))
        assert w.global_index[p, 1, 0].tolist() == [(x0 + j) % 20 for j in range(10)]
        np.testing.assert_array_equal(w.mask[p, 0].numpy(), _hand_mask(y0, x0, (8, 10), (12, 20), 2, True))
    flat = halo_windows((12, 20), (8, 10), 2, 2, offsets=torch.tensor([[2, 0], [2, 10]]))
    for p, x0 in enumerate((0, 10)):  # a regional grid: the domain's own columns stay in the loss
        np.testing.assert_array_equal(flat.mask[p, 0].numpy(), _hand_mask(2, x0, (8, 10), (12, 20), 2, False))
    whole = halo_windows((12, 20), (8, 40), 50, 2, generator=torch.Generator().manual_seed(0), periodic_x=True)
    assert whole.shape == (8, 20) and int(whole.offsets[:, 1].abs().max()) == 0  # the whole circle, unrolled
    assert bool((whole.mask[:, 0, 2:6] == 1).all())  # no halo along the whole x axis
    with pytest.raises(GridError, match="halo"):
        halo_windows((12, 20), (4, 10), 1, 2)


def _global_windowed(halo=2):
    pipe = tiny_global()
    pipe.spec.extra["input_skip"] = True  # the regression mean is R(c) + interp(c)
    pipe.spec.extra["regression_patch"] = {"shape": [8, 12], "halo": halo, "per_sample": 3}
    return pipe


def _crossing_seed(domain, shape, n):
    """A generator seed whose windows include one across the dateline."""
    for seed in range(100):
        off = random_patch_offsets(domain, shape, n, generator=torch.Generator().manual_seed(seed), periodic_x=True)
        if int(off[:, 1].max()) > domain[1] - shape[1]:
            return seed, off
    raise AssertionError("no seed with a window across the seam")


def test_corrdiff_window_loss_is_the_masked_loss_on_the_wrapped_crop():
    """CorrDiff on a global grid, non-trivial weights: the loss equals, window by window, the MSE of the
    regression network run on np.roll-crops of the condition, with position channels of the whole grid
    at the window's pixels (global index built by hand), plus the interpolation skip, over the mask."""
    pipe = _global_windowed()
    H, W = LAT.size, LON.size
    g = torch.Generator().manual_seed(5)
    cond, target = torch.randn(2, len(INPUT_VARS), H, W, generator=g), torch.randn(2, len(OUTPUT_VARS), H, W, generator=g)
    seed, offsets = _crossing_seed((H, W), (8, 12), 3)
    with torch.no_grad():
        loss = pipe.loss("regression", {"input": cond, "target": target}, generator=torch.Generator().manual_seed(seed)).loss
    assert loss.shape == (6,)
    net = pipe.stages["regression"]
    for p, (y0, x0) in enumerate(offsets.tolist()):
        c = torch.roll(cond, -x0, dims=-1)[..., y0:y0 + 8, :12]
        y = torch.roll(target, -x0, dims=-1)[..., y0:y0 + 8, :12]
        rows, cols = np.meshgrid(np.arange(y0, y0 + 8), (x0 + np.arange(12)) % W, indexing="ij")
        gi = torch.as_tensor(np.stack([rows, cols]))[None]
        with torch.no_grad():
            pred = net(torch.zeros_like(y), c, global_index=gi) + pipe.interpolation(c)
        m = torch.as_tensor(_hand_mask(y0, x0, (8, 12), (H, W), 2, True), dtype=torch.float32)
        want = ((pred - y) ** 2 * m).sum(dim=(1, 2, 3)) / (m.sum() * y.shape[1])
        torch.testing.assert_close(loss[p * 2:(p + 1) * 2], want, rtol=1e-5, atol=1e-6)


def test_the_halo_removes_the_window_border_error():
    """Inside the halo the window's prediction is much closer to the whole-field prediction than at the
    window's edge; with positions gathered from the wrong place (a ramp over the window, i.e. global
    index of the corner window) it is not."""
    pipe = _global_windowed()
    H, W = LAT.size, LON.size
    cond = torch.randn(1, len(INPUT_VARS), H, W, generator=torch.Generator().manual_seed(1))
    y0, x0 = 4, 26  # across the seam
    with torch.no_grad():
        whole = torch.roll(pipe.regression_mean(cond), -x0, dims=-1)[..., y0:y0 + 8, :12]
        c = torch.roll(cond, -x0, dims=-1)[..., y0:y0 + 8, :12]
        w = halo_windows((H, W), (8, 12), 1, 2, offsets=torch.tensor([[y0, x0]]), periodic_x=True)
        right = pipe.regression_mean(c, w.global_index)
        wrong = pipe.regression_mean(c, halo_windows((H, W), (8, 12), 1, 2, offsets=torch.tensor([[0, 0]])).global_index)
    inside, edge = w.mask[0, 0].bool(), ~w.mask[0, 0].bool()
    err = (right - whole).abs()[0].mean(0)
    print("window vs whole, inside / edge:", float(err[inside].mean()), float(err[edge].mean()))
    assert float(err[inside].mean()) < 0.6 * float(err[edge].mean())
    assert float((wrong - whole).abs()[0].mean(0)[inside].mean()) > 1.5 * float(err[inside].mean())


def test_stormcast_window_loss_is_the_masked_loss_on_the_crop():
    pipe = randomise(tiny_stormcast(stages=("regression",)), seed=2).eval()
    pipe.spec.extra.update(input_skip=True, regression_patch={"shape": [8, 12], "halo": 2, "per_sample": 2})
    g = torch.Generator().manual_seed(3)
    prev, nxt = (torch.randn(2, len(STATE_VARS), *FINE_SHAPE, generator=g) for _ in range(2))
    bg = torch.randn(2, 1, *FINE_SHAPE, generator=g)
    with torch.no_grad():
        loss = pipe.loss("regression", {"state": [prev, nxt], "background": bg}, generator=torch.Generator().manual_seed(4)).loss
    offsets = random_patch_offsets(FINE_SHAPE, (8, 12), 2, generator=torch.Generator().manual_seed(4))
    inv = pipe.invariant[None].expand(2, -1, -1, -1)
    for p, (y0, x0) in enumerate(offsets.tolist()):
        crop = [t[..., y0:y0 + 8, x0:x0 + 12] for t in (prev, bg, inv, nxt)]
        with torch.no_grad():
            pred = pipe.stages["regression"](torch.cat(crop[:3], dim=1)) + crop[0]  # input skip: from persistence
        m = torch.as_tensor(_hand_mask(y0, x0, (8, 12), FINE_SHAPE, 2, False), dtype=torch.float32)
        want = ((pred - crop[3]) ** 2 * m).sum(dim=(1, 2, 3)) / (m.sum() * len(STATE_VARS))
        torch.testing.assert_close(loss[p * 2:(p + 1) * 2], want, rtol=1e-5, atol=1e-6)


def test_a_state_only_stormcast_trains_on_windows_with_its_empty_background():
    """A nowcaster (no background: a batch's background has 0 channels, as the stormcast-cpu recipe's
    store gives it) on windows: the loss is the masked loss of the state's crop (it failed on the empty
    background's crop before)."""
    pipe = state_only_stormcast(Stats({"t2m": 288.0, "u10m": 0.0}, {"t2m": 5.0, "u10m": 3.0}), FINE_SHAPE, seed=2)
    pipe.spec.extra.update(input_skip=True, regression_patch={"shape": [8, 12], "halo": 2, "per_sample": 2})
    g = torch.Generator().manual_seed(3)
    prev, nxt = (torch.randn(2, 2, *FINE_SHAPE, generator=g) for _ in range(2))
    batch = {"state": [prev, nxt], "background": torch.zeros(2, 0, *FINE_SHAPE)}
    with torch.no_grad():
        loss = pipe.loss("regression", batch, generator=torch.Generator().manual_seed(4)).loss
    offsets = random_patch_offsets(FINE_SHAPE, (8, 12), 2, generator=torch.Generator().manual_seed(4))
    for p, (y0, x0) in enumerate(offsets.tolist()):
        crop, target = prev[..., y0:y0 + 8, x0:x0 + 12], nxt[..., y0:y0 + 8, x0:x0 + 12]
        with torch.no_grad():
            pred = pipe.stages["regression"](crop) + crop
        m = torch.as_tensor(_hand_mask(y0, x0, (8, 12), FINE_SHAPE, 2, False), dtype=torch.float32)
        want = ((pred - target) ** 2 * m).sum(dim=(1, 2, 3)) / (m.sum() * 2)
        torch.testing.assert_close(loss[p * 2:(p + 1) * 2], want, rtol=1e-5, atol=1e-6)


def test_the_configuration_turns_regression_windows_on():
    from xkmcast.models.specs import spec_from_config
    from xkmcast.train.config import load_config

    def spec(preset, *overrides, shape=(32, 64)):
        cfg = load_config(preset, ["data.output_vars=[t2m]", "data.input_vars=[t2m]", *overrides])
        return spec_from_config(cfg.model, cfg.data, shape)

    assert "regression_patch" not in spec("corrdiff-tiny-regression").extra
    assert spec("corrdiff-tiny-regression", "data.patch=[16,16]").extra["regression_patch"] == \
        {"shape": [16, 16], "halo": 8, "per_sample": 1}
    got = spec("corrdiff-tiny-regression", "data.patch=[16,16]", "data.regression_patch=[32,40]",
               "data.regression_halo=4", "data.patches_per_sample=2").extra["regression_patch"]
    assert got == {"shape": [32, 40], "halo": 4, "per_sample": 2}
    # a window as large as the field: whole-field regression (patched diffusion unchanged)
    assert "regression_patch" not in spec("corrdiff-tiny-regression", "data.patch=[16,16]",
                                          "data.regression_patch=[32,64]").extra
    assert "regression_patch" in spec("stormcast-tiny-regression", "data.patch=[16,16]").extra
    assert "regression_patch" not in spec("vit-tiny", "data.patch=[16,16]").extra  # a ViT is not convolutional


def _storm_pairs():
    """Real 6-hourly surface temperature (NCL storm, 33 x 36, 64 times; missing points masked) and its
    3x block mean, bilinearly back on the fine grid, normalised."""
    if not NCL_STORM.exists():
        pytest.skip(f"real test data not found at {NCL_STORM} (../shared is not beside this clone)")
    with xr.open_dataset(NCL_STORM / "Tstorm.cdf") as ds:
        t = torch.as_tensor(ds["t"].values, dtype=torch.float32)[:, None]
    valid = torch.isfinite(t)
    t = torch.where(valid, (t - t[valid].mean()) / t[valid].std(), torch.zeros(()))
    coarse = F.interpolate(F.avg_pool2d(t, 3), size=t.shape[-2:], mode="bilinear", align_corners=False)
    return coarse, t, valid


@pytest.mark.slow
def test_training_on_windows_lowers_the_whole_field_error_of_a_real_field():
    """The tiny CorrDiff regression trained only on 16 x 16 windows (halo 3) of a real field: its
    whole-field error on held-out times ends clearly below interpolation (where the input skip starts it)."""
    coarse, fine, valid = _storm_pairs()
    torch.manual_seed(0)
    spec = corrdiff_spec(["t2m"], ["t2m"], tuple(fine.shape[-2:]), size="tiny", stages=("regression",),
                         input_skip=True)
    spec.stats = {"input": stats_for(["t2m"]), "output": stats_for(["t2m"]), "invariant": {}}
    spec.extra["regression_patch"] = {"shape": [16, 16], "halo": 3, "per_sample": 2}
    pipe = build_pipeline(spec)
    train, test = slice(0, 48), slice(48, 64)

    def whole_mse(pred):
        return float(((pred - fine[test]) ** 2)[valid[test]].mean())

    with torch.no_grad():
        interp, before = whole_mse(coarse[test]), whole_mse(pipe.regression_mean(coarse[test]))
    opt = torch.optim.Adam(pipe.stages.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    pipe.train()
    for _ in range(80):
        idx = torch.randint(0, 48, (4,), generator=g)
        batch = {"input": coarse[train][idx], "target": fine[train][idx], "mask": valid[train][idx]}
        loss = pipe.loss("regression", batch, generator=g).loss
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    pipe.eval()
    with torch.no_grad():
        after = whole_mse(pipe.regression_mean(coarse[test]))
    print(f"whole-field MSE: interpolation {interp:.4f}, before {before:.4f}, after {after:.4f}")
    assert after < 0.92 * interp and after < 0.92 * before  # beyond interpolation, from windows only

