"""Data: the intake catalog, hash-pinned downloads and readers of the published dataset layouts.

Importing this package loads no heavy dependency (intake, pooch, zarr, h5py and torch are imported
inside the functions that need them).
"""

from __future__ import annotations

from .catalog import catalog_fetch, catalog_list, fetch, open_catalog
from .layouts import layout_stats, open_dataset

__all__ = ["catalog_fetch", "catalog_list", "fetch", "layout_stats", "open_catalog", "open_dataset"]
