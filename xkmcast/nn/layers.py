"""Building blocks of the DDPM++ U-Net (SongUNet family): dense and convolution layers with
the EDM initialisation rules, resampling convolutions, group normalisation and the noise-level
embeddings.

Parameter and buffer names follow PhysicsNeMo 2.2.2 (``weight``, ``bias``, ``resample_filter``,
``freqs``) so that published state dicts load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "init_weight",
    "activation",
    "Linear",
    "Conv2d",
    "GroupNorm",
    "PositionalEmbedding",
    "FourierEmbedding",
    "set_periodic_x",
]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "elu": F.elu,
}


def activation(name: str | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The activation function called ``name`` (``None`` -> ``None``)."""
    if name is None:
        return None
    try:
        return _ACTIVATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


def init_weight(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random tensor for the EDM initialisation modes.

    xavier_uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out));  xavier_normal: N(0, 2 / (fan_in + fan_out));
    kaiming_uniform: U(-a, a), a = sqrt(3 / fan_in);              kaiming_normal: N(0, 1 / fan_in).
    """
    if mode == "xavier_uniform":
        return math.sqrt(6.0 / (fan_in + fan_out)) * (2.0 * torch.rand(*shape) - 1.0)
    if mode == "xavier_normal":
        return math.sqrt(2.0 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3.0 / fan_in) * (2.0 * torch.rand(*shape) - 1.0)
    if mode == "kaiming_normal":
        return math.sqrt(1.0 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init_mode {mode!r}")


class Linear(torch.nn.Module):
    """y = x W^T + b, with W ~ init_mode * init_weight and b ~ init_mode * init_bias."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(_init([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


_init = init_weight


