"""The ViT's token grid moves (xkmcast.models.transformer): a random offset per training batch, the mean
over the token's diagonal offsets in a forecast step; checked with a network whose output is a stamp
tiled from its input's first pixel (what the token grid of a patch-token network leaves)."""

from __future__ import annotations

import numpy as np
import torch
from _tiny import FINE_SHAPE

from xkmcast.models import build_pipeline, vit_spec

VARS = ["t2m", "u10m"]


class Stamp(torch.nn.Module):
    """F(x) = the (C, p, p) stamp tiled over x's grid from its first pixel, whatever x holds."""

    def __init__(self, stamp: torch.Tensor):
        super().__init__()
        self.stamp = torch.nn.Parameter(stamp)

    def forward(self, x, condition=None):
        c, p, q = self.stamp.shape
        tiled = self.stamp.repeat(1, -(-x.shape[-2] // p), -(-x.shape[-1] // q))[:, : x.shape[-2], : x.shape[-1]]
        return tiled.unsqueeze(0).expand(x.shape[0], -1, -1, -1)


def _stamped(seed=0):
    spec = vit_spec(VARS, FINE_SHAPE, size="tiny")
    assert spec.extra["token_jitter"] == {"patch": [4, 4], "average": True}
    pipe = build_pipeline(spec)
    stamp = torch.randn(len(VARS), 4, 4, generator=torch.Generator().manual_seed(seed))
    pipe.stages["regression"] = Stamp(stamp)
    return pipe, stamp.numpy()


def _shifted_stamp(stamp, oy, ox):
    i, j = np.meshgrid(np.arange(FINE_SHAPE[0]), np.arange(FINE_SHAPE[1]), indexing="ij")
    return stamp[:, (i + oy) % 4, (j + ox) % 4]


def test_a_step_is_the_mean_over_the_diagonal_offsets():
    pipe, stamp = _stamped()
    state = torch.randn(3, len(VARS), *FINE_SHAPE)
    out = pipe.eval().step(state).numpy()
    expected = np.mean([_shifted_stamp(stamp, o, o) for o in range(4)], axis=0)
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-6, atol=1e-6)
    pipe.spec.extra["token_jitter"]["average"] = False  # at the grid's own offset, as without the jitter
    np.testing.assert_allclose(pipe.step(state).numpy()[0], _shifted_stamp(stamp, 0, 0), atol=1e-7)
    pipe.spec.extra.pop("token_jitter")
    np.testing.assert_allclose(pipe.step(state).numpy()[0], _shifted_stamp(stamp, 0, 0), atol=1e-7)


def test_training_sees_the_grid_at_a_random_offset_from_the_generator():
    pipe, stamp = _stamped(seed=1)
    state = torch.zeros(1, len(VARS), *FINE_SHAPE)
    nxt = torch.randn(1, len(VARS), *FINE_SHAPE, generator=torch.Generator().manual_seed(2))

    def mse(k):
        return float(((_shifted_stamp(stamp, k // 4, k % 4) - nxt[0].numpy()) ** 2).mean())

    assert len({round(mse(k), 6) for k in range(16)}) == 16  # each offset gives another loss
    seen = set()
    for seed in range(60):
        loss = pipe.train().loss("regression", {"state": [state, nxt]}, generator=torch.Generator().manual_seed(seed)).loss
        k = int(torch.randint(16, (1,), generator=torch.Generator().manual_seed(seed)))
        np.testing.assert_allclose(float(loss.detach()), mse(k), rtol=1e-5)
        seen.add(k)
    assert len(seen) == 16  # every offset of the 4 x 4 token
