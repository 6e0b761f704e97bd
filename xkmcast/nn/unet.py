"""SongUNet: the DDPM++ / NCSN++ U-Net with noise-level embedding used by CorrDiff and StormCast.

Constructor arguments, sub-module names and the state-dict layout are those of PhysicsNeMo
2.2.2's ``SongUNet`` so that its ``.mdlus`` checkpoints (``args.json`` + ``model.pt``) load
directly (see :mod:`xkmcast.nn.mdlus`).

Structure (N = len(channel_mult) levels, resolution r_l = H / 2^l at level l):

* mapping: e = act(L1(act(L0(emb(c_noise) + Lc(sqrt(label_dim) * class) + La(augment)))))
  (``embedding_type="zero"``: e = 0, used by the regression networks);
* encoder: ``{r}x{r}_conv`` (3x3, level 0) or ``{r}x{r}_down`` (a down-sampling block), then
  ``num_blocks`` blocks ``{r}x{r}_block{i}`` with C_l = model_channels * channel_mult[l]
  channels, self-attention where r_l is in ``attn_resolutions``; every output is kept as a skip;
* decoder: ``{r}x{r}_in0`` (with ``bottleneck_attention``) and ``{r}x{r}_in1`` at the coarsest
  level, ``{r}x{r}_up`` elsewhere, then ``num_blocks + 1`` blocks each eating one skip
  (channel concatenation), attention in the last one where r_l is in ``attn_resolutions``;
* output: ``{r}x{r}_aux_conv(act(``{r}x{r}_aux_norm``(h)))`` at full resolution (and at every
  level, summed after up-sampling, with ``decoder_type="skip"``).

Names use the row count r = H >> l for both dimensions (also for rectangular images), as the
reference does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from xkmcast.errors import InvalidDataError, explain
from xkmcast.nn.base import Network
from xkmcast.nn.padding import crop, is_periodic_x, pad_to_multiple
from xkmcast.nn.layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, activation
from xkmcast.nn.unet_blocks import UNetBlock

__all__ = ["SongUNet", "songunet_preset", "SONGUNET_PRESETS", "match_physicsnemo_eval"]

#: Published network sizes (CorrDiff "mini" for HRRR-Mini, CorrDiff/StormCast "normal").
SONGUNET_PRESETS: dict[str, dict[str, Any]] = {
    "mini": {"model_channels": 64, "channel_mult": [1, 2, 2], "attn_resolutions": [16], "num_blocks": 4},
    "normal": {"model_channels": 128, "channel_mult": [1, 2, 2, 2, 2], "attn_resolutions": [28], "num_blocks": 4},
}


def songunet_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """Constructor arguments of a published size, updated with ``overrides``.

    >>> SongUNet(img_resolution=64, in_channels=3, out_channels=2, **songunet_preset("mini"))
    """
    if name not in SONGUNET_PRESETS:
        raise ValueError(f"unknown SongUNet preset {name!r}; expected one of {sorted(SONGUNET_PRESETS)}")
    args = {k: list(v) if isinstance(v, list) else v for k, v in SONGUNET_PRESETS[name].items()}
    args.update(overrides)
    return args


def match_physicsnemo_eval(model: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """Make every GroupNorm of ``model`` use the n - 1 variance in eval mode, like PhysicsNeMo 2.2.2.

    PhysicsNeMo normalises with the biased variance in training but the unbiased one in eval
    mode; published weights were trained with the former. The difference is a relative
    1 / (n - 1) in the variance (n = pixels x channels per group): tiny for real grids, visible on
    toy ones. Returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, GroupNorm):
            module.unbiased_eval = enabled
    return model


