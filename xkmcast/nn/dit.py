"""Diffusion Transformer (DiT) denoiser for Stormscope-style km-scale nowcasting.

F(x, c_noise; cond, labels) for the EDM preconditioner, on rectangular grids:

1. tokens: h = PatchEmbed_p([x, cond]) + E_pos   (p x p patches, learnable position grid
   initialised with 2-D sine-cosine values, resized bilinearly for other grids);
2. conditioning vector: c = MLP(sin/cos(c_noise)) + MLP(labels)   (labels: scalar conditions
   such as the lead time, class vectors, ...);
3. ``depth`` adaLN-Zero blocks: with (a1, b1, g1, a2, b2, g2) = W(SiLU(c)) (W zero-initialised,
   so every block starts as the identity)
   h <- h + g1 * Attn(LN(h) * (1 + b1) + a1),   h <- h + g2 * MLP(LN(h) * (1 + b2) + a2);
   Attn is global, or local in ``window_size`` x ``window_size`` token windows (alternate
   blocks shifted by half a window so that information crosses window borders);
4. output: Linear(LN(h) * (1 + b) + a) -> p * p * out_channels per token (zero-initialised),
   unpatchified to (B, out_channels, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from xkmcast.errors import InvalidDataError, explain
from xkmcast.nn.base import Network
from xkmcast.nn.layers import PositionalEmbedding
from xkmcast.nn.transformer_layers import (
    Mlp,
    PatchEmbed,
    SelfAttention,
    resize_grid_embedding,
    sincos_2d,
    unpatchify,
    window_attention,
)

__all__ = ["DiT", "DiTBlock"]


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(torch.nn.Module):
    """Transformer block with adaLN-Zero conditioning (identity at initialisation).

    forward(x (B, N, D), c (B, D), grid (gh, gw)); ``window``: local attention window in tokens
    (None: global); ``shift``: window offset in tokens.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 window: int | None = None, shift: int = 0):  # fmt: skip
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, attn_dropout=dropout)
        self.norm2 = torch.nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        self.adaLN_modulation = torch.nn.Linear(dim, 6 * dim)
        torch.nn.init.zeros_(self.adaLN_modulation.weight)
        torch.nn.init.zeros_(self.adaLN_modulation.bias)
        self.window = window
        self.shift = shift

    def forward(self, x: torch.Tensor, c: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        a1, b1, g1, a2, b2, g2 = self.adaLN_modulation(F.silu(c)).chunk(6, dim=1)
        h = _modulate(self.norm1(x), a1, b1)
        if self.window is None:
            h = self.attn(h)
        else:
            h = window_attention(self.attn, h, grid, self.window, self.shift)
        x = x + g1[:, None, :] * h
        return x + g2[:, None, :] * self.mlp(_modulate(self.norm2(x), a2, b2))


class DiT(Network):
    """Diffusion transformer on (B, C, H, W) fields with noise-level and scalar conditioning.

    Parameters
    ----------
    img_resolution: int or [H, W], the grid the position embedding is made for (other grids work
        by resizing it). in_channels / out_channels: channels of the noisy state x and of the output.
    condition_channels: channels of ``condition`` concatenated to x (background fields, previous
        states, invariants). label_dim: size of ``class_labels`` (0: none).
    patch_size, hidden_size, depth, num_heads, mlp_ratio, dropout: transformer size.
    window_size: local attention window in tokens (None: global attention).
    noise_channels: size of the sinusoidal c_noise embedding.

    forward(x, noise_labels, class_labels=None, condition=None) -> (B, out_channels, H, W)
      x: (B, in_channels, H, W) (already scaled by c_in); noise_labels: (B,) or (1,) c_noise;
      class_labels: (B, label_dim) float scalars (e.g. normalised lead time);
      condition: (B, condition_channels, H, W). Any H, W (padded to whole patches, then cropped).
    """

    def __init__(
        self,
        img_resolution: int | Sequence[int],
        in_channels: int,
        out_channels: int,
        condition_channels: int = 0,
        label_dim: int = 0,
        patch_size: int = 4,
        hidden_size: int = 256,
        depth: int = 8,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        window_size: int | None = None,
        noise_channels: int = 256,
    ):
        super().__init__()
        h, w = (img_resolution, img_resolution) if isinstance(img_resolution, int) else tuple(img_resolution)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.condition_channels, self.label_dim = condition_channels, label_dim
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(in_channels + condition_channels, hidden_size, patch_size)
        grid = (-(-h // patch_size), -(-w // patch_size))
        self.pos_embed = torch.nn.Parameter(sincos_2d(hidden_size, *grid)[None])
        self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        self.noise_mlp = torch.nn.Sequential(
            torch.nn.Linear(noise_channels, hidden_size), torch.nn.SiLU(), torch.nn.Linear(hidden_size, hidden_size)
        )
        self.label_mlp = (
            torch.nn.Sequential(torch.nn.Linear(label_dim, hidden_size), torch.nn.SiLU(), torch.nn.Linear(hidden_size, hidden_size))
            if label_dim
            else None
        )
        shift = (window_size // 2) if window_size else 0
        self.blocks = torch.nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, dropout, window=window_size, shift=shift * (i % 2))
            for i in range(depth)
        )
        self.norm_out = torch.nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.adaLN_out = torch.nn.Linear(hidden_size, 2 * hidden_size)
        self.head = torch.nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        for layer in (self.adaLN_out, self.head):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)

    def conditioning(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        """c = MLP(sin/cos(c_noise)) [+ MLP(class_labels)], shape (B, hidden_size)."""
        c = self.noise_mlp(self.map_noise(noise_labels))
        if self.label_mlp is not None:
            if class_labels is None:
                raise InvalidDataError(explain("class_labels missing", expected=f"(B, {self.label_dim}) tensor"))
            c = c + self.label_mlp(class_labels.to(c.dtype))
        return c.expand(batch, -1) if c.shape[0] == 1 else c

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        if self.condition_channels:
            if condition is None or condition.shape[1] != self.condition_channels or condition.shape[-2:] != x.shape[-2:]:
                raise InvalidDataError(
                    explain(
                        "condition does not fit the network",
                        expected=f"(B, {self.condition_channels}, {size[0]}, {size[1]})",
                        found=None if condition is None else tuple(condition.shape),
                    )
                )
            x = torch.cat([x, condition.to(x.dtype)], dim=1)
        tokens, grid = self.patch_embed(x)
        tokens = tokens + resize_grid_embedding(self.pos_embed, grid).to(tokens.dtype)
        c = self.conditioning(noise_labels.to(tokens.dtype), class_labels, x.shape[0])
        for block in self.blocks:
            tokens = block(tokens, c, grid)
        shift, scale = self.adaLN_out(F.silu(c)).chunk(2, dim=1)
        out = self.head(_modulate(self.norm_out(tokens), shift, scale))
        return unpatchify(out, grid, self.patch_size, self.out_channels, size)
