"""Samplers checked against denoisers that are known exactly.

For data y ~ N(mu, s0^2) per pixel the ideal denoiser is D(x; s) = mu + s0^2 / (s0^2 + s^2) (x - mu)
and the probability-flow ODE is linear: a deterministic solver maps x_T = sigma_max z to
mu + a (x_T - mu) for some a; the exact flow has a = s0 / sqrt(s0^2 + sigma_max^2). So the output
variance of a solver, a^2 sigma_max^2, is known without sampling noise.

For a Gaussian mixture sum_k w_k N(m_k, s_k^2) the ideal denoiser is the responsibility-weighted
sum of the components' posterior means, and in one dimension the exact ODE flow is the monotone
transport map x_0 = F_0^{-1}(F_{sigma_max}(x_T)) (F_s: CDF of the data convolved with N(0, s^2)).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from torch import nn

from xkmcast.diffusion.edm import EDMPrecondSuperResolution
from xkmcast.diffusion.samplers import CountingDenoiser, SamplerConfig, nfe, sample, solve, time_steps
from xkmcast.diffusion.seeds import row_generators, row_seed, row_seeds
from xkmcast.errors import ConfigError

SIGMA_MAX = 800.0


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: a second intra-op thread only adds contention (10x slower on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class GaussianDenoiser:
    def __init__(self, mu: float, s0: float):
        self.mu, self.s0 = mu, s0

    def __call__(self, x, sigma, condition=None):
        s = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
        return self.mu + self.s0**2 / (self.s0**2 + s**2) * (x - self.mu)


class MixtureDenoiser:
    def __init__(self, w, m, s):
        self.w, self.m, self.s = (np.asarray(v, dtype=float) for v in (w, m, s))
        self._w, self._m, self._s = (torch.tensor(v, dtype=torch.float64) for v in (self.w, self.m, self.s))

    def __call__(self, x, sigma, condition=None):
        s = sigma.reshape((-1,) + (1,) * (x.ndim - 1))[..., None].to(torch.float64)
        xx = x[..., None].to(torch.float64)
        var = self._s**2 + s**2
        logp = self._w.log() - 0.5 * var.log() - 0.5 * (xx - self._m) ** 2 / var
        post = self._m + self._s**2 / var * (xx - self._m)
        r = (logp - logp.amax(dim=-1, keepdim=True)).exp()  # responsibilities (softmax written out:
        return ((r * post).sum(-1) / r.sum(-1)).to(x.dtype)  # torch.softmax is slow on tiny inputs)

    def cdf(self, x, sigma=0.0):
        return sum(w * stats.norm.cdf(x, m, math.hypot(s, sigma)) for w, m, s in zip(self.w, self.m, self.s))

    def transport(self, x_T):
        """The exact probability-flow map from sigma_max to 0 (1-D: quantile matching)."""
        u = self.cdf(np.asarray(x_T), SIGMA_MAX)
        return np.array([optimize.brentq(lambda x: self.cdf(x) - ui, -20, 20, xtol=1e-13) for ui in u])


GAUSS = GaussianDenoiser(0.3, 0.5)
MIXTURE = MixtureDenoiser([0.3, 0.7], [-1.0, 0.8], [0.2, 0.35])


def _sigmas(method: str, n: int) -> torch.Tensor:
    return time_steps(n, 0.002, SIGMA_MAX, math.inf if method == "dpmpp_2m" else 7.0)


def gaussian_variance_error(method: str, n: int) -> float:
    """Relative error of the output variance of a deterministic solver vs the exact ODE flow."""
    den = GaussianDenoiser(0.0, GAUSS.s0)
    a = solve(den, torch.ones(1, 1, dtype=torch.float64), _sigmas(method, n), method=method).item()
    exact = GAUSS.s0**2 * SIGMA_MAX**2 / (GAUSS.s0**2 + SIGMA_MAX**2)
    return (a * a - exact) / exact


@functools.cache
def _mixture_quantiles() -> tuple[torch.Tensor, np.ndarray]:
    """100 quantiles z of N(0, 1) and the exact flow's image of x_T = sigma_max z."""
    z = torch.tensor(stats.norm.ppf((np.arange(100) + 0.5) / 100)).reshape(-1, 1)
    return z, MIXTURE.transport(z.numpy().ravel() * SIGMA_MAX)


def mixture_map_error(method: str, n: int) -> float:
    """RMS difference between a solver's output and the exact transport, over the quantiles."""
    z, exact = _mixture_quantiles()
    out = solve(MIXTURE, z, _sigmas(method, n), method=method).numpy().ravel()
    return float(np.sqrt(np.mean((out - exact) ** 2)))


# --- time steps -------------------------------------------------------------------------------


