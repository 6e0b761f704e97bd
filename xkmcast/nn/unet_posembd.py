"""SongUNet with a spatial positional grid (CorrDiff) and with lead-time maps (CorrDiff-LT).

The network input is the channel concatenation [x, P, L] where

* P (N_grid_channels x H x W) encodes the *global* position of each pixel: fixed sinusoids,
  a linear ramp, integer indices ("test") or free learnable parameters (CorrDiff's patched
  model: 100 channels);
* L (lead_time_channels x H x W) is one of ``lead_time_steps`` learnable maps, chosen per
  sample by ``lead_time_label``.

When the model runs on patches of the global grid, ``global_index`` (P_patches, 2, h, w) gives
for every patch pixel its (row, column) in the global grid; the embeddings are gathered there.
The batch is laid out sample-major: element b * P_patches + p is patch p of sample b.

Constructor arguments, names and state-dict keys (``pos_embd`` when learnable, ``lt_embd``,
``scalar``) follow PhysicsNeMo 2.2.2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from xkmcast.errors import InvalidDataError, explain
from xkmcast.nn.unet import SongUNet

__all__ = ["SongUNetPosEmbd", "SongUNetPosLtEmbd", "positional_grid"]

GRIDTYPES = ("sinusoidal", "sinusoidal_octave", "learnable", "linear", "test")


def positional_grid(gridtype: str, channels: int, height: int, width: int) -> torch.Tensor:
    """The fixed positional grid (channels, height, width) of a non-learnable ``gridtype``.

    With u = 2 pi j / (W - 1) and v = 2 pi i / (H - 1) at pixel (i, j):

    * "sinusoidal", 4 channels: [sin u, sin v, cos u, cos v];
    * "sinusoidal", 4K channels: for k = 0..K-1 with frequency a_k = 2^(k K / (K - 1)) (the legacy
      spacing, a_0 = 1): [sin a_k u, sin a_k v, cos a_k u, cos a_k v];
    * "sinusoidal_octave", 4K channels: the same with a_k = 2^k;
    * "linear", 2 channels: [x, y] ramps from -1 to 1 (x along columns, y along rows);
    * "test", 2 channels: integer [row, column] indices.
    """
    if gridtype in ("sinusoidal", "sinusoidal_octave"):
        if channels % 4:
            raise ValueError(f"gridtype {gridtype!r} needs a multiple of 4 channels, got {channels}")
        k = channels // 4
        bands = 2.0 ** (np.linspace(0.0, k, num=k) if gridtype == "sinusoidal" else np.arange(k))
        u, v = np.meshgrid(np.linspace(0, 2 * np.pi, width), np.linspace(0, 2 * np.pi, height))
        maps = [fn(a * c) for a in bands for fn in (np.sin, np.cos) for c in (u, v)]
        return torch.from_numpy(np.stack(maps)).float()
    if gridtype == "linear":
        if channels != 2:
            raise ValueError("gridtype 'linear' needs N_grid_channels=2")
        xx, yy = np.meshgrid(np.linspace(-1, 1, width), np.linspace(-1, 1, height))
        return torch.from_numpy(np.stack([xx, yy])).float()
    if gridtype == "test":
        if channels != 2:
            raise ValueError("gridtype 'test' needs N_grid_channels=2")
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        return torch.stack([rows, cols]).float()
    raise ValueError(f"unknown gridtype {gridtype!r}; expected one of {list(GRIDTYPES)}")


class SongUNetPosEmbd(SongUNet):
    """SongUNet whose input is concatenated with a global positional grid (and lead-time maps).

    ``in_channels`` counts the grid channels (and lead-time channels). Extra parameters:
    ``gridtype`` (see :func:`positional_grid`, or "learnable": N_grid_channels x H x W free
    parameters), ``N_grid_channels`` (0 disables the grid), and for lead-time models (use
    :class:`SongUNetPosLtEmbd`) ``lead_time_mode``, ``lead_time_channels``, ``lead_time_steps``,
    ``prob_channels``. Defaults are CorrDiff's (5 levels, attention at 28, dropout 0.13).

    forward(x, noise_labels, class_labels=None, global_index=None, embedding_selector=None,
    augment_labels=None, lead_time_label=None) -> (B, out_channels, h, w)
      x: (B, in_channels - N_grid_channels [- lead_time_channels], h, w);
      global_index: (P, 2, h, w) long, global (row, column) of each patch pixel (B = samples x P);
      embedding_selector: f(grid (C, H, W) or (B, C, H, W)) -> (B, C, h, w), instead of global_index;
      without either, h, w must be the global H, W.
    """

    physicsnemo_name = "SongUNetPosEmbd"

    def __init__(
        self,
        img_resolution: int | Sequence[int],
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (28,),
        dropout: float = 0.13,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[int] = (1, 1),
        gridtype: str = "sinusoidal",
        N_grid_channels: int = 4,
        checkpoint_level: int = 0,
        additive_pos_embed: bool = False,
        bottleneck_attention: bool = True,
        use_apex_gn: bool = False,
        act: str = "silu",
        profile_mode: bool = False,
        amp_mode: bool = False,
        lead_time_mode: bool = False,
        lead_time_channels: int | None = None,
        lead_time_steps: int = 9,
        prob_channels: Sequence[int] = (),
    ):
        if (lead_time_mode or lead_time_channels) and not isinstance(self, SongUNetPosLtEmbd):
            raise ValueError("a model with lead-time embeddings is a SongUNetPosLtEmbd, not a SongUNetPosEmbd")
        super().__init__(
            img_resolution, in_channels, out_channels, label_dim=label_dim, augment_dim=augment_dim,
            model_channels=model_channels, channel_mult=channel_mult, channel_mult_emb=channel_mult_emb,
            num_blocks=num_blocks, attn_resolutions=attn_resolutions, dropout=dropout,
            label_dropout=label_dropout, embedding_type=embedding_type, channel_mult_noise=channel_mult_noise,
            encoder_type=encoder_type, decoder_type=decoder_type, resample_filter=resample_filter,
            checkpoint_level=checkpoint_level, additive_pos_embed=additive_pos_embed,
            bottleneck_attention=bottleneck_attention, act=act,
        )  # fmt: skip
        self.gridtype = gridtype
        self.N_grid_channels = N_grid_channels
        if N_grid_channels == 0:
            self.pos_embd = None
        elif gridtype == "learnable":
            self.pos_embd = torch.nn.Parameter(torch.randn(N_grid_channels, self.img_shape_y, self.img_shape_x))
        else:
            grid = positional_grid(gridtype, N_grid_channels, self.img_shape_y, self.img_shape_x)
            self.register_buffer("pos_embd", grid, persistent=False)

        self.lead_time_mode = lead_time_mode
        self.lt_embd = None
        self.prob_channels = list(prob_channels)
        if lead_time_mode:
            if not lead_time_channels or lead_time_channels <= 0:
                raise ValueError("lead_time_channels must be >= 1 for a lead-time model")
            self.lead_time_channels = lead_time_channels
            self.lead_time_steps = lead_time_steps
            shape = (lead_time_steps, lead_time_channels, self.img_shape_y, self.img_shape_x)
            self.lt_embd = torch.nn.Parameter(torch.randn(*shape))
            if self.prob_channels:
                self.scalar = torch.nn.Parameter(torch.ones(1, len(self.prob_channels), 1, 1))

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        global_index: torch.Tensor | None = None,
        embedding_selector: Callable[[torch.Tensor], torch.Tensor] | None = None,
        augment_labels: torch.Tensor | None = None,
        lead_time_label: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if embedding_selector is not None and global_index is not None:
            raise ValueError("give either embedding_selector or global_index, not both")
        if self.pos_embd is not None or self.lt_embd is not None:
            if embedding_selector is not None:
                extra = self._select_with(x, embedding_selector, lead_time_label)
            else:
                extra = self.positional_embedding_indexing(x, global_index, lead_time_label)
            x = torch.cat([x, extra.to(x.dtype)], dim=1)
        out = super().forward(x, noise_labels, class_labels, augment_labels)
        if self.lead_time_mode and self.prob_channels:
            out = self._probabilities(out)
        return out

    def _probabilities(self, out: torch.Tensor) -> torch.Tensor:
        """Scale the ``prob_channels`` logits by ``scalar``; in eval mode return their softmax."""
        idx = torch.as_tensor(self.prob_channels, device=out.device)
        logits = out.index_select(1, idx) * self.scalar.to(out.dtype)
        values = logits if self.training else logits.softmax(dim=1)
        return out.index_copy(1, idx, values.to(out.dtype))

    def positional_embedding_indexing(
        self,
        x: torch.Tensor,
        global_index: torch.Tensor | None = None,
        lead_time_label: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embedding channels for the pixels of ``x``: (B, C_PE [+ C_LT], h, w).

        Without ``global_index`` the whole grid is used (h, w = H, W). With it, the grid is gathered
        at ``global_index[p, 0]`` (rows) and ``global_index[p, 1]`` (columns) for each patch p and
        repeated over the B / P samples (element b * P + p), the lead-time maps of the B / P samples'
        ``lead_time_label``; or, given one index and one label per row (P = B, as xkmcast's pipelines
        give them: :func:`~xkmcast.diffusion.patching.row_index`), each row's own.
        """
        parts: list[torch.Tensor] = []
        batch = x.shape[0]
        if global_index is None:
            if self.pos_embd is not None:
                parts.append(self.pos_embd.to(x.dtype)[None].expand(batch, -1, -1, -1))
            if self.lt_embd is not None:
                parts.append(self._lead_time_maps(x, lead_time_label).reshape(batch, -1, *self.lt_embd.shape[-2:]))
        else:
            n_patch = global_index.shape[0]
            rows, cols = global_index[:, 0].long(), global_index[:, 1].long()  # (P, h, w)
            if self.pos_embd is not None:
                pe = self.pos_embd.to(x.dtype)[:, rows, cols].transpose(0, 1)  # (P, C, h, w)
                parts.append(pe.repeat(batch // n_patch, 1, 1, 1))
            if self.lt_embd is not None:
                maps = self._lead_time_maps(x, lead_time_label)
                if n_patch == batch > 1 and maps.shape[0] == batch:  # an index and a label per row (row_index)
                    lt = maps[torch.arange(batch, device=maps.device)[:, None, None], :, rows, cols]  # (B, h, w, C)
                    parts.append(lt.permute(0, 3, 1, 2))
                else:
                    lt = maps[:, :, rows, cols]  # (B/P, C, P, h, w)
                    parts.append(lt.transpose(1, 2).reshape(batch, -1, *rows.shape[-2:]))
        if not parts:
            raise ValueError("the model has neither a positional grid nor lead-time maps")
        return torch.cat(parts, dim=1)

    def positional_embedding_selector(
        self,
        x: torch.Tensor,
        embedding_selector: Callable[[torch.Tensor], torch.Tensor],
        lead_time_label: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embedding channels chosen by ``embedding_selector`` (applied to the grid and to the maps)."""
        return self._select_with(x, embedding_selector, lead_time_label)

    def _select_with(self, x, selector, lead_time_label) -> torch.Tensor:
        parts = []
        if self.pos_embd is not None:
            parts.append(selector(self.pos_embd.to(x.dtype)))
        if self.lt_embd is not None:
            parts.append(selector(self._lead_time_maps(x, lead_time_label)))
        return torch.cat(parts, dim=1)

    def _lead_time_maps(self, x: torch.Tensor, lead_time_label: torch.Tensor | None) -> torch.Tensor:
        if lead_time_label is None:
            raise InvalidDataError(
                explain("lead_time_label missing", expected="(B,) integer lead-time indices", fix="pass lead_time_label=")
            )
        return self.lt_embd.to(x.dtype)[lead_time_label.long()]


class SongUNetPosLtEmbd(SongUNetPosEmbd):
    """SongUNetPosEmbd with ``lead_time_steps`` learnable (lead_time_channels, H, W) maps.

    ``in_channels`` counts x, the grid and the lead-time channels. ``prob_channels``: output
    channels that are class logits, scaled by a learned ``scalar`` and passed through a softmax
    over those channels in eval mode.

    forward(x, noise_labels, class_labels=None, lead_time_label=None, global_index=None,
    embedding_selector=None, augment_labels=None) -> (B, out_channels, h, w)
      lead_time_label: (B,) integer index of each sample's lead time (required).
    """

    physicsnemo_name = "SongUNetPosLtEmbd"

    def __init__(
        self,
        img_resolution: int | Sequence[int],
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (28,),
        dropout: float = 0.13,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[int] = (1, 1),
        gridtype: str = "sinusoidal",
        N_grid_channels: int = 4,
        lead_time_channels: int | None = None,
        lead_time_steps: int = 9,
        prob_channels: Sequence[int] = (),
        checkpoint_level: int = 0,
        additive_pos_embed: bool = False,
        bottleneck_attention: bool = True,
        use_apex_gn: bool = False,
        act: str = "silu",
        profile_mode: bool = False,
        amp_mode: bool = False,
    ):
        super().__init__(
            img_resolution, in_channels, out_channels, label_dim=label_dim, augment_dim=augment_dim,
            model_channels=model_channels, channel_mult=channel_mult, channel_mult_emb=channel_mult_emb,
            num_blocks=num_blocks, attn_resolutions=attn_resolutions, dropout=dropout,
            label_dropout=label_dropout, embedding_type=embedding_type, channel_mult_noise=channel_mult_noise,
            encoder_type=encoder_type, decoder_type=decoder_type, resample_filter=resample_filter,
            gridtype=gridtype, N_grid_channels=N_grid_channels, checkpoint_level=checkpoint_level,
            additive_pos_embed=additive_pos_embed, bottleneck_attention=bottleneck_attention, act=act,
            lead_time_mode=True, lead_time_channels=lead_time_channels, lead_time_steps=lead_time_steps,
            prob_channels=prob_channels,
        )  # fmt: skip

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        lead_time_label: torch.Tensor | None = None,
        global_index: torch.Tensor | None = None,
        embedding_selector: Callable[[torch.Tensor], torch.Tensor] | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(
            x, noise_labels, class_labels, global_index=global_index, embedding_selector=embedding_selector,
            augment_labels=augment_labels, lead_time_label=lead_time_label,
        )  # fmt: skip
