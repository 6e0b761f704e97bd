"""DiT: adaLN-Zero identity at initialisation, window attention against full / naive attention,
rectangular grids, conditioning, gradients."""

from __future__ import annotations

import pytest
import torch
from _nets import rand as _rand

from xkmcast.errors import InvalidDataError
from xkmcast.nn import DiT
from xkmcast.nn.dit import DiTBlock
from xkmcast.nn.transformer_layers import SelfAttention, window_attention

SMALL = dict(patch_size=2, hidden_size=16, depth=2, num_heads=2)


def _wake(model, seed=0):
    """Give the zero-initialised (adaLN-Zero, output) layers random weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or name.startswith("head"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def test_adaln_zero_block_is_identity_at_init():
    block = DiTBlock(16, num_heads=2)
    x, c = _rand(2, 12, 16), _rand(2, 16, seed=1)
    assert torch.equal(block(x, c, (3, 4)), x)
    net = DiT([8, 12], 2, 3, **SMALL)
    assert torch.equal(net(_rand(1, 2, 8, 12), _rand(1)), torch.zeros(1, 3, 8, 12))


def test_self_attention_equals_naive_softmax():
    attn = SelfAttention(8, num_heads=2)
    x = _rand(2, 5, 8)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    expected = attn.proj((w @ v).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attn(x), expected)


@pytest.mark.parametrize("grid, window", [((3, 5), 5), ((4, 4), 4), ((3, 5), 8)])
def test_window_covering_the_grid_is_full_attention(grid, window):
    attn = SelfAttention(8, num_heads=2)
    x = _rand(2, grid[0] * grid[1], 8)
    torch.testing.assert_close(window_attention(attn, x, grid, window), attn(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shift", [0, 1])
def test_window_attention_is_local_and_matches_per_window_attention(shift):
    attn = SelfAttention(8, num_heads=2)
    grid, window = (5, 7), 3  # not divisible: padded, masked windows
    x = _rand(1, 35, 8)
    y = window_attention(attn, x, grid, window, shift)
    # independent: each token attends to the tokens of its own window only
    rows = (torch.arange(5) + shift) // window
    cols = (torch.arange(7) + shift) // window
    label = (rows[:, None] * 10 + cols[None, :]).flatten()
    for lab in label.unique():
        members = (label == lab).nonzero().flatten()
        expected = attn(x[:, members])
        torch.testing.assert_close(y[:, members], expected, rtol=1e-5, atol=1e-6)


def test_rectangular_grid_not_divisible_by_patch_and_window():
    net = _wake(DiT([10, 14], 2, 2, condition_channels=3, label_dim=1, window_size=2, **SMALL)).eval()
    x, cond = _rand(2, 2, 10, 14), _rand(2, 3, 10, 14, seed=1)
    out = net(x, _rand(2), _rand(2, 1), cond)
    assert out.shape == (2, 2, 10, 14) and torch.isfinite(out).all()
    assert net(_rand(1, 2, 7, 9), _rand(1), _rand(1, 1), _rand(1, 3, 7, 9)).shape == (1, 2, 7, 9)  # other grid
    assert torch.equal(out, net(x, _rand(2), _rand(2, 1), cond))  # deterministic


def test_conditioning_inputs_matter_and_are_checked():
    net = _wake(DiT(8, 2, 2, condition_channels=1, label_dim=2, **SMALL)).eval()
    x, cond, noise, labels = _rand(1, 2, 8, 8), _rand(1, 1, 8, 8, seed=1), torch.tensor([0.2]), torch.zeros(1, 2)
    base = net(x, noise, labels, cond)
    assert not torch.allclose(base, net(x, torch.tensor([-1.0]), labels, cond))
    assert not torch.allclose(base, net(x, noise, torch.ones(1, 2), cond))
    assert not torch.allclose(base, net(x, noise, labels, cond + 1))
    with pytest.raises(InvalidDataError):
        net(x, noise, labels)  # condition missing
    with pytest.raises(InvalidDataError):
        net(x, noise, None, cond)  # labels missing


def test_gradients_reach_every_parameter():
    net = _wake(DiT([6, 10], 2, 2, condition_channels=1, label_dim=1, window_size=2, **SMALL)).train()
    out = net(_rand(2, 2, 6, 10), _rand(2), _rand(2, 1), _rand(2, 1, 6, 10))
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
