"""EDM preconditioning: the coefficient formulas, the wrapper arithmetic, PhysicsNeMo parity."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xkmcast.diffusion.edm import EDMPrecond, EDMPrecondSuperResolution, edm_coefficients


class TinyNet(nn.Module):
    """A real (small) network with the SongUNet call signature; keeps its last inputs for checks."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(1, out_channels)

    def forward(self, x, noise_labels, class_labels=None, **kwargs):
        self.seen = (x.clone(), noise_labels.clone(), class_labels, kwargs)
        return self.conv(x) + self.emb(noise_labels.reshape(-1, 1))[:, :, None, None]


class ZeroNet(nn.Module):
    def forward(self, x, noise_labels, class_labels=None):
        return torch.zeros_like(x)


def test_coefficients_against_hand_computed_values():
    sigma = torch.tensor([1.0, 0.5], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, 0.5)
    # sigma = 1: var = 1.25 ; sigma = 0.5: var = 0.5
    assert c_skip.flatten().tolist() == pytest.approx([0.2, 0.5], abs=1e-12)
    assert c_out.flatten().tolist() == pytest.approx([0.4472135955, 0.3535533906], abs=1e-10)
    assert c_in.flatten().tolist() == pytest.approx([0.8944271910, 1.4142135624], abs=1e-10)
    assert c_noise.tolist() == pytest.approx([0.0, -0.1732867951], abs=1e-10)
    assert c_skip.shape == (2, 1, 1, 1) and c_noise.shape == (2,)


def test_per_channel_sigma_data():
    sigma = torch.tensor([1.0], dtype=torch.float64)
    c_skip, c_out, c_in, _ = edm_coefficients(sigma, torch.tensor([0.5, 1.0]))
    assert c_skip.shape == (1, 2, 1, 1)
    assert c_skip.flatten().tolist() == pytest.approx([0.2, 0.5], abs=1e-7)
    assert c_out.flatten().tolist() == pytest.approx([0.4472135955, 0.7071067812], abs=1e-7)
    assert c_in.flatten().tolist() == pytest.approx([0.8944271910, 0.7071067812], abs=1e-7)


def test_unit_variance_of_network_input_and_target():
    """The design goal of EDM: c_in^2 (sd^2 + s^2) = 1 and the effective target
    (y - c_skip (y + n)) / c_out has unit variance: (1 - c_skip)^2 sd^2 + c_skip^2 s^2 = c_out^2."""
    sigma = torch.logspace(-3, 3, 13, dtype=torch.float64)
    for sd in (0.5, 1.7):
        c_skip, c_out, c_in, _ = edm_coefficients(sigma, sd)
        torch.testing.assert_close(c_in**2 * (sd**2 + sigma.reshape(-1, 1, 1, 1) ** 2), torch.ones_like(c_in))
        s2 = sigma.reshape(-1, 1, 1, 1) ** 2
        torch.testing.assert_close((1 - c_skip) ** 2 * sd**2 + c_skip**2 * s2, c_out**2)


def test_precond_forward_matches_the_formula():
    torch.manual_seed(0)
    net = TinyNet(3 + 2, 3)
    D = EDMPrecond(net, sigma_data=0.5)
    x, cond = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 8, 8)
    sigma = torch.tensor([0.3, 4.0])
    out = D(x, sigma, condition=cond)
    arg, labels, _, _ = net.seen
    s = sigma.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(arg[:, :3], x / (s**2 + 0.25).sqrt())
    torch.testing.assert_close(arg[:, 3:], cond)  # the condition is not scaled
    torch.testing.assert_close(labels, sigma.log() / 4)
    F = net(arg, labels)
    expected = 0.25 / (s**2 + 0.25) * x + s * 0.5 / (s**2 + 0.25).sqrt() * F
    torch.testing.assert_close(out, expected)


def test_zero_network_is_the_optimal_denoiser_of_gaussian_data():
    """For y ~ N(0, sd^2) the ideal denoiser E[y | y + n] = sd^2 / (sd^2 + s^2) x is c_skip x: F = 0."""
    sd = torch.tensor([0.5, 2.0])
    D = EDMPrecond(ZeroNet(), sigma_data=sd)
    x = torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    expected = sd.reshape(1, 2, 1, 1) ** 2 / (sd.reshape(1, 2, 1, 1) ** 2 + sigma.reshape(-1, 1, 1, 1) ** 2) * x
    torch.testing.assert_close(D(x, sigma), expected)


