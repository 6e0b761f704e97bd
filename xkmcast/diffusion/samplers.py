"""Samplers for an EDM denoiser D(x; sigma) (Karras et al. 2022, section 3 and 4; Lu et al. 2022).

The probability-flow ODE of the EDM formulation (sigma(t) = t, s(t) = 1) is

    dx / d sigma = (x - D(x; sigma)) / sigma,

integrated from sigma_max (x ~ N(0, sigma_max^2 I)) down to 0 along the time steps

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    i = 0 .. N-1,  sigma_N = 0.

EDM uses rho = 7. The limit rho -> infinity is the geometric sequence
sigma_i = sigma_max^(1 - i/(N-1)) sigma_min^(i/(N-1)), steps uniform in lambda = -ln sigma (the
"logSNR" steps Lu et al. recommend for DPM-Solver); ``rho=math.inf`` selects it and it is the
default of ``"dpmpp_2m"``.

Solvers (``method``):

- ``"heun"``: EDM algorithm 1 (2nd order; 2N - 1 network evaluations, the last step is Euler).
  With S_churn > 0 it is algorithm 2: before step i, if S_min <= sigma_i <= S_max, noise is added to
  raise the level to sigma_hat = sigma_i (1 + gamma), gamma = min(S_churn / N, sqrt(2) - 1),
  x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) S_noise eps.
- ``"euler"``: the same without the corrector (N evaluations; CorrDiff's fast setting is N = 9).
- ``"dpmpp_2m"``: DPM-Solver++(2M) (Lu et al. 2022), multistep 2nd order in the data prediction
  x0_i = D(x_i; sigma_i), with lambda = -ln sigma, h_i = lambda_{i+1} - lambda_i:
      x_{i+1} = (sigma_{i+1} / sigma_i) x_i + (1 - sigma_{i+1} / sigma_i) Dhat_i,
      Dhat_i = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1},  r_i = h_{i-1} / h_i,
  first order (Dhat = x0) at the first step, and x_N = x0_{N-1} at the last (sigma_N = 0).
  N evaluations.

The settings of a sampler are one :class:`SamplerConfig` (solver, steps, noise range, rho, churn).

Reproducibility contract of :func:`sample`, the one sampler production and the tests share: row i
draws its initial noise and every churn noise from its own ``torch.Generator`` seeded by
``seeds[i]`` alone (:func:`xkmcast.diffusion.seeds.row_seed` names a sample by seed, member and
valid time), so a row is the same whether it is drawn alone or in a batch with any others (up to
floating-point differences of batched network arithmetic, ~1e-6).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, explain
from .seeds import row_generators

__all__ = [
    "SAMPLERS",
    "DEFAULT_STEPS",
    "DEFAULT_RHO",
    "SamplerConfig",
    "time_steps",
    "nfe",
    "CountingDenoiser",
    "solve",
    "sample",
]

SAMPLERS = ("heun", "euler", "dpmpp_2m")
DEFAULT_STEPS = {"heun": 18, "euler": 9, "dpmpp_2m": 10}
DEFAULT_RHO = {"heun": 7.0, "euler": 7.0, "dpmpp_2m": math.inf}


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """The settings of one sampler run: the solver (``sampler``: heun, euler, dpmpp_2m), its
    ``num_steps`` N and ``rho`` (None: the solver's defaults, :data:`DEFAULT_STEPS` /
    :data:`DEFAULT_RHO`), the noise range [sigma_min, sigma_max] of the time steps, and the churn of
    EDM algorithm 2 (S_churn, S_min, S_max, S_noise; S_churn = 0: deterministic)."""

    sampler: str = "heun"
    num_steps: int | None = None
    sigma_min: float = 0.002
    sigma_max: float = 800.0
    rho: float | None = None
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = math.inf
    S_noise: float = 1.0

    def __post_init__(self) -> None:
        _check_method(self.sampler)
        if self.num_steps is None:
            object.__setattr__(self, "num_steps", DEFAULT_STEPS[self.sampler])
        if self.rho is None:
            object.__setattr__(self, "rho", DEFAULT_RHO[self.sampler])
        object.__setattr__(self, "num_steps", int(self.num_steps))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SamplerConfig:
        """From a mapping of field names (a spec's ``sampler``); ConfigError on an unknown key."""
        known = [f.name for f in dataclasses.fields(cls)]
        bad = sorted(set(values) - set(known))
        if bad:
            raise ConfigError(explain("unknown sampler settings", expected=known, found=bad))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The solver, steps, noise range and rho, plus the churn settings that differ from none."""
        out = dataclasses.asdict(self)
        plain = SamplerConfig()
        for name in ("S_churn", "S_min", "S_max", "S_noise"):
            if out[name] == getattr(plain, name):
                del out[name]
        return out

    def override(self, sampler: str | None = None, num_steps: int | None = None, **options: Any) -> SamplerConfig:
        """These settings with a call's choices: another ``sampler`` brings its own default steps and
        rho; ``num_steps`` and the other ``options`` given (not None) win."""
        changes: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
        if sampler is not None and sampler != self.sampler:
            changes.update(sampler=sampler, num_steps=None, rho=changes.get("rho"))
        if num_steps is not None:
            changes["num_steps"] = num_steps
        return SamplerConfig.from_dict({**dataclasses.asdict(self), **changes})


def time_steps(
    num_steps: int,
    sigma_min: float = SamplerConfig.sigma_min,
    sigma_max: float = SamplerConfig.sigma_max,
    rho: float = DEFAULT_RHO["heun"],
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """The EDM noise levels sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min, sigma_N = 0;
    a tensor of N + 1 values (defaults: those of :class:`SamplerConfig`, rho = 7).
    ``rho=math.inf``: geometric (log-uniform) spacing."""
    if num_steps < 1:
        raise ConfigError(explain("the number of sampler steps must be at least 1", expected=">= 1", found=num_steps))
    i = torch.arange(num_steps, dtype=torch.float64)
    frac = i / (num_steps - 1) if num_steps > 1 else i
    if math.isinf(rho):
        sigmas = torch.exp(math.log(sigma_max) + frac * (math.log(sigma_min) - math.log(sigma_max)))
    else:
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        sigmas = (hi + frac * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(dtype=dtype, device=device)


def nfe(method: str, num_steps: int) -> int:
    """Network evaluations per sample: Heun 2N - 1, Euler N, DPM-Solver++(2M) N."""
    _check_method(method)
    return 2 * num_steps - 1 if method == "heun" else num_steps


class CountingDenoiser:
    """Wraps a denoiser and counts its calls (``calls``) and the samples evaluated (``evaluations``).

    ``calls`` is the NFE of one batch; the sigma range of the wrapped denoiser is kept so the
    sampler clips to it as before.
    """

    def __init__(self, denoiser: Any):
        self.denoiser = denoiser
        self.calls = 0
        self.evaluations = 0
        for name in ("sigma_min", "sigma_max", "sigma_data"):
            if hasattr(denoiser, name):
                setattr(self, name, getattr(denoiser, name))

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        self.calls += 1
        self.evaluations += x.shape[0]
        return self.denoiser(x, sigma=sigma, **kwargs)


def _check_method(method: str) -> None:
    if method not in SAMPLERS:
        raise ConfigError(explain("unknown sampler", expected=SAMPLERS, found=method))


def _randn(shape: tuple[int, ...], generator, dtype: torch.dtype, device) -> Tensor:
    """N(0, 1) noise of ``shape``: row k from ``generator[k]`` when a list is given (drawn on that
    generator's device, then moved), else one draw from a single generator / the global RNG."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.stack(rows).to(device)
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(device)


def solve(
    denoiser: Any,
    latents: Tensor,
    sigmas: Tensor,
    *,
    method: str = "heun",
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    condition: Tensor | None = None,
    **denoiser_kwargs: Any,
) -> Tensor:
    """Integrate from x = latents * sigma_0 along ``sigmas`` (decreasing, ending with 0).

    ``latents`` (B, ...) is standard normal noise; the state keeps the latents' dtype (float64
    recommended). ``denoiser(x, sigma=(B,), condition=condition, **denoiser_kwargs)`` is called in
    the state dtype and its output is cast back. ``generator`` (one, or one per row) supplies churn
    noise. Returns the samples, shaped like ``latents``.
    """
    _check_method(method)
    if method == "dpmpp_2m" and S_churn > 0:
        raise ConfigError(explain("DPM-Solver++(2M) is deterministic here; churn is not supported",
                                  expected="S_churn=0 with dpmpp_2m", found=S_churn,
                                  fix="use sampler='heun' or 'euler' for the stochastic variant"))
    sigmas = sigmas.to(device=latents.device, dtype=latents.dtype)
    B, num_steps = latents.shape[0], len(sigmas) - 1
    kwargs = dict(denoiser_kwargs)
    if condition is not None:
        kwargs["condition"] = condition

    # a mixture of sigma-range experts (diffusion/experts.py) names the network of each evaluation by the
    # level of the time-step grid it belongs to (sigma_i for the step, sigma_{i+1} for the corrector),
    # not by the churned sigma_hat it is evaluated at; any other denoiser is used as it is
    pick = getattr(denoiser, "for_level", None)

    def D(x: Tensor, sigma: Tensor, level: Tensor | None = None) -> Tensor:
        net = denoiser if pick is None else pick(float(sigma if level is None else level))
        return net(x, sigma=sigma.expand(B), **kwargs).to(x.dtype)

    x = latents * sigmas[0]
    if method == "dpmpp_2m":
        return _dpmpp_2m(D, x, sigmas)

    gamma_max = min(S_churn / num_steps, math.sqrt(2.0) - 1.0) if S_churn > 0 else 0.0
    for i in range(num_steps):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        gamma = gamma_max if S_min <= float(t_cur) <= S_max else 0.0
        t_hat = t_cur * (1 + gamma)
        if gamma > 0:
            eps = _randn(tuple(x.shape), generator, x.dtype, x.device)
            x = x + (t_hat**2 - t_cur**2).sqrt() * S_noise * eps
        d_cur = (x - D(x, t_hat, t_cur)) / t_hat
        x_next = x + (t_next - t_hat) * d_cur
        if method == "heun" and i < num_steps - 1:
            d_next = (x_next - D(x_next, t_next)) / t_next
            x_next = x + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x


def _dpmpp_2m(D, x: Tensor, sigmas: Tensor) -> Tensor:
    """DPM-Solver++(2M) in the EDM parametrisation (alpha = 1, sigma_t = sigma, lambda = -ln sigma)."""
    x0_prev, h_prev = None, None
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        x0 = D(x, t_cur)
        if t_next == 0:
            x = x0
            break
        h = (t_cur / t_next).log()
        if x0_prev is None:
            d_hat = x0
        else:
            half_inv_r = h / (2 * h_prev)
            d_hat = (1 + half_inv_r) * x0 - half_inv_r * x0_prev
        ratio = t_next / t_cur
        x = ratio * x + (1 - ratio) * d_hat
        x0_prev, h_prev = x0, h
    return x


def _sigma_range(denoiser: Any, sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """Clip the requested range to the one the denoiser supports (attributes sigma_min/max)."""
    lo = max(sigma_min, float(getattr(denoiser, "sigma_min", 0.0) or 0.0))
    hi = min(sigma_max, float(getattr(denoiser, "sigma_max", math.inf)))
    if not 0 < lo < hi:
        raise ConfigError(explain("the sampler's noise range is empty",
                                  expected="0 < sigma_min < sigma_max", found=(lo, hi)))
    return lo, hi


def sample(
    denoiser: Any,
    shape: Sequence[int],
    seeds: Sequence[int],
    *,
    condition: Tensor | None = None,
    config: SamplerConfig | Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    **denoiser_kwargs: Any,
) -> Tensor:
    """One sample per seed from an EDM denoiser; returns (len(seeds), *shape) in ``dtype``.

    ``shape`` is one row's shape, e.g. (C, H, W). Row i's initial and churn noise come from a CPU
    generator seeded by ``seeds[i]`` alone (so results depend neither on the batching nor on the
    device the network runs on). Rows go through the denoiser ``batch_size`` at a time (default:
    all at once). ``condition`` is one condition shared by all rows (ndim = len(shape)) or one per
    row ((N, ...)); the state lives on its device (else ``device``). ``config``: the solver and its
    settings (:class:`SamplerConfig`, default Heun 18 steps); its sigma_min / sigma_max are clipped to
    the denoiser's range when it has these attributes. Other keyword arguments go to the denoiser
    unchanged.
    """
    cfg = config if isinstance(config, SamplerConfig) else SamplerConfig.from_dict(config or {})
    if condition is not None:
        device = condition.device
    lo, hi = _sigma_range(denoiser, cfg.sigma_min, cfg.sigma_max)
    sigmas = time_steps(cfg.num_steps, lo, hi, cfg.rho, dtype=dtype, device=device)
    shape = tuple(int(s) for s in shape)
    n = len(seeds)
    per_row = condition is not None and condition.ndim == len(shape) + 1
    if per_row and condition.shape[0] != n:
        raise ValueError(f"condition has {condition.shape[0]} rows for {n} seeds")
    batch_size = n if batch_size is None else max(1, int(batch_size))
    out = []
    for start in range(0, n, batch_size):
        gens = row_generators(seeds[start:start + batch_size])
        latents = _randn((len(gens),) + shape, gens, dtype, device)
        cond = None
        if condition is not None:
            cond = condition[start:start + len(gens)] if per_row else condition.unsqueeze(0).expand(
                (len(gens),) + tuple(condition.shape))
        out.append(solve(denoiser, latents, sigmas, method=cfg.sampler, S_churn=cfg.S_churn, S_min=cfg.S_min,
                         S_max=cfg.S_max, S_noise=cfg.S_noise, generator=gens, condition=cond, **denoiser_kwargs))
    return torch.cat(out)
