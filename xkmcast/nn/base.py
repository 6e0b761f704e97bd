"""Base class of xkmcast networks: remembers the constructor arguments.

Every network records the arguments it was built with (defaults filled in) in ``config``, so
that a model bundle or a ``.mdlus`` export can rebuild it with ``type(net)(**net.config)``.
This is the same contract as PhysicsNeMo's ``args.json`` (``__args__``), which lets published
checkpoints map straight onto our constructors.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch

__all__ = ["Network"]


class Network(torch.nn.Module):
    """``torch.nn.Module`` that records its constructor arguments in :attr:`config`.

    The arguments are bound against the signature of the concrete class (not of a parent
    class), so a subclass records exactly its own constructor arguments.
    """

    #: Name under which PhysicsNeMo knows this class (``None``: not a PhysicsNeMo class).
    physicsnemo_name: str | None = None
    #: Module path PhysicsNeMo imports the class from (written to ``args.json`` on export).
    physicsnemo_module: str | None = None

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        signature = inspect.signature(cls.__init__)
        try:
            bound = signature.bind(None, *args, **kwargs)
        except TypeError:  # copy / pickle create instances without arguments; __init__ reports real mistakes
            return obj
        bound.apply_defaults()
        recorded: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:  # drop self
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                recorded.update(value)
            else:
                recorded[name] = value
        object.__setattr__(obj, "_init_args", _plain(recorded))
        return obj

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (a copy): ``type(self)(**self.config)`` rebuilds the network."""
        return copy.deepcopy(self._init_args)


def _plain(value: Any) -> Any:
    """Tuples to lists (what JSON would give back), recursively; other values unchanged."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
