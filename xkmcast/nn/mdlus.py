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
the preconditioning itself lives in :mod:`xkmcast.diffusion`. :func:`save_mdlus` writes the same
format, so PhysicsNeMo's ``Module.from_checkpoint`` can read our U-Nets.
"""

from __future__ import annotations

import inspect
import io
import json
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xkmcast.errors import BundleError, explain
from xkmcast.nn.base import Network
from xkmcast.nn.registry import NETWORKS
from xkmcast.nn.unet import match_physicsnemo_eval

__all__ = ["EDMCheckpoint", "MdlusContents", "read_mdlus", "load_mdlus", "save_mdlus", "SUPPORTED_CLASSES"]

_FILES = ("model.pt", "args.json", "metadata.json")
_NESTED_PREFIX = "__physicsnemo.Module__"
_FILE_VERSION = "0.1.0"
_EDM_MODULE = "physicsnemo.diffusion.preconditioners.legacy"

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
#: Inner networks an EDM wrapper may hold.
_INNER = ("SongUNet", "SongUNetPosEmbd", "SongUNetPosLtEmbd", "DiT")

SUPPORTED_CLASSES: tuple[str, ...] = tuple(sorted(set(NETWORKS) | set(_ALIASES) | set(_EDM_WRAPPERS)))


@dataclass(frozen=True)
class MdlusContents:
    """The three parts of a ``.mdlus`` file, parsed."""

    name: str
    module: str
    args: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any]


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
        if self.wrapper == "EDMPrecond":
            return self.img_in_channels - self.img_out_channels - own
        return self.img_in_channels - own


# -- reading --------------------------------------------------------------------------------------
def read_mdlus(path: str | Path, map_location: str | torch.device = "cpu") -> MdlusContents:
    """Parse a ``.mdlus`` file (zip or tar) without building any network."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(explain("checkpoint file not found", expected="a .mdlus file", found=str(path)))
    raw = _read_archive(path)
    try:
        args = json.loads(raw["args.json"].decode("utf-8"))
        metadata = json.loads(raw["metadata.json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(explain(f"{path.name}: args.json or metadata.json is not valid JSON", found=str(exc))) from exc
    if not isinstance(args, dict) or not isinstance(args.get("__name__"), str) or not isinstance(args.get("__args__"), dict):
        raise BundleError(
            explain(f"{path.name}: args.json is malformed", expected='{"__name__": ..., "__args__": {...}}', found=_short(args))
        )
    try:
        state = torch.load(io.BytesIO(raw["model.pt"]), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad payloads
        raise BundleError(
            explain(
                f"{path.name}: model.pt cannot be read as a plain state dict",
                found=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                fix="only tensors are loaded (weights_only=True); re-export the checkpoint with a state dict",
            )
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(explain(f"{path.name}: model.pt is not a state dict", expected="{name: tensor}", found=type(state).__name__))
    return MdlusContents(args["__name__"], str(args.get("__module__", "")), args, dict(state), metadata)


def _read_archive(path: Path) -> dict[str, bytes]:
    """The bytes of the three members; tar first (old files can look like both)."""
    found: dict[str, bytes] = {}
    try:
        if tarfile.is_tarfile(path):
            with tarfile.open(path, "r") as tar:
                for member in tar.getmembers():
                    base = Path(member.name).name
                    if member.isfile() and base in _FILES:
                        found[base] = tar.extractfile(member).read()
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    base = Path(name).name
                    if base in _FILES and not name.endswith("/"):
                        found[base] = archive.read(name)
        else:
            raise BundleError(explain(f"{path.name} is not a .mdlus checkpoint", expected="a zip or tar archive", found="neither"))
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise BundleError(explain(f"{path.name}: the archive is damaged", found=str(exc))) from exc
    missing = [f for f in _FILES if f not in found]
    if missing:
        raise BundleError(explain(f"{path.name}: incomplete .mdlus archive", expected=list(_FILES), found=sorted(found)))
    return found


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
    ``DiT`` / ``WeatherViT`` export), in eval mode, or an :class:`EDMCheckpoint` for EDM
    preconditioner wrappers. ``physicsnemo_eval_groupnorm`` reproduces PhysicsNeMo's eval-mode
    group norm (see :func:`xkmcast.nn.unet.match_physicsnemo_eval`).

    Raises BundleError for unknown classes, unknown constructor arguments, nested modules or
    weights that do not fit the network.
    """
    contents = read_mdlus(path, map_location)
    name = _ALIASES.get(contents.name, contents.name)
    args = dict(contents.args["__args__"])
    _refuse_nested(args, contents.name)
    if name in _EDM_WRAPPERS:
        result = _load_edm(name, args, contents, path)
        network = result.network
    else:
        network = _build(name, args, source=contents.name)
        _load_weights(network, contents.state_dict, path)
        result = network
    network.to(map_location)
    network.eval()
    if physicsnemo_eval_groupnorm:
        match_physicsnemo_eval(network)
    return result


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
    nested = [k for k, v in args.items() if isinstance(v, str) and v.startswith(_NESTED_PREFIX)]
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
    if isinstance(model, EDMCheckpoint):
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
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {"mdlus_file_version": _FILE_VERSION, "exported_by": "xkmcast"}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    members = {"model.pt": buffer.getvalue(), "args.json": json.dumps(args).encode(), "metadata.json": json.dumps(metadata).encode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy_format:
        with tarfile.open(path, "w") as tar:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for member, data in members.items():
                archive.writestr(member, data)
    return path


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


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
