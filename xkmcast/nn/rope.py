"""Axial 2-D rotary position embedding (RoPE) for attention on an h x w token grid.

Per head of size D (a multiple of 4), the first D / 2 channels rotate with the row index i, the
last D / 2 with the column index j. Inside each half, the adjacent channel pair (2m, 2m + 1) is
rotated by the angle p * theta^(-2m / (D / 2)) (p = i or j, m = 0 .. D / 4 - 1):

    (x_a, x_b) -> (x_a cos(phi) - x_b sin(phi), x_a sin(phi) + x_b cos(phi)),

so q . k depends only on the offset between query and key positions. Same layout as PhysicsNeMo
2.2.2's ``RotaryEmbedding2DTables`` / ``apply_rotary_pos_emb`` (the rotation runs in float32).
"""

from __future__ import annotations

import torch

__all__ = ["axial_rope_tables", "apply_rope"]


def axial_rope_tables(h: int, w: int, head_dim: int, theta: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) tables of shape (h, w, head_dim), float32."""
    if head_dim % 4:
        raise ValueError(f"axial 2-D RoPE needs a head size divisible by 4, got {head_dim}")
    half = head_dim // 2
    freqs = theta ** (-torch.arange(0, half, 2, dtype=torch.float32, device=device) / half)  # (D / 4,)
    rows = (torch.arange(h, dtype=torch.float32, device=device)[:, None] * freqs).repeat_interleave(2, -1)
    cols = (torch.arange(w, dtype=torch.float32, device=device)[:, None] * freqs).repeat_interleave(2, -1)
    angle = torch.cat([rows[:, None, :].expand(h, w, half), cols[None, :, :].expand(h, w, half)], dim=-1)
    return angle.cos(), angle.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs of x (..., h, w, head_dim) by the tables; same dtype as x."""
    xf = x.float()
    rotated = torch.stack((-xf[..., 1::2], xf[..., 0::2]), dim=-1).flatten(-2)
    return (xf * cos + rotated * sin).to(x.dtype)
