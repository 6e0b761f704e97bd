"""The ViT weather transformer: a deterministic next-state prediction

    x_{t+1} = F(cat(x_t, conditions)) [+ x_t]      (+ x_t with spec.extra["input_skip"]: from persistence)

Trained with the MSE between that and x_{t+1} (stage ``regression``); forecasts roll it forward. With
``input_skip`` the network learns the tendency ``x_{t+1} - x_t`` (in normalised units), as the StormCast
regression does: its near-zero initial head starts it at persistence instead of at the climatological
mean, which a few minutes of training on a real state do not get past (bench/science.py, ``storm-vit``).
The ``seeds`` of :meth:`WeatherTransformer.step` are accepted and ignored (deterministic model), so
the forecast loop treats all pipelines alike.

The ViT writes each token's p x p pixels from one token vector, and a tendency carries the trace of that
grid from step to step. With ``spec.extra["token_jitter"]`` (``{"patch": [p_y, p_x], "average": true}``,
the default of trained ones) its token grid moves: each training batch sees it at a random offset
(:func:`~xkmcast.diffusion.token_jitter.shifted`), and a forecast step is the mean of F over the token's
diagonal offsets (:func:`~xkmcast.diffusion.token_jitter.averaged`: max(p_y, p_x) evaluations;
``"average": false``: at the grid's own offset).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion import losses
from ..diffusion.token_jitter import averaged, shifted
from ..errors import ConfigError, explain
from .stormcast import ForecastPipeline

__all__ = ["WeatherTransformer"]


class WeatherTransformer(ForecastPipeline):
    def _predict(self, state: Tensor, background: Tensor | None, invariant: Tensor | None,
                 generator: torch.Generator | None = None) -> Tensor:
        names = self.stage_conditions("regression")
        out = self._network(self.conditions(names, state=state, background=background, invariant=invariant), generator)
        return out + state if self.spec.extra.get("input_skip") else out

    def _network(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """F(cond): as it is, or with its token grid moved (module docstring): in training at one random
        offset (from ``generator``), else the mean over the diagonal offsets."""
        net = self.stages["regression"]
        jitter = self.spec.extra.get("token_jitter")
        if not jitter:
            return net(cond)
        py, px = jitter["patch"]
        if self.training:  # drawn on the generator's device (the trainer's is the run's: CUDA on a GPU)
            device = generator.device if generator is not None else "cpu"
            k = int(torch.randint(py * px, (1,), generator=generator, device=device))
            return shifted(net, (k // px, k % px), cond, periodic_x=self.periodic_x)
        if jitter.get("average", True):
            return averaged(net, (py, px), cond, periodic_x=self.periodic_x)
        return net(cond)

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
        prediction = self._predict(prev, background, invariant, generator)
        weights = self.spec.loss.get("channel_weights")
        weights = None if weights is None else torch.as_tensor(weights, dtype=nxt.dtype, device=nxt.device)
        return losses.LossOutput(losses.reduce_per_sample((prediction - nxt) ** 2, weights, None), None)
