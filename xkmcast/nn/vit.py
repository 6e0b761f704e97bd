"""Vision-transformer weather model: deterministic next-state prediction x_{t+1} = f(x_t).

h = PatchEmbed_p([x, cond]) + E_pos           (p x p patches, learnable position grid)
h <- h + Attn(LN(h)); h <- h + MLP(LN(h))      (``depth`` pre-norm encoder blocks, SDPA attention)
y = unpatchify(Linear(LN(h)))                 (p * p * out_channels per token, back to the grid)
y <- y + Convs(y)                             (``conv_layers`` > 0: k x k convolutions across the patch
                                              seams, the last zero-initialised; replicate padding)

Grids that are not multiples of p are zero-padded for the patching and cropped back, so the
output always has the input's (H, W). ``residual=True`` predicts the increment: y = x + f(x)
(needs out_channels == in_channels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xkmcast.errors import InvalidDataError, explain
from xkmcast.nn.base import Network
from xkmcast.nn.transformer_layers import (Mlp, PatchEmbed, SelfAttention, resize_grid_embedding, seam_convolutions,
                                           sincos_2d, unpatchify)

__all__ = ["WeatherViT", "EncoderBlock"]


class EncoderBlock(torch.nn.Module):
    """Pre-norm transformer block: h + Attn(LN(h)), then h + MLP(LN(h))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, attention_dropout: float = 0.0):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, attn_dropout=attention_dropout, proj_dropout=dropout)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class WeatherViT(Network):
    """ViT that maps the state at t (plus optional condition channels) to the state at t + dt.

    Parameters: img_resolution (int or [H, W]: the grid of the position embedding; other grids
    resize it), in_channels, out_channels (default: in_channels), condition_channels (extra
    inputs such as forcings or invariants), patch_size, embed_dim, depth, num_heads, mlp_ratio,
    dropout, attention_dropout, residual, conv_layers / conv_hidden / conv_kernel (the seam
    convolutions, :func:`~xkmcast.nn.transformer_layers.seam_convolutions`; 0 layers: none).

    forward(x, condition=None) -> (B, out_channels, H, W)
      x: (B, in_channels, H, W); condition: (B, condition_channels, H, W).
    """

    def __init__(
        self,
        img_resolution: int | Sequence[int],
        in_channels: int,
        out_channels: int | None = None,
        condition_channels: int = 0,
        patch_size: int = 8,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        residual: bool = False,
        conv_layers: int = 0,
        conv_hidden: int = 64,
        conv_kernel: int = 3,
    ):
        super().__init__()
        h, w = (img_resolution, img_resolution) if isinstance(img_resolution, int) else tuple(img_resolution)
        self.in_channels = in_channels
        self.out_channels = out_channels = in_channels if out_channels is None else out_channels
        if residual and out_channels != in_channels:
            raise ValueError("residual=True needs out_channels == in_channels")
        self.condition_channels = condition_channels
        self.patch_size = patch_size
        self.residual = residual
        self.patch_embed = PatchEmbed(in_channels + condition_channels, embed_dim, patch_size)
        grid = (-(-h // patch_size), -(-w // patch_size))
        self.pos_embed = torch.nn.Parameter(sincos_2d(embed_dim, *grid)[None] * 0.02)
        self.blocks = torch.nn.ModuleList(
            EncoderBlock(embed_dim, num_heads, mlp_ratio, dropout, attention_dropout) for _ in range(depth)
        )
        self.norm = torch.nn.LayerNorm(embed_dim)
        self.head = torch.nn.Linear(embed_dim, patch_size * patch_size * out_channels)
        self.conv_head = (seam_convolutions(out_channels, conv_layers, conv_hidden, conv_kernel, padding_mode="replicate")
                          if conv_layers else None)
        self.apply(_init_weights)
        if self.conv_head is not None:
            torch.nn.init.zeros_(self.conv_head[-1].weight)
            torch.nn.init.zeros_(self.conv_head[-1].bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        state = x
        if self.condition_channels:
            if condition is None or condition.shape[1] != self.condition_channels or condition.shape[-2:] != x.shape[-2:]:
                raise InvalidDataError(
                    explain(
                        "condition does not fit the network",
                        expected=f"(B, {self.condition_channels}, {x.shape[-2]}, {x.shape[-1]})",
                        found=None if condition is None else tuple(condition.shape),
                    )
                )
            x = torch.cat([x, condition.to(x.dtype)], dim=1)
        elif condition is not None:
            raise InvalidDataError(explain("unexpected condition", expected="None (condition_channels=0)", found=tuple(condition.shape)))
        tokens, grid = self.patch_embed(x)
        tokens = tokens + resize_grid_embedding(self.pos_embed, grid).to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        out = unpatchify(self.head(self.norm(tokens)), grid, self.patch_size, self.out_channels, state.shape[-2:])
        if self.conv_head is not None:
            out = out + self.conv_head(out)
        return state + out if self.residual else out


def _init_weights(module: torch.nn.Module) -> None:
    """Truncated-normal (std 0.02) linear weights, zero biases, unit LayerNorm (the usual ViT init)."""
    if isinstance(module, torch.nn.Linear):
        torch.nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, torch.nn.LayerNorm):
        torch.nn.init.ones_(module.weight)
        torch.nn.init.zeros_(module.bias)
