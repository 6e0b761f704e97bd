"""The token grid of a patch-token denoiser moving with the noise level (xkmcast.diffusion.token_jitter)."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch
import xarray as xr

from xkmcast.diffusion.samplers import sample
from xkmcast.diffusion.token_jitter import TokenJitter, token_offset
from xkmcast.fields.blockiness import blockiness


class Stamped:
    """The exact denoiser of data ``N(condition, s^2)`` with a stamp in the network's output F (EDM:
    ``D = c_skip x + c_out F``), tiled from its input's first pixel with period p -- what the token grid
    of a patch-token network leaves:

        D(x; sigma) = c + s^2 / (s^2 + sigma^2) (x - c) + c_out(sigma) stamp,   c_out = sigma s / sqrt(sigma^2 + s^2)
    """

    sigma_min, sigma_max, sigma_data = 0.002, 80.0, 0.05

    def __init__(self, stamp: torch.Tensor):
        self.stamp, self.inputs = stamp, []

    def __call__(self, x, sigma, condition=None):
        self.inputs.append(x)
        p, q = self.stamp.shape
        tiled = self.stamp.repeat(-(-x.shape[-2] // p), -(-x.shape[-1] // q))[: x.shape[-2], : x.shape[-1]]
        s2, sig = self.sigma_data ** 2, sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        c_out = sig * self.sigma_data / (sig ** 2 + s2).sqrt()
        return condition + s2 / (s2 + sig ** 2) * (x - condition) + c_out * tiled


def test_offsets_are_a_function_of_sigma_covering_the_whole_token():
    sigmas = np.exp(np.linspace(math.log(0.002), math.log(80.0), 4000))
    counts = collections.Counter(token_offset(s, (4, 4)) for s in sigmas)
    assert set(counts) == {(i, j) for i in range(4) for j in range(4)}
    assert max(counts.values()) < 2 * min(counts.values())  # about uniform
    assert token_offset(0.7, (4, 4)) == token_offset(0.7, (4, 4))
    assert token_offset(0.0, (4, 4)) == (0, 0) and token_offset(3.0, (1, 1)) == (0, 0)
    assert all(0 <= oy < 2 and 0 <= ox < 3 for oy, ox in (token_offset(s, (2, 3)) for s in sigmas[:200]))


@pytest.mark.parametrize("periodic_x", [False, True])
def test_the_stamp_moves_by_the_offset_and_the_field_is_unchanged(periodic_x):
    g = torch.Generator().manual_seed(0)
    stamp = torch.randn(4, 4, generator=g)
    x, c = torch.randn(2, 3, 12, 16, generator=g), torch.randn(2, 3, 12, 16, generator=g)
    sigma = next(s for s in np.exp(np.linspace(-3, 3, 500)) if token_offset(s, (4, 4)) == (1, 3))
    net = Stamped(stamp)
    out = TokenJitter(net, (4, 4), periodic_x=periodic_x)(x, sigma=torch.full((2,), sigma), condition=c)
    assert out.shape == x.shape
    i, j = np.meshgrid(np.arange(12), np.arange(16), indexing="ij")
    s2 = 0.05 ** 2 / (0.05 ** 2 + sigma ** 2)
    c_out = sigma * 0.05 / math.sqrt(sigma ** 2 + 0.05 ** 2)
    expect = c.numpy() + s2 * (x - c).numpy() + c_out * stamp.numpy()[(i + 1) % 4, (j + 3) % 4]  # the grid starts (1, 3) before the field
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-5, atol=1e-5)
    padded = net.inputs[-1]
    assert padded.shape[-2:] == (13, 19)
    # along y: reflect (the added row mirrors the second)
    np.testing.assert_allclose(padded[..., 0:1, 3:], x[..., 1:2, :], rtol=0, atol=0)
    # along x: circular on a periodic grid (the last columns), else reflect (columns 3, 2, 1)
    cols = x[..., -3:] if periodic_x else x[..., [3, 2, 1]]
    np.testing.assert_allclose(padded[..., 1:, :3], cols, rtol=0, atol=0)


def test_sampling_with_jitter_removes_the_seams_of_the_token_grid():
    """Sampled with the grid in one place, the stamp's seams are in every sample (blockiness at the
    token period far above 1); moved with the noise level, they average out."""
    stamp = 2.0 * (torch.arange(4)[:, None] + torch.arange(4)[None, :]).float()  # ramps: jumps at the token borders
    c = torch.zeros(3, 1, 24, 32)
    config = {"sampler": "heun", "num_steps": 18}
    fixed = sample(Stamped(stamp), (1, 24, 32), [1, 2, 3], condition=c, config=config)
    moving = sample(TokenJitter(Stamped(stamp), (4, 4)), (1, 24, 32), [1, 2, 3], condition=c, config=config)

    def seams(t):
        return float(blockiness(xr.DataArray(t.numpy()[:, 0], dims=("member", "y", "x")), period=4).mean())

    assert seams(fixed) > 2.0
    assert seams(moving) < 1.2


def test_trained_stormscope_models_move_their_token_grid_and_others_do_not():
    from _tiny import FINE_SHAPE, STATE_VARS, tiny_stormcast

    from xkmcast.models import build_pipeline, stormscope_spec

    spec = stormscope_spec(STATE_VARS, FINE_SHAPE, size="tiny")
    assert spec.extra["token_jitter"] == {"patch": [2, 2], "average": True}  # the tiny DiT: 2 x 2 tokens, averaged
    pipe = build_pipeline(spec)
    assert isinstance(pipe.denoiser(), TokenJitter) and pipe.denoiser().patch == (2, 2)
    assert not pipe.denoiser().average and pipe.denoiser(sampling=True).average
    four = stormscope_spec(STATE_VARS, FINE_SHAPE, size="tiny", network_overrides={"patch_size": 4})
    assert four.extra["token_jitter"] == {"patch": [4, 4], "average": False}
    plain = build_pipeline(stormscope_spec(STATE_VARS, FINE_SHAPE, size="tiny", token_jitter=False))
    assert plain.denoiser() is plain.stages["diffusion"]
    stormcast = tiny_stormcast()
    assert stormcast.denoiser() is stormcast.stages["diffusion"]


def test_the_sampling_average_is_the_mean_over_the_diagonal_offsets():
    g = torch.Generator().manual_seed(1)
    stamp = torch.randn(2, 2, generator=g)
    x, c = torch.randn(1, 2, 6, 8, generator=g), torch.randn(1, 2, 6, 8, generator=g)
    sigma = torch.full((1,), 0.3)
    out = TokenJitter(Stamped(stamp), (2, 2), average=True)(x, sigma=sigma, condition=c)
    s2, c_out = 0.05 ** 2 / (0.05 ** 2 + 0.09), 0.3 * 0.05 / math.sqrt(0.09 + 0.05 ** 2)
    i, j = np.meshgrid(np.arange(6), np.arange(8), indexing="ij")
    mean_stamp = (stamp.numpy()[i % 2, j % 2] + stamp.numpy()[(i + 1) % 2, (j + 1) % 2]) / 2  # offsets (0,0), (1,1)
    expect = c.numpy() + s2 * (x - c).numpy() + c_out * mean_stamp
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-5, atol=1e-5)
