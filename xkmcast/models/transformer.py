"""The ViT weather transformer: a deterministic next-state prediction x_{t+1} = F(cat(x_t, conditions)).

Trained with the MSE between F(x_t) and x_{t+1} (stage ``regression``); forecasts roll it forward.
The ``seeds`` of :meth:`WeatherTransformer.step` are accepted and ignored (deterministic model), so
the forecast loop treats all pipelines alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion import losses
from ..errors import ConfigError, explain
from .stormcast import ForecastPipeline

__all__ = ["WeatherTransformer"]


class WeatherTransformer(ForecastPipeline):
    def _predict(self, state: Tensor, background: Tensor | None, invariant: Tensor | None) -> Tensor:
        names = self.stage_conditions("regression")
        return self.stages["regression"](self.conditions(names, state=state, background=background, invariant=invariant))

    @torch.no_grad()
    def step(self, state: Tensor, background: Tensor | None = None, *, seeds=None, **_ignored) -> Tensor:
        """x_{t+1} for each row of ``state`` (N, C, H, W) normalised."""
        state = state.to(self.device, torch.float32)
        background = None if background is None else background.to(self.device, torch.float32)
        return self._predict(state, background, self.batch_invariant(state.shape[0], state))

    def loss(self, stage: str, batch: dict, generator: torch.Generator | None = None):
        if stage != "regression":
            raise ConfigError(explain("The ViT has one training stage", expected=["regression"], found=stage))
        prev, nxt, background, invariant = self.unpack(batch)
        prediction = self._predict(prev, background, invariant)
        weights = self.spec.loss.get("channel_weights")
        weights = None if weights is None else torch.as_tensor(weights, dtype=nxt.dtype, device=nxt.device)
        return losses.LossOutput(losses.reduce_per_sample((prediction - nxt) ** 2, weights, None), None)
