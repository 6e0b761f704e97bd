"""Neighbourhood attention against a brute-force implementation of NATTEN's rule written here from
its definition (loop over queries, explicit window lists, float64 softmax), at borders and in the
interior, odd / even grids and kernels, dilation, with and without 2-D RoPE; and against
``natten.functional.na2d`` itself when the ``natten`` package is installed."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from xkmcast.errors import InvalidDataError
from xkmcast.nn.neighborhood_attention import neighborhood_attention_2d
from xkmcast.nn.rope import apply_rope, axial_rope_tables


def _window(i: int, length: int, kernel: int, dilation: int) -> list[int]:
    """The K key indices of query i: the K group members nearest to i, shifted inward at the borders."""
    group = list(range(i % dilation, length, dilation))
    n = group.index(i)
    start = min(max(n - kernel // 2, 0), len(group) - kernel)
    return group[start : start + kernel]


def _brute_force(q, k, v, kernel, dilation):
    """out[b, h, i, j] = sum_w softmax_w(q . k_w / sqrt(D)) v_w over the window of (i, j)."""
    (kh, kw), (dh, dw) = kernel, dilation
    b, heads, hh, ww, d = q.shape
    out = torch.zeros_like(v)
    for i in range(hh):
        rows = _window(i, hh, kh, dh)
        assert len(rows) == kh
        for j in range(ww):
            cols = _window(j, ww, kw, dw)
            keys = k[:, :, rows][:, :, :, cols].reshape(b, heads, kh * kw, d)
            vals = v[:, :, rows][:, :, :, cols].reshape(b, heads, kh * kw, v.shape[-1])
            weights = torch.softmax(torch.einsum("bhd,bhkd->bhk", q[:, :, i, j], keys) / math.sqrt(d), dim=-1)
            out[:, :, i, j] = torch.einsum("bhk,bhkd->bhd", weights, vals)
    return out


def _qkv(h, w, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, h, w, d, generator=gen, dtype=torch.float64) for _ in range(3)]


CASES = [  # (H, W, kernel, dilation, tile)
    (7, 9, (3, 3), (1, 1), 8),  # one tile, odd sizes
    (10, 13, (4, 4), (1, 1), 4),  # even kernel, partial tiles
    (12, 11, (3, 5), (2, 1), 3),  # rectangular kernel, dilation on rows
    (9, 8, (5, 3), (1, 2), 2),  # tiles smaller than the kernel
    (6, 6, (6, 6), (1, 1), 4),  # kernel = grid: full attention
    (13, 10, (2, 3), (3, 2), 5),  # groups of unequal length
]


@pytest.mark.parametrize("h, w, kernel, dilation, tile", CASES)
def test_matches_brute_force_rule(h, w, kernel, dilation, tile):
    q, k, v = _qkv(h, w)
    ours = neighborhood_attention_2d(q, k, v, kernel, dilation, tile=tile)
    assert (ours - _brute_force(q, k, v, kernel, dilation)).abs().max() < 1e-10


def test_kernel_equal_to_grid_is_dense_attention():
    q, k, v = _qkv(5, 7)
    dense = torch.nn.functional.scaled_dot_product_attention(*(t.reshape(2, 2, 35, 8) for t in (q, k, v)))
    assert (neighborhood_attention_2d(q, k, v, (5, 7), tile=2) - dense.reshape(2, 2, 5, 7, 8)).abs().max() < 1e-12


def _rope_complex(x, theta=10000.0):
    """RoPE from its definition: channel pairs as complex numbers times exp(i p f_m), rows on the first half."""
    h, w, d = x.shape[-3:]
    half = d // 2
    f = theta ** (-torch.arange(half // 2, dtype=torch.float64) * 2 / half)
    out = []
    for part, pos in ((x[..., :half], torch.arange(h, dtype=torch.float64)[:, None]),
                      (x[..., half:], torch.arange(w, dtype=torch.float64)[None, :])):  # fmt: skip
        z = torch.view_as_complex(part.reshape(*part.shape[:-1], half // 2, 2).contiguous())
        out.append(torch.view_as_real(z * torch.exp(1j * pos[..., None] * f)).flatten(-2))
    return torch.cat(out, dim=-1)


@pytest.mark.parametrize("h, w, kernel", [(8, 11, 3), (9, 6, 4)])
def test_rope_then_neighbourhood_attention(h, w, kernel):
    q, k, v = _qkv(h, w)
    cos, sin = axial_rope_tables(h, w, 8, theta=100.0)
    rq, rk = apply_rope(q, cos.double(), sin.double()), apply_rope(k, cos.double(), sin.double())
    assert (rq - _rope_complex(q, 100.0)).abs().max() < 1e-6  # tables are float32
    ours = neighborhood_attention_2d(rq, rk, v, kernel, tile=4)
    expected = _brute_force(_rope_complex(q, 100.0), _rope_complex(k, 100.0), v, (kernel, kernel), (1, 1))
    assert (ours - expected).abs().max() < 1e-5
    plain = neighborhood_attention_2d(q, k, v, kernel, tile=4)
    assert (ours - plain).abs().max() > 1e-2  # the rotation changes the result


def test_gradients():
    q, k, v = (t[:1, :1, :4, :5, :2].clone().requires_grad_() for t in _qkv(4, 5))
    assert torch.autograd.gradcheck(lambda a, b, c: neighborhood_attention_2d(a, b, c, 3, tile=2), (q, k, v), fast_mode=True)


def test_grid_smaller_than_kernel_is_refused():
    q, k, v = _qkv(4, 9)
    with pytest.raises(InvalidDataError, match="kernel"):
        neighborhood_attention_2d(q, k, v, 3, dilation=2)


@pytest.mark.slow  # natten's CPU path (eager flex attention) takes seconds to warm up
@pytest.mark.parametrize("h, w, kernel, dilation", [(7, 9, 3, 1), (10, 13, 4, 1), (12, 11, (3, 5), 2)])
def test_matches_natten(h, w, kernel, dilation):
    natten = pytest.importorskip("natten", reason="natten not installed (optional: compared when present)")
    q, k, v = (t.float() for t in _qkv(h, w))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = natten.functional.na2d(*(t.permute(0, 2, 3, 1, 4) for t in (q, k, v)), kernel_size=kernel, dilation=dilation)
    ours = neighborhood_attention_2d(q, k, v, kernel, dilation)
    assert (ours - ref.permute(0, 3, 1, 2, 4)).abs().max() < 1e-5


def test_no_dense_score_matrix(monkeypatch):
    """Every SDPA call sees at most (tile + K - 1)^2 keys and a mask of that width, whatever the grid."""
    import xkmcast.nn.neighborhood_attention as na

    real, seen = torch.nn.functional.scaled_dot_product_attention, []

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((k.shape[-2], None if attn_mask is None else tuple(attn_mask.shape)))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(na.F, "scaled_dot_product_attention", spy)
    q, k, v = (t.float() for t in _qkv(40, 48, d=4))
    na.neighborhood_attention_2d(q, k, v, 5, tile=6)
    assert seen and all(keys <= (6 + 4) ** 2 and mask[-1] == keys for keys, mask in seen)
