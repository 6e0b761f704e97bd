"""StormCast (regression + diffusion) and Stormscope (diffusion only): one step of a km-scale state.

Conditions are named as in the StormCast recipe and concatenated in this order:
``state`` (x_t), ``background`` (coarse fields regridded to the state grid), ``invariant``
(orography, land-sea mask) and, for diffusion, ``regression`` (the regression mean).

    mu      = R(cat(conditions_regression)) [+ x_t]         (StormCast regression stage; + x_t with
                                                            spec.extra["input_skip"]: from persistence)
    x_{t+1} = mu + r,  r ~ p(r | cat(conditions_diffusion))  ("regression" among diffusion conditions)
    x_{t+1} ~ p(x | cat(conditions_diffusion))               (Stormscope: diffusion only; with
                                                            spec.extra["input_skip"], the default of
                                                            trained ones: x_{t+1} = x_t + s r)

Spread by activity (``spec.extra["spread_by_activity"]``: a reference ``r_c`` per output channel,
calibrated at export): a rollout reads the state one step before its initial one too, and the members'
spread about their mean is multiplied, at every step, by the initial state's activity

    f_c = RMS_{y,x}(x_0 - x_{-1})_c / r_c        (normalised states; r_c: the root mean square of
                                                  that RMS over the validation samples, so mean f^2 = 1 there)

so that the ensemble is wider on days whose weather moves more than the validation days' did
(:meth:`StormCast.rollout_context`).

Training losses: MSE of the regression (on whole fields, or on random windows with a halo:
:mod:`xkmcast.models.regression_windows`); the EDM loss (default ln sigma ~ N(-1.2, 1.2^2)) of the diffusion
on the residual ``x_{t+1} - mu`` scaled per channel (or on ``x_{t+1}`` / the tendency without regression),
on whole fields or, with ``spec.patch`` smaller than the field, patched as CorrDiff's
(:meth:`~xkmcast.models.base.Pipeline.diffusion_loss`; sampled on blended patches).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..diffusion import losses
from ..errors import ConfigError, explain
from ..diffusion.samplers import sample as sample_rows
from ..diffusion.token_jitter import TokenJitter
from .base import ModelSpec, Pipeline, sampler_config
from .kinds import CONDITIONS
from .regression_windows import position_kwargs, window_setting, windowed_loss
from .stages import build_stage

__all__ = ["ForecastPipeline", "StormCast", "Stormscope", "activity_factor", "state_activity"]


class ForecastPipeline(Pipeline):
    """Shared by the forecast models: building the conditioning tensor and the step interface."""

    @classmethod
    def from_spec(cls, spec: ModelSpec):
        return cls(spec, {name: build_stage(entry) for name, entry in spec.networks.items()})

    def conditions(self, names, *, state: Tensor, background: Tensor | None, invariant: Tensor | None,
                   regression: Tensor | None = None) -> Tensor:
        """``cat`` of the named conditions in the canonical order (state, background, invariant, regression),
        or in the order listed when ``spec.extra["conditions_as_listed"]`` (published StormCast v1: its
        diffusion sees state, regression, invariant)."""
        available = {"state": state, "background": background, "invariant": invariant, "regression": regression}
        parts = []
        order = names if self.spec.extra.get("conditions_as_listed") else CONDITIONS
        for name in order:
            if name in names:
                if available[name] is None:
                    raise ConfigError(explain(f"The {name!r} condition is needed but was not given",
                                              expected=list(names), found=[k for k, v in available.items() if v is not None]))
                parts.append(available[name])
        return torch.cat(parts, dim=1)

    def stage_conditions(self, stage: str) -> list[str]:
        """The conditions of ``stage``: the spec's, else the kind's defaults."""
        return list(self.spec.conditions.get(stage, self.model_kind.default_conditions(stage)))

    def batch_invariant(self, n: int, like: Tensor) -> Tensor | None:
        if self.invariant.numel() == 0:
            return None
        return self.invariant.to(like).unsqueeze(0).expand(n, -1, -1, -1)

    def unpack(self, batch: dict) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """``(state, next state, background, invariant)`` of a batch of
        :class:`~xkmcast.data.samples.ForecastSamples` items (the pipeline's invariants when the batch has none)."""
        prev, nxt = batch["state"]
        background = batch.get("background")
        invariant = batch.get("invariant")
        if invariant is None:
            invariant = self.batch_invariant(prev.shape[0], prev)
        return prev, nxt, background, invariant

    @torch.no_grad()
    def regression_departure(self, batch: dict) -> Tensor:
        prev, nxt, _, _ = self.unpack(batch)
        return nxt - prev if self.spec.extra.get("input_skip") else nxt

    def _net_kwargs(self, lead_time_label) -> dict[str, Any]:
        return {} if lead_time_label is None else {"lead_time_label": lead_time_label}

    @property
    def history(self) -> int:
        """The states a rollout reads at its start (the initial one and those before it, a time step
        apart): 2 with a spread by activity (module doc), else 1."""
        return 2 if self.spec.extra.get("spread_by_activity") else 1

    def rollout_context(self, window: Tensor) -> dict[str, Tensor]:
        """What a rollout derives once from its initial states ``window`` (N, history, C, H, W),
        normalised, oldest first, and passes to every :meth:`step`: ``{"spread_factor": f}`` (N, C, 1, 1)
        of the module doc with a spread by activity, else nothing."""
        reference = self.spec.extra.get("spread_by_activity")
        if not reference or window.ndim != 5 or window.shape[1] < 2:
            return {}
        return {"spread_factor": activity_factor(window[:, -1], window[:, -2], reference)}


def state_activity(state: Tensor, previous: Tensor) -> Tensor:
    """RMS over the grid of ``state - previous`` (N, C, H, W) -> (N, C), non-finite points left out
    (NaN where none is finite: ``previous`` unknown)."""
    change = (state - previous).double()
    ok = torch.isfinite(change)
    n = ok.sum(dim=(-2, -1))
    rms = (torch.where(ok, change, 0).pow(2).sum(dim=(-2, -1)) / n.clamp(min=1)).sqrt()
    return torch.where(n > 0, rms, torch.nan)


def activity_factor(state: Tensor, previous: Tensor, reference) -> Tensor:
    """``f_c = state_activity / r_c`` (N, C, 1, 1) in ``state``'s dtype (module doc); 1 where ``r_c`` is 0
    or the previous state unknown (NaN)."""
    r = torch.as_tensor(reference, dtype=torch.float64, device=state.device)
    f = state_activity(state, previous) / torch.where(r > 0, r, 1.0)
    f = torch.where((r > 0) & torch.isfinite(f), f, torch.ones_like(f))
    return f.to(state.dtype)[..., None, None]


class StormCast(ForecastPipeline):
    """Regression + diffusion step (set ``networks`` to only ``regression`` for a deterministic model)."""

    def _regression_mean(self, state, background, invariant, kwargs) -> Tensor | None:
        if "regression" not in self.stages:
            return None
        cond = self.conditions(self.stage_conditions("regression"),
                               state=state, background=background, invariant=invariant)
        out = self.stages["regression"](cond, **kwargs)
        return out + state if self.spec.extra.get("input_skip") else out

    @torch.no_grad()
    def step(self, state: Tensor, background: Tensor | None = None, *, seeds: list[int], step_index: int = 0,
             spread_factor: Tensor | None = None, **options: Any) -> Tensor:
        """x_{t+1} for each row of ``state`` (N, C, H, W) normalised; row i's noise from ``seeds[i]``. The rows
        are the members of one ensemble, at step ``step_index`` of their rollout (0: from the initial
        state): ``base + g * f * spread`` of :meth:`step_parts`, ``g`` the :meth:`step_spread_gain` of that
        step (1 when the bundle has none), ``f`` the ``spread_factor`` of :meth:`rollout_context` (N, C, 1, 1;
        1 when None). ``options``: those of :meth:`step_parts`."""
        base, spread = self.step_parts(state, background, seeds=seeds, **options)
        if spread is None:
            return base
        gain = self.step_spread_gain(step_index, spread)
        if gain is not None:
            spread = gain * spread
        if spread_factor is not None:
            spread = spread_factor.to(spread) * spread
        return base + spread

    @torch.no_grad()
    def step_parts(self, state: Tensor, background: Tensor | None = None, *, seeds: list[int],
                   lead_time_label: Tensor | None = None, sampler: str | None = None, num_steps: int | None = None,
                   batch_size: int | None = None, centre: bool | None = None,
                   **extra_options: Any) -> tuple[Tensor, Tensor | None]:
        """``(base, spread)``: the members' next states ``base + spread``, split into the part each member
        has of its own (its regression mean, plus what its draw shares with the others':
        :meth:`member_parts`) and the members' spread about their ensemble mean (None when nothing splits
        them: a regression alone, one member, draws taken as they are). ``centre`` centres the residuals
        on the regression mean (:meth:`member_parts`)."""
        state = state.to(self.device, torch.float32)
        background = None if background is None else background.to(self.device, torch.float32)
        invariant = self.batch_invariant(state.shape[0], state)
        kwargs = self._net_kwargs(lead_time_label)
        mean = self._regression_mean(state, background, invariant, kwargs)
        if "diffusion" not in self.stages:
            return mean, None
        out = self._draws(state, background, invariant, mean, seeds, kwargs, sampler=sampler, num_steps=num_steps,
                          batch_size=batch_size, **extra_options)
        base = self._diffusion_base(state, mean)
        if base is None:
            return out, None
        return self.split_draws(out, base, centre)

    def split_draws(self, draws: Tensor, base: Tensor, centre: bool | None = None) -> tuple[Tensor, Tensor | None]:
        """``(base + shared, spread)`` of :meth:`step_parts` from the members' diffusion draws (M, C, H, W)
        before scaling and what their residual is added to, ``base`` (M, C, H, W): :meth:`member_parts`."""
        shared, spread = self.member_parts(draws, centre, base=base.mean(dim=0, keepdim=True))
        return base + shared, spread

    def denoiser(self, sampling: bool = False):
        """The diffusion stage as trained (``sampling`` False) and sampled: with its token grid moved by
        the noise level, or at sampling averaged over offsets, when the spec says so
        (``spec.extra["token_jitter"]``: :class:`~xkmcast.diffusion.token_jitter.TokenJitter`)."""
        net = self.stages["diffusion"]
        jitter = self.spec.extra.get("token_jitter")
        if not jitter:
            return net
        return TokenJitter(net, jitter["patch"], periodic_x=self.periodic_x, average=sampling and jitter["average"])

    def _diffusion_base(self, state: Tensor, mean: Tensor | None) -> Tensor | None:
        """What the diffusion's residual is added to: the regression mean when it is a diffusion
        condition, else None (the diffusion models the next state itself)."""
        return mean if mean is not None and "regression" in self.stage_conditions("diffusion") else None

    def _draws(self, state, background, invariant, mean, seeds, kwargs, *, sampler=None, num_steps=None,
               batch_size=None, **extra_options: Any) -> Tensor:
        """The diffusion's draws (N, C, H, W) before scaling, row i from ``seeds[i]``."""
        names = self.stage_conditions("diffusion")
        dcond = self.conditions(names, state=state, background=background, invariant=invariant, regression=mean)
        config = sampler_config(self.spec, sampler, num_steps, **extra_options)
        denoiser = self.patched(self.denoiser(sampling=True), tuple(state.shape[-2:]))
        return sample_rows(denoiser, state.shape[1:], seeds, condition=dcond, config=config,
                           batch_size=batch_size, **kwargs).to(torch.float32)

    @torch.no_grad()
    def calibration_draws(self, batch: dict, seeds: list[list[int]]) -> tuple[Tensor, Tensor, Tensor] | None:
        prev, nxt, background, invariant = self.unpack(batch)
        kwargs = self._net_kwargs(batch.get("lead_time_label"))
        mean = self._regression_mean(prev, background, invariant, kwargs)
        base = self._diffusion_base(prev, mean)
        if "diffusion" not in self.stages or base is None:
            return None
        members, n = len(seeds[0]), prev.shape[0]

        def rows(t):  # (B, ...) -> (M * B, ...), member-major
            return None if t is None else t.repeat(members, *([1] * (t.ndim - 1)))

        row_seeds = [seeds[b][k] for k in range(members) for b in range(n)]
        draws = self._draws(rows(prev), rows(background), rows(invariant), rows(mean), row_seeds,
                            {k: rows(v) for k, v in kwargs.items()})
        return draws.reshape(members, *nxt.shape), nxt - base, base

    def loss(self, stage: str, batch: dict, generator: torch.Generator | None = None):
        prev, nxt, background, invariant = self.unpack(batch)
        kwargs = self._net_kwargs(batch.get("lead_time_label"))
        weights = self.spec.loss.get("channel_weights")
        weights = None if weights is None else torch.as_tensor(weights, dtype=nxt.dtype, device=nxt.device)
        if stage == "regression":
            setting = window_setting(self.spec, nxt.shape[-2:])
            if setting is not None:  # random windows of the whole field, the loss inside their halo
                return losses.LossOutput(windowed_loss(
                    lambda f, gi, p: self._regression_mean(*f, self._window_kwargs(kwargs, gi, p)),
                    [prev, background, invariant], nxt, setting, periodic_x=self.periodic_x,
                    channel_weights=weights, generator=generator), None)
            prediction = self._regression_mean(prev, background, invariant, kwargs)
            return losses.LossOutput(losses.reduce_per_sample((prediction - nxt) ** 2, weights, None), None)
        if stage != "diffusion":
            raise ConfigError(explain(f"Unknown training stage for {self.spec.kind}", expected=self.stage_names, found=stage))
        names = self.stage_conditions("diffusion")
        mean = self._training_mean(batch, (prev, background, invariant), kwargs) if "regression" in names else None
        cond = self.conditions(names, state=prev, background=background, invariant=invariant, regression=mean)
        base = self._diffusion_base(prev, mean)
        target = nxt if base is None else (nxt - base) / self.residual_scale(nxt)
        return self.diffusion_loss(self.denoiser(), target, cond, channel_weights=weights, generator=generator,
                                   **kwargs)

    def _window_kwargs(self, kwargs: dict[str, Any], global_index: Tensor, n_windows: int) -> dict[str, Any]:
        """The regression's keyword arguments on ``n_windows`` windows per sample (rows patch-major)."""
        out = {k: v.repeat(n_windows) for k, v in kwargs.items()}  # lead_time_label (B,) -> (P*B,)
        return {**out, **position_kwargs(self.stages["regression"], global_index)}

    @torch.no_grad()
    def residual(self, batch: dict) -> Tensor:
        prev, nxt, background, invariant = self.unpack(batch)
        kwargs = self._net_kwargs(batch.get("lead_time_label"))
        base = self._diffusion_base(prev, self._training_mean(batch, (prev, background, invariant), kwargs))
        return nxt if base is None else nxt - base

    def _training_mean(self, batch: dict, inputs: tuple, kwargs: dict[str, Any]) -> Tensor | None:
        """The frozen regression's mean of a training batch from its unpacked ``inputs`` (state,
        background, invariant), None without a regression stage; computed once per store time and lead
        (:meth:`~xkmcast.models.base.Pipeline.frozen_mean`: the training scale's pass warms it)."""
        if "regression" not in self.stages:
            return None
        return self.frozen_mean(self.mean_keys(batch), lambda rows: self._regression_mean(
            *(None if t is None else t[rows] for t in inputs), {k: v[rows] for k, v in kwargs.items()}),
            like=inputs[0])


class Stormscope(StormCast):
    """Diffusion-only step with a transformer (DiT); conditions without ``regression``. With
    ``spec.extra["input_skip"]`` it models the tendency: ``x_{t+1} = x_t + s * r``, ``r`` the diffusion's
    draw and ``s`` the per-channel :meth:`residual_scale` (``RMS(x_{t+1} - x_t) / sigma_data``)."""

    def _diffusion_base(self, state: Tensor, mean: Tensor | None) -> Tensor | None:
        return state if self.spec.extra.get("input_skip") else None

    @property
    def diffuses_residual(self) -> bool:
        return bool(self.spec.extra.get("input_skip"))

    @property
    def members_centred(self) -> bool:
        """Tendency draws are not centred (the state is no ensemble mean); their spread about the
        ensemble mean takes the spread factor calibrated on validation times."""
        return False