class Conv2d(torch.nn.Module):
    """2-D convolution with optional 2x up- or down-sampling by a separable FIR filter.

    The resampling filter f (e.g. [1, 1] box, [1, 3, 3, 1] binomial) is normalised to
    F = f f^T / (sum f)^2. Down-sampling is the depthwise convolution with F at stride 2;
    up-sampling the depthwise transposed convolution with 4 F at stride 2. Without ``fused_resample``
    the layer resamples first and convolves second (y = W * R(x) + b); with ``fused_resample``
    it convolves at the fine resolution (down: y = R(W * x) + b, up: y = W * R(x) + b with the
    paddings of the fused form). ``kernel=0`` gives a pure resampling layer without weights.

    For the box filter [1, 1] the resampling is computed as 2x2 average pooling / nearest-
    neighbour repetition (identical values, much cheaper than a depthwise convolution), and an
    up-sampling 1x1 convolution is applied before the repetition (the two commute exactly).

    ``periodic_x`` (an attribute, False by default; see :func:`set_periodic_x`): pad along x (the
    last dim) circularly instead of with zeros, for every convolution and resampling filter, so
    that the layer commutes with circular shifts along x (by multiples of 2 when it down-samples):
    the field is periodic in x, as a global grid is in longitude. Rows (y) stay zero-padded.
    """

    periodic_x: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[int] = (1, 1),
        fused_resample: bool = False,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ):
        if up and down:
            raise ValueError("Conv2d cannot both up- and down-sample")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = (
            torch.nn.Parameter(_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight)
            if kernel
            else None
        )
        self.bias = torch.nn.Parameter(_init([out_channels], **fans) * init_bias) if kernel and bias else None
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()
        self.register_buffer("resample_filter", f if (up or down) else None)
        self._box = bool(len(resample_filter) == 2 and resample_filter[0] == resample_filter[1])

    # -- padding and resampling -----------------------------------------------------------------
    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, padding: int, **kw) -> torch.Tensor:
        """``F.conv2d`` with ``padding`` on all sides: zeros, or circular along x when periodic."""
        if self.periodic_x and padding:
            return F.conv2d(_wrap_x(x, padding), w, b, padding=(padding, 0), **kw)
        return F.conv2d(x, w, b, padding=padding, **kw)

    def _down(self, x: torch.Tensor, channels: int, padding: int) -> torch.Tensor:
        if self._box and padding == 0:
            return F.avg_pool2d(x, 2)
        f = self.resample_filter.to(x.dtype).tile([channels, 1, 1, 1])
        return self._conv(x, f, None, padding, groups=channels, stride=2)

    def _up(self, x: torch.Tensor, channels: int, padding: int) -> torch.Tensor:
        if self._box and padding == 0:
            return _repeat2(x)
        f = (4 * self.resample_filter.to(x.dtype)).tile([channels, 1, 1, 1])
        if not self.periodic_x:
            return F.conv_transpose2d(x, f, groups=channels, stride=2, padding=padding)
        # transposed convolution of the periodic signal: q wrapped columns on each side feed every
        # output column (input i reaches outputs 2i - padding .. 2i - padding + k - 1), then crop
        k, width = f.shape[-1], x.shape[-1]
        q = (k + 1) // 2
        y = F.conv_transpose2d(_wrap_x(x, q), f, groups=channels, stride=2, padding=(padding, 0))
        start = 2 * q + padding
        return y[..., start : start + 2 * (width - 1) - 2 * padding + k]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (self.resample_filter.shape[-1] - 1) // 2 if self.resample_filter is not None else 0

        if self.fused_resample and w is not None and self.up:
            x = self._up(x, self.in_channels, max(f_pad - w_pad, 0))
            return self._conv(x, w, b, max(w_pad - f_pad, 0))
        if self.fused_resample and w is not None and self.down:
            x = self._conv(x, w, None, w_pad + f_pad)
            x = self._down(x, self.out_channels, 0)
            return x if b is None else x + b.reshape(1, -1, 1, 1)
        if self.up and w is not None and self._box and f_pad == 0:
            if w.shape[-1] == 1:
                return _repeat2(F.conv2d(x, w, b))  # 1x1 convolution commutes with repetition
            if w.shape[-1] == 3:
                return _upsample_conv3(x, w, b, periodic_x=self.periodic_x)
        if self.up:
            x = self._up(x, self.in_channels, f_pad)
        if self.down:
            x = self._down(x, self.in_channels, f_pad)
        if w is not None:
            x = self._conv(x, w, b, w_pad)
        return x


