"""Read and write PhysicsNeMo ``.mdlus`` checkpoints without PhysicsNeMo.

A ``.mdlus`` file is a zip archive (older ones: a tar archive) holding

* ``model.pt`` - the state dict, written by ``torch.save``; read here with
  ``torch.load(weights_only=True)`` only (no pickled code is ever executed);
* ``args.json`` - ``{"__name__": class name, "__module__": import path, "__args__": constructor
  arguments}``;
* ``metadata.json`` - ``{"physicsnemo_version": ..., "mdlus_file_version": "0.1.0"}``.

:func:`load_mdlus` maps the PhysicsNeMo class onto the xkmcast network with the same
constructor arguments and state-dict layout. EDM preconditioner wrappers (``EDMPrecond``,
``EDMPrecondSuperResolution``, ``EDMPrecondSR``) hold the network under ``model.``: for those
the inner network is returned together with the wrapper's arguments (:class:`EDMCheckpoint`);
the preconditioning itself lives in :mod:`xkmcast.diffusion`. PhysicsNeMo 2.x's nested wrappers
(``EDMPreconditioner(ConcatConditionWrapper(DiT))``, :mod:`xkmcast.nn.mdlus_wrappers`) load the same
way; a PhysicsNeMo ``DiT`` becomes :class:`xkmcast.nn.PhysicsNeMoDiT`. :func:`save_mdlus` writes the same
format, so PhysicsNeMo's ``Module.from_checkpoint`` can read our U-Nets.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xkmcast.errors import BundleError, explain
from xkmcast.nn.base import Network
from xkmcast.nn.mdlus_archive import MdlusContents, read_mdlus, write_archive
from xkmcast.nn.mdlus_wrappers import MODULE_WRAPPERS, NESTED_PREFIX, unwrap, wrapped_args
from xkmcast.nn.registry import NETWORKS
from xkmcast.nn.unet import match_physicsnemo_eval

__all__ = ["EDMCheckpoint", "MdlusContents", "read_mdlus", "load_mdlus", "save_mdlus", "SUPPORTED_CLASSES"]

_EDM_MODULE = "physicsnemo.diffusion.preconditioners.legacy"
#: metadata.json key of the wrapped network's file version, by wrapper
_VERSION_KEY = {"EDMPreconditioner": f"{NESTED_PREFIX}.model.model.mdlus_file_version"}

#: Wrapper arguments of each EDM preconditioner (everything else goes to the inner network).
_EDM_WRAPPERS: dict[str, tuple[str, ...]] = {
    "EDMPrecondSuperResolution": (
        "img_resolution", "img_in_channels", "img_out_channels", "use_fp16", "model_type",
        "sigma_data", "sigma_min", "sigma_max",
    ),
    "EDMPrecondSR": (
        "img_resolution", "img_channels", "img_in_channels", "img_out_channels", "use_fp16",
        "sigma_min", "sigma_max", "sigma_data", "model_type", "scale_cond_input",
    ),
    "EDMPrecond": (
        "img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max",
        "sigma_data", "model_type", "img_in_channels", "img_out_channels",
    ),
}  # fmt: skip
_EDM_DEFAULT_MODEL = {"EDMPrecondSuperResolution": "SongUNetPosEmbd", "EDMPrecondSR": "SongUNetPosEmbd", "EDMPrecond": "DhariwalUNet"}
#: Other PhysicsNeMo names for our classes (deprecated aliases).
_ALIASES = {"UNet": "CorrDiffRegressionUNet"}
#: Arguments old PhysicsNeMo versions wrote that the current classes drop (``_backward_compat_arg_mapper``).
_DROPPED_ARGS = {"CorrDiffRegressionUNet": ("img_channels", "sigma_min", "sigma_max", "sigma_data")}
#: Arguments old PhysicsNeMo versions wrote under another name (DiT checkpoints of version 0.1.0).
_RENAMED_ARGS = {"PhysicsNeMoDiT": {"timestep_embed_kwargs": "conditioning_embedder_kwargs"}}
#: Inner networks an EDM wrapper may hold.
_INNER = ("SongUNet", "SongUNetPosEmbd", "SongUNetPosLtEmbd", "DiT")

SUPPORTED_CLASSES: tuple[str, ...] = tuple(sorted(set(NETWORKS) | set(_ALIASES) | set(_EDM_WRAPPERS) | set(MODULE_WRAPPERS)))


@dataclass
class EDMCheckpoint:
    """An EDM-preconditioned network from a ``.mdlus`` file: D(x; sigma) = c_skip x + c_out F(c_in x, c_noise).

    ``network`` is F; ``wrapper`` the PhysicsNeMo class; ``sigma_data`` / ``sigma_min`` /
    ``sigma_max`` the preconditioner settings; ``img_in_channels`` / ``img_out_channels`` as in
    PhysicsNeMo (super-resolution wrappers: F has img_in + img_out input channels; EDMPrecond:
    F has img_in input channels; both counts include the positional-grid / lead-time channels
    the network appends itself - :attr:`condition_channels` is what the caller concatenates);
    ``scale_cond_input`` (EDMPrecondSR only) whether c_in also scales the conditioning;
    ``label_dim`` the class-label size (EDMPrecond). ``args`` keeps the full wrapper arguments.
    """

    network: torch.nn.Module
    wrapper: str
    sigma_data: float | list[float] = 0.5
    sigma_min: float = 0.0
    sigma_max: float = float("inf")
    img_in_channels: int = 0
    img_out_channels: int = 0
    label_dim: int = 0
    scale_cond_input: bool = False
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def condition_channels(self) -> int:
        """Channels of the conditioning image the caller passes (img_lr / condition)."""
        net = self.network
        own = 0
        if getattr(net, "pos_embd", None) is not None:
            own += net.pos_embd.shape[0]
        if getattr(net, "lt_embd", None) is not None:
            own += net.lt_embd.shape[1]
        if self.wrapper in ("EDMPrecond", "EDMPreconditioner"):
            return self.img_in_channels - self.img_out_channels - own
        return self.img_in_channels - own


# -- loading --------------------------------------------------------------------------------------
def load_mdlus(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    physicsnemo_eval_groupnorm: bool = False,
) -> torch.nn.Module | EDMCheckpoint:
    """Build the xkmcast network stored in a PhysicsNeMo ``.mdlus`` file and load its weights.

    Returns the network (``SongUNet``, ``SongUNetPosEmbd``, ``SongUNetPosLtEmbd``,
    ``RegressionUNet`` for CorrDiffRegressionUNet / UNet, ``StormCastUNet``, or an xkmcast
    ``DiT`` / ``WeatherViT`` export, :class:`PhysicsNeMoDiT` for PhysicsNeMo's DiT), in eval mode,
    or an :class:`EDMCheckpoint` for EDM preconditioner wrappers (``EDMPreconditioner`` included;
    a ``ConcatConditionWrapper`` gives its network: the caller concatenates the image condition). ``physicsnemo_eval_groupnorm`` reproduces PhysicsNeMo's eval-mode
    group norm (see :func:`xkmcast.nn.unet.match_physicsnemo_eval`).

    Raises BundleError for unknown classes, unknown constructor arguments, nested modules or
    weights that do not fit the network.
    """
    contents = read_mdlus(path, map_location)
    name = _network_name(contents.name, contents.module)
    args = dict(contents.args["__args__"])
    if name in MODULE_WRAPPERS:
        result = _load_wrapped(contents, path)
        network = result.network if isinstance(result, EDMCheckpoint) else result
    elif name in _EDM_WRAPPERS:
        _refuse_nested(args, contents.name)
        result = _load_edm(name, args, contents, path)
        network = result.network
    else:
        _refuse_nested(args, contents.name)
        network = _build(name, args, source=contents.name)
        _load_weights(network, contents.state_dict, path)
        result = network
    network.to(map_location)
    network.eval()
    if physicsnemo_eval_groupnorm:
        match_physicsnemo_eval(network)
    return result


def _network_name(name: str, module: str) -> str:
    """xkmcast's class for a PhysicsNeMo class name (PhysicsNeMo's ``DiT`` is not xkmcast's ``DiT``)."""
    name = _ALIASES.get(name, name)
    return "PhysicsNeMoDiT" if name == "DiT" and module.startswith("physicsnemo") else name


def _load_wrapped(contents: MdlusContents, path) -> torch.nn.Module | EDMCheckpoint:
    """A network inside PhysicsNeMo 2.x module wrappers (see :mod:`xkmcast.nn.mdlus_wrappers`)."""
    inner = unwrap(contents.args, contents.name)
    _refuse_nested(inner.args, inner.name)
    network = _build(_network_name(inner.name, inner.module), inner.args, source=f"{contents.name}({inner.name})")
    state = contents.state_dict
    buffers = {prefix + "sigma_data" for name, prefix, _ in inner.wrappers if name == "EDMPreconditioner"}
    outside = sorted(k for k in state if not k.startswith(inner.prefix) and k not in buffers)
    if outside:
        raise BundleError(explain(f"{contents.name}: unexpected weights outside the wrapped model", found=outside[:20]))
    _load_weights(network, {k[len(inner.prefix) :]: v for k, v in state.items() if k.startswith(inner.prefix)}, path)
    precond = [(prefix, args) for name, prefix, args in inner.wrappers if name == "EDMPreconditioner"]
    if not precond:
        return network
    prefix, args = precond[0]
    sd = state.get(prefix + "sigma_data")
    sigma_data = args.get("sigma_data", 0.5) if sd is None else (sd.float().item() if sd.ndim == 0 else sd.float().tolist())
    config = getattr(network, "config", {})
    return EDMCheckpoint(
        network=network,
        wrapper="EDMPreconditioner",
        sigma_data=sigma_data,
        img_in_channels=int(config.get("in_channels", 0)),
        img_out_channels=int(config.get("out_channels") or config.get("in_channels", 0)),
        args=contents.args,
    )


def _build(name: str, args: dict[str, Any], source: str) -> torch.nn.Module:
    if name not in NETWORKS:
        raise BundleError(
            explain(
                f"unsupported network class {source!r} in args.json",
                expected=list(SUPPORTED_CLASSES),
                found=source,
                fix="export the model with one of the supported classes",
            )
        )
    for dropped in _DROPPED_ARGS.get(name, ()):
        args.pop(dropped, None)
    for old, new in _RENAMED_ARGS.get(name, {}).items():
        if old in args:
            args.setdefault(new, args.pop(old))
    if name == "SongUNetPosEmbd" and args.get("lead_time_mode"):  # written by older PhysicsNeMo
        name = "SongUNetPosLtEmbd"
        args.pop("lead_time_mode")
    cls = NETWORKS[name]
    _check_args(cls, args, source)
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        raise BundleError(explain(f"cannot build {source} from args.json", found=str(exc))) from exc


def _check_args(cls: type, args: dict[str, Any], source: str) -> None:
    """Refuse arguments the constructor (or, for wrappers, the inner network) does not take."""
    params = inspect.signature(cls.__init__).parameters
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = [p for p in params if p != "self" and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    if accepts_kwargs:  # a wrapper: the rest goes to its inner network
        inner = NETWORKS.get(args.get("model_type", params["model_type"].default))
        if inner is None or args.get("model_type", params["model_type"].default) not in _INNER:
            raise BundleError(
                explain(f"{source}: unsupported model_type", expected=list(_INNER), found=args.get("model_type"))
            )
        skip = {"img_resolution", "in_channels", "out_channels"}
        known = known + [p for p in inspect.signature(inner.__init__).parameters if p not in skip | {"self"}]
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise BundleError(
            explain(f"{source}: unknown constructor arguments in args.json", expected=sorted(set(known)), found=unknown)
        )


def _load_edm(name: str, args: dict[str, Any], contents: MdlusContents, path) -> EDMCheckpoint:
    wrapper_keys = _EDM_WRAPPERS[name]
    wrapper = {k: args.pop(k) for k in list(args) if k in wrapper_keys}
    model_type = wrapper.get("model_type", _EDM_DEFAULT_MODEL[name])
    if model_type not in _INNER:
        raise BundleError(explain(f"{name}: unsupported model_type", expected=list(_INNER), found=model_type))
    out_ch = wrapper.get("img_out_channels") or wrapper.get("img_channels")
    in_ch = wrapper.get("img_in_channels") or (0 if name != "EDMPrecond" else wrapper.get("img_channels"))
    if out_ch is None or in_ch is None:
        raise BundleError(explain(f"{name}: channel counts missing in args.json", found=sorted(wrapper)))
    if name == "EDMPrecond":  # F sees img_in_channels: the state and any condition
        inner_args = dict(in_channels=in_ch, out_channels=out_ch, label_dim=wrapper.get("label_dim", 0))
    else:  # super-resolution: F sees [c_in x, img_lr]
        inner_args = dict(in_channels=in_ch + out_ch, out_channels=out_ch)
    inner_args = {"img_resolution": wrapper["img_resolution"], **inner_args, **args}
    network = _build(model_type, inner_args, source=f"{name}(model_type={model_type})")
    state = contents.state_dict
    outside = sorted(k for k in state if not k.startswith("model.") and k != "sigma_data")
    if outside:
        raise BundleError(explain(f"{name}: unexpected weights outside the wrapped model", found=outside))
    _load_weights(network, {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}, path)
    sigma_data = wrapper.get("sigma_data", 0.5)
    if "sigma_data" in state:
        sd = state["sigma_data"].float()
        sigma_data = sd.item() if sd.ndim == 0 else sd.tolist()
    return EDMCheckpoint(
        network=network,
        wrapper=name,
        sigma_data=sigma_data,
        sigma_min=float(wrapper.get("sigma_min", 0.0)),
        sigma_max=float(wrapper.get("sigma_max", float("inf"))),
        img_in_channels=int(in_ch),
        img_out_channels=int(out_ch),
        label_dim=int(wrapper.get("label_dim", 0)),
        scale_cond_input=bool(wrapper.get("scale_cond_input", False)) if name == "EDMPrecondSR" else False,
        args=dict(contents.args["__args__"]),
    )


def _load_weights(network: torch.nn.Module, state: dict[str, torch.Tensor], path) -> None:
    try:
        result = network.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise BundleError(explain(f"{Path(path).name}: weights do not fit the network", found=str(exc)[:2000])) from exc
    if result.missing_keys or result.unexpected_keys:
        raise BundleError(
            explain(
                f"{Path(path).name}: weights do not match the network built from args.json",
                expected=f"missing: {result.missing_keys[:20]}",
                found=f"unexpected: {result.unexpected_keys[:20]}",
            )
        )


def _refuse_nested(args: dict[str, Any], source: str) -> None:
    nested = [k for k, v in args.items() if isinstance(v, str) and v.startswith(NESTED_PREFIX)]
    if nested:
        raise BundleError(explain(f"{source}: nested PhysicsNeMo modules are not supported", found=nested))


# -- writing --------------------------------------------------------------------------------------
def save_mdlus(model: Network | EDMCheckpoint, path: str | Path, *, legacy_format: bool = False) -> Path:
    """Write ``model`` as a ``.mdlus`` checkpoint (zip, or tar with ``legacy_format``).

    U-Nets are written under their PhysicsNeMo class and module names, so PhysicsNeMo can load
    them; an :class:`EDMCheckpoint` is written as its wrapper (inner weights under ``model.``).
    """
    path = Path(path)
    if path.suffix != ".mdlus":
        raise BundleError(explain("wrong file name", expected="a name ending in .mdlus", found=path.name))
    if isinstance(model, EDMCheckpoint) and model.wrapper == "EDMPreconditioner":
        args, state = _preconditioner_export(model)
    elif isinstance(model, EDMCheckpoint):
        args, state = _edm_export(model)
    elif isinstance(model, Network):
        name = model.physicsnemo_name or type(model).__name__
        module = model.physicsnemo_module or type(model).__module__
        args = {"__name__": name, "__module__": module, "__args__": model.config}
        state = model.state_dict()
    else:
        raise BundleError(
            explain("cannot export this object", expected="an xkmcast network or EDMCheckpoint", found=type(model).__name__)
        )
    inner = model.network if isinstance(model, EDMCheckpoint) else model
    version = getattr(inner, "mdlus_file_version", None)  # PhysicsNeMo upgrades files of older versions
    versions = {} if version is None else {_VERSION_KEY.get(getattr(model, "wrapper", None), "mdlus_file_version"): version}
    return write_archive(path, args, state, legacy_format=legacy_format, versions=versions)


def _preconditioner_export(ckpt: EDMCheckpoint) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """EDMPreconditioner(ConcatConditionWrapper(network)) as PhysicsNeMo 2.x writes it."""
    net = ckpt.network
    if not isinstance(net, Network) or not net.physicsnemo_name:
        raise BundleError(explain("cannot export the wrapped network", expected="an xkmcast network with a PhysicsNeMo class",
                                  found=type(net).__name__))  # fmt: skip
    inner = {"__name__": net.physicsnemo_name, "__module__": net.physicsnemo_module, "__args__": net.config}
    state = {f"model.model.{k}": v for k, v in net.state_dict().items()}
    state["sigma_data"] = torch.as_tensor(ckpt.sigma_data, dtype=torch.float32)
    return wrapped_args(inner, ckpt.sigma_data), state


def _edm_export(ckpt: EDMCheckpoint) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    net = ckpt.network
    if not isinstance(net, Network):
        raise BundleError(explain("cannot export the wrapped network", expected="an xkmcast network", found=type(net).__name__))
    inner = net.config
    for k in ("in_channels", "out_channels"):
        inner.pop(k)
    model_type = net.physicsnemo_name or type(net).__name__
    wrapper: dict[str, Any] = {"img_resolution": inner.pop("img_resolution"), "use_fp16": False, "model_type": model_type}
    if ckpt.wrapper == "EDMPrecond":
        inner.pop("label_dim", None)
        wrapper.update(img_channels=ckpt.img_out_channels, label_dim=ckpt.label_dim,
                       img_in_channels=ckpt.img_in_channels, img_out_channels=ckpt.img_out_channels)  # fmt: skip
    else:
        wrapper.update(img_in_channels=ckpt.img_in_channels, img_out_channels=ckpt.img_out_channels)
        if ckpt.wrapper == "EDMPrecondSR":
            wrapper.update(img_channels=ckpt.img_out_channels, scale_cond_input=ckpt.scale_cond_input)
    wrapper.update(sigma_data=ckpt.sigma_data, sigma_min=ckpt.sigma_min, sigma_max=ckpt.sigma_max)
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    if ckpt.wrapper == "EDMPrecond":
        state["sigma_data"] = torch.as_tensor(ckpt.sigma_data, dtype=torch.float32)
    return {"__name__": ckpt.wrapper, "__module__": _EDM_MODULE, "__args__": {**wrapper, **inner}}, state
