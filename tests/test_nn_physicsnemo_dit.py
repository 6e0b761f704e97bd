"""PhysicsNeMo 2.2.2's DiT, saved by PhysicsNeMo as ``.mdlus``, loaded with :func:`load_mdlus` into
:class:`PhysicsNeMoDiT`: same state dict and the same outputs (< 1e-5) for several configurations;
the same for ``EDMPreconditioner(ConcatConditionWrapper(DiT))`` as StormScope / COSMO-REA store it,
and our exports read back by PhysicsNeMo. All weights are redrawn (adaLN-Zero starts at zero)."""

from __future__ import annotations

import warnings

import pytest
import torch
from _nets import rand, randomise

from xkmcast._reference import skip_without_physicsnemo
from xkmcast.diffusion.edm import EDMPrecond
from xkmcast.errors import ConfigError, InvalidDataError
from xkmcast.nn import EDMCheckpoint, PhysicsNeMoDiT, load_mdlus, save_mdlus
from xkmcast.nn.mdlus_archive import read_mdlus, write_archive

pytestmark = pytest.mark.reference
TOL = 1e-5


@pytest.fixture(scope="module")
def pn():
    skip_without_physicsnemo()
    from physicsnemo import Module
    from physicsnemo.diffusion.preconditioners import EDMPreconditioner
    from physicsnemo.diffusion.utils.model_wrappers import ConcatConditionWrapper
    from physicsnemo.models.dit import DiT

    return dict(DiT=DiT, EDMPreconditioner=EDMPreconditioner, ConcatConditionWrapper=ConcatConditionWrapper, Module=Module)


SMALL = dict(hidden_size=32, depth=2, num_heads=4)
CONFIGS = {
    "patch4-dit-vector": dict(input_size=(16, 24), in_channels=3, out_channels=2, patch_size=4, condition_dim=5, **SMALL),
    "patch2x4-edm-conv": dict(input_size=(8, 16), in_channels=3, out_channels=2, patch_size=(2, 4), condition_dim=3,
                              conditioning_embedder="edm", conditioning_embedder_kwargs=dict(emb_channels=32, noise_channels=16),
                              detokenizer="proj_reshape_2d_conv", detokenizer_kwargs=dict(conv_hidden=8, conv_layers=3), **SMALL),
    "patch2-nocond-rmsnorm": dict(input_size=(12, 12), in_channels=2, patch_size=2, block_kwargs=dict(mlp_drop_rate=0.1),
                                  attn_kwargs=dict(qk_norm_type="RMSNorm"), mlp_ratio=2.0, **SMALL),
    "patch4-dit-kwargs-conv": dict(input_size=(8, 12), in_channels=4, out_channels=1, patch_size=4, detokenizer="proj_reshape_2d_conv",
                                   conditioning_embedder_kwargs=dict(freq_embed_dim=16, mlp_hidden_dim=24, embed_fn="np_sin_cos",
                                                                     max_positions=1000, endpoint=True), **SMALL),
}  # fmt: skip


def _inputs(cfg, batch=2):
    x = rand(batch, cfg["in_channels"], *cfg["input_size"], seed=1)
    vec = rand(batch, cfg["condition_dim"], seed=2) if cfg.get("condition_dim") else None
    return x, rand(batch, seed=3), vec


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_physicsnemo_dit_mdlus_loads_and_matches(pn, tmp_path, case):
    cfg = CONFIGS[case]
    ref = randomise(pn["DiT"](**cfg), seed=7).eval()
    ref.save(str(tmp_path / "dit.mdlus"))
    ours = load_mdlus(tmp_path / "dit.mdlus")
    assert isinstance(ours, PhysicsNeMoDiT) and not ours.training
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    x, t, vec = _inputs(cfg)
    with torch.no_grad():
        expected = ref(x, t, vec)
        got = ours(x, t, class_labels=vec)
        assert expected.std() > 0.1  # weights are not the zero initialisation
        assert (got - expected).abs().max() < TOL
        if vec is not None:  # without the vector condition PhysicsNeMo drops its term; so do we
            assert (ours(x, t) - ref(x, t, None)).abs().max() < TOL


def test_preconditioned_concat_wrapper(pn, tmp_path):
    """EDMPreconditioner(ConcatConditionWrapper(DiT)): D(x; sigma, image, vector) with per-channel sigma_data."""
    dit = pn["DiT"](input_size=(8, 12), in_channels=5, out_channels=2, patch_size=2, condition_dim=3, **SMALL)
    ref = pn["EDMPreconditioner"](pn["ConcatConditionWrapper"](randomise(dit, seed=3)), sigma_data=[0.5, 0.8]).eval()
    ref.save(str(tmp_path / "denoiser.mdlus"))
    ckpt = load_mdlus(tmp_path / "denoiser.mdlus")
    assert isinstance(ckpt, EDMCheckpoint) and ckpt.wrapper == "EDMPreconditioner"
    assert ckpt.sigma_data == pytest.approx([0.5, 0.8]) and ckpt.condition_channels == 3
    ours = EDMPrecond(ckpt.network, sigma_data=torch.tensor(ckpt.sigma_data)).eval()
    from tensordict import TensorDict

    x, image, vec = rand(2, 2, 8, 12, seed=4) * 3, rand(2, 3, 8, 12, seed=5), rand(2, 3, seed=6)
    sigma = torch.tensor([0.3, 7.0])
    with torch.no_grad():
        expected = ref(x, sigma, TensorDict({"cond_concat": image, "cond_vec": vec}, batch_size=[2]))
        got = ours(x, sigma, condition=image, class_labels=vec)
    assert (got - expected).abs().max() < TOL
    # and back: our export is a file PhysicsNeMo loads into the same denoiser
    path = save_mdlus(ckpt, tmp_path / "ours.mdlus")
    again = pn["Module"].from_checkpoint(str(path)).eval()
    with torch.no_grad():
        assert (again(x, sigma, TensorDict({"cond_concat": image, "cond_vec": vec}, batch_size=[2])) - expected).abs().max() < TOL


