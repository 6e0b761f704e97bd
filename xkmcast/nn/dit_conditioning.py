"""Conditioning embedders of the PhysicsNeMo-layout DiT: c = E(t, condition), shape (B, output_dim).

With f_k = (1 / max_positions)^(k / (F / 2 - e)), k = 0 .. F / 2 - 1 (e = 1 with ``endpoint``):

* ``"dit"`` (:class:`DiTConditionEmbedder`, late fusion):
  c = MLP([cos(t f), sin(t f)]) + W_c condition   (MLP: Linear(F, 2 F') - SiLU - Linear(2 F', D),
  F' = mlp width, F = ``freq_embed_dim``, default D; W_c without bias, only when condition_dim > 0);
* ``"edm"`` (:class:`EDMConditionEmbedder`, early fusion as SongUNet):
  c = L1(SiLU(L0([sin(t f), cos(t f)] + L_c(condition * sqrt(condition_dim))))), F = noise_channels,
  endpoint frequencies; during training whole conditions are dropped with ``condition_dropout``;
* ``"zero"`` (:class:`ZeroConditioningEmbedder`): an empty (B, 0) tensor (blocks keep only biases).

Weight names and the ``freqs`` buffers are PhysicsNeMo 2.2.2's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from xkmcast.errors import ConfigError, explain

__all__ = ["DiTConditionEmbedder", "EDMConditionEmbedder", "ZeroConditioningEmbedder", "build_conditioning_embedder"]


def _freqs(channels: int, max_positions: float, endpoint: bool) -> torch.Tensor:
    k = torch.arange(channels // 2, dtype=torch.float32)
    return (1 / max_positions) ** (k / (channels // 2 - (1 if endpoint else 0)))


class _TimestepEmbedding(torch.nn.Module):
    """outer(t, freqs) -> [cos, sin] (or [sin, cos]), optionally followed by an MLP under ``mlp``."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False, amp_mode: bool = False,
                 learnable: bool = False, freq_embed_dim: int | None = None, mlp_hidden_dim: int | None = None,
                 embed_fn: str = "cos_sin"):  # fmt: skip
        super().__init__()
        if embed_fn not in ("cos_sin", "np_sin_cos"):
            raise ConfigError(explain("unknown embed_fn", expected=["cos_sin", "np_sin_cos"], found=embed_fn))
        freq_embed_dim = freq_embed_dim or num_channels
        self.sin_first = embed_fn == "np_sin_cos"
        if learnable:
            hidden = mlp_hidden_dim or 2 * num_channels
            self.mlp = torch.nn.Sequential(torch.nn.Linear(freq_embed_dim, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, num_channels))
        else:
            self.mlp = None
        self.register_buffer("freqs", _freqs(freq_embed_dim, max_positions, endpoint))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = torch.outer(t, self.freqs.to(t.dtype))
        x = torch.cat([x.sin(), x.cos()] if self.sin_first else [x.cos(), x.sin()], dim=1)
        return self.mlp(x) if self.mlp is not None else x


class DiTConditionEmbedder(torch.nn.Module):
    """Late fusion: MLP(sinusoid(t)) + W condition."""

    def __init__(self, hidden_size: int, condition_dim: int = 0, amp_mode: bool = False, **timestep_embed_kwargs: Any):
        super().__init__()
        self.output_dim = hidden_size
        self.t_embedder = _TimestepEmbedding(hidden_size, learnable=True, **timestep_embed_kwargs)
        self.cond_embedder = torch.nn.Linear(condition_dim, hidden_size, bias=False) if condition_dim else None
        if self.cond_embedder is not None:
            torch.nn.init.zeros_(self.cond_embedder.weight)

    def forward(self, t: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        c = self.t_embedder(t)
        if self.cond_embedder is not None and condition is not None:
            c = c + self.cond_embedder(condition.to(c.dtype))
        return c


class EDMConditionEmbedder(torch.nn.Module):
    """Early fusion: L1(SiLU(L0(sinusoid(t) + L_c(condition sqrt(dim)))))."""

    def __init__(self, emb_channels: int, noise_channels: int, condition_dim: int = 0, condition_dropout: float = 0.0,
                 legacy_condition_bias: bool = False, max_positions: int = 10000, **_: Any):  # fmt: skip
        super().__init__()
        self.output_dim = emb_channels
        self.condition_dropout = condition_dropout
        self.map_noise = _TimestepEmbedding(noise_channels, max_positions, endpoint=True, embed_fn="np_sin_cos")
        self.map_condition = torch.nn.Linear(condition_dim, noise_channels) if condition_dim > 0 or legacy_condition_bias else None
        self.map_layer0 = torch.nn.Linear(noise_channels, emb_channels)
        self.map_layer1 = torch.nn.Linear(emb_channels, emb_channels)

    def forward(self, t: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(t)
        if self.map_condition is not None and condition is not None:
            cond = condition.to(emb.dtype)
            if self.training and self.condition_dropout:
                keep = torch.rand([t.shape[0], 1], device=cond.device) >= self.condition_dropout
                cond = cond * keep.to(cond.dtype)
            emb = emb + self.map_condition(cond * math.sqrt(self.map_condition.in_features))
        return self.map_layer1(F.silu(self.map_layer0(emb)))


class ZeroConditioningEmbedder(torch.nn.Module):
    """No conditioning: (B, 0)."""

    output_dim = 0

    def forward(self, t: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        return t.new_empty(t.shape[0], 0)


def build_conditioning_embedder(kind: str, hidden_size: int, condition_dim: int, **kwargs: Any) -> torch.nn.Module:
    """The embedder for PhysicsNeMo's ``conditioning_embedder`` name and ``conditioning_embedder_kwargs``."""
    try:
        if kind == "dit":
            return DiTConditionEmbedder(hidden_size, condition_dim, **kwargs)
        if kind == "edm":
            return EDMConditionEmbedder(condition_dim=condition_dim, **kwargs)
        if kind == "zero":
            return ZeroConditioningEmbedder()
    except TypeError as exc:
        raise ConfigError(explain(f"invalid conditioning_embedder_kwargs for {kind!r}", found=str(exc))) from exc
    raise ConfigError(explain("unknown conditioning_embedder", expected=["dit", "edm", "zero"], found=kind))
