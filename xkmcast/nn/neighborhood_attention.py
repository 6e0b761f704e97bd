"""2-D neighbourhood attention with NATTEN's window rule, and dense attention, on torch SDPA.

Tensors are laid out as ``(B, heads, H, W, D)`` (queries, keys and values on the same H x W token
grid). For every query at (i, j) the keys are exactly the K_h x K_w tokens

    rows  g_i + d_h * (s_h(i) + a),  a = 0 .. K_h - 1
    cols  g_j + d_w * (s_w(j) + b),  b = 0 .. K_w - 1

where, per axis of length L with kernel K and dilation d, a token i belongs to the dilation group
g = i mod d, has the position n = i // d inside that group, the group holds L_g = ceil((L - g) / d)
tokens, and the window start is shifted inward at the borders (never zero-padded):

    s(i) = clamp(n - floor(K / 2), 0, L_g - K).

So every query sees exactly K_h K_w keys; in the interior the window is centred (for even K one
more key before than after), at the borders it is the first / last K tokens of its group. This is
NATTEN's rule (``natten.functional.na2d``, non-causal, stride 1); it needs L_g >= K, i.e.
L >= K d. out = softmax(q k^T * scale) v over that window, scale = D^-1/2 by default.

Implementation: never an N x N mask. Queries are cut into t x t tiles (the grid padded to whole
tiles, the padding dropped afterwards); a tile's windows all lie inside one key block of
(t + K - 1)^2 tokens (the block start is clamped like the windows), so each tile is one
``scaled_dot_product_attention`` call against its block with a (t^2, (t + K - 1)^2) boolean mask.
Tiles are processed one row of tiles at a time: memory is O(W t (t + K - 1)^2 heads) per row, not
O((HW)^2). Dilation runs the same on each of the d_h d_w sub-grids ``x[g_h::d_h, g_w::d_w]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xkmcast.errors import InvalidDataError, explain

__all__ = ["neighborhood_attention_2d", "dense_attention_2d", "window_starts"]

#: query tile side in tokens (memory / speed trade-off; 8 keeps the key block at (8 + K - 1)^2)
DEFAULT_TILE = 8


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def window_starts(positions: torch.Tensor, length: int, kernel: int) -> torch.Tensor:
    """NATTEN's window start clamp(n - K // 2, 0, L - K) for positions n of one (dilation) group."""
    return (positions - kernel // 2).clamp(0, length - kernel)


def _axis_plan(length: int, kernel: int, tile: int, device) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """For one axis: (tile size t, key block size R, block starts (n_tiles,), mask (n_tiles, t, R)).

    Queries are padded to n_tiles * t; padded queries get clamped windows like the last query (their
    outputs are dropped). mask[n, u, r] is True when key block_start[n] + r lies in the window of
    query n * t + u.
    """
    t = min(tile, length)
    n_tiles = -(-length // t)
    block = min(t + kernel - 1, length)
    q = torch.arange(n_tiles * t, device=device).view(n_tiles, t)
    q_start = window_starts(q, length, kernel)  # (n_tiles, t)
    block_start = q_start[:, 0].clamp(max=length - block)  # (n_tiles,)
    key = block_start[:, None, None] + torch.arange(block, device=device)[None, None, :]  # (n, 1, R)
    mask = (key >= q_start[..., None]) & (key < q_start[..., None] + kernel)
    return t, block, block_start, mask


def _na2d_undilated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: tuple[int, int], scale: float,
                    tile: int) -> torch.Tensor:  # fmt: skip
    b, h, gh, gw, d = q.shape
    th, rh, bs_h, mask_h = _axis_plan(gh, kernel[0], tile, q.device)
    tw, rw, bs_w, mask_w = _axis_plan(gw, kernel[1], tile, q.device)
    nh, nw = mask_h.shape[0], mask_w.shape[0]
    qp = F.pad(q, (0, 0, 0, nw * tw - gw, 0, nh * th - gh))  # (B, h, nh*th, nw*tw, D)
    col_index = (bs_w[:, None] + torch.arange(rw, device=q.device)[None, :]).reshape(-1)  # (nw * rw,)
    # per column tile: (nw, th*tw, rh*rw) after combining with one row tile's mask
    rows = []
    for r in range(nh):
        qt = qp[:, :, r * th : (r + 1) * th].reshape(b, h, th, nw, tw, d).permute(0, 1, 3, 2, 4, 5)
        qt = qt.reshape(b, h, nw, th * tw, d)
        k0 = int(bs_h[r])
        kb = k[:, :, k0 : k0 + rh].index_select(3, col_index).reshape(b, h, rh, nw, rw, d)
        vb = v[:, :, k0 : k0 + rh].index_select(3, col_index).reshape(b, h, rh, nw, rw, d)
        kb = kb.permute(0, 1, 3, 2, 4, 5).reshape(b, h, nw, rh * rw, d)
        vb = vb.permute(0, 1, 3, 2, 4, 5).reshape(b, h, nw, rh * rw, d)
        m = mask_h[r][None, :, None, :, None] & mask_w[:, None, :, None, :]  # (nw, th, tw, rh, rw)
        o = F.scaled_dot_product_attention(qt, kb, vb, attn_mask=m.reshape(nw, th * tw, rh * rw), scale=scale)
        rows.append(o.reshape(b, h, nw, th, tw, d).permute(0, 1, 3, 2, 4, 5).reshape(b, h, th, nw * tw, d))
    return torch.cat(rows, dim=2)[:, :, :gh, :gw]


def neighborhood_attention_2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
    scale: float | None = None,
    tile: int = DEFAULT_TILE,
) -> torch.Tensor:
    """Neighbourhood attention (NATTEN's rule, see the module docstring) on (B, heads, H, W, D) tensors.

    Returns (B, heads, H, W, D). Raises InvalidDataError when a dilation group is shorter than the
    kernel (H >= K_h d_h and W >= K_w d_w are needed).
    """
    kernel, dil = _pair(kernel_size), _pair(dilation)
    if q.ndim != 5 or k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise InvalidDataError(explain("neighbourhood attention inputs do not match",
                                       expected="q, k: (B, heads, H, W, D); v: (B, heads, H, W, Dv)",
                                       found=[tuple(q.shape), tuple(k.shape), tuple(v.shape)]))  # fmt: skip
    grid = q.shape[2:4]
    for axis, (length, kk, dd) in enumerate(zip(grid, kernel, dil)):
        if kk < 1 or dd < 1 or length // dd < kk:
            raise InvalidDataError(explain(f"token grid too small for the neighbourhood along axis {axis}",
                                           expected=f"length >= kernel * dilation = {kk * dd}", found=length,
                                           fix="use a smaller kernel / dilation or a larger image"))  # fmt: skip
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if dil == (1, 1):
        return _na2d_undilated(q, k, v, kernel, scale, tile)
    out = q.new_empty(q.shape[:-1] + v.shape[-1:])
    for gh in range(dil[0]):
        for gw in range(dil[1]):
            sub = (slice(None), slice(None), slice(gh, None, dil[0]), slice(gw, None, dil[1]))
            out[sub] = _na2d_undilated(q[sub], k[sub], v[sub], kernel, scale, tile)
    return out


def dense_attention_2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Global attention on (B, heads, H, W, D) tensors through SDPA (every query sees all H W keys)."""
    b, h, gh, gw, d = q.shape
    o = F.scaled_dot_product_attention(q.reshape(b, h, gh * gw, d), k.reshape(b, h, gh * gw, d),
                                       v.reshape(b, h, gh * gw, v.shape[-1]), scale=scale)  # fmt: skip
    return o.reshape(b, h, gh, gw, v.shape[-1])
