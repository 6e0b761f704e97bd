"""Transformer pieces shared by the DiT (Stormscope) and the ViT weather model.

Images become tokens by non-overlapping p x p patches (a stride-p convolution); grids that are
not multiples of p are zero-padded at the bottom / right and the output is cropped back.
Attention is ``F.scaled_dot_product_attention``; local attention restricts it to windows of
w x w tokens (grids not divisible by w are padded with masked tokens). Each token's p x p pixels come
from that token alone, so an output read back patch by patch can step at every patch border;
:func:`seam_convolutions` (k x k convolutions on the image, added to it) couple neighbouring patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xkmcast.errors import ConfigError, explain

__all__ = [
    "PatchEmbed",
    "unpatchify",
    "Mlp",
    "SelfAttention",
    "window_attention",
    "sincos_2d",
    "resize_grid_embedding",
    "seam_convolutions",
]


class PatchEmbed(torch.nn.Module):
    """(B, C, H, W) -> tokens (B, N, D) with N = ceil(H / p) * ceil(W / p), row-major, and the token grid."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = torch.nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        p = self.patch_size
        pad_h, pad_w = -x.shape[-2] % p, -x.shape[-1] % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int], patch: int, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of the patching: tokens (B, N, p * p * C) -> (B, C, H, W), cropped to ``size``.

    Token features are read as (p_row, p_col, C).
    """
    b = tokens.shape[0]
    gh, gw = grid
    x = tokens.reshape(b, gh, gw, patch, patch, channels)
    x = x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * patch, gw * patch)
    return x[:, :, : size[0], : size[1]]


def seam_convolutions(channels: int, layers: int = 2, hidden: int = 64, kernel: int = 3,
                      padding_mode: str = "zeros") -> torch.nn.Sequential:
    """``layers`` k x k convolutions, ``channels`` -> ``hidden`` ... -> ``channels`` with GELU between, for
    ``y + convs(y)`` on an unpatchified image ``y`` (PhysicsNeMo's remedy for patch-seam artefacts, its
    ``proj_reshape_2d_conv`` detokenizer; the layout of its ``conv_head``). The caller zero-initialises the
    last one, so that ``y + convs(y)`` starts as ``y``."""
    if layers < 1:
        raise ConfigError(explain("conv_layers must be >= 1", found=layers))
    out: list[torch.nn.Module] = []
    c_in = channels
    for i in range(layers):
        c_out = channels if i == layers - 1 else hidden
        out.append(torch.nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, padding_mode=padding_mode))
        if i < layers - 1:
            out.append(torch.nn.GELU())
        c_in = c_out
    return torch.nn.Sequential(*out)


class Mlp(torch.nn.Module):
    """fc2(drop(GELU(fc1(x))))."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.fc2 = torch.nn.Linear(hidden, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.fc1(x), approximate="tanh")
        return self.fc2(F.dropout(x, self.dropout, self.training))


class SelfAttention(torch.nn.Module):
    """Multi-head self-attention: softmax(q k^T / sqrt(d) + mask) v per head, then a projection.

    forward(x (B, N, D), mask=None) where mask is boolean, broadcastable to (B, heads, N, N),
    True where a query may attend to a key.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_dropout: float = 0.0, proj_dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = torch.nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.proj_dropout = proj_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        drop = self.attn_dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        a = a.transpose(1, 2).reshape(b, n, d)
        return F.dropout(self.proj(a), self.proj_dropout, self.training)


def window_attention(
    attn: SelfAttention, x: torch.Tensor, grid: tuple[int, int], window: int, shift: int = 0
) -> torch.Tensor:
    """Self-attention restricted to w x w windows of the token grid.

    x: (B, N, D) tokens of a (gh, gw) grid. The grid is padded with ``shift`` masked tokens at the
    top / left (offsetting the windows, as Swin's shifted windows) and as many as needed at the
    bottom / right to fill whole windows; padded tokens are never attended to and are dropped.
    With w >= gh + shift and w >= gw + shift this is exactly full attention.
    """
    b, n, d = x.shape
    gh, gw = grid
    h_pad, w_pad = shift + (-(gh + shift) % window), shift + (-(gw + shift) % window)
    hh, ww = gh + h_pad, gw + w_pad
    xg = F.pad(x.view(b, gh, gw, d), (0, 0, shift, w_pad - shift, shift, h_pad - shift))
    valid = torch.zeros(hh, ww, dtype=torch.bool, device=x.device)
    valid[shift : shift + gh, shift : shift + gw] = True
    nh, nw = hh // window, ww // window

    def to_windows(t: torch.Tensor) -> torch.Tensor:  # (B, hh, ww, ...) -> (B * nh * nw, w * w, ...)
        t = t.reshape(t.shape[0], nh, window, nw, window, *t.shape[3:])
        t = t.transpose(2, 3)
        return t.reshape(t.shape[0] * nh * nw, window * window, *t.shape[5:])

    xw = to_windows(xg)
    mask = to_windows(valid[None, :, :, None])[:, :, 0]  # (nh * nw, w * w)
    mask = mask.repeat(b, 1)[:, None, None, :]  # keys only
    yw = attn(xw, mask=mask)
    y = yw.reshape(b, nh, nw, window, window, d).transpose(2, 3).reshape(b, hh, ww, d)
    return y[:, shift : shift + gh, shift : shift + gw].reshape(b, n, d)


def sincos_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, (dim, height, width).

    A quarter of the channels each: sin(i w_k), cos(i w_k), sin(j w_k), cos(j w_k) with
    w_k = 10000^(-k / (dim / 4)), i the row, j the column.
    """
    if dim % 4:
        raise ValueError(f"embedding size {dim} must be a multiple of 4")
    quarter = dim // 4
    omega = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows = torch.arange(height, dtype=torch.float64)[:, None] * omega  # (H, q)
    cols = torch.arange(width, dtype=torch.float64)[:, None] * omega  # (W, q)
    emb = torch.cat(
        [
            rows.sin()[:, None, :].expand(height, width, quarter),
            rows.cos()[:, None, :].expand(height, width, quarter),
            cols.sin()[None, :, :].expand(height, width, quarter),
            cols.cos()[None, :, :].expand(height, width, quarter),
        ],
        dim=-1,
    )
    return emb.permute(2, 0, 1).float().contiguous()


def resize_grid_embedding(emb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A (1, D, h, w) embedding as tokens (1, gh * gw, D), bilinearly resized if (h, w) != grid."""
    if tuple(emb.shape[-2:]) != tuple(grid):
        emb = F.interpolate(emb, size=grid, mode="bilinear", align_corners=False)
    return emb.flatten(2).transpose(1, 2)
