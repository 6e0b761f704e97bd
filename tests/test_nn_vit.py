"""WeatherViT: patch / unpatchify inverse, rectangular and non-divisible grids, conditions,
residual mode, gradients, and that it can learn a simple map."""

from __future__ import annotations

import pytest
import torch
from _nets import rand as _rand

from xkmcast.errors import InvalidDataError
from xkmcast.nn import WeatherViT
from xkmcast.nn.transformer_layers import sincos_2d, unpatchify

SMALL = dict(patch_size=4, embed_dim=16, depth=2, num_heads=2)


def test_unpatchify_inverts_the_patch_reshape():
    img = _rand(2, 3, 8, 12)
    # tokens as (row patch, col patch) with features (p_row, p_col, C), built independently
    tokens = img.reshape(2, 3, 2, 4, 3, 4).permute(0, 2, 4, 3, 5, 1).reshape(2, 6, 48)
    assert torch.equal(unpatchify(tokens, (2, 3), 4, 3, (8, 12)), img)
    assert torch.equal(unpatchify(tokens, (2, 3), 4, 3, (7, 10)), img[..., :7, :10])


def test_sincos_embedding_values():
    emb = sincos_2d(8, 3, 5)
    assert emb.shape == (8, 3, 5)
    torch.testing.assert_close(emb[0], torch.arange(3.0)[:, None].sin().expand(3, 5))  # sin(row * 1)
    torch.testing.assert_close(emb[6], torch.arange(5.0)[None, :].cos().expand(3, 5))  # cos(col * 1)


@pytest.mark.parametrize("size", [(8, 16), (10, 13)])
def test_rectangular_shapes_and_determinism(size):
    net = WeatherViT([8, 16], 3, **SMALL).eval()
    x = _rand(2, 3, *size)
    y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.equal(y, net(x))


def test_conditions_out_channels_and_residual():
    net = WeatherViT(8, 3, out_channels=2, condition_channels=2, **SMALL).eval()
    x, cond = _rand(1, 3, 8, 8), _rand(1, 2, 8, 8, seed=1)
    assert net(x, cond).shape == (1, 2, 8, 8)
    assert not torch.allclose(net(x, cond), net(x, cond + 1))
    with pytest.raises(InvalidDataError):
        net(x)
    res = WeatherViT(8, 3, residual=True, **SMALL).eval()
    with torch.no_grad():
        res.head.weight.zero_()
        res.head.bias.zero_()
    assert torch.equal(res(x), x)  # zero increment: persistence
    with pytest.raises(ValueError):
        WeatherViT(8, 3, out_channels=2, residual=True)


def test_gradients_reach_every_parameter():
    net = WeatherViT([8, 12], 2, condition_channels=1, **SMALL).train()
    net(_rand(2, 2, 8, 12), _rand(2, 1, 8, 12, seed=1)).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.slow
def test_learns_a_shift_by_one_pixel():
    torch.manual_seed(0)
    net = WeatherViT(8, 1, patch_size=2, embed_dim=32, depth=2, num_heads=2, residual=True)
    x = _rand(8, 1, 8, 8)
    target = torch.roll(x, 1, dims=-1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = (net(x) - target).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_seam_convolutions_add_to_the_patch_head_and_start_as_identity():
    """y + Convs(y) with y the patch head's image: zero at initialisation (the last convolution is
    zero-initialised), then the k x k convolutions (replicate padding) of y, computed here with F.conv2d;
    without them the state dict has no conv_head (bundles written before load unchanged)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    plain = WeatherViT([8, 12], 2, **SMALL).eval()
    assert not any(k.startswith("conv_head") for k in plain.state_dict())
    seams = WeatherViT([8, 12], 2, conv_layers=2, conv_hidden=5, **SMALL).eval()
    missing, unexpected = seams.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == [f"conv_head.{i}.{w}" for i in (0, 2) for w in ("bias", "weight")] and not unexpected
    x = _rand(2, 2, 8, 12)
    torch.testing.assert_close(seams(x), plain(x))  # starts as the head alone
    with torch.no_grad():
        for p in seams.conv_head.parameters():
            p.copy_(_rand(*p.shape, seed=p.numel()) * 0.3)
        y = plain(x)
        c0, c2 = seams.conv_head[0], seams.conv_head[2]
        h = F.gelu(F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), c0.weight, c0.bias))
        expected = y + F.conv2d(F.pad(h, (1, 1, 1, 1), mode="replicate"), c2.weight, c2.bias)
        assert (expected - y).abs().mean() > 0.05
        torch.testing.assert_close(seams(x), expected, rtol=1e-5, atol=1e-5)
