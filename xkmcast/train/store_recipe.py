"""What a run directory's prepared store was built from, so a changed ``data`` config is not ignored.

Beside ``<run dir>/data/train.zarr`` the run keeps ``train.recipe.json``: the settings the store
depends on (``data.source``, ``coarse``, ``coarsen``, ``params``, the variables, ``regrid_method``,
``regrid_options`` and ``train_times``, the window of the statistics,
i.e. the sources, variables and transforms) and a fingerprint of the source's content (for a path:
the SHA-256 of the relative name, size and modification time of every file under it, or of every
file a glob pattern such as ``era5/*.nc`` matches; a catalog entry
is pinned by its hashes, so its name is its fingerprint), plus the times the store holds (for the
reader). A later run of the same directory compares its recipe with the recorded one and refuses
(:class:`~xkmcast.errors.ConfigError` naming the differing keys) rather than train on a store built
from other data; deleting the store makes the next run rebuild it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, explain

__all__ = ["store_recipe", "recipe_path", "check_recipe", "write_recipe"]

_KEYS = ("source", "coarse", "coarsen", "params", "input_vars", "output_vars", "background_vars", "invariants",
         "regrid_method", "regrid_options", "train_times")


def recipe_path(store: Path) -> Path:
    return store.with_name(store.stem + ".recipe.json")


def _fingerprint(source: str | None) -> str | None:
    """Content fingerprint of a local path, or of the files a glob pattern names (see the module
    docstring); None for other sources."""
    if source in (None, "synthetic"):
        return None
    from ..data.cf_files import cf_files
    from ..digest import json_sha256

    path = Path(source)
    if path.exists():
        root = path.resolve()
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    else:  # a pattern: its files, named from their common folder
        files = [p.resolve() for p in cf_files(source) or []]
        if not files:
            return None
        root = Path(os.path.commonpath([p.parent for p in files]))
    return json_sha256([[os.path.relpath(p, root), p.stat().st_size, p.stat().st_mtime_ns] for p in files])


def store_recipe(data_cfg) -> dict[str, Any]:
    """The recipe of the store ``data_cfg`` (a :class:`~xkmcast.train.config.DataConfig`) asks for."""
    doc = data_cfg.model_dump(mode="json", include=set(_KEYS))
    for key in ("source", "coarse"):
        value = doc.get(key)
        if value not in (None, "synthetic") and Path(value).exists():
            doc[key] = str(Path(value).resolve())
    doc["source_fingerprint"] = _fingerprint(data_cfg.source)
    doc["coarse_fingerprint"] = _fingerprint(data_cfg.coarse)
    return doc


def write_recipe(store: Path, recipe: dict[str, Any]) -> None:
    """Record ``recipe`` (and the store's times) beside ``store``."""
    import xarray as xr

    from ..atomic import atomic_write_text

    with xr.open_zarr(store, consolidated=False) as ds:
        times = ds["time"].values if "time" in ds.coords else []
        span = [str(times[0]), str(times[-1]), len(times)] if len(times) else []
    atomic_write_text(recipe_path(store), json.dumps({**recipe, "store_times": span}, indent=2))


def check_recipe(store: Path, recipe: dict[str, Any]) -> None:
    """ConfigError when ``store`` was built from another recipe; a store without one is accepted."""
    path = recipe_path(store)
    if not path.exists():
        return
    recorded = json.loads(path.read_text())
    differ = [k for k in recipe if recorded.get(k) != recipe[k]]
    if differ:
        found = "; ".join(f"{k}: store {recorded.get(k)!r} vs config {recipe[k]!r}" for k in differ)
        raise ConfigError(explain(
            f"The run's prepared store {store} was built from other data (differing: {', '.join(differ)})",
            expected="the data settings the store was prepared from", found=found,
            fix=f"restore those settings, use a new training.run_id, or delete {store} to rebuild it",
        ))