def test_state_dict_layout():
    D = EDMPrecondSuperResolution(TinyNet(5, 3), sigma_data=torch.tensor([0.5, 0.5, 1.0]), sigma_max=800)
    net_keys = ["model.conv.bias", "model.conv.weight", "model.emb.bias", "model.emb.weight"]
    assert sorted(D.state_dict()) == net_keys  # as PhysicsNeMo's EDMPrecondSuperResolution
    assert sorted(EDMPrecond(TinyNet(3, 3)).state_dict()) == net_keys + ["sigma_data"]  # as its EDMPrecond
    assert D.sigma_max == 800 and D.sigma_min == 0


def test_super_resolution_accepts_img_lr_or_condition_and_scalar_sigma():
    torch.manual_seed(1)
    D = EDMPrecondSuperResolution(TinyNet(5, 3))
    x, lr = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 8, 8)
    a = D(x, lr, torch.tensor([0.7, 0.7]))
    b = D(x, sigma=0.7, condition=lr)
    torch.testing.assert_close(a, b)
    with pytest.raises(TypeError):
        D(x, lr, 0.7, condition=lr)


def _physicsnemo_songunet_kwargs():
    return dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0,
                embedding_type="positional", channel_mult_noise=1, encoder_type="standard", decoder_type="standard")


@pytest.mark.reference
@pytest.mark.slow  # importing PhysicsNeMo takes ~20 s on a loaded machine
def test_super_resolution_matches_physicsnemo_checkpoint():
    """A PhysicsNeMo EDMPrecondSuperResolution state dict loads into ours and gives the same D."""
    from xkmcast._reference import skip_without_physicsnemo

    skip_without_physicsnemo()
    from physicsnemo.diffusion.preconditioners import EDMPrecondSuperResolution as Ref
    from physicsnemo.models.diffusion_unets import SongUNet as RefSongUNet

    torch.manual_seed(0)
    kw = _physicsnemo_songunet_kwargs()
    ref = Ref(img_resolution=[8, 16], img_in_channels=2, img_out_channels=3, model_type="SongUNet",
              sigma_data=0.5, **kw).eval()
    with torch.no_grad():  # PhysicsNeMo zero-initialises output layers; make F non-trivial
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, lr = torch.randn(2, 3, 8, 16), torch.randn(2, 2, 8, 16)
    nets = [("physicsnemo SongUNet", RefSongUNet(img_resolution=[8, 16], in_channels=5, out_channels=3, **kw))]
    try:  # and our own network (its parity with PhysicsNeMo's is tested in tests/test_nn_*.py)
        from xkmcast.nn.unet import SongUNet, match_physicsnemo_eval

        nets.append(("xkmcast SongUNet", match_physicsnemo_eval(SongUNet(img_resolution=[8, 16], in_channels=5,
                                                                         out_channels=3, **kw))))
    except ImportError:  # pragma: no cover - nn not there yet
        pass
    for name, net in nets:
        ours = EDMPrecondSuperResolution(net, sigma_data=0.5).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        for s in (0.01, 1.0, 300.0):
            sigma = torch.full((2,), s)
            with torch.no_grad():
                expected = ref(x, lr, sigma)
                torch.testing.assert_close(ours(x, lr, sigma), expected, atol=1e-5, rtol=1e-5, msg=name)
                # the keyword form used by samplers and losses
                torch.testing.assert_close(ours(x, sigma=sigma, condition=lr), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.reference
@pytest.mark.slow  # importing PhysicsNeMo takes ~20 s on a loaded machine
def test_precond_matches_physicsnemo_edmprecond():
    from xkmcast._reference import skip_without_physicsnemo

    skip_without_physicsnemo()
    from physicsnemo.diffusion.preconditioners import EDMPrecond as Ref

    torch.manual_seed(0)
    kw = _physicsnemo_songunet_kwargs()
    ref = Ref(img_resolution=8, img_channels=3, img_in_channels=5, img_out_channels=3, model_type="SongUNet",
              **kw).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    inner = type(ref.model)(img_resolution=8, in_channels=5, out_channels=3, **kw)
    ours = EDMPrecond(inner).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # model.* and the sigma_data buffer
    x, cond, sigma = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 8, 8), torch.tensor([0.2, 20.0])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, sigma, condition=cond), ref(x, sigma, condition=cond))


def test_c_noise_is_quarter_log_sigma():
    assert edm_coefficients(torch.tensor([math.e**4]), 0.5)[3].item() == pytest.approx(1.0)