def test_our_dit_export_loads_in_physicsnemo(pn, tmp_path):
    cfg = CONFIGS["patch2x4-edm-conv"]
    ours = randomise(PhysicsNeMoDiT(**cfg), seed=2).eval()
    back = pn["Module"].from_checkpoint(str(save_mdlus(ours, tmp_path / "dit.mdlus"))).eval()
    x, t, vec = _inputs(cfg)
    with torch.no_grad():
        assert (back(x, t, vec) - ours(x, t, class_labels=vec)).abs().max() < TOL


def test_legacy_dit_checkpoint(pn, tmp_path):
    """DiT files of version 0.1.0: ``timestep_embed_kwargs`` and the embedder at the root, no freqs."""
    cfg = dict(input_size=(8, 8), in_channels=2, patch_size=2, conditioning_embedder_kwargs=dict(max_positions=500), **SMALL)
    ref = randomise(pn["DiT"](**cfg), seed=5).eval()
    ref.save(str(tmp_path / "new.mdlus"))
    contents = read_mdlus(tmp_path / "new.mdlus")
    args = dict(contents.args["__args__"])
    args["timestep_embed_kwargs"] = args.pop("conditioning_embedder_kwargs")
    state = {k.replace("conditioning_embedder.", ""): v for k, v in contents.state_dict.items() if not k.endswith("freqs")}
    write_archive(tmp_path / "old.mdlus", {**contents.args, "__args__": args}, state)
    ours = load_mdlus(tmp_path / "old.mdlus")
    x, t, _ = _inputs(cfg)
    with torch.no_grad():
        assert (ours(x, t) - ref(x, t)).abs().max() < TOL


def test_zero_embedder_with_2d_detokenizer_is_refused(pn):
    """PhysicsNeMo builds it but fails at the first forward; we refuse at construction, saying why."""
    cfg = dict(input_size=(8, 8), in_channels=2, patch_size=2, conditioning_embedder="zero", **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pn["DiT"](**cfg)
    with pytest.raises(RuntimeError):
        ref(rand(1, 2, 8, 8), rand(1))
    with pytest.raises(ConfigError, match="hidden_size"):
        PhysicsNeMoDiT(**cfg)


def test_grid_checks_and_padding_to_whole_patches():
    import numpy as np

    net = randomise(PhysicsNeMoDiT(input_size=(8, 12), in_channels=1, patch_size=4, **SMALL), seed=3).eval()
    with pytest.raises(InvalidDataError, match="position embedding"):
        net(rand(1, 1, 8, 16), rand(1))
    # 7 x 10 is not whole patches: padded (numpy's reflect: 0 rows + 1 before, 1 col before + 1 after) to
    # the 8 x 12 of the position embedding, the output cropped back
    x, t = rand(1, 1, 7, 10), rand(1)
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (0, 1), (1, 1)), mode="reflect"))
    with torch.no_grad():
        out, ref = net(x, t), net(padded, t)[..., 0:7, 1:11]
    assert out.shape == (1, net.out_channels, 7, 10)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


NATTEN = {
    "natten2d-k3": dict(input_size=(16, 20), in_channels=3, out_channels=2, patch_size=2, condition_dim=4,
                        attention_backend="natten2d", attn_kwargs=dict(attn_kernel=3), hidden_size=16, depth=1, num_heads=2),
    "rope-k4-qknorm-conv-mask": dict(input_size=(12, 20), in_channels=3, out_channels=2, patch_size=2, attention_backend="natten2d_rope",
                                     attn_kwargs=dict(attn_kernel=4, qk_norm=True, rope_theta=500.0), detokenizer="proj_reshape_2d_conv",
                                     use_nan_mask_tokens=True, hidden_size=16, depth=1, num_heads=2),
}  # fmt: skip


@pytest.mark.slow  # PhysicsNeMo's NATTEN path runs natten's eager flex attention on CPU (seconds)
@pytest.mark.parametrize("case", sorted(NATTEN))
def test_natten_backends_match_physicsnemo(pn, tmp_path, case):
    pytest.importorskip("natten", reason="PhysicsNeMo's natten2d backends need the natten package")
    cfg = NATTEN[case]
    ref = randomise(pn["DiT"](**cfg), seed=11).eval()
    ref.save(str(tmp_path / "dit.mdlus"))
    ours = load_mdlus(tmp_path / "dit.mdlus")
    x, t, vec = _inputs(cfg)
    kw = {"invalid_mask": rand(2, *cfg["input_size"], seed=9) > 1.0} if cfg.get("use_nan_mask_tokens") else {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ref(x, t, vec, **kw)
        assert expected.std() > 0.1
        assert (ours(x, t, class_labels=vec, **kw) - expected).abs().max() < TOL


def test_rope_dit_runs_on_other_grids():
    """Without a learnable position embedding the grid comes from the input (as Earth2Studio rebinds it)."""
    cfg = dict(NATTEN["rope-k4-qknorm-conv-mask"], use_nan_mask_tokens=False)
    net = randomise(PhysicsNeMoDiT(**cfg), seed=1).eval()
    with torch.no_grad():
        big = net(rand(1, 3, 16, 24, seed=2), rand(1))
    assert big.shape == (1, 2, 16, 24) and torch.isfinite(big).all()
