"""Periodic longitude in the U-Nets: with set_periodic_x every convolution pads circularly along x, so
the network commutes with circular shifts of its input along x (by multiples of its down-sampling
factor); with the default zero padding it does not."""

from __future__ import annotations

import pytest
import torch
from _nets import rand, randomise

from xkmcast.nn import SongUNet, set_periodic_x
from xkmcast.nn.layers import Conv2d

SMALL = dict(model_channels=8, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)


def shift_error(net, x, k):
    with torch.no_grad():
        a = torch.roll(net(x, torch.full((x.shape[0],), 0.3)), k, dims=-1)
        b = net(torch.roll(x, k, dims=-1), torch.full((x.shape[0],), 0.3))
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("kw", [
    {},
    {"resample_filter": [1, 3, 3, 1]},  # depthwise filters and transposed convolutions
    {"encoder_type": "residual", "decoder_type": "skip", "resample_filter": [1, 3, 3, 1]},  # fused resampling
    {"encoder_type": "skip", "decoder_type": "skip"},
], ids=["box", "fir", "residual-skip-fir", "skip-skip-box"])
def test_periodic_unet_is_equivariant_to_circular_shifts_in_x(kw):
    net = randomise(SongUNet([8, 16], 3, 2, **SMALL, **kw), seed=1).eval()
    x = rand(2, 3, 8, 16, seed=2)
    assert shift_error(net, x, 4) > 1e-2  # zero padding: the edges show
    set_periodic_x(net)
    assert all(m.periodic_x for m in net.modules() if isinstance(m, Conv2d))
    for k in (4, -8, 12):  # multiples of the down-sampling factor 2**(levels - 1)
        assert shift_error(net, x, k) < 1e-5, k
    assert set_periodic_x(net, False) is net and shift_error(net, x, 4) > 1e-2


@pytest.mark.parametrize("kw", [dict(kernel=3), dict(kernel=3, down=True, resample_filter=[1, 3, 3, 1]),
                                dict(kernel=3, up=True, resample_filter=[1, 3, 3, 1]), dict(kernel=3, up=True),
                                dict(kernel=1, up=True, resample_filter=[1, 3, 3, 1], fused_resample=True),
                                dict(kernel=3, down=True, resample_filter=[1, 3, 3, 1], fused_resample=True)],
                         ids=["conv", "down-fir", "up-fir", "up-box-conv3", "up-fused", "down-fused"])
def test_periodic_conv_equals_the_convolution_of_the_tiled_field(kw):
    """Reference: the layer on three copies of the field side by side (no padding reaches the middle
    copy's columns); its middle third is the periodic result."""
    conv = randomise(Conv2d(2, 3, **kw), seed=3)
    x = rand(1, 2, 6, 8, seed=4)
    tiled = conv(torch.cat([x, x, x], dim=-1))
    n = tiled.shape[-1] // 3
    set_periodic_x(conv)
    torch.testing.assert_close(conv(x), tiled[..., n : 2 * n], rtol=1e-5, atol=1e-6)
    # rows stay zero-padded: the same as the non-periodic layer away from the x edges
    set_periodic_x(conv, False)
    assert not torch.allclose(conv(x), tiled[..., n : 2 * n], atol=1e-4)


def test_recorded_arguments_do_not_change():
    net = SongUNet([8, 16], 3, 2, **SMALL)
    before = net.config
    set_periodic_x(net)
    assert net.config == before
