"""Checks of a training run's configuration against its data: network arguments the data decide, and
the grid of the regression bundle a diffusion run builds on (errors instead of silent replacement or a
raw torch shape error)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, GridError, explain

__all__ = ["check_network_overrides", "check_base_grid"]


def check_network_overrides(spec, overrides: dict[str, Any], skip=()) -> None:
    """ConfigError when ``model.network`` sets an argument the data decide (channels, image size)
    to another value than the data give (it used to be silently replaced)."""
    import json

    for stage, entry in spec.networks.items():
        if stage in skip:
            continue
        kwargs = entry.get("kwargs", {})
        for key, value in overrides.items():
            if key in kwargs and json.dumps(kwargs[key], default=list) != json.dumps(value, default=list):
                raise ConfigError(explain(
                    f"model.network.{key}={value!r} conflicts with the data",
                    expected=f"{key}={kwargs[key]!r} for the {stage} network (from the variables, conditions and grid)",
                    found=f"model.network.{key}={value!r}",
                    fix=f"remove model.network.{key}: channel counts and the image size come from the data",
                ))


def check_base_grid(base, shape, store, bundle_path) -> None:
    """GridError when the regression bundle's grid is not the grid of the diffusion run's data."""
    import numpy as np

    from ..fields.grid import find_grid

    have = tuple(int(n) for n in base.spec.grid.get("shape", ()))
    same = have == tuple(int(n) for n in shape)
    if same and store is not None:
        g = find_grid(store)
        lat, lon = base.grid_lat.cpu().numpy(), base.grid_lon.cpu().numpy()
        same = np.allclose(lat, g.lat, atol=1e-4) and np.allclose((lon - g.lon + 180) % 360 - 180, 0, atol=1e-4)
    if not same:
        raise GridError(explain(
            "The regression bundle and the diffusion run's data are on different grids",
            expected=f"the regression bundle's grid {list(have)} ({bundle_path})",
            found=f"training data on a grid of shape {list(shape)}"
                  + ("" if have != tuple(shape) else " with other latitudes / longitudes"),
            fix="train the diffusion stage on the data the regression bundle was trained on, "
                "or point model.regression_bundle at a bundle of this grid",
        ))
