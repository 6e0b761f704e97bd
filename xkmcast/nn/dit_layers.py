"""Tokenizer, adaLN-Zero block and detokenizers of the PhysicsNeMo-layout DiT (PhysicsNeMo 2.2.2 names).

* :class:`PatchEmbed2DTokenizer`: tokens = Conv_{p, stride p}(x) flattened row-major (+ a learnable
  (1, h w, D) position embedding ``pos_embed`` unless ``pos_embed != "learnable"``);
* :class:`DiTBlock` (adaLN-Zero): (a_s, a_c, a_g, m_s, m_c, m_g) = W(SiLU(c)),
  x <- x + a_g * Attn(LN(x) (1 + a_c) + a_s),  x <- x + m_g * MLP(LN(x) (1 + m_c) + m_s)
  (LN without affine, eps 1e-6; MLP Linear - GELU(tanh) - Linear; W zero-initialised);
* :class:`ProjReshape2DDetokenizer` (``"proj_reshape_2d"``): (s, c) = W(SiLU(c)),
  Linear(LN(x) (1 + c) + s) -> p_h p_w C values per token, read as (p_h, p_w, C), tiled back to
  (B, C, h p_h, w p_w);
* :class:`ConvDetokenizer` (``"proj_reshape_2d_conv"``): y + ConvHead(y) with y the above and
  ConvHead = conv_layers k x k convolutions (GELU between, the last one zero-initialised), which
  couples neighbouring patches (PhysicsNeMo's remedy for patch-seam artefacts).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F

from xkmcast.errors import ConfigError, InvalidDataError, explain
from xkmcast.nn.dit_attention import build_attention
from xkmcast.nn.transformer_layers import seam_convolutions

__all__ = ["PatchEmbed2DTokenizer", "DiTBlock", "ProjReshape2DDetokenizer", "ConvDetokenizer", "build_detokenizer"]


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _layer_norm(dim: int, eps: float = 1e-6) -> torch.nn.LayerNorm:
    return torch.nn.LayerNorm(dim, elementwise_affine=False, eps=eps)


class _PatchConv(torch.nn.Module):
    """Holds ``proj`` (PhysicsNeMo's PatchEmbed2D without padding: the grid must be whole patches)."""

    def __init__(self, in_channels: int, hidden_size: int, patch: tuple[int, int]):
        super().__init__()
        self.proj = torch.nn.Conv2d(in_channels, hidden_size, kernel_size=patch, stride=patch)


class PatchEmbed2DTokenizer(torch.nn.Module):
    """(B, C, H, W) -> (B, (H / p_h) (W / p_w), D), plus the learnable position embedding if any."""

    def __init__(self, input_size: tuple[int, int], patch_size: tuple[int, int], in_channels: int, hidden_size: int,
                 pos_embed: str = "learnable"):  # fmt: skip
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.grid = (input_size[0] // patch_size[0], input_size[1] // patch_size[1])
        self.x_embedder = _PatchConv(in_channels, hidden_size, self.patch_size)
        self.pos_embed = (
            torch.nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], hidden_size)) if pos_embed == "learnable" else None
        )

    def token_grid(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) token grid of an (H, W) image; InvalidDataError when it does not fit."""
        (ph, pw), (hh, ww) = self.patch_size, shape
        if hh % ph or ww % pw:
            raise InvalidDataError(explain("the image is not a whole number of patches", expected=f"H, W multiples of {ph}, {pw}",
                                           found=(hh, ww), fix="crop or pad the grid"))  # fmt: skip
        grid = (hh // ph, ww // pw)
        if self.pos_embed is not None and grid != self.grid:
            raise InvalidDataError(explain("a learnable position embedding fixes the grid", expected=self.grid, found=grid,
                                           fix="run on the training grid size (RoPE models run on any grid)"))  # fmt: skip
        return grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.x_embedder.proj(x).flatten(2).transpose(1, 2)
        return tokens + self.pos_embed if self.pos_embed is not None else tokens


def _mlp(dim: int, hidden: int, drop: float, final_dropout: bool) -> torch.nn.Sequential:
    """PhysicsNeMo's Mlp layer list (indices matter for the state dict): Linear, GELU, [Dropout], Linear, [Dropout]."""
    layers: list[torch.nn.Module] = []
    dims = [dim, hidden, dim]
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        last = i == len(dims) - 2
        layers.append(torch.nn.Linear(a, b))
        if not last:
            layers.append(torch.nn.GELU(approximate="tanh"))
        if drop and (not last or final_dropout):
            layers.append(torch.nn.Dropout(drop))
    return torch.nn.Sequential(*layers)


