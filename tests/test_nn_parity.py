"""Parity with the PhysicsNeMo 2.2.2 reference: the same configuration built in PhysicsNeMo,
saved with its own ``Module.save`` as ``.mdlus``, loaded with :func:`xkmcast.nn.load_mdlus`, must
give the same state-dict keys and the same outputs (max |diff| < 1e-5) on the same inputs.

Weights are re-drawn with O(1) scale first (the published initialisation zeroes the output
layer, which would make any comparison vacuous). Skipped without the ``reference`` extra.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from xkmcast._reference import skip_without_physicsnemo
from xkmcast.nn import RegressionUNet, load_mdlus, match_physicsnemo_eval, save_mdlus

pytestmark = [pytest.mark.reference, pytest.mark.slow]

TOL = 1e-5
TINY = dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)


@pytest.fixture(scope="module")
def pn():
    skip_without_physicsnemo()
    from physicsnemo.diffusion.preconditioners import EDMPrecond, EDMPrecondSuperResolution
    from physicsnemo.models.diffusion_unets import (
        CorrDiffRegressionUNet,
        SongUNet,
        SongUNetPosEmbd,
        SongUNetPosLtEmbd,
        StormCastUNet,
    )

    return dict(
        SongUNet=SongUNet,
        SongUNetPosEmbd=SongUNetPosEmbd,
        SongUNetPosLtEmbd=SongUNetPosLtEmbd,
        CorrDiffRegressionUNet=CorrDiffRegressionUNet,
        EDMPrecondSuperResolution=EDMPrecondSuperResolution,
        EDMPrecond=EDMPrecond,
        StormCastUNet=StormCastUNet,
    )


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """O(1) random weights: N(0, 1 / fan_in) matrices, 1 + N(0, 0.01) norm scales, N(0, 0.01) vectors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * noise + (1.0 if ("norm" in name and name.endswith("weight")) else 0.0))
    return model


