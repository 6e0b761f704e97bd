"""Training losses: sigma distributions, EDM weighting, masks / channel weights, CorrDiff residual."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from xkmcast.diffusion.edm import EDMPrecond, EDMPrecondSuperResolution
from xkmcast.diffusion.losses import (
    LogNormalSigma,
    LogUniformSigma,
    denoising_loss,
    edm_loss,
    edm_weight,
    reduce_per_sample,
    regression_loss,
    residual_loss,
    sigma_distribution,
)
from xkmcast.errors import ConfigError


class ConvNet(nn.Module):
    """A small real network with the SongUNet call signature."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x, noise_labels, class_labels=None, **kwargs):
        return self.conv(x) * (1 + noise_labels.reshape(-1, 1, 1, 1))


class Regression(nn.Module):
    """CorrDiff's regression convention: F(cat(x, img_lr)) with noise label 0."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.model = ConvNet(cin + cout, cout)

    def forward(self, x, img_lr, **kwargs):
        return self.model(torch.cat([x, img_lr], 1), torch.zeros(x.shape[0]))


def test_named_distributions_have_the_published_parameters():
    assert (sigma_distribution("residual").P_mean, sigma_distribution("residual").P_std) == (0.0, 1.2)
    assert (sigma_distribution("edm").P_mean, sigma_distribution("edm").P_std) == (-1.2, 1.2)
    lu = sigma_distribution("loguniform")
    assert (lu.sigma_min, lu.sigma_max) == (0.002, 80.0)
    with pytest.raises(ConfigError, match="expected"):
        sigma_distribution("cosine")


@pytest.mark.parametrize("P_mean,P_std", [(0.0, 1.2), (-1.2, 1.2)])
def test_lognormal_sigma_follows_its_law(P_mean, P_std):
    g = torch.Generator().manual_seed(0)
    s = LogNormalSigma(P_mean, P_std)(20000, generator=g).double().numpy()
    assert stats.kstest(np.log(s), "norm", args=(P_mean, P_std)).pvalue > 1e-3
    # a wrong distribution is rejected by the same test (the test has power)
    assert stats.kstest(np.log(s), "norm", args=(P_mean + 0.1, P_std)).pvalue < 1e-6


def test_loguniform_sigma_follows_its_law():
    g = torch.Generator().manual_seed(1)
    s = LogUniformSigma(0.002, 80)(20000, generator=g).double().numpy()
    lo, hi = math.log(0.002), math.log(80)
    assert s.min() >= 0.002 * (1 - 1e-6) and s.max() <= 80 * (1 + 1e-6)
    assert stats.kstest(np.log(s), "uniform", args=(lo, hi - lo)).pvalue > 1e-3


def test_generator_makes_sigma_reproducible():
    a = LogNormalSigma()(5, generator=torch.Generator().manual_seed(7))
    b = LogNormalSigma()(5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_edm_weight_formula():
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)
    # (s^2 + 0.25) / (0.5 s)^2: s = 0.5 -> 0.5 / 0.0625 = 8 ; s = 2 -> 4.25 / 1 = 4.25
    assert edm_weight(sigma, 0.5).flatten().tolist() == pytest.approx([8.0, 4.25])
    w = edm_weight(sigma, torch.tensor([0.5, 1.0], dtype=torch.float64))
    assert w.shape == (2, 2, 1, 1)
    assert w[:, 1].flatten().tolist() == pytest.approx([5.0, 1.25])  # (s^2 + 1) / s^2


def test_weighting_makes_the_loss_of_the_trivial_denoiser_one():
    """With D(x) = c_skip x (the optimum for y ~ N(0, sd^2)) the weighted error has expectation 1:
    E[(c_skip (y + n) - y)^2] = c_out^2 and lambda c_out^2 = 1. The defining property of lambda."""
    sd = 0.5

    class Zero(nn.Module):
        def forward(self, x, noise_labels, class_labels=None):
            return torch.zeros_like(x)

    g = torch.Generator().manual_seed(3)
    y = sd * torch.randn(64, 2, 16, 16, generator=g)
    out = denoising_loss(EDMPrecond(Zero(), sigma_data=sd), y, generator=g)
    assert out.loss.shape == (64,) and out.sigma.shape == (64,)
    assert out.loss.mean().item() == pytest.approx(1.0, abs=0.03)


def test_loss_is_hand_computable_for_a_fixed_sigma():
    """denoising_loss = mean(lambda (D(y + sigma eps) - y)^2), eps drawn from the given generator."""
    torch.manual_seed(0)
    D = EDMPrecond(ConvNet(3, 3))
    y = torch.randn(4, 3, 8, 8)
    const = lambda n, generator=None, device=None: torch.full((n,), 0.7)  # noqa: E731
    out = denoising_loss(D, y, sigma_dist=const, generator=torch.Generator().manual_seed(5))
    eps = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    expected = ((0.49 + 0.25) / (0.7 * 0.5) ** 2 * (D(y + 0.7 * eps, torch.full((4,), 0.7)) - y) ** 2).mean((1, 2, 3))
    torch.testing.assert_close(out.loss, expected)


def test_mask_and_channel_weights():
    err = torch.arange(2 * 2 * 2 * 2, dtype=torch.float64).reshape(2, 2, 2, 2)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64).expand(2, 1, 2, 2).clone()
    mask[1] = 1.0
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    loss = reduce_per_sample(err, w, mask)
    # sample 0: valid pixel (0, 0) in both channels: (1*0 + 3*4) / 2 = 6
    # sample 1: all valid: (8+9+10+11 + 3*(12+13+14+15)) / 8 = (38 + 162) / 8 = 25
    assert loss.tolist() == pytest.approx([6.0, 25.0])
    assert reduce_per_sample(err).tolist() == pytest.approx([err[0].mean().item(), err[1].mean().item()])
    empty = reduce_per_sample(err, mask=torch.zeros(2, 1, 2, 2))
    assert empty.tolist() == [0.0, 0.0]


def test_masked_pixels_do_not_contribute_or_get_gradients():
    torch.manual_seed(0)
    net = Regression(2, 1)
    y, cond = torch.randn(3, 1, 8, 8), torch.randn(3, 2, 8, 8)
    mask = torch.ones(3, 1, 8, 8)
    mask[:, :, :4] = 0
    a = regression_loss(net, y, cond, mask=mask).loss
    y2 = y.clone()
    y2[:, :, :4] = 1e6  # garbage where the mask is 0
    b = regression_loss(net, y2, cond, mask=mask).loss
    torch.testing.assert_close(a, b)


def test_regression_loss_is_plain_mse_of_the_prediction():
    torch.manual_seed(0)
    net = Regression(2, 3)
    y, cond = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 8, 8)
    out = regression_loss(net, y, cond)
    assert out.sigma is None
    torch.testing.assert_close(out.loss, ((net(torch.zeros_like(y), cond) - y) ** 2).mean((1, 2, 3)))


@pytest.mark.parametrize("condition_on_mean", [False, True])
def test_residual_loss_uses_the_frozen_regression(condition_on_mean):
    torch.manual_seed(0)
    reg = Regression(2, 3)
    cin = 3 + 2 + (3 if condition_on_mean else 0)
    D = EDMPrecondSuperResolution(ConvNet(cin, 3))
    y, lr = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 8, 8)
    g = torch.Generator().manual_seed(11)
    out = residual_loss(D, y, lr, regression=reg, condition_on_mean=condition_on_mean, generator=g)
    out.loss.mean().backward()
    assert all(p.grad is None for p in reg.parameters())  # no gradient reaches the frozen network
    assert all(p.grad is not None for p in D.parameters())
    # same as the denoising loss on the residual y - mu (with cat(mu, lr) as condition if asked)
    mu = reg(torch.zeros_like(y), lr).detach()
    cond = torch.cat([mu, lr], 1) if condition_on_mean else lr
    again = denoising_loss(D, y - mu, cond, sigma_dist="residual", generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(out.loss, again.loss)
    torch.testing.assert_close(out.sigma, again.sigma)
    # a precomputed mean gives the same loss
    same = residual_loss(D, y, lr, mean=mu, condition_on_mean=condition_on_mean,
                         generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(out.loss, same.loss)
    with pytest.raises(ConfigError):
        residual_loss(D, y, lr)


def test_edm_loss_draws_sigma_from_its_lognormal():
    D = EDMPrecond(ConvNet(2, 2))
    y = torch.randn(4000, 2, 2, 2)
    out = edm_loss(D, y, generator=torch.Generator().manual_seed(2))
    assert stats.kstest(out.sigma.double().log().numpy(), "norm", args=(-1.2, 1.2)).pvalue > 1e-3


def test_per_channel_sigma_data_weights_each_channel():
    sd = torch.tensor([0.5, 2.0])

    class Zero(nn.Module):
        def forward(self, x, noise_labels, class_labels=None):
            return torch.zeros_like(x)

    g = torch.Generator().manual_seed(4)
    y = sd.reshape(1, 2, 1, 1) * torch.randn(256, 2, 8, 8, generator=g)
    D = EDMPrecond(Zero(), sigma_data=sd)
    per_channel = [denoising_loss(D, y, channel_weights=torch.tensor(w), generator=torch.Generator().manual_seed(9))
                   .loss.mean().item() for w in ([2.0, 0.0], [0.0, 2.0])]
    # each channel's weighted error has expectation 1 with its own sd (see the scalar test above)
    assert per_channel == pytest.approx([1.0, 1.0], abs=0.05)