class _Layers(torch.nn.Module):
    def __init__(self, layers: torch.nn.Sequential):
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DiTBlock(torch.nn.Module):
    """adaLN-Zero transformer block; forward(x (B, N, D), c (B, E), grid, **attention kwargs)."""

    def __init__(self, hidden_size: int, num_heads: int, attention_backend: str = "timm", layernorm_backend: str = "torch",
                 norm_eps: float = 1e-6, mlp_ratio: float = 4.0, intermediate_dropout: bool = False,
                 attn_drop_rate: float = 0.0, proj_drop_rate: float = 0.0, mlp_drop_rate: float = 0.0,
                 final_mlp_dropout: bool = True, drop_path: float = 0.0, condition_embed_dim: int | None = None,
                 **attn_kwargs: Any):  # fmt: skip
        super().__init__()
        self.attention = build_attention(attention_backend, hidden_size, num_heads, layernorm_backend,
                                         attn_drop_rate=attn_drop_rate, proj_drop_rate=proj_drop_rate, **attn_kwargs)  # fmt: skip
        self.pre_attention_norm = _layer_norm(hidden_size, norm_eps)
        self.pre_mlp_norm = _layer_norm(hidden_size, norm_eps)
        self.intermediate_dropout = intermediate_dropout
        self.linear = _Layers(_mlp(hidden_size, int(hidden_size * mlp_ratio), mlp_drop_rate, final_mlp_dropout))
        cond_dim = hidden_size if condition_embed_dim is None else condition_embed_dim
        self.adaptive_modulation = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(cond_dim, 6 * hidden_size))
        self.drop_path = drop_path

    def initialize_weights(self) -> None:
        torch.nn.init.zeros_(self.adaptive_modulation[-1].weight)
        torch.nn.init.zeros_(self.adaptive_modulation[-1].bias)

    def _gate(self, gate: torch.Tensor) -> torch.Tensor:
        """Stochastic depth: the whole residual branch dropped per sample with probability drop_path."""
        gate = gate.unsqueeze(1)
        if not self.training or not self.drop_path:
            return gate
        keep = 1.0 - self.drop_path
        return gate * torch.bernoulli(torch.full((gate.shape[0], 1, 1), keep, device=gate.device, dtype=gate.dtype)) / keep

    def forward(self, x: torch.Tensor, c: torch.Tensor, grid: tuple[int, int], p_dropout: float | None = None,
                **attn_kwargs: Any) -> torch.Tensor:  # fmt: skip
        a_shift, a_scale, a_gate, m_shift, m_scale, m_gate = self.adaptive_modulation(c).chunk(6, dim=1)
        h = _modulate(self.pre_attention_norm(x), a_scale, a_shift)
        if p_dropout is not None:
            if not self.intermediate_dropout:
                raise ConfigError(explain("p_dropout given but the blocks were built without intermediate_dropout"))
            h = F.dropout(h, float(p_dropout), self.training)
        x = x + self._gate(a_gate) * self.attention(h, grid, **attn_kwargs)
        return x + self._gate(m_gate) * self.linear(_modulate(self.pre_mlp_norm(x), m_scale, m_shift))


class _ProjLayer(torch.nn.Module):
    def __init__(self, hidden_size: int, emb_channels: int):
        super().__init__()
        self.proj_layer_norm = _layer_norm(hidden_size)
        self.output_projection = torch.nn.Linear(hidden_size, emb_channels)
        self.adaptive_modulation = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaptive_modulation(c).chunk(2, dim=1)
        return self.output_projection(_modulate(self.proj_layer_norm(x), scale, shift))


class ProjReshape2DDetokenizer(torch.nn.Module):
    """Tokens (B, h w, D) and c (B, D) -> (B, C, h p_h, w p_w)."""

    def __init__(self, patch_size: tuple[int, int], out_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size, self.out_channels = tuple(patch_size), out_channels
        self.proj_layer = _ProjLayer(hidden_size, patch_size[0] * patch_size[1] * out_channels)

    def initialize_weights(self) -> None:
        for layer in (self.proj_layer.adaptive_modulation[-1], self.proj_layer.output_projection):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)

    def forward(self, tokens: torch.Tensor, c: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        (h, w), (ph, pw), ch = grid, self.patch_size, self.out_channels
        x = self.proj_layer(tokens, c).reshape(tokens.shape[0], h, w, ph, pw, ch)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], ch, h * ph, w * pw)


class ConvDetokenizer(torch.nn.Module):
    """``proj`` (the reshape detokenizer) plus a residual convolution head ``conv_head`` across patch seams."""

    def __init__(self, patch_size: tuple[int, int], out_channels: int, hidden_size: int, conv_layers: int = 2,
                 conv_hidden: int = 64, conv_kernel: int = 3):  # fmt: skip
        super().__init__()
        self.proj = ProjReshape2DDetokenizer(patch_size, out_channels, hidden_size)
        self.conv_head = seam_convolutions(out_channels, conv_layers, conv_hidden, conv_kernel)

    def initialize_weights(self) -> None:
        self.proj.initialize_weights()
        torch.nn.init.zeros_(self.conv_head[-1].weight)
        torch.nn.init.zeros_(self.conv_head[-1].bias)

    def forward(self, tokens: torch.Tensor, c: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        img = self.proj(tokens, c, grid)
        return img + self.conv_head(img)


def build_detokenizer(kind: str, patch_size: tuple[int, int], out_channels: int, hidden_size: int, **kwargs: Any) -> torch.nn.Module:
    """The detokenizer for PhysicsNeMo's ``detokenizer`` name and ``detokenizer_kwargs``."""
    kwargs.pop("layernorm_backend", None)  # apex and torch layer norms share the (empty) state dict
    try:
        if kind == "proj_reshape_2d":
            return ProjReshape2DDetokenizer(patch_size, out_channels, hidden_size, **kwargs)
        if kind == "proj_reshape_2d_conv":
            return ConvDetokenizer(patch_size, out_channels, hidden_size, **kwargs)
    except TypeError as exc:
        raise ConfigError(explain(f"invalid detokenizer_kwargs for {kind!r}", found=str(exc))) from exc
    raise ConfigError(explain("unsupported detokenizer", expected=["proj_reshape_2d", "proj_reshape_2d_conv"], found=kind))
