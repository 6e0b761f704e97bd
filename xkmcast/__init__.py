"""xkmcast: kilometre-scale generative weather models (CorrDiff, StormCast, Stormscope, ViT) for xarray.

Importing the package registers the ``.kmcast`` accessor on xarray Datasets and DataArrays. It is
cheap: torch, cartopy, intake and the networks are imported only when a function needs them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import accessor as _accessor  # noqa: F401  (registers ds.kmcast / da.kmcast)
from .errors import XkmcastError

try:
    __version__ = version("xkmcast")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["open_catalog", "fetch", "open_dataset", "load_model", "published_models", "XkmcastError", "__version__"]


def open_catalog(path=None, **kwargs):
    """The intake catalog of the datasets xkmcast knows (hrrr_mini, cwa_taiwan, era5, hrrr_era5, sample)."""
    from .data.catalog import open_catalog as _open

    return _open(path, **kwargs)


def fetch(name: str, **kwargs):
    """Download (once, hash-checked, cached) the files of catalog entry ``name``; returns the local path."""
    from .data.catalog import fetch as _fetch

    return _fetch(name, **kwargs)


def open_dataset(name_or_path, **kwargs):
    """Open a catalog entry or a path in any published layout as a CF-annotated xarray Dataset."""
    from .data.layouts import open_dataset as _open

    return _open(name_or_path, **kwargs)


def load_model(source=None, **kwargs):
    """Load a model: a published name (:func:`published_models`), a bundle folder written by ``xkmcast
    train``, a published package folder or archive, or PhysicsNeMo ``.mdlus`` files with ``mdlus=`` and
    ``spec=``. See :func:`xkmcast.models.bundle.load_model`."""
    from .models.bundle import load_model as _load

    return _load(source, **kwargs)


def published_models() -> list[str]:
    """The names of NVIDIA's published models that :func:`load_model` fetches (pinned, verified) and loads."""
    from .models.published import published_models as _names

    return _names()