class SongUNet(Network):
    """DDPM++ U-Net conditioned on a noise level (and optional class / augmentation vectors).

    Parameters are PhysicsNeMo's (``img_resolution``: int or [H, W]; ``in_channels`` /
    ``out_channels``; ``label_dim``, ``augment_dim``; ``model_channels``, ``channel_mult``,
    ``channel_mult_emb``, ``num_blocks``, ``attn_resolutions``, ``dropout``, ``label_dropout``;
    ``embedding_type`` "positional" | "fourier" | "zero"; ``channel_mult_noise``;
    ``encoder_type`` "standard" | "skip" | "residual"; ``decoder_type`` "standard" | "skip";
    ``resample_filter``; ``checkpoint_level`` (gradient checkpointing of the finest levels);
    ``additive_pos_embed`` (a learned (C, H, W) map added after the first convolution);
    ``bottleneck_attention``; ``act``). ``use_apex_gn``, ``profile_mode`` and ``amp_mode`` are
    accepted so that PhysicsNeMo arguments map on, and have no effect here.

    forward(x, noise_labels, class_labels=None, augment_labels=None) -> (B, out_channels, H, W)
      x: (B, in_channels, H, W), any H and W: a grid that is not a multiple of 2^(N-1) is padded
      to one (:func:`xkmcast.nn.padding.pad_to_multiple`: reflect, or circular along x when the
      network is periodic in x) and the output cropped back;
      noise_labels: (B,) or (1,), the EDM c_noise = ln(sigma) / 4 (zeros for regression);
      class_labels: (B, label_dim); augment_labels: (B, augment_dim).
    """

    physicsnemo_name = "SongUNet"
    physicsnemo_module = "physicsnemo.models.diffusion_unets.song_unet"

    def __init__(
        self,
        img_resolution: int | Sequence[int],
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[int] = (1, 1),
        checkpoint_level: int = 0,
        additive_pos_embed: bool = False,
        bottleneck_attention: bool = True,
        use_apex_gn: bool = False,
        act: str = "silu",
        profile_mode: bool = False,
        amp_mode: bool = False,
    ):
        _check_choice("embedding_type", embedding_type, ("fourier", "positional", "zero"))
        _check_choice("encoder_type", encoder_type, ("standard", "skip", "residual"))
        _check_choice("decoder_type", decoder_type, ("standard", "skip"))
        super().__init__()
        self.label_dim = label_dim
        self.augment_dim = augment_dim
        self.label_dropout = label_dropout
        self.embedding_type = embedding_type
        self.emb_channels = emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        if isinstance(img_resolution, int):
            self.img_shape_y = self.img_shape_x = img_resolution
        else:
            self.img_shape_y, self.img_shape_x = int(img_resolution[0]), int(img_resolution[1])
        self._num_levels = len(channel_mult)
        self._input_shape_mult = 2 ** (self._num_levels - 1)
        self.checkpoint_threshold = (math.isqrt(self.img_shape_x * self.img_shape_y) >> checkpoint_level) + 1

        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block = dict(
            emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
            resample_filter=resample_filter, resample_proj=True, act=act,
            init=init, init_zero=init_zero, init_attn=init_attn,
        )  # fmt: skip

        self.additive_pos_embed = additive_pos_embed
        if additive_pos_embed:
            self.spatial_emb = torch.nn.Parameter(torch.empty(1, model_channels, self.img_shape_y, self.img_shape_x))
            torch.nn.init.trunc_normal_(self.spatial_emb, std=0.02)

        # mapping network
        if embedding_type != "zero":
            self.map_noise = (
                PositionalEmbedding(noise_channels, endpoint=True)
                if embedding_type == "positional"
                else FourierEmbedding(noise_channels)
            )
            self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
            self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
            self.map_layer0 = Linear(noise_channels, emb_channels, **init)
            self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # encoder
        self.enc = torch.nn.ModuleDict()
        self._enc_kind: list[str] = []
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = self.img_shape_y >> level
            if level == 0:
                cin, cout = cout, model_channels
                self._add(self.enc, self._enc_kind, f"{res}x{res}_conv", "conv", Conv2d(cin, cout, kernel=3, **init))
            else:
                self._add(self.enc, self._enc_kind, f"{res}x{res}_down", "block", UNetBlock(cout, cout, down=True, **block))
                if encoder_type == "skip":
                    down = Conv2d(caux, caux, kernel=0, down=True, resample_filter=resample_filter)
                    self._add(self.enc, self._enc_kind, f"{res}x{res}_aux_down", "aux_down", down)
                    self._add(self.enc, self._enc_kind, f"{res}x{res}_aux_skip", "aux_skip", Conv2d(caux, cout, kernel=1, **init))
                if encoder_type == "residual":
                    conv = Conv2d(caux, cout, kernel=3, down=True, resample_filter=resample_filter, fused_resample=True, **init)
                    self._add(self.enc, self._enc_kind, f"{res}x{res}_aux_residual", "aux_residual", conv)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                unet_block = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
                self._add(self.enc, self._enc_kind, f"{res}x{res}_block{idx}", "block", unet_block)
        skips = [self.enc[n].out_channels for n, k in zip(self.enc, self._enc_kind) if not k.startswith("aux")]

        # decoder
        self.dec = torch.nn.ModuleDict()
        self._dec_kind: list[str] = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = self.img_shape_y >> level
            if level == len(channel_mult) - 1:
                in0 = UNetBlock(cout, cout, attention=bottleneck_attention, **block)
                self._add(self.dec, self._dec_kind, f"{res}x{res}_in0", "block", in0)
                self._add(self.dec, self._dec_kind, f"{res}x{res}_in1", "block", UNetBlock(cout, cout, **block))
            else:
                self._add(self.dec, self._dec_kind, f"{res}x{res}_up", "up", UNetBlock(cout, cout, up=True, **block))
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                unet_block = UNetBlock(cin, cout, attention=attn, **block)
                self._add(self.dec, self._dec_kind, f"{res}x{res}_block{idx}", "skip_block", unet_block)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    up = Conv2d(out_channels, out_channels, kernel=0, up=True, resample_filter=resample_filter)
                    self._add(self.dec, self._dec_kind, f"{res}x{res}_aux_up", "aux_up", up)
                self._add(self.dec, self._dec_kind, f"{res}x{res}_aux_norm", "aux_norm", GroupNorm(cout, eps=1e-6))
                conv = Conv2d(cout, out_channels, kernel=3, **init_zero)
                self._add(self.dec, self._dec_kind, f"{res}x{res}_aux_conv", "aux_conv", conv)
        self._act = activation(act)

    @staticmethod
    def _add(container: torch.nn.ModuleDict, kinds: list[str], name: str, kind: str, module: torch.nn.Module) -> None:
        container[name] = module
        kinds.append(kind)

    # -- forward --------------------------------------------------------------------------------
    def embed(
        self,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """The conditioning vector e, shape (B or 1, emb_channels) (zeros for ``embedding_type="zero"``)."""
        if self.embedding_type == "zero":
            return torch.zeros(noise_labels.shape[0], self.emb_channels, dtype=dtype, device=noise_labels.device)
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            if class_labels is None:
                raise InvalidDataError(explain("class_labels missing", expected=f"(B, {self.label_dim}) tensor"))
            labels = class_labels.to(emb.dtype)
            if self.training and self.label_dropout:
                keep = torch.rand(labels.shape[0], 1, device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check_inputs(x, noise_labels)
        padding = None
        if any(self._needs_pad(d) for d in x.shape[-2:]):
            x, padding = pad_to_multiple(x, self._input_shape_mult, periodic_x=is_periodic_x(self))
        out = self._forward(x, self.embed(noise_labels, class_labels, augment_labels, dtype=x.dtype), padding)
        return out if padding is None else crop(out, padding)

    def _needs_pad(self, d: int) -> bool:
        m = self._input_shape_mult
        return not ((d & (d - 1) == 0 and 0 < d < m) or d % m == 0)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor, padding) -> torch.Tensor:
        act = self._act

        skips: list[torch.Tensor] = []
        aux = x
        for (name, block), kind in zip(self.enc.items(), self._enc_kind):
            if kind == "aux_down":
                aux = block(aux)
            elif kind == "aux_skip":
                x = skips[-1] = x + block(aux)
            elif kind == "aux_residual":
                x = skips[-1] = aux = (x + block(aux)) * math.sqrt(0.5)
            elif kind == "conv":
                x = block(x)
                if self.additive_pos_embed:
                    emb_map = self.spatial_emb.to(x.dtype)
                    if padding is not None:
                        emb_map = pad_to_multiple(emb_map, self._input_shape_mult, periodic_x=is_periodic_x(self))[0]
                    x = x + emb_map
                skips.append(x)
            else:
                x = self._run(block, x, emb, self.checkpoint_threshold)
                skips.append(x)

        out = None
        tmp = x
        for block, kind in zip(self.dec.values(), self._dec_kind):
            if kind == "aux_up":
                out = block(out)
            elif kind == "aux_norm":
                tmp = block(x)
            elif kind == "aux_conv":
                tmp = block(act(tmp))
                out = tmp if out is None else tmp + out
            elif kind == "skip_block":
                x = self._run(block, torch.cat([x, skips.pop()], dim=1), emb, self.checkpoint_threshold)
            elif kind == "up":
                x = self._run(block, x, emb, self.checkpoint_threshold / 2)
            else:
                x = block(x, emb)
        return out

    def _run(self, block: UNetBlock, x: torch.Tensor, emb: torch.Tensor, threshold: float) -> torch.Tensor:
        """Apply ``block``, with gradient checkpointing on grids finer than ``threshold``."""
        if math.isqrt(x.shape[-2] * x.shape[-1]) > threshold and torch.is_grad_enabled():
            return checkpoint(block, x, emb, use_reentrant=False)
        return block(x, emb)

    def _check_inputs(self, x: torch.Tensor, noise_labels: torch.Tensor) -> None:
        if x.ndim != 4:
            raise InvalidDataError(explain("x has the wrong rank", expected="(B, C, H, W)", found=tuple(x.shape)))
        if noise_labels.ndim != 1 or noise_labels.shape[0] not in (x.shape[0], 1):
            raise InvalidDataError(
                explain("noise_labels has the wrong shape", expected=f"({x.shape[0]},) or (1,)", found=tuple(noise_labels.shape))
            )


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"invalid {name} {value!r}; expected one of {list(choices)}")
