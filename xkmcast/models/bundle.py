"""Model bundles: a folder with ``weights.safetensors`` (no pickle) and ``config.json``.

``config.json`` holds ``{"format": "xkmcast-bundle", "format_version": 1, "xkmcast_version",
"torch_version", "spec": ModelSpec}``: the architecture of each stage, the variables with their units
and CF names, the target grid, normalisation statistics and sampler defaults. The weights file holds
every tensor of the pipeline's state dict: ``stages.<stage>.<parameter>``, ``grid_lat``,
``grid_lon`` and ``invariant``.

Integrity: ``config.json`` also holds ``"integrity": {"weights_sha256", "spec_sha256"}``, the
SHA-256 of the tensors (:func:`xkmcast.digest.state_sha256`) and of the spec fields that give them
their meaning (:data:`MEANING_FIELDS`: variables and their order, statistics, grid, networks,
conditions). Loading recomputes both and refuses a mismatch (:class:`BundleError` naming the file),
so flipped bytes in the weights or a reordered ``output_vars`` are caught. The model's identity
(:func:`model_identity`) combines the two digests; streamed outputs and the model cache use it.

Writing is atomic: the bundle is written into a temporary sibling folder and renamed into place, so
a crash never leaves a half-written bundle. Loading builds the pipeline from the spec and loads the
tensors strictly: a missing, unexpected or mis-shaped tensor is a :class:`BundleError` naming them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import BundleError, explain
from .base import ModelSpec

__all__ = ["save_bundle", "load_bundle", "load_model", "read_spec", "model_identity", "mark_source",
           "reloadable_source", "FORMAT", "FORMAT_VERSION",
           "MEANING_FIELDS"]

FORMAT = "xkmcast-bundle"
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
#: the spec fields that say what the tensors mean (editing them in config.json mislabels the weights)
MEANING_FIELDS = ("kind", "input_vars", "output_vars", "background_vars", "invariant_vars", "stats", "grid",
                  "networks", "conditions", "time_step", "patch")


def _spec_sha256(spec_doc: dict) -> str:
    from ..digest import json_sha256

    plain = json.loads(json.dumps(spec_doc, default=_json_default))
    return json_sha256({k: plain.get(k) for k in MEANING_FIELDS})


def _integrity(tensors: dict, spec_doc: dict) -> dict[str, str]:
    from ..digest import state_sha256

    return {"weights_sha256": state_sha256(tensors), "spec_sha256": _spec_sha256(spec_doc)}


def model_identity(pipeline) -> str:
    """SHA-256 naming the model: its bundle's digests (weights and meaning of the spec), computed
    from the pipeline itself when it did not come from a bundle or was edited in memory since
    (:func:`reloadable_source`)."""
    from ..digest import combine

    known = getattr(pipeline, "bundle_integrity", None)
    if known is None or reloadable_source(pipeline) is None:
        tensors = {k: v for k, v in pipeline.state_dict().items()}
        known = _integrity(tensors, pipeline.spec.to_dict())
    return combine(known["weights_sha256"], known["spec_sha256"])


def save_bundle(pipeline, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Write ``pipeline`` as a bundle folder at ``path`` (replacing an existing bundle atomically)."""
    from safetensors.torch import save_file

    import xkmcast

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in pipeline.state_dict().items()}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "xkmcast_version": xkmcast.__version__,
        "torch_version": torch.__version__,
        "spec": pipeline.spec.to_dict(),
        **(extra or {}),
    }
    config["integrity"] = _integrity(tensors, config["spec"])
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, default=_json_default))
    return path


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to config.json")


def read_spec(path: str | os.PathLike) -> ModelSpec:
    """The :class:`ModelSpec` of the bundle at ``path`` (reads only ``config.json``)."""
    config = _read_config(Path(path))
    return ModelSpec.from_dict(config["spec"])


def _read_config(path: Path) -> dict:
    cfg_path = path / CONFIG
    if not path.is_dir() or not cfg_path.exists() or not (path / WEIGHTS).exists():
        raise BundleError(
            explain(
                f"{path} is not an xkmcast model bundle",
                expected=f"a folder with {WEIGHTS} and {CONFIG} (written by `xkmcast train` or save_bundle)",
                found=sorted(p.name for p in path.iterdir()) if path.is_dir() else "no such folder",
                fix="point at the run's exported bundle folder, or import PhysicsNeMo .mdlus files with load_model(mdlus=...)",
            )
        )
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(explain(f"{cfg_path} is not valid JSON", found=str(exc))) from exc
    if config.get("format") != FORMAT or int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise BundleError(
            explain(
                f"{cfg_path} has an unsupported format",
                expected=f"format {FORMAT!r}, version <= {FORMAT_VERSION}",
                found=f"format {config.get('format')!r}, version {config.get('format_version')!r}",
                fix="upgrade xkmcast to read bundles written by newer versions",
            )
        )
    return config


