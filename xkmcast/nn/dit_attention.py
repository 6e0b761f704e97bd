"""Self-attention modules of the PhysicsNeMo-layout DiT (state-dict names as PhysicsNeMo 2.2.2).

* :class:`DenseSelfAttention` - PhysicsNeMo's ``"timm"`` backend: qkv -> per-head (optional QK norm)
  -> global SDPA -> proj. Weights under ``attn_op.`` (``attn_op.qkv``, ``attn_op.q_norm``,
  ``attn_op.proj``).
* :class:`NeighborhoodSelfAttention` - the ``"natten2d"`` / ``"natten2d_rope"`` backends: qkv ->
  (optional parameter-free QK LayerNorm) -> (optional axial RoPE on q, k) -> neighbourhood attention
  with NATTEN's rule (:mod:`xkmcast.nn.neighborhood_attention`) -> proj. Weights ``qkv``, ``proj``
  and, with ``use_mask_token``, the learned ``mask_token`` that replaces invalid tokens before qkv.

Both take tokens (B, N, D) of an (h, w) grid (row-major) and return (B, N, D).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from xkmcast.errors import ConfigError, explain
from xkmcast.nn.neighborhood_attention import neighborhood_attention_2d
from xkmcast.nn.rope import apply_rope

__all__ = ["DenseSelfAttention", "NeighborhoodSelfAttention", "build_attention", "ATTENTION_BACKENDS"]

ATTENTION_BACKENDS = ("timm", "natten2d", "natten2d_rope")


class _RMSNorm(torch.nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (timm's RmsNorm, parameter ``weight``)."""

    def __init__(self, dim: int, affine: bool = True, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def _qk_norm(kind: str | None, dim: int, affine: bool) -> torch.nn.Module:
    if kind is None:
        return torch.nn.Identity()
    if kind == "RMSNorm":
        return _RMSNorm(dim, affine)
    if kind == "LayerNorm":
        return torch.nn.LayerNorm(dim, elementwise_affine=affine)
    raise ConfigError(explain("unknown qk_norm_type", expected=["RMSNorm", "LayerNorm", None], found=kind))


class _DenseCore(torch.nn.Module):
    """The timm ``Attention`` layout: qkv, q_norm, k_norm, proj (one bias each)."""

    def __init__(self, dim: int, num_heads: int, qk_norm_type: str | None, qk_norm_affine: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.q_norm = _qk_norm(qk_norm_type, self.head_dim, qk_norm_affine)
        self.k_norm = _qk_norm(qk_norm_type, self.head_dim, qk_norm_affine)
        self.proj = torch.nn.Linear(dim, dim)


class DenseSelfAttention(torch.nn.Module):
    """softmax(q k^T / sqrt(d)) v over all tokens, per head, then a projection (PhysicsNeMo ``"timm"``)."""

    def __init__(self, hidden_size: int, num_heads: int, attn_drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 qk_norm_type: str | None = None, qk_norm_affine: bool = True, is_causal: bool = False):  # fmt: skip
        super().__init__()
        self.attn_op = _DenseCore(hidden_size, num_heads, qk_norm_type, qk_norm_affine)
        self.attn_drop_rate, self.proj_drop_rate, self.is_causal = attn_drop_rate, proj_drop_rate, is_causal

    def forward(self, x: torch.Tensor, grid: tuple[int, int], **_: Any) -> torch.Tensor:
        op = self.attn_op
        b, n, d = x.shape
        q, k, v = op.qkv(x).reshape(b, n, 3, op.num_heads, op.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = op.q_norm(q), op.k_norm(k)
        drop = self.attn_drop_rate if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=self.is_causal)
        a = op.proj(a.transpose(1, 2).reshape(b, n, d))
        return F.dropout(a, self.proj_drop_rate, self.training)


class NeighborhoodSelfAttention(torch.nn.Module):
    """Neighbourhood attention over attn_kernel x attn_kernel tokens (PhysicsNeMo ``"natten2d"``[``_rope``]).

    ``na2d_kwargs`` may hold ``dilation`` and ``scale`` (NATTEN's names); ``qk_norm`` applies a
    LayerNorm without parameters (eps 1e-6) to q and k per head. ``rope``: rotate q, k with the
    (h, w, head_dim) tables passed to forward.
    """

    def __init__(self, hidden_size: int, num_heads: int, attn_kernel: int = 3, qkv_bias: bool = True,
                 qk_norm: bool = False, attn_drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 norm_layer: str = "torch", na2d_kwargs: dict | None = None, use_mask_token: bool = False,
                 rope: bool = False):  # fmt: skip
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(explain("hidden_size must be divisible by num_heads", found=[hidden_size, num_heads]))
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        if rope and self.head_dim % 4:
            raise ConfigError(explain("RoPE needs a head size divisible by 4", found=self.head_dim))
        na2d_kwargs = dict(na2d_kwargs or {})
        unknown = sorted(set(na2d_kwargs) - {"dilation", "scale", "is_causal", "stride"})
        if unknown or na2d_kwargs.get("is_causal") or na2d_kwargs.get("stride", 1) not in (1, [1, 1], (1, 1)):
            raise ConfigError(explain("unsupported neighbourhood attention options",
                                      expected="dilation, scale (non-causal, stride 1)", found=na2d_kwargs))  # fmt: skip
        self.kernel, self.dilation, self.scale = attn_kernel, na2d_kwargs.get("dilation", 1), na2d_kwargs.get("scale")
        self.rope, self.attn_drop_rate, self.proj_drop_rate = rope, attn_drop_rate, proj_drop_rate
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, hidden_size)) if use_mask_token else None
        self.qkv = torch.nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        norm = (lambda: torch.nn.LayerNorm(self.head_dim, elementwise_affine=False, eps=1e-6)) if qk_norm else torch.nn.Identity
        self.q_norm, self.k_norm = norm(), norm()
        self.proj = torch.nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], rope_tables: tuple[torch.Tensor, torch.Tensor] | None = None,
                invalid_tokens: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        if self.mask_token is not None and invalid_tokens is not None:  # (B, N) or (N,) True at invalid tokens
            alpha = invalid_tokens.to(x.dtype)
            alpha = alpha.view(1, -1, 1) if alpha.ndim == 1 else alpha.unsqueeze(-1)
            x = x * (1.0 - alpha) + self.mask_token.to(x.dtype) * alpha
        b, n, d = x.shape
        h, w = grid
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.reshape(b, self.num_heads, h, w, self.head_dim) for t in (q, k, v))
        if self.rope:
            if rope_tables is None:
                raise ConfigError(explain("RoPE attention needs the rotation tables", expected="rope_tables=(cos, sin)"))
            q, k = apply_rope(q, *rope_tables), apply_rope(k, *rope_tables)
        a = neighborhood_attention_2d(q, k, v, self.kernel, self.dilation, self.scale)
        a = F.dropout(a, self.attn_drop_rate, self.training)
        a = self.proj(a.permute(0, 2, 3, 1, 4).reshape(b, n, d))
        return F.dropout(a, self.proj_drop_rate, self.training)


def build_attention(backend: str, hidden_size: int, num_heads: int, layernorm_backend: str, **kwargs: Any) -> torch.nn.Module:
    """The attention module of one block for PhysicsNeMo's ``attention_backend`` name and ``attn_kwargs``."""
    try:
        if backend == "timm":
            return DenseSelfAttention(hidden_size, num_heads, **kwargs)
        if backend in ("natten2d", "natten2d_rope"):
            kwargs.setdefault("norm_layer", layernorm_backend)
            return NeighborhoodSelfAttention(hidden_size, num_heads, rope=backend == "natten2d_rope", **kwargs)
    except TypeError as exc:
        raise ConfigError(explain(f"unsupported arguments for the {backend!r} attention", found=str(exc))) from exc
    raise ConfigError(explain("unsupported attention_backend", expected=list(ATTENTION_BACKENDS), found=backend,
                              fix="transformer_engine checkpoints have another weight layout; re-export with 'timm'"))  # fmt: skip