def set_periodic_x(model: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """Make every :class:`Conv2d` of ``model`` pad circularly along x (periodic longitude); returns
    ``model``. A switch, not a constructor argument: it follows from the grid a model runs on, and
    it leaves the parameters, the recorded arguments and PhysicsNeMo exports unchanged."""
    for module in model.modules():
        if isinstance(module, Conv2d):
            module.periodic_x = enabled
    return model


def _wrap_x(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` with its last ``n`` columns copied before the first and its first ``n`` after the last."""
    return F.pad(x, (n, n, 0, 0), mode="circular")


def _repeat2(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x up-sampling: every pixel becomes a 2x2 block."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _upsample_conv3(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, periodic_x: bool = False) -> torch.Tensor:
    """3x3 convolution (padding 1) of the nearest-neighbour 2x up-sampled x, computed at low resolution.

    Output pixel (2i + a, 2j + b) only sees input rows {i-1, i} (a = 0) or {i, i+1} (a = 1), and the
    same for columns, so each of the four phases is a 2x2 convolution of x whose taps are sums of
    the 3x3 taps: rows [w0, w1 + w2] for a = 0 and [w0 + w1, w2] for a = 1. This takes 16 instead of
    36 multiply-adds per output pixel and channel pair.
    """
    rows = (torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2), torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2))
    kernels = [
        torch.stack([r[..., 0], r[..., 1] + r[..., 2]], -1) if c == 0 else torch.stack([r[..., 0] + r[..., 1], r[..., 2]], -1)
        for r in rows
        for c in (0, 1)
    ]  # phases (a, b) = (0, 0), (0, 1), (1, 0), (1, 1), each (O, C, 2, 2)
    out_ch, (h, wd) = w.shape[0], x.shape[-2:]
    padded = F.pad(_wrap_x(x, 1), (0, 0, 1, 1)) if periodic_x else F.pad(x, (1, 1, 1, 1))
    y = F.conv2d(padded, torch.cat(kernels, 0), None if b is None else b.repeat(4))
    phases = [y[:, k * out_ch : (k + 1) * out_ch, a : a + h, c : c + wd] for k, (a, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)])]
    out = torch.stack(phases, 2).view(x.shape[0], out_ch, 2, 2, h, wd)  # (B, O, a, b, i, j)
    return out.permute(0, 1, 4, 2, 5, 3).reshape(x.shape[0], out_ch, 2 * h, 2 * wd)


class GroupNorm(torch.nn.Module):
    """Group normalisation, optionally followed by an activation.

    y = act( (x - mean_g) / sqrt(var_g + eps) * weight + bias ), statistics over each group of
    channels and all pixels. The number of groups is min(num_groups, ceil(C / min_channels_per_group)).

    ``var_g`` is the biased (population) variance, as in training. PhysicsNeMo 2.2.2 switches to
    the unbiased variance (divides by n - 1) in eval mode; set ``unbiased_eval = True`` (see
    :func:`xkmcast.nn.unet.match_physicsnemo_eval`) to reproduce its inference outputs exactly.
    """

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 32,
        min_channels_per_group: int = 4,
        eps: float = 1e-5,
        act: str | None = None,
    ):
        super().__init__()
        groups = min(num_groups, (num_channels + min_channels_per_group - 1) // min_channels_per_group)
        if num_channels % groups:
            raise ValueError(f"{num_channels} channels cannot be split into {groups} groups")
        self.num_groups = groups
        self.eps = eps
        self.act = act
        self._act = activation(act)
        self.unbiased_eval = False
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
        if self.unbiased_eval and not self.training:
            x = _group_norm_unbiased(x, self.num_groups, w, b, self.eps)
        else:
            x = F.group_norm(x, self.num_groups, w, b, self.eps)
        return x if self._act is None else self._act(x)


def _group_norm_unbiased(x: torch.Tensor, groups: int, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """Group norm with the n - 1 variance (PhysicsNeMo's inference path)."""
    shape = x.shape
    g = x.reshape(shape[0], groups, -1)
    var, mean = torch.var_mean(g, dim=-1, keepdim=True, correction=1)
    g = (g - mean) * torch.rsqrt(var + eps)
    return g.reshape(shape) * w.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)


class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal embedding of a scalar (the noise level c_noise) - DDPM++ "positional".

    With K = num_channels / 2 and k = 0..K-1:  f_k = (1 / max_positions)^(k / (K - endpoint)),
    emb(t) = [sin(t f_0) .. sin(t f_{K-1}), cos(t f_0) .. cos(t f_{K-1})]  (sine half first, the
    order the published SongUNet weights expect).
    """

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        half = num_channels // 2
        k = torch.arange(half, dtype=torch.float32) / (half - (1 if endpoint else 0))
        self.register_buffer("freqs", (1.0 / max_positions) ** k)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = torch.outer(t, self.freqs.to(t.dtype))
        return torch.cat([arg.sin(), arg.cos()], dim=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # old checkpoints did not store the (deterministic) frequencies
        state_dict.setdefault(prefix + "freqs", self.freqs.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class FourierEmbedding(torch.nn.Module):
    """Random Fourier features of a scalar - NCSN++ "fourier".

    f ~ N(0, scale^2) (num_channels / 2 of them, stored), emb(t) = [sin(2 pi t f), cos(2 pi t f)].
    """

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = torch.outer(t, (2 * math.pi) * self.freqs.to(t.dtype))
        return torch.cat([arg.sin(), arg.cos()], dim=1)
