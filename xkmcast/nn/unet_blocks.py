"""The residual block and the self-attention layer of the DDPM++ U-Net (SongUNet).

Sub-module names (norm0, conv0, affine, norm1, conv1, skip, attn.norm, attn.qkv, attn.proj)
are those of PhysicsNeMo 2.2.2's ``UNetBlock`` / ``UNetAttention``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from xkmcast.nn.layers import Conv2d, GroupNorm, Linear

__all__ = ["UNetAttention", "UNetBlock"]


class UNetAttention(torch.nn.Module):
    """Multi-head self-attention over all pixels, with a residual connection.

    h = GroupNorm(x); [q, k, v] = W_qkv h + b_qkv (1x1 convolution);
    a_n = softmax(q_n k_n^T / sqrt(d)) v_n per head n (d = C / heads);  y = x + W_proj a + b_proj.

    The 3C output channels of ``qkv`` are laid out head-major, then channel, then q/k/v
    (channel index = (n * d + c) * 3 + j), the layout of the published weights. Attention is
    computed with ``F.scaled_dot_product_attention`` on (B, heads, H*W, d) tokens, each of q, k, v
    contiguous: a strided view (the q/k/v index is the fastest in that layout) makes PyTorch fall back
    to its math kernel, which holds the (H*W)^2 weights for backward (24 GB for a tiny U-Net's
    bottleneck at 200 x 400, batch 8) where the fused kernel keeps O(H*W) (and is 3-7x faster on a CPU).
    """

    def __init__(
        self,
        out_channels: int,
        num_heads: int,
        eps: float = 1e-5,
        init_attn: dict | None = None,
        init_zero: dict | None = None,
    ):
        super().__init__()
        if num_heads <= 0 or out_channels % num_heads:
            raise ValueError(f"{out_channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = GroupNorm(out_channels, eps=eps)
        self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init_attn or {}))
        self.proj = Conv2d(out_channels, out_channels, kernel=1, **(init_zero or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)  # free for channels_last input
        wq, bq = self.qkv.weight.to(x.dtype).flatten(1), self.qkv.bias.to(x.dtype)
        qkv = F.linear(tokens, wq, bq).view(b, h * w, heads, d, 3)
        q, k, v = (qkv[..., j].transpose(1, 2).contiguous() for j in range(3))  # (B, heads, L, d)
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(1, 2).reshape(b, h * w, c)
        out = F.linear(a, self.proj.weight.to(x.dtype).flatten(1), self.proj.bias.to(x.dtype))
        return x + out.view(b, h, w, c).permute(0, 3, 1, 2)


class UNetBlock(torch.nn.Module):
    """DDPM++ residual block with noise-embedding injection, optional resampling and attention.

    h = conv0(act(norm0(x)))                       (conv0 up- or down-samples if asked)
    h = act(norm1(h + affine(emb)))                (per-channel shift from the embedding)
    h = conv1(dropout(h))
    y = (h + skip(x)) * skip_scale                 (skip: 1x1 conv / resampling when shapes change)
    y = attn(y) * skip_scale                       (if ``attention``)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter: Sequence[int] = (1, 1),
        resample_proj: bool = False,
        act: str = "silu",
        init: dict | None = None,
        init_zero: dict | None = None,
        init_attn: dict | None = None,
    ):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else {"init_weight": 0.0}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.norm0 = GroupNorm(in_channels, eps=eps, act=act)
        self.conv0 = Conv2d(
            in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter, **init
        )
        self.affine = Linear(emb_channels, out_channels, **init)
        self.norm1 = GroupNorm(out_channels, eps=eps, act=act)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(
                in_channels, out_channels, kernel=kernel, up=up, down=down, resample_filter=resample_filter, **init
            )
        self.attn = None
        if attention:
            heads = num_heads if num_heads is not None else out_channels // channels_per_head
            self.attn = UNetAttention(
                out_channels, heads, eps=eps, init_attn=init_attn if init_attn is not None else init, init_zero=init_zero
            )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self.norm0(x))
        shift = self.affine(emb).to(h.dtype)[:, :, None, None]
        h = self.norm1(h + shift)
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        y = torch.add(h, x if self.skip is None else self.skip(x)).mul_(self.skip_scale)
        if self.attn is not None:
            y = self.attn(y).mul_(self.skip_scale)
        return y

    # Very old checkpoints kept the attention parameters on the block itself.
    _LEGACY_ATTENTION_KEYS = {
        "norm2.weight": "attn.norm.weight",
        "norm2.bias": "attn.norm.bias",
        "qkv.weight": "attn.qkv.weight",
        "qkv.bias": "attn.qkv.bias",
        "proj.weight": "attn.proj.weight",
        "proj.bias": "attn.proj.bias",
    }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in self._LEGACY_ATTENTION_KEYS.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