def _build(cls, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PhysicsNeMo's "sinusoidal" gridtype notice
        return _randomise(cls(**kwargs)).eval()


def _roundtrip(ref: torch.nn.Module, tmp_path, name: str):
    path = tmp_path / f"{name}.mdlus"
    ref.save(str(path))
    ours = load_mdlus(path, physicsnemo_eval_groupnorm=True)
    return ours


def _compare(ref, ours, run) -> float:
    with torch.no_grad():
        expected, actual = run(ref), run(ours)
    assert expected.shape == actual.shape
    assert expected.abs().max() > 0.1, "reference output too small for a meaningful comparison"
    return (expected - actual).abs().max().item()


def _same_keys(ref, ours):
    assert list(ref.state_dict()) == list(ours.state_dict())


def _inputs(b=2, c=3, h=16, w=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=gen), torch.randn(b, generator=gen)


CASES = {
    "songunet_positional": (dict(embedding_type="positional", label_dim=2, augment_dim=3), "SongUNet"),
    "songunet_fourier_skip_residual": (
        dict(embedding_type="fourier", encoder_type="residual", decoder_type="skip", resample_filter=[1, 3, 3, 1]),
        "SongUNet",
    ),
    "songunet_regression_zero": (dict(embedding_type="zero"), "SongUNet"),
    "songunet_additive_pos_embed": (dict(embedding_type="positional", additive_pos_embed=True), "SongUNet"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_songunet_matches_physicsnemo(pn, tmp_path, case):
    kwargs, cls = CASES[case]
    ref = _build(pn[cls], img_resolution=16, in_channels=3, out_channels=2, **TINY, **kwargs)
    ours = _roundtrip(ref, tmp_path, case)
    _same_keys(ref, ours)
    x, noise = _inputs()
    gen = torch.Generator().manual_seed(5)
    labels = torch.randn(2, 2, generator=gen) if kwargs.get("label_dim") else None
    augment = torch.randn(2, 3, generator=gen) if kwargs.get("augment_dim") else None
    if kwargs["embedding_type"] == "zero":
        noise = torch.zeros(2)
    diff = _compare(ref, ours, lambda m: m(x, noise, labels, augment))
    assert diff < TOL


@pytest.mark.parametrize("gridtype, channels", [("sinusoidal", 4), ("learnable", 6)])
def test_posembd_matches_physicsnemo(pn, tmp_path, gridtype, channels):
    ref = _build(pn["SongUNetPosEmbd"], img_resolution=[16, 32], in_channels=3 + channels, out_channels=2,
                 gridtype=gridtype, N_grid_channels=channels, **TINY)  # fmt: skip
    ours = _roundtrip(ref, tmp_path, f"pos_{gridtype}")
    _same_keys(ref, ours)
    x, noise = _inputs(w=32)
    assert _compare(ref, ours, lambda m: m(x, noise)) < TOL
    # patches: 2 patches of 8 x 8 at different global offsets, 2 samples each (B = 4)
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    index = torch.stack([torch.stack([rows, cols]), torch.stack([rows + 8, cols + 20])])
    xp, noise_p = _inputs(b=4, h=8, w=8, seed=2)
    assert _compare(ref, ours, lambda m: m(xp, noise_p, global_index=index)) < TOL


def test_posltembd_matches_physicsnemo(pn, tmp_path):
    ref = _build(pn["SongUNetPosLtEmbd"], img_resolution=16, in_channels=3 + 4 + 5, out_channels=3,
                 lead_time_channels=5, lead_time_steps=4, prob_channels=[1, 2], **TINY)  # fmt: skip
    ours = _roundtrip(ref, tmp_path, "poslt")
    _same_keys(ref, ours)
    x, noise = _inputs()
    lead = torch.tensor([3, 1])
    for training in (False, True):  # eval: softmax over prob_channels; training: scaled logits
        ref.train(training)
        ours.train(training)
        assert _compare(ref, ours, lambda m: m(x, noise, lead_time_label=lead)) < TOL


def test_regression_wrapper_matches_physicsnemo(pn, tmp_path):
    # CorrDiff counts the grid channels in img_in_channels: x (2) + img_lr (3) + grid (4) = 2 + 7
    ref = _build(pn["CorrDiffRegressionUNet"], img_resolution=16, img_in_channels=3 + 4, img_out_channels=2,
                 model_type="SongUNetPosEmbd", embedding_type="zero", N_grid_channels=4, **TINY)  # fmt: skip
    ours = _roundtrip(ref, tmp_path, "regression")
    assert isinstance(ours, RegressionUNet)
    _same_keys(ref, ours)
    x, _ = _inputs(c=2)
    img_lr, _ = _inputs(c=3, seed=3)
    assert _compare(ref, ours, lambda m: m(x, img_lr)) < TOL


def test_edm_superresolution_matches_physicsnemo(pn, tmp_path):
    edm = pytest.importorskip("xkmcast.diffusion.edm", reason="the diffusion helper's preconditioner is not there")
    ref = _build(pn["EDMPrecondSuperResolution"], img_resolution=16, img_in_channels=3 + 4, img_out_channels=2,
                 model_type="SongUNetPosEmbd", sigma_data=0.5, gridtype="learnable", N_grid_channels=4, **TINY)  # fmt: skip
    ckpt = _roundtrip(ref, tmp_path, "edm_sr")
    assert ckpt.wrapper == "EDMPrecondSuperResolution" and ckpt.sigma_data == 0.5 and ckpt.img_in_channels == 7 and ckpt.condition_channels == 3
    ours = edm.EDMPrecondSuperResolution(ckpt.network, sigma_data=ckpt.sigma_data, sigma_min=ckpt.sigma_min,
                                         sigma_max=ckpt.sigma_max).eval()  # fmt: skip
    _same_keys(ref, ours)
    x, _ = _inputs(c=2)
    img_lr, _ = _inputs(c=3, seed=3)
    sigma = torch.tensor([0.3, 7.0])
    assert _compare(ref, ours, lambda m: m(x, img_lr, sigma)) < TOL


def test_stormcast_networks_match_physicsnemo(pn, tmp_path):
    """StormCast: the regression StormCastUNet and the EDMPrecond diffusion model (rectangular grid)."""
    edm = pytest.importorskip("xkmcast.diffusion.edm", reason="the diffusion helper's preconditioner is not there")
    common = dict(img_resolution=[16, 32], model_type="SongUNet", additive_pos_embed=True, **TINY)
    ref = _build(pn["StormCastUNet"], img_in_channels=5, img_out_channels=2, embedding_type="zero", **common)
    ours = _roundtrip(ref, tmp_path, "stormcast_reg")
    _same_keys(ref, ours)
    x, _ = _inputs(c=5, w=32)
    assert _compare(ref, ours, lambda m: m(x)) < TOL

    ref = _build(pn["EDMPrecond"], img_channels=2, img_in_channels=2 + 3, img_out_channels=2, sigma_data=0.5, **common)
    ckpt = _roundtrip(ref, tmp_path, "stormcast_edm")
    assert ckpt.wrapper == "EDMPrecond" and ckpt.condition_channels == 3
    ours = edm.EDMPrecond(ckpt.network, sigma_data=ckpt.sigma_data, sigma_min=ckpt.sigma_min, sigma_max=ckpt.sigma_max).eval()
    _same_keys(ref, ours)
    state, _ = _inputs(c=2, w=32)
    cond, _ = _inputs(c=3, w=32, seed=4)
    sigma = torch.tensor([0.05, 20.0])
    assert _compare(ref, ours, lambda m: m(state, sigma, condition=cond)) < TOL


def test_training_mode_matches_without_groupnorm_switch(pn, tmp_path):
    """In training mode both use the biased group-norm variance: equal with our default settings."""
    ref = _build(pn["SongUNet"], img_resolution=16, in_channels=3, out_channels=2, **TINY)
    path = tmp_path / "train.mdlus"
    ref.save(str(path))
    ours = load_mdlus(path)
    ref.train()
    ours.train()
    x, noise = _inputs()
    assert _compare(ref, ours, lambda m: m(x, noise)) < TOL
    # the eval-mode difference the switch exists for is real (so the comparisons above can fail)
    ref.eval()
    ours.eval()
    assert _compare(ref, ours, lambda m: m(x, noise)) > 1e-4
    match_physicsnemo_eval(ours)
    assert _compare(ref, ours, lambda m: m(x, noise)) < TOL


def test_physicsnemo_loads_our_export(pn, tmp_path):
    from xkmcast.nn import SongUNetPosEmbd

    ours = _randomise(SongUNetPosEmbd(img_resolution=16, in_channels=3 + 4, out_channels=2, **TINY)).eval()
    match_physicsnemo_eval(ours)
    path = save_mdlus(ours, tmp_path / "ours.mdlus")
    from physicsnemo import Module

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = Module.from_checkpoint(str(path)).eval()
    assert type(ref).__name__ == "SongUNetPosEmbd"
    x, noise = _inputs()
    assert _compare(ref, ours, lambda m: m(x, noise)) < TOL


def test_a_real_difference_is_detected(pn, tmp_path):
    """The comparison can fail: one perturbed weight makes the outputs differ."""
    ref = _build(pn["SongUNet"], img_resolution=16, in_channels=3, out_channels=2, **TINY)
    ours = _roundtrip(ref, tmp_path, "perturbed")
    with torch.no_grad():
        ours.enc["16x16_block0"].conv1.weight[0, 0, 1, 1] += 1e-2
    x, noise = _inputs()
    assert _compare(ref, ours, lambda m: m(x, noise)) > TOL
