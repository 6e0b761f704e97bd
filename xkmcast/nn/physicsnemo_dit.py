"""The DiT of PhysicsNeMo 2.2.2 (``physicsnemo.models.dit.DiT``): same constructor, state dict and outputs.

F(x, t; condition) for (B, C_in, H, W) images:

1. tokens = Tokenizer(x)  (p_h x p_w patches, row-major over the (h, w) = (H / p_h, W / p_w) grid);
2. c = ConditioningEmbedder(t, condition)  (``"dit"``, ``"edm"`` or ``"zero"``, see
   :mod:`xkmcast.nn.dit_conditioning`; ``condition`` is a (B, condition_dim) vector);
3. ``depth`` adaLN-Zero blocks (:class:`xkmcast.nn.dit_layers.DiTBlock`) with dense attention
   (``attention_backend="timm"``) or neighbourhood attention (``"natten2d"``, and ``"natten2d_rope"``
   with axial RoPE on q / k and no additive position embedding);
4. out = Detokenizer(tokens, c)  -> (B, C_out, H, W).

The token grid comes from the input: models without a learnable position embedding (RoPE ones)
run on any grid of whole patches, as Earth2Studio does by rebinding PhysicsNeMo's latent grid; any
other grid is padded to whole patches (reflect, circular along a periodic x) and the output cropped.
In an EDM preconditioner this network receives ``cat(c_in x, image condition)`` (PhysicsNeMo's
``ConcatConditionWrapper``) and the vector condition as ``class_labels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from xkmcast.errors import ConfigError, InvalidDataError, explain
from xkmcast.nn.base import Network
from xkmcast.nn.dit_conditioning import build_conditioning_embedder
from xkmcast.nn.dit_layers import DiTBlock, PatchEmbed2DTokenizer, build_detokenizer
from xkmcast.nn.padding import crop, is_periodic_x, pad_to_multiple
from xkmcast.nn.rope import axial_rope_tables

__all__ = ["PhysicsNeMoDiT"]


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


class PhysicsNeMoDiT(Network):
    """PhysicsNeMo's DiT (constructor arguments as its ``args.json``; see the module docstring).

    forward(x, noise_labels, class_labels=None, *, condition=None, invalid_mask=None, p_dropout=None)
      x (B, in_channels, H, W); noise_labels (B,) (t, or c_noise inside a preconditioner);
      class_labels or condition (PhysicsNeMo's name): the (B, condition_dim) vector condition;
      invalid_mask (B, [1,] H, W) True at invalid pixels (needs ``use_nan_mask_tokens``).
    """

    physicsnemo_name = "DiT"
    physicsnemo_module = "physicsnemo.models.dit.dit"
    #: PhysicsNeMo's checkpoint version of this class (older files are upgraded on load)
    mdlus_file_version = "0.2.0"

    def __init__(
        self,
        input_size: int | Sequence[int],
        in_channels: int,
        patch_size: int | Sequence[int] = (8, 8),
        tokenizer: str = "patch_embed_2d",
        detokenizer: str = "proj_reshape_2d",
        out_channels: int | None = None,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        attention_backend: str = "timm",
        layernorm_backend: str = "torch",
        condition_dim: int | None = None,
        conditioning_embedder: str = "dit",
        dit_initialization: bool = True,
        conditioning_embedder_kwargs: dict[str, Any] = {},  # noqa: B006 (PhysicsNeMo's defaults; never mutated)
        tokenizer_kwargs: dict[str, Any] = {},  # noqa: B006 (PhysicsNeMo's defaults; never mutated)
        detokenizer_kwargs: dict[str, Any] = {},  # noqa: B006 (PhysicsNeMo's defaults; never mutated)
        block_kwargs: dict[str, Any] = {},  # noqa: B006 (PhysicsNeMo's defaults; never mutated)
        attn_kwargs: dict[str, Any] = {},  # noqa: B006 (PhysicsNeMo's defaults; never mutated)
        drop_path_rates: list[float] | None = None,
        force_tokenization_fp32: bool = False,
        use_nan_mask_tokens: bool = False,
    ):
        super().__init__()
        self.input_size, self.patch_size = _pair(input_size), _pair(patch_size)
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.condition_dim = condition_dim or 0
        if tokenizer != "patch_embed_2d":
            raise ConfigError(explain("unsupported DiT tokenizer", expected=["patch_embed_2d"], found=tokenizer))
        is_natten = attention_backend in ("natten2d", "natten2d_rope")
        if use_nan_mask_tokens and not is_natten:
            raise ConfigError(explain("use_nan_mask_tokens needs a NATTEN attention backend", found=attention_backend))
        attn_kwargs = dict(attn_kwargs or {})
        tokenizer_kwargs = dict(tokenizer_kwargs or {})
        self.rope_theta = float(attn_kwargs.pop("rope_theta", 10000.0)) if attention_backend == "natten2d_rope" else None
        if self.rope_theta is not None:
            tokenizer_kwargs["pos_embed"] = "none"  # PhysicsNeMo: RoPE replaces the additive embedding
        if use_nan_mask_tokens:
            attn_kwargs["use_mask_token"] = True
        self.tokenizer = PatchEmbed2DTokenizer(self.input_size, self.patch_size, in_channels, hidden_size, **tokenizer_kwargs)
        self.conditioning_embedder = build_conditioning_embedder(conditioning_embedder, hidden_size, self.condition_dim,
                                                                 **(conditioning_embedder_kwargs or {}))  # fmt: skip
        if self.conditioning_embedder.output_dim != hidden_size:
            raise ConfigError(explain(
                f"conditioning_embedder={conditioning_embedder!r} gives {self.conditioning_embedder.output_dim} features "
                "but the 2-D detokenizers modulate with hidden_size features (PhysicsNeMo 2.2.2 fails the same way)",
                expected=hidden_size, found=self.conditioning_embedder.output_dim,
                fix="use 'dit', or 'edm' with emb_channels == hidden_size"))  # fmt: skip
        self.detokenizer = build_detokenizer(detokenizer, self.patch_size, self.out_channels, hidden_size,
                                             **(detokenizer_kwargs or {}))  # fmt: skip
        rates = [0.0] * depth if drop_path_rates is None else list(drop_path_rates)
        if len(rates) != depth:
            raise ConfigError(explain("drop_path_rates needs one rate per block", expected=depth, found=len(rates)))
        self.blocks = torch.nn.ModuleList(
            DiTBlock(hidden_size, num_heads, attention_backend, layernorm_backend, mlp_ratio=mlp_ratio, drop_path=rates[i],
                     condition_embed_dim=self.conditioning_embedder.output_dim, **(block_kwargs or {}), **attn_kwargs)
            for i in range(depth)
        )  # fmt: skip
        self.head_dim = hidden_size // num_heads
        self.force_tokenization_fp32 = force_tokenization_fp32
        self.use_nan_mask_tokens = use_nan_mask_tokens
        if dit_initialization:
            self.initialize_weights()
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    def initialize_weights(self) -> None:
        """PhysicsNeMo's DiT initialisation: Xavier-uniform linears, zero adaLN and output layers."""
        for m in self.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)
        w = self.tokenizer.x_embedder.proj.weight
        torch.nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        torch.nn.init.zeros_(self.tokenizer.x_embedder.proj.bias)
        if self.tokenizer.pos_embed is not None:
            torch.nn.init.normal_(self.tokenizer.pos_embed, std=0.02)
        self.detokenizer.initialize_weights()
        for block in self.blocks:
            block.initialize_weights()

    def _rope(self, grid: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.rope_theta is None:
            return None
        cache = getattr(self, "_rope_cache", None)
        if cache is None or cache[0] != (grid, device):
            cache = ((grid, device), axial_rope_tables(*grid, self.head_dim, self.rope_theta, device=device))
            object.__setattr__(self, "_rope_cache", cache)
        return cache[1]

    def _invalid_tokens(self, invalid_mask: torch.Tensor) -> torch.Tensor:
        """(B, [1,] H, W) pixel mask -> (B, h w): a token is invalid if any of its pixels is."""
        if not self.use_nan_mask_tokens:
            raise ConfigError(explain("invalid_mask given but the DiT was built with use_nan_mask_tokens=False"))
        m = invalid_mask if invalid_mask.ndim == 4 else invalid_mask.unsqueeze(1)
        pooled = F.max_pool2d(m.to(torch.float32), kernel_size=self.patch_size, stride=self.patch_size)
        return (pooled > 0).reshape(pooled.shape[0], -1)

    def _tokenize(self, x: torch.Tensor) -> torch.Tensor:
        if self.force_tokenization_fp32:
            with torch.autocast(x.device.type, enabled=False):
                return self.tokenizer(x.float()).to(x.dtype)
        return self.tokenizer(x)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        *,
        condition: torch.Tensor | None = None,
        invalid_mask: torch.Tensor | None = None,
        p_dropout: float | None = None,
    ) -> torch.Tensor:
        if class_labels is not None and condition is not None:
            raise InvalidDataError(explain("the vector condition was given twice", expected="class_labels or condition"))
        vector = class_labels if class_labels is not None else condition
        # a grid that is not whole patches is padded (reflect; circular along a periodic x) and the
        # output cropped back (xkmcast.nn.padding); whole-patch grids run exactly as PhysicsNeMo's DiT
        x, padding = pad_to_multiple(x, self.patch_size, periodic_x=is_periodic_x(self))
        if invalid_mask is not None and any(padding):
            invalid_mask = pad_to_multiple(invalid_mask.to(x.dtype), self.patch_size)[0] > 0.5
        grid = self.tokenizer.token_grid(tuple(x.shape[-2:]))
        tokens = self._tokenize(x)
        t = noise_labels.reshape(-1).to(tokens.dtype)
        c = self.conditioning_embedder(t.expand(x.shape[0]) if t.numel() == 1 else t, condition=vector)
        extra: dict[str, Any] = {}
        rope = self._rope(grid, x.device)
        if rope is not None:
            extra["rope_tables"] = rope
        if invalid_mask is not None:
            extra["invalid_tokens"] = self._invalid_tokens(invalid_mask)
        for block in self.blocks:
            tokens = block(tokens, c, grid, p_dropout=p_dropout, **extra)
        if self.force_tokenization_fp32:
            with torch.autocast(x.device.type, enabled=False):
                return crop(self.detokenizer(tokens.float(), c.float(), grid).to(x.dtype), padding)
        return crop(self.detokenizer(tokens, c, grid), padding)


def _rename_legacy_keys(module, state_dict, prefix, *_args) -> None:
    """Older checkpoints: the timestep embedder at the root (DiT file version 0.1.0: ``t_embedder.*``)
    and no ``freqs`` buffers (they are recomputed from the constructor arguments, as PhysicsNeMo does)."""
    old, new = prefix + "t_embedder.", prefix + "conditioning_embedder.t_embedder."
    for key in [k for k in state_dict if k.startswith(old)]:
        value = state_dict.pop(key)
        if not key.endswith(".freqs"):
            state_dict.setdefault(new + key[len(old) :], value)
    for name, buffer in module.named_buffers():
        if name.endswith("freqs"):
            state_dict.setdefault(prefix + name, buffer.detach().clone())