def test_time_steps_formula():
    t = time_steps(18).numpy()
    assert len(t) == 19 and t[0] == pytest.approx(800) and t[17] == pytest.approx(0.002) and t[18] == 0
    i = 5
    expected = (800 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 800 ** (1 / 7))) ** 7
    assert t[i] == pytest.approx(expected, rel=1e-12)
    assert np.all(np.diff(t) < 0)
    g = time_steps(5, 0.01, 100, rho=math.inf).numpy()[:-1]  # rho -> inf: geometric
    assert g == pytest.approx([100, 10, 1, 0.1, 0.01], rel=1e-12)


def test_nfe_counts_network_calls():
    for method, n, expected in [("heun", 18, 35), ("euler", 9, 9), ("dpmpp_2m", 10, 10)]:
        assert nfe(method, n) == expected
        counter = CountingDenoiser(GAUSS)
        config = SamplerConfig(method, num_steps=n)
        sample(counter, (2,), row_seeds(0, 4), config=config)
        assert counter.calls == expected and counter.evaluations == 4 * expected
        counter = CountingDenoiser(GAUSS)
        sample(counter, (2,), row_seeds(0, 4), batch_size=3, config=config)
        assert counter.calls == 2 * expected  # two batches


# --- the deterministic solvers against the exact flow -----------------------------------------


@pytest.mark.parametrize("method,n", [("heun", 100), ("dpmpp_2m", 100), ("euler", 500)])
def test_solvers_converge_to_the_exact_flow(method, n):
    assert abs(gaussian_variance_error(method, n)) < 0.02
    assert mixture_map_error(method, n) < 0.02


def test_convergence_order():
    """Heun and DPM-Solver++(2M) are second order (halving h divides the error by ~4), Euler first."""
    for method in ("heun", "dpmpp_2m"):
        ratio = gaussian_variance_error(method, 200) / gaussian_variance_error(method, 100)
        assert 0.15 < ratio < 0.35, (method, ratio)
    ratio = gaussian_variance_error("euler", 800) / gaussian_variance_error("euler", 400)
    assert 0.4 < ratio < 0.6


def test_fast_solvers_against_heun_18():
    """At the published budgets: DPM-Solver++(2M) with 10 NFE has a smaller variance error on the
    Gaussian than Heun with 18 steps (35 NFE), and Euler with 9 steps is the worst of the three.
    On the bimodal mixture DPM-Solver++(2M) needs 18 NFE (half of Heun's) to beat Heun-18."""
    heun = abs(gaussian_variance_error("heun", 18))
    dpm = abs(gaussian_variance_error("dpmpp_2m", 10))
    euler = abs(gaussian_variance_error("euler", 9))
    assert dpm < 0.5 * heun and heun < 0.5 * euler
    assert dpm < 0.1  # 10 NFE: within 10 % of the exact variance
    m_heun, m_dpm = mixture_map_error("heun", 18), mixture_map_error("dpmpp_2m", 18)
    m_euler = mixture_map_error("euler", 9)
    assert m_dpm < m_heun < m_euler


# --- samples: mean, variance, distribution ----------------------------------------------------

N_MEMBERS, N_PIXELS = 4000, 4


@pytest.mark.parametrize(
    "method,n,churn",
    [("heun", 100, {}), ("euler", 1000, {}), ("dpmpp_2m", 60, {}),
     ("heun", 200, dict(S_churn=20.0)), ("heun", 200, dict(S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.0))],
)
def test_samples_reproduce_gaussian_mean_and_variance(method, n, churn):
    """With steps enough that the discretisation bias is below the sampling error, the samples'
    mean and variance agree with N(mu, s0^2) within 4 standard errors. Churn adds noise at each
    step; a wrong noise scale would show as a variance error."""
    g = torch.Generator().manual_seed(12)
    z = torch.randn(N_MEMBERS, N_PIXELS, generator=g, dtype=torch.float64)
    x = solve(GAUSS, z, _sigmas(method, n), method=method, generator=g, **churn)
    count = x.numel()
    se_mean, se_var = GAUSS.s0 / math.sqrt(count), GAUSS.s0**2 * math.sqrt(2 / (count - 1))
    assert abs(x.mean().item() - GAUSS.mu) < 4 * se_mean
    assert abs(x.var().item() - GAUSS.s0**2) < 4 * se_var


@pytest.mark.parametrize("method,n,churn", [("heun", 100, {}), ("dpmpp_2m", 60, {}), ("heun", 100, dict(S_churn=10.0))])
def test_samples_follow_the_mixture(method, n, churn):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(N_MEMBERS, 2, generator=g, dtype=torch.float64)
    x = solve(MIXTURE, z, _sigmas(method, n), method=method, generator=g, **churn).numpy().ravel()
    assert stats.kstest(x, MIXTURE.cdf).pvalue > 1e-3
    # and the test has power: too few Euler steps is rejected
    bad = solve(MIXTURE, z, _sigmas("euler", 9), method="euler").numpy().ravel()
    assert stats.kstest(bad, MIXTURE.cdf).pvalue < 1e-6


