"""The ``.kmcast`` accessor: thin bindings of xkmcast functions onto Datasets and DataArrays.

It keeps no state (xarray builds a new accessor for every object): each method imports and calls a
function of the library, passing the object as the first argument. Loaded networks are cached by
:mod:`xkmcast.models.bundle`, never here.
"""

from __future__ import annotations

import xarray as xr

__all__ = ["KmcastDatasetAccessor", "KmcastDataArrayAccessor"]


class _PlotMethods:
    """``obj.kmcast.plot.<kind>(...)``: the functions of :mod:`xkmcast.plot` bound to ``obj``."""

    def __init__(self, obj):
        self._obj = obj

    def map(self, var=None, **kwargs):
        from . import plot

        return plot.map(self._obj, var, **kwargs)

    def members(self, var=None, **kwargs):
        from . import plot

        return plot.members(self._obj, var, **kwargs)

    def spectra(self, var=None, **kwargs):
        from . import plot

        return plot.spectra(self._obj, var, **kwargs)

    def animate(self, var=None, **kwargs):
        from . import plot

        return plot.animate(self._obj, var, **kwargs)


class _CommonMethods:
    def __init__(self, obj):
        self._obj = obj

    @property
    def grid(self):
        """The horizontal grid (:class:`xkmcast.grid.Grid`): dims, 2-D lat/lon, x/y, CRS."""
        from .grid import find_grid

        return find_grid(self._obj)

    def regrid(self, target, method: str = "bilinear", **kwargs):
        """Regrid onto ``target`` (a Dataset or Grid) lazily; see :func:`xkmcast.regrid.regrid`."""
        from .regrid import regrid

        return regrid(self._obj, target, method=method, **kwargs)

    def score(self, truth, **kwargs):
        """Scores of this forecast against ``truth``; see :func:`xkmcast.scoring.score`."""
        from .scoring import score

        return score(self._obj, truth, **kwargs)

    @property
    def plot(self) -> _PlotMethods:
        """Maps, member panels, spectra and animations; see :mod:`xkmcast.plot`."""
        return _PlotMethods(self._obj)


@xr.register_dataset_accessor("kmcast")
class KmcastDatasetAccessor(_CommonMethods):
    """``ds.kmcast``: grid, variables, regrid, downscale, forecast, score, plot."""

    def variables(self, names, **kwargs) -> xr.Dataset:
        """The canonical variables ``names`` (renamed, units converted); see :func:`xkmcast.variables.select_variables`."""
        from .variables import select_variables

        return select_variables(self._obj, names, **kwargs)

    def downscale(self, model, members: int = 1, **kwargs) -> xr.Dataset:
        """Downscale this coarse dataset with ``model``; see :func:`xkmcast.inference.downscale`."""
        from .inference import downscale

        return downscale(self._obj, model, members=members, **kwargs)

    def forecast(self, model, steps: int = 12, background=None, **kwargs) -> xr.Dataset:
        """Roll ``model`` forward ``steps`` from this state; see :func:`xkmcast.rollout.forecast`."""
        from .rollout import forecast

        return forecast(self._obj, model, steps=steps, background=background, **kwargs)


@xr.register_dataarray_accessor("kmcast")
class KmcastDataArrayAccessor(_CommonMethods):
    """``da.kmcast``: grid, regrid, score, plot."""