def load_bundle(path: str | os.PathLike, *, device: str | torch.device = "cpu"):
    """Build the pipeline of the bundle at ``path`` and load its weights (strictly)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from . import build_pipeline

    path = Path(path)
    config = _read_config(path)
    spec = ModelSpec.from_dict(config["spec"])
    try:
        tensors = load_file(str(path / WEIGHTS), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise BundleError(explain(f"Cannot read {path / WEIGHTS}", found=str(exc), fix="re-export the bundle")) from exc
    integrity = _check_integrity(path, config, tensors)
    pipeline = build_pipeline(spec)
    load_state(pipeline, tensors, where=str(path))
    pipeline.bundle_integrity = integrity
    return mark_source(pipeline.to(device).eval(), str(path.resolve()))


def _load_stamp(pipeline) -> tuple:
    """What an edit of a loaded pipeline in memory changes: its spec (JSON) and each tensor's storage and
    version counter (in-place updates bump it)."""
    spec = json.dumps(pipeline.spec.to_dict(), sort_keys=True, default=_json_default)
    return spec, tuple((t.data_ptr(), t._version) for t in pipeline.state_dict().values())


def mark_source(pipeline, path: str | None):
    """Record that ``pipeline`` is what loading ``path`` gives (None: nothing reloads it), as it is now."""
    pipeline.source_path = path
    pipeline.source_stamp = None if path is None else _load_stamp(pipeline)
    return pipeline


def reloadable_source(pipeline) -> str | None:
    """The path that reloads ``pipeline`` as it is (dask workers load it from there instead of receiving it),
    or None: it came from no file, or its spec or weights were changed in memory since."""
    path = getattr(pipeline, "source_path", None)
    if path is None or getattr(pipeline, "source_stamp", None) != _load_stamp(pipeline):
        return None
    return path


def _check_integrity(path: Path, config: dict, tensors: dict) -> dict[str, str] | None:
    """The recorded digests, after checking them against ``tensors`` and the spec (BundleError)."""
    recorded = config.get("integrity")
    if recorded is None:  # bundles written before xkmcast recorded digests
        import warnings

        warnings.warn(f"{path / CONFIG} records no SHA-256 of its weights: their integrity is not checked "
                      "(re-export the bundle to add it)", stacklevel=3)
        return None
    actual = _integrity(tensors, config["spec"])
    for key, file, what in (("weights_sha256", WEIGHTS, "tensors"), ("spec_sha256", CONFIG, "spec")):
        if recorded.get(key) != actual[key]:
            raise BundleError(explain(
                f"{path / file} does not match the SHA-256 of its {what} recorded in {path / CONFIG}",
                expected=recorded.get(key), found=actual[key],
                fix=f"the file was corrupted or edited ({', '.join(MEANING_FIELDS)} give the weights their meaning "
                    "and may not be changed); re-export or re-download the bundle",
            ))
    return actual


#: pipeline buffers whose size comes from the data (they take the bundle's shape)
VARIABLE_BUFFERS = ("grid_lat", "grid_lon", "invariant", "mean_detail", "output_valid")
#: variable buffers that bundles written before them lack (left empty: no effect)
OPTIONAL_BUFFERS = ("mean_detail", "output_valid")


def load_state(pipeline, tensors: dict[str, torch.Tensor], *, where: str) -> None:
    """Load ``tensors`` into ``pipeline``; buffers of variable size (grid, invariants, mean detail) take
    their shape, and an optional one the bundle lacks stays empty."""
    own = pipeline.state_dict()
    for name in VARIABLE_BUFFERS:
        if name in tensors and hasattr(pipeline, name):
            getattr(pipeline, name).resize_(tensors[name].shape)
    tensors = {**{k: own[k] for k in OPTIONAL_BUFFERS if k in own and k not in tensors}, **tensors}
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [
        f"{k}: bundle {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in pipeline.state_dict().items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise BundleError(
            explain(
                f"The weights in {where} do not match the architecture in its config",
                expected=f"{len(own)} tensors of the architecture",
                found=f"missing {missing[:8]}, unexpected {unexpected[:8]}, shape mismatches {shapes[:8]}",
                fix="the config.json and weights.safetensors come from different runs; re-export the bundle",
            )
        )
    pipeline.load_state_dict(tensors, strict=True)


def load_model(source=None, *, device: str | torch.device = "cpu", mdlus: dict | None = None,
               spec: dict | None = None, **fetch_options):
    """Open a model by name, folder or archive, or build a pipeline from PhysicsNeMo ``.mdlus`` checkpoints.

    * ``load_model("corrdiff-taiwan")``: a published model (``xkmcast.published_models()``), fetched once
      (pinned revision, every file verified by SHA-256) and loaded; ``fetch_options`` are those of
      :func:`xkmcast.models.published.registry.fetch_package` (``known_hashes``, ``trust_host_hashes``,
      ``cache_dir``, ``progress``).
    * ``load_model("run/model")``: a bundle written by ``xkmcast train``; ``load_model(PATH)`` also opens a
      published package's folder or archive (:mod:`xkmcast.models.published`).
    * ``load_model(mdlus={"regression": "reg.mdlus", "diffusion": "diff.mdlus"}, spec={...})`` imports
      checkpoints: ``spec`` supplies what a ``.mdlus`` file does not hold (kind, variables, statistics,
      grid); the networks come from the files.
    """
    if mdlus is not None:
        from .importer import pipeline_from_mdlus

        if source is not None:
            raise BundleError(explain("Pass either a model name / path or mdlus= files", found=f"both ({source!r})"))
        return pipeline_from_mdlus(mdlus, spec or {}, device=device)
    if source is None:
        raise BundleError(explain("load_model needs a model name, a path or mdlus= files", found="none of them",
                                  fix="e.g. load_model('corrdiff-taiwan') or load_model('run/model')"))
    path = Path(source)
    if path.suffix == ".mdlus":
        raise BundleError(
            explain(
                f"{path} is a PhysicsNeMo checkpoint, not a bundle",
                expected="load_model(mdlus={'regression': ..., 'diffusion': ...}, spec={...})",
                found=str(path),
                fix="pass the .mdlus files with mdlus= and the variables / stats / grid with spec=",
            )
        )
    from .published import load

    return load(source, device=device, **fetch_options)
