"""The forecast step of NVIDIA's StormScope packages: a window of past states, sigma-range experts.

One step (Earth2Studio's ``StormScopeBase._forward`` / ``build_condition``), from the normalised
states of the window x_{t-(n-1)dt} .. x_t (each (C, H, W); n = 1 without a sliding window) and the
valid time t of the newest one::

    condition = cat(x_{t-(n-1)dt}, ..., x_t,                        (n C channels, oldest first)
                    (lat - 38.5) / 15, (wrap180(lon) - 262.5) / 36,  (the package's lat / lon)
                    cos_zenith(t), cos_zenith(t + dt),              (PhysicsNeMo's formula, fields/solar.py)
                    fixed fields)                                   (nexrad_proximity then topo, when present)
    x_{t+dt} ~ EDM stochastic Heun with the experts of diffusion/experts.py (the expert chosen by the
               sigma of each sampler step), conditioned on ``condition``

The fixed channels (lat / lon features and the fixed fields) are the pipeline's ``invariant``
(``spec.invariant_vars``); the cos-zenith pair is inserted after the first
``spec.extra["cos_zenith_after"]`` of them. The window length is ``spec.extra["input_window"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..diffusion.samplers import sample as sample_rows
from .base import sampler_config
from .stormcast import ForecastPipeline

__all__ = ["StormScopePackage"]


class StormScopePackage(ForecastPipeline):
    """A StormScope package's step: ``step(window, None, *, seeds, valid_time)`` (see the module doc).

    ``window`` is (N, n, C, H, W) or, for n = 1, (N, C, H, W); ``valid_time`` the time of its newest
    state. Returns the normalised next states (N, C, H, W)."""

    takes_valid_time = True

    @property
    def input_window(self) -> int:
        return int(self.spec.extra.get("input_window", 1))

    def condition(self, window: Tensor, valid_time) -> Tensor:
        from ..fields.solar import cos_zenith

        n = window.shape[0]
        stacked = window.reshape(n, -1, *window.shape[-2:])
        lat = self.grid_lat.cpu().numpy().astype(np.float32)  # the package's float32 values
        lon = self.grid_lon.cpu().numpy().astype(np.float32)  # in [0, 360)
        dt = np.timedelta64(int(self.spec.extra["step_minutes"]), "m")
        t = np.datetime64(valid_time, "s")
        zen = np.stack([cos_zenith(t, lat, lon), cos_zenith(t + dt, lat, lon)])
        zen = torch.from_numpy(zen).to(stacked)[None].expand(n, -1, -1, -1)
        fixed = self.batch_invariant(n, stacked)
        split = int(self.spec.extra.get("cos_zenith_after", 0))
        parts = [stacked, fixed[:, :split], zen, fixed[:, split:]] if fixed is not None else [stacked, zen]
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def step(self, state: Tensor, background: Tensor | None = None, *, seeds: list[int], valid_time,
             step_index: int = 0, sampler: str | None = None, num_steps: int | None = None,
             batch_size: int | None = None, **extra_options: Any) -> Tensor:
        """x_{t+dt} for each row (the window of ``state`` ending at ``valid_time``); the members are the
        package's draws as they are, at every ``step_index`` (the published packages have no per-step
        spread gains)."""
        state = state.to(self.device, torch.float32)
        if state.ndim == 4:
            state = state[:, None]
        cond = self.condition(state, valid_time)
        config = sampler_config(self.spec, sampler, num_steps, **extra_options)
        out = sample_rows(self.stages["diffusion"], state.shape[2:], seeds, condition=cond, config=config,
                          batch_size=batch_size)
        return out.to(torch.float32)
