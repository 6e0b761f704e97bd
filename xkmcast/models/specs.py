"""Model specs of the published architectures, sized by a preset ("tiny", "mini", "normal").

These functions compute the channel counts a pipeline's networks need from the variable lists and
conditions, so that a training configuration only names variables, sizes and options:

* CorrDiff: regression ``RegressionUNet(SongUNetPosEmbd(embedding "zero", 4 sinusoidal grid
  channels))`` (PhysicsNeMo's CorrDiffRegressionUNet); diffusion ``EDMPrecondSuperResolution(SongUNetPosEmbd)`` with a learnable 100-channel
  grid when patched (the whole condition resized to the patch size appended), sinusoidal otherwise.
* StormCast: regression ``StormCastUNet(SongUNet(embedding "zero"))`` on
  cat(state, background, invariant); diffusion ``EDMPrecond(SongUNetPosEmbd)`` on the residual.
* Stormscope: diffusion only, ``EDMPrecond(PhysicsNeMoDiT)`` (PhysicsNeMo's DiT layout, exportable
  as PhysicsNeMo / Earth2Studio read it): neighbourhood attention with 2-D RoPE (``natten2d_rope``,
  a ``DIT_ATTENTION_KERNEL``-token neighbourhood) and the convolutional detokenizer that couples
  neighbouring patches (against 4 x 4 block artefacts); the grid must be whole patches.
* ViT: ``WeatherViT`` on cat(state[, background, invariant]).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, explain
from .base import ModelSpec

__all__ = ["corrdiff_spec", "stormcast_spec", "stormscope_spec", "vit_spec", "UNET_SIZES", "TRANSFORMER_SIZES"]

#: SongUNet sizes: "mini" and "normal" are the published presets; "tiny" is for CPU tests and the demo.
UNET_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"model_channels": 16, "channel_mult": [1, 2], "attn_resolutions": [], "num_blocks": 1, "dropout": 0.0},
    "mini": {"model_channels": 64, "channel_mult": [1, 2, 2], "attn_resolutions": [16], "num_blocks": 4},
    "normal": {"model_channels": 128, "channel_mult": [1, 2, 2, 2, 2], "attn_resolutions": [28], "num_blocks": 4},
}
#: transformer sizes (DiT / ViT): hidden size, depth, heads, patch size
TRANSFORMER_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": 4},
    "mini": {"hidden_size": 256, "depth": 8, "num_heads": 8, "patch_size": 4},
    "normal": {"hidden_size": 768, "depth": 16, "num_heads": 12, "patch_size": 4},
}
#: Stormscope DiT: neighbourhood side in tokens (smaller when the token grid is smaller)
DIT_ATTENTION_KERNEL = 7
GRID_CHANNELS = 4
LEARNABLE_GRID_CHANNELS = 100


def _size(table: dict, size: str, overrides: dict | None) -> dict[str, Any]:
    if size not in table:
        raise ConfigError(explain("Unknown network size", expected=sorted(table), found=size))
    return {**{k: list(v) if isinstance(v, list) else v for k, v in table[size].items()}, **(overrides or {})}


def corrdiff_spec(
    input_vars: list[str],
    output_vars: list[str],
    shape: tuple[int, int],
    *,
    invariant_vars: list[str] = (),
    size: str = "mini",
    patch: tuple[int, int] | None = None,
    condition_on_mean: bool = False,
    input_skip: bool = False,
    stages: tuple[str, ...] = ("regression", "diffusion"),
    network_overrides: dict | None = None,
    sampler: dict | None = None,
    loss: dict | None = None,
) -> ModelSpec:
    """The CorrDiff spec for ``input_vars`` (+ ``invariant_vars``) -> ``output_vars`` on a ``shape`` grid.

    ``input_skip``: the regression mean is ``R(c) + interp(x)``, where ``interp(x)`` is the coarse
    input of each output variable (regridded to the fine grid, renormalised with the output
    statistics): the network learns the departure from interpolation.
    """
    if input_skip and not set(output_vars) <= set(input_vars):
        raise ConfigError(explain("input_skip needs every output variable among the inputs",
                                  expected=f"{list(output_vars)} within the inputs", found=list(input_vars),
                                  fix="add the missing variables to the inputs or set input_skip false"))
    c_out = len(output_vars)
    c_cond = len(input_vars) + len(invariant_vars)
    net = _size(UNET_SIZES, size, network_overrides)
    res = [int(shape[0]), int(shape[1])]
    networks: dict[str, Any] = {}
    if "regression" in stages:
        networks["regression"] = {
            "class": "RegressionUNet",
            "kwargs": {**net, "img_resolution": res, "img_in_channels": c_cond + GRID_CHANNELS,
                       "img_out_channels": c_out, "model_type": "SongUNetPosEmbd", "embedding_type": "zero",
                       "gridtype": "sinusoidal", "N_grid_channels": GRID_CHANNELS},
            "precond": None,
        }
    if "diffusion" in stages:
        c_dcond = c_cond + (c_out if condition_on_mean else 0)
        patched = patch is not None and tuple(patch) != tuple(shape)
        grid_channels = LEARNABLE_GRID_CHANNELS if patched else GRID_CHANNELS
        networks["diffusion"] = {
            "class": "SongUNetPosEmbd",
            "kwargs": {**net, "img_resolution": res,
                       "in_channels": c_out + c_dcond * (2 if patched else 1) + grid_channels,
                       "out_channels": c_out, "embedding_type": "positional",
                       "gridtype": "learnable" if patched else "sinusoidal", "N_grid_channels": grid_channels},
            "precond": {"class": "EDMPrecondSuperResolution", "sigma_data": 0.5},
        }
    return ModelSpec(
        kind="corrdiff",
        input_vars=list(input_vars),
        output_vars=list(output_vars),
        invariant_vars=list(invariant_vars),
        networks=networks,
        patch=list(patch) if patch is not None else None,
        sampler={"sampler": "heun", "num_steps": 18, "sigma_min": 0.002, "sigma_max": 800.0, "rho": 7.0,
                 **(sampler or {})},
        loss={"sigma_distribution": "lognormal", "P_mean": 0.0, "P_std": 1.2, "condition_on_mean": condition_on_mean,
              **(loss or {})},
        extra={"input_skip": bool(input_skip)},
    )


def stormcast_spec(
    state_vars: list[str],
    shape: tuple[int, int],
    *,
    background_vars: list[str] = (),
    invariant_vars: list[str] = (),
    size: str = "normal",
    regression_conditions: list[str] = ("state", "background", "invariant"),
    diffusion_conditions: list[str] = ("state", "background", "invariant", "regression"),
    stages: tuple[str, ...] = ("regression", "diffusion"),
    network_overrides: dict | None = None,
    sampler: dict | None = None,
    loss: dict | None = None,
    time_step: str = "1h",
) -> ModelSpec:
    """The StormCast spec: a ``shape`` state of ``state_vars`` stepped by ``time_step``."""
    n = {"state": len(state_vars), "background": len(background_vars), "invariant": len(invariant_vars),
         "regression": len(state_vars)}
    _check_conditions(regression_conditions if "regression" in stages else (),
                      diffusion_conditions if "diffusion" in stages else (), stages, background_vars, invariant_vars)
    net = _size(UNET_SIZES, size, network_overrides)
    res = [int(shape[0]), int(shape[1])]
    c = len(state_vars)
    networks: dict[str, Any] = {}
    if "regression" in stages:
        networks["regression"] = {
            "class": "StormCastUNet",
            "kwargs": {**net, "img_resolution": res, "img_out_channels": c, "embedding_type": "zero",
                       "img_in_channels": sum(n[k] for k in regression_conditions), "model_type": "SongUNet"},
            "precond": None,
        }
    if "diffusion" in stages:
        networks["diffusion"] = {
            "class": "SongUNetPosEmbd",
            "kwargs": {**net, "img_resolution": res, "out_channels": c, "embedding_type": "positional",
                       "in_channels": c + sum(n[k] for k in diffusion_conditions) + GRID_CHANNELS,
                       "gridtype": "sinusoidal", "N_grid_channels": GRID_CHANNELS},
            "precond": {"class": "EDMPrecond", "sigma_data": 0.5},
        }
    return ModelSpec(
        kind="stormcast", input_vars=list(state_vars), output_vars=list(state_vars),
        background_vars=list(background_vars), invariant_vars=list(invariant_vars), networks=networks,
        conditions={"regression": list(regression_conditions), "diffusion": list(diffusion_conditions)},
        sampler={"sampler": "heun", "num_steps": 18, "sigma_min": 0.002, "sigma_max": 800.0, "rho": 7.0,
                 **(sampler or {})},
        loss={"P_mean": -1.2, "P_std": 1.2, **(loss or {})}, time_step=time_step,
    )


def stormscope_spec(
    state_vars: list[str],
    shape: tuple[int, int],
    *,
    background_vars: list[str] = (),
    invariant_vars: list[str] = (),
    size: str = "mini",
    diffusion_conditions: list[str] = ("state", "background", "invariant"),
    network_overrides: dict | None = None,
    sampler: dict | None = None,
    loss: dict | None = None,
    time_step: str = "1h",
) -> ModelSpec:
    """The Stormscope spec: diffusion only, a DiT conditioned on state / background / invariants."""
    if "regression" in diffusion_conditions:
        raise ConfigError(explain("Stormscope is diffusion-only: 'regression' cannot be a condition",
                                  expected=["state", "background", "invariant"], found=list(diffusion_conditions)))
    _check_conditions((), diffusion_conditions, ("diffusion",), background_vars, invariant_vars)
    n = {"state": len(state_vars), "background": len(background_vars), "invariant": len(invariant_vars)}
    c = len(state_vars)
    net = _dit_kwargs(_size(TRANSFORMER_SIZES, size, network_overrides), shape)
    networks = {
        "diffusion": {
            "class": "PhysicsNeMoDiT",
            "kwargs": {**net, "input_size": [int(shape[0]), int(shape[1])], "out_channels": c,
                       "in_channels": c + sum(n[k] for k in diffusion_conditions)},
            "precond": {"class": "EDMPrecond", "sigma_data": 0.5},
        }
    }
    return ModelSpec(
        kind="stormscope", input_vars=list(state_vars), output_vars=list(state_vars),
        background_vars=list(background_vars), invariant_vars=list(invariant_vars), networks=networks,
        conditions={"diffusion": list(diffusion_conditions)},
        sampler={"sampler": "heun", "num_steps": 18, "sigma_min": 0.002, "sigma_max": 800.0, "rho": 7.0,
                 **(sampler or {})},
        loss={"P_mean": -1.2, "P_std": 1.2, **(loss or {})}, time_step=time_step,
    )


def _dit_kwargs(net: dict[str, Any], shape) -> dict[str, Any]:
    """Stormscope's DiT arguments: size table + overrides, with neighbourhood RoPE attention and the conv detokenizer."""
    patch = int(net.get("patch_size", 4))
    if int(shape[0]) % patch or int(shape[1]) % patch:
        raise ConfigError(explain("The Stormscope DiT needs a grid of whole patches", expected=f"multiples of {patch}",
                                  found=list(shape), fix="crop the grid (data.crop) or choose another patch_size"))  # fmt: skip
    out = {"attention_backend": "natten2d_rope", "detokenizer": "proj_reshape_2d_conv", **net}
    if out["attention_backend"].startswith("natten2d") and "attn_kwargs" not in out:
        out["attn_kwargs"] = {"attn_kernel": min(DIT_ATTENTION_KERNEL, int(shape[0]) // patch, int(shape[1]) // patch)}
    return out


def vit_spec(
    state_vars: list[str],
    shape: tuple[int, int],
    *,
    background_vars: list[str] = (),
    invariant_vars: list[str] = (),
    size: str = "mini",
    conditions: list[str] = ("state",),
    network_overrides: dict | None = None,
    loss: dict | None = None,
    time_step: str = "6h",
) -> ModelSpec:
    """The ViT weather transformer spec: deterministic x_{t+1} = F(cat(conditions))."""
    _check_conditions(conditions, (), ("regression",), background_vars, invariant_vars)
    n = {"state": len(state_vars), "background": len(background_vars), "invariant": len(invariant_vars)}
    net = _size(TRANSFORMER_SIZES, size, None)
    net = {("embed_dim" if k == "hidden_size" else k): v for k, v in net.items()}  # the ViT's name for it
    net.update(network_overrides or {})
    networks = {
        "regression": {
            "class": "WeatherViT",
            "kwargs": {**net, "img_resolution": [int(shape[0]), int(shape[1])], "out_channels": len(state_vars),
                       "in_channels": sum(n[k] for k in conditions)},
            "precond": None,
        }
    }
    return ModelSpec(
        kind="vit", input_vars=list(state_vars), output_vars=list(state_vars),
        background_vars=list(background_vars), invariant_vars=list(invariant_vars), networks=networks,
        conditions={"regression": list(conditions)}, loss=dict(loss or {}), time_step=time_step,
    )


def _check_conditions(reg, diff, stages, background_vars, invariant_vars) -> None:
    allowed = {"state", "background", "invariant", "regression"}
    for label, names in (("regression_conditions", reg), ("diffusion_conditions", diff)):
        bad = [c for c in names if c not in allowed]
        if bad:
            raise ConfigError(explain(f"Unknown {label}", expected=sorted(allowed), found=bad))
    if "regression" in reg:
        raise ConfigError(explain("The regression cannot be conditioned on itself",
                                  expected="state / background / invariant", found=list(reg)))
    if "regression" in diff and "regression" not in stages:
        raise ConfigError(explain("diffusion_conditions name 'regression' but the model has no regression stage",
                                  expected="a regression stage (or drop 'regression' from diffusion_conditions)",
                                  found=list(stages)))
    for names in (reg, diff):
        if "background" in names and not background_vars:
            raise ConfigError(explain("'background' is a condition but no background variables are given",
                                      expected="background_vars", found=[]))
        if "invariant" in names and not invariant_vars:
            raise ConfigError(explain("'invariant' is a condition but no invariant variables are given",
                                      expected="invariant_vars", found=[]))