# --- members, seeds, batching -----------------------------------------------------------------


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x, noise_labels, class_labels=None):
        return torch.tanh(self.conv(x)) * torch.cos(noise_labels).reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("method,churn", [("heun", dict(S_churn=10.0)), ("euler", {}), ("dpmpp_2m", {})])
def test_member_is_independent_of_batch_layout(method, churn):
    torch.manual_seed(0)
    den = EDMPrecondSuperResolution(TinyNet(), sigma_max=80.0).eval()
    cond = torch.randn(1, 6, 8)
    kw = dict(condition=cond, config=SamplerConfig(method, num_steps=6, **churn))
    with torch.no_grad():
        all_at_once = sample(den, (2, 6, 8), row_seeds(42, 5), **kw)
        in_threes = sample(den, (2, 6, 8), row_seeds(42, 5), batch_size=3, **kw)
        one_by_one = sample(den, (2, 6, 8), row_seeds(42, 5), batch_size=1, **kw)
        just_three = sample(den, (2, 6, 8), row_seeds(42, [3]), **kw)
        other_seed = sample(den, (2, 6, 8), row_seeds(43, 5), **kw)
    assert all_at_once.shape == (5, 2, 6, 8)
    # a float32 network gives ~1 ulp differences between batch sizes (conv kernels), amplified
    # along the trajectory from sigma = 80: 1e-5 relative
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(in_threes, all_at_once, **close)
    torch.testing.assert_close(one_by_one, all_at_once, **close)
    torch.testing.assert_close(just_three[0], all_at_once[3], **close)
    assert (other_seed - all_at_once).abs().min() > 0
    assert (all_at_once[0] - all_at_once[1]).abs().max() > 1e-3  # members differ


@pytest.mark.parametrize("method,churn", [("heun", dict(S_churn=10.0)), ("dpmpp_2m", {})])
def test_member_is_bitwise_identical_with_an_elementwise_denoiser(method, churn):
    """Noise and churn noise are the same bits whatever the layout: with a denoiser that acts on
    each row alone (no batched kernels), the members are bitwise equal."""
    config = SamplerConfig(method, num_steps=8, **churn)
    ref = sample(GAUSS, (3, 4), row_seeds(3, 6), config=config)
    for layout in (dict(batch_size=1), dict(batch_size=4), dict(members=[5, 1])):
        got = sample(GAUSS, (3, 4), row_seeds(3, layout.pop("members", 6)), config=config, **layout)
        want = ref[[5, 1]] if len(got) == 2 else ref
        assert torch.equal(got, want), layout


def test_row_seeds_and_generators():
    assert row_seed(0, 1) == row_seed(0, 1) != row_seed(0, 2) != row_seed(1, 1)
    assert row_seeds(7, [2]) == row_seeds(7, 4)[2:3] == [row_seed(7, 2)]
    a = torch.randn(3, generator=row_generators(row_seeds(7, [2]))[0])
    b = torch.randn(3, generator=row_generators(row_seeds(7, 4))[2])
    assert torch.equal(a, b)
    assert 0 <= row_seed(2**40, -1, 10**12) < 2**63  # words enter as 32-bit pieces


def test_sampler_config_defaults_and_overrides():
    """A solver's defaults come with it (DEFAULT_STEPS / DEFAULT_RHO); the given settings win."""
    heun = SamplerConfig()
    assert (heun.sampler, heun.num_steps, heun.rho) == ("heun", 18, 7.0)
    dpm = heun.override("dpmpp_2m")
    assert (dpm.num_steps, dpm.rho, dpm.sigma_max) == (10, math.inf, heun.sigma_max)
    assert heun.override(num_steps=5, S_churn=None).num_steps == 5
    assert SamplerConfig.from_dict(heun.to_dict()) == heun and "S_churn" not in heun.to_dict()
    with pytest.raises(ConfigError, match="num_step"):
        SamplerConfig.from_dict({"num_step": 3})


def test_per_member_condition_and_sigma_range_of_the_denoiser():
    class Recorder:
        sigma_max, sigma_min = 80.0, 0.01

        def __init__(self):
            self.sigmas, self.conds = [], []

        def __call__(self, x, sigma, condition=None):
            self.sigmas.append(sigma[0].item())
            self.conds.append(condition)
            return torch.zeros_like(x)

    rec = Recorder()
    cond = torch.arange(3.0).reshape(3, 1, 1, 1).expand(3, 1, 2, 2)
    sample(rec, (1, 2, 2), row_seeds(0, 3), condition=cond, config=SamplerConfig("euler", num_steps=4))
    assert rec.sigmas[0] == pytest.approx(80.0) and rec.sigmas[-1] == pytest.approx(0.01)
    assert torch.equal(rec.conds[0], cond)  # row k sees condition k
    with pytest.raises(ConfigError, match="expected"):
        sample(rec, (1,), [0], config={"sampler": "ddim"})
    with pytest.raises(ConfigError):
        sample(rec, (1,), [0], config=SamplerConfig("dpmpp_2m", S_churn=1.0))
