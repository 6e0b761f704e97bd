"""Any grid size: networks pad to the multiple they need and crop back (reflect, or circular in x)."""

from __future__ import annotations

import numpy as np
import torch
from _nets import TINY_UNET, rand, randomise

from xkmcast.nn import SongUNet
from xkmcast.nn.padding import crop, pad_to_multiple

THREE_LEVELS = dict(TINY_UNET, channel_mult=[1, 2, 2])  # needs multiples of 4


def _numpy_pad(x: torch.Tensor, pads, x_mode: str) -> torch.Tensor:
    """numpy.pad as the independent reference: (left, right, top, bottom)."""
    left, right, top, bottom = pads
    a = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 0), (left, right)), mode=x_mode)
    return torch.from_numpy(np.pad(a, ((0, 0), (0, 0), (top, bottom), (0, 0)), mode="reflect"))


def test_pad_to_multiple_matches_numpy_reflect_and_wrap():
    x = rand(2, 3, 118, 87)
    for periodic, mode in ((False, "reflect"), (True, "wrap")):
        padded, pads = pad_to_multiple(x, 8, periodic_x=periodic)
        assert padded.shape[-2:] == (120, 88) and pads == (0, 1, 1, 1)
        torch.testing.assert_close(padded, _numpy_pad(x, pads, mode), rtol=0, atol=0)
        torch.testing.assert_close(crop(padded, pads), x, rtol=0, atol=0)


def test_unet_runs_on_an_odd_grid_and_equals_the_padded_run_cropped():
    """118 x 87 with a 3-level U-Net: output on the input grid, equal to the network run on the
    numpy-reflect-padded field (120 x 88, a multiple of 4) then cropped."""
    net = randomise(SongUNet([118, 87], 3, 2, **THREE_LEVELS)).eval()
    x, noise = rand(1, 3, 118, 87), rand(1)
    with torch.no_grad():
        out = net(x, noise)
        assert out.shape == (1, 2, 118, 87)
        pads = (0, 1, 1, 1)
        ref = net(_numpy_pad(x, pads, "reflect"), noise)[..., 1:119, 0:87]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert float(out.std()) > 1e-3  # the weights are not trivial


def test_periodic_networks_pad_circularly_in_x():
    """A network switched to periodic x (the ``periodic_x`` flag of its Conv2d layers, which
    ``set_periodic_x`` sets) pads its odd width with wrapped columns, not mirrored ones."""
    from xkmcast.nn.layers import Conv2d

    net = randomise(SongUNet([20, 37], 3, 2, **THREE_LEVELS)).eval()
    for m in net.modules():
        if isinstance(m, Conv2d):
            m.periodic_x = True
    x, noise = rand(1, 3, 20, 37), rand(1)
    pads = (1, 2, 0, 0)
    with torch.no_grad():
        out = net(x, noise)
        wrapped = net(_numpy_pad(x, pads, "wrap"), noise)[..., 1:38]
        mirrored = net(_numpy_pad(x, pads, "reflect"), noise)[..., 1:38]
    torch.testing.assert_close(out, wrapped, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, mirrored, atol=1e-4)
