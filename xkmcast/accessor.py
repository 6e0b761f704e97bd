"""The ``.kmcast`` accessor: thin bindings of xkmcast functions onto Datasets and DataArrays.

Each method *is* a library function with the object bound as its first argument (:class:`_Bound`):
``help(ds.kmcast.downscale)`` shows the signature and docstring of :func:`xkmcast.fields.downscale.downscale`
(without its first argument), and every default lives in that function only. The functions' modules
are imported on first access of a method, so ``import xkmcast`` stays cheap.

xarray keeps one accessor per object, so the :attr:`grid` found for an object is kept with it (after
changing an object's coordinates in place, call :func:`xkmcast.fields.grid.find_grid` again). Loaded
networks are cached by :mod:`xkmcast.models.bundle`, never here.
"""

from __future__ import annotations

import functools
import importlib
import inspect

import xarray as xr

__all__ = ["KmcastDatasetAccessor", "KmcastDataArrayAccessor"]


class _Bound:
    """Descriptor: the function ``xkmcast.fields.<module>.<name>`` with the accessor's object as first argument.

    On an accessor it returns a wrapper carrying the function's docstring (``functools.wraps``) and its
    signature without the first parameter (``__signature__``); on the class, the function itself.
    """

    def __init__(self, module: str, name: str | None = None):
        self.module, self.name = module, name

    def __set_name__(self, owner, name: str) -> None:
        self.name = self.name or name

    def function(self):
        return getattr(importlib.import_module(f"xkmcast.fields.{self.module}"), self.name)

    def __get__(self, accessor, owner=None):
        func = self.function()
        if accessor is None:
            return func
        obj = accessor._obj

        @functools.wraps(func)
        def bound(*args, **kwargs):
            return func(obj, *args, **kwargs)

        sig = inspect.signature(func)
        bound.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])
        return bound


class _PlotMethods:
    """``obj.kmcast.plot.<kind>(...)``: the functions of :mod:`xkmcast.fields.plot` bound to ``obj``."""

    def __init__(self, obj):
        self._obj = obj

    map = _Bound("plot")
    members = _Bound("plot")
    spectra = _Bound("plot")
    animate = _Bound("plot")


class _CommonMethods:
    def __init__(self, obj):
        self._obj = obj

    @functools.cached_property
    def grid(self):
        """The horizontal grid (:class:`xkmcast.fields.grid.Grid`): dims, 2-D lat/lon, x/y, CRS (found once per object)."""
        from .fields.grid import find_grid

        return find_grid(self._obj)

    regrid = _Bound("regrid")
    score = _Bound("scoring")

    @property
    def plot(self) -> _PlotMethods:
        """Maps, member panels, spectra and animations; see :mod:`xkmcast.fields.plot`."""
        return _PlotMethods(self._obj)


@xr.register_dataset_accessor("kmcast")
class KmcastDatasetAccessor(_CommonMethods):
    """``ds.kmcast``: grid, variables, earth_relative_winds, regrid, downscale, forecast, score, plot."""

    variables = _Bound("variables", "select_variables")
    earth_relative_winds = _Bound("winds")
    downscale = _Bound("downscale")
    forecast = _Bound("forecast")


@xr.register_dataarray_accessor("kmcast")
class KmcastDataArrayAccessor(_CommonMethods):
    """``da.kmcast``: grid, regrid, score, plot."""
