"""Small helpers shared by the network tests: seeded inputs, O(1) random weights, a tiny U-Net size."""

from __future__ import annotations

import torch

#: a SongUNet size small enough for CPU tests that still has two levels and attention
TINY_UNET = dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)


def rand(*shape, seed=0) -> torch.Tensor:
    """Standard normal tensor from its own seeded generator."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def randomise(model: torch.nn.Module, seed=0) -> torch.nn.Module:
    """Replace every parameter by seeded noise: N(0, 1/fan_in) for matrices, N(0, 0.01) for vectors
    (initialisations that zero the output layer would otherwise make comparisons meaningless)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5 if p.ndim > 1 else 10.0))
    return model
