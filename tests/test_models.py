"""Pipelines (CorrDiff, StormCast) and bundles: shapes, losses, reproducibility, save / load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _tiny import FINE_SHAPE, INPUT_VARS, OUTPUT_VARS, STATE_VARS, export_mdlus_pair, tiny_corrdiff, tiny_stormcast
from xkmcast.errors import BundleError, ConfigError
from xkmcast.models import build_pipeline, corrdiff_spec, stormcast_spec, stormscope_spec
from xkmcast.models.bundle import load_bundle, load_model, save_bundle


def _downscaling_batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "input": torch.randn(b, len(INPUT_VARS) + 1, *FINE_SHAPE, generator=g),
        "target": torch.randn(b, len(OUTPUT_VARS), *FINE_SHAPE, generator=g),
    }


def test_corrdiff_losses_backpropagate_only_into_their_stage():
    pipe = tiny_corrdiff().train()
    batch = _downscaling_batch()
    loss, sigma = pipe.loss("regression", batch)
    assert loss.shape == (2,) and sigma is None
    loss.mean().backward()
    assert all(p.grad is not None for p in pipe.stages["regression"].parameters() if p.requires_grad)
    pipe.zero_grad(set_to_none=True)
    loss, sigma = pipe.loss("diffusion", batch, generator=torch.Generator().manual_seed(1))
    assert loss.shape == (2,) and torch.isfinite(loss).all() and (sigma > 0).all()
    loss.mean().backward()
    assert all(p.grad is None for p in pipe.stages["regression"].parameters())  # frozen regression
    assert any(p.grad is not None for p in pipe.stages["diffusion"].parameters())


def _edm_weight(sigma, sigma_data):
    return ((sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2).reshape(-1, 1, 1, 1)


def test_corrdiff_patched_loss_is_the_edm_loss_of_the_patches():
    """Recomputed by hand: patches sliced at the drawn corners, the whole condition resized bilinearly
    and appended, the pixel indices, then lambda(sigma) |D(y + sigma eps) - y|^2 averaged per sample."""
    import torch.nn.functional as F

    from _nets import randomise

    pipe = tiny_corrdiff(patch=(8, 8))  # eval: no dropout
    randomise(pipe.stages["diffusion"], seed=3)
    batch = _downscaling_batch()
    with torch.no_grad():
        loss, sigma = pipe.loss("diffusion", batch, generator=torch.Generator().manual_seed(0))
        replay = torch.Generator().manual_seed(0)  # the draws in order: corners, ln(sigma), eps
        y0 = int(torch.randint(0, FINE_SHAPE[0] - 8 + 1, (1,), generator=replay))
        x0 = int(torch.randint(0, FINE_SHAPE[1] - 8 + 1, (1,), generator=replay))
        torch.randn(2, generator=replay)
        cond, target = batch["input"], batch["target"]
        residual = target - pipe.stages["regression"](torch.zeros_like(target), cond)  # R(0, c): no input skip
        patch = residual[:, :, y0:y0 + 8, x0:x0 + 8]
        condition = torch.cat([cond[:, :, y0:y0 + 8, x0:x0 + 8],
                               F.interpolate(cond, size=(8, 8), mode="bilinear", align_corners=False)], dim=1)
        rows, cols = torch.meshgrid(torch.arange(y0, y0 + 8), torch.arange(x0, x0 + 8), indexing="ij")
        eps = torch.randn(patch.shape, generator=replay)
        net = pipe.stages["diffusion"]
        D = net(patch + sigma.reshape(-1, 1, 1, 1) * eps, sigma=sigma, condition=condition,
                global_index=torch.stack([rows, cols])[None])
        expected = (_edm_weight(sigma, net.sigma_data) * (D - patch) ** 2).mean(dim=(1, 2, 3))
    assert loss.shape == (2,) and float(expected.abs().min()) > 1e-3
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_corrdiff_sample_members_independent_of_batching():
    pipe = tiny_corrdiff()
    x = torch.randn(2, len(INPUT_VARS), *FINE_SHAPE)
    seeds = [[11, 12, 13], [21, 22, 23]]
    all_at_once, mean = pipe.sample(x, seeds=seeds)
    one_by_one, _ = pipe.sample(x, seeds=seeds, batch_size=1)
    assert all_at_once.shape == (3, 2, len(OUTPUT_VARS), *FINE_SHAPE)
    torch.testing.assert_close(all_at_once, one_by_one, atol=1e-5, rtol=1e-5)
    # member 1 of condition 0 alone, with its own seed, is the same sample
    alone, _ = pipe.sample(x[:1], seeds=[[12]])
    torch.testing.assert_close(alone[0, 0], all_at_once[1, 0], atol=1e-5, rtol=1e-5)
    # different seeds give different members; the mean is shared
    assert (all_at_once[0] - all_at_once[1]).abs().max() > 1e-3
    torch.testing.assert_close(mean, pipe.regression_mean(pipe.condition(x)))


def test_corrdiff_patched_sampling_covers_the_domain():
    pipe = tiny_corrdiff(patch=(12, 12))
    x = torch.randn(1, len(INPUT_VARS), *FINE_SHAPE)
    samples, _ = pipe.sample(x, seeds=[[0, 1]], num_steps=3)
    assert samples.shape == (2, 1, 2, *FINE_SHAPE) and torch.isfinite(samples).all()


def test_stormcast_step_and_losses():
    pipe = tiny_stormcast()
    state = torch.randn(3, len(STATE_VARS), *FINE_SHAPE)
    bg = torch.randn(3, 1, *FINE_SHAPE)
    out = pipe.step(state, bg, seeds=[1, 2, 3])
    assert out.shape == state.shape
    again = pipe.step(state[1:2], bg[1:2], seeds=[2])
    torch.testing.assert_close(again[0], out[1], atol=1e-5, rtol=1e-5)
    batch = {"state": [state, torch.randn_like(state)], "background": bg,
             "invariant": torch.randn(3, 1, *FINE_SHAPE)}
    for stage in ("regression", "diffusion"):
        loss, _ = pipe.train().loss(stage, batch)
        assert loss.shape == (3,) and torch.isfinite(loss).all()
    # the values, recomputed by hand (eval: no dropout): regression MSE on cat(state, background, invariant);
    # diffusion EDM loss of the residual next - regression, conditioned on (state, background, invariant, mean)
    from _nets import randomise

    pipe.eval()
    randomise(pipe.stages["diffusion"], seed=5)
    prev, nxt, inv = batch["state"][0], batch["state"][1], batch["invariant"]
    with torch.no_grad():
        reg_in = torch.cat([prev, bg, inv], dim=1)
        mean = pipe.stages["regression"](reg_in)
        loss, _ = pipe.loss("regression", batch)
        expected = ((mean - nxt) ** 2).mean(dim=(1, 2, 3))
        assert float(expected.min()) > 1e-3
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        loss, sigma = pipe.loss("diffusion", batch, generator=torch.Generator().manual_seed(2))
        replay = torch.Generator().manual_seed(2)
        torch.randn(3, generator=replay)  # ln(sigma) draws; sigma itself is returned
        residual = nxt - mean
        eps = torch.randn(residual.shape, generator=replay)
        net = pipe.stages["diffusion"]
        D = net(residual + sigma.reshape(-1, 1, 1, 1) * eps, sigma=sigma, condition=torch.cat([reg_in, mean], dim=1))
        expected = (_edm_weight(sigma, net.sigma_data) * (D - residual) ** 2).mean(dim=(1, 2, 3))
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_stormscope_and_vit_step_and_train():
    from xkmcast.models import vit_spec

    scope = build_pipeline(stormscope_spec(STATE_VARS, FINE_SHAPE, background_vars=["msl"], invariant_vars=["orog"],
                                           size="tiny", sampler={"num_steps": 3}))
    scope.set_invariants(torch.randn(1, *FINE_SHAPE))
    vit = build_pipeline(vit_spec(STATE_VARS, FINE_SHAPE, size="tiny"))
    state = torch.randn(2, len(STATE_VARS), *FINE_SHAPE)
    bg = torch.randn(2, 1, *FINE_SHAPE)
    a = scope.eval().step(state, bg, seeds=[1, 2])
    b = scope.step(state[1:], bg[1:], seeds=[2])
    assert a.shape == state.shape
    torch.testing.assert_close(a[1:], b, atol=1e-5, rtol=1e-5)
    assert vit.eval().step(state).shape == state.shape
    batch = {"state": [state, state.roll(1, -1)], "background": bg, "invariant": torch.randn(2, 1, *FINE_SHAPE)}
    loss, sigma = scope.train().loss("diffusion", batch)
    assert loss.shape == (2,) and sigma is not None
    loss, sigma = vit.train().loss("regression", batch)
    loss.mean().backward()
    assert sigma is None and all(p.grad is not None for p in vit.parameters() if p.requires_grad)


def test_condition_rules_are_enforced():
    with pytest.raises(ConfigError, match="no regression stage"):
        stormcast_spec(STATE_VARS, FINE_SHAPE, background_vars=["msl"], invariant_vars=["orog"], stages=("diffusion",),
                       diffusion_conditions=["state", "regression"])
    with pytest.raises(ConfigError, match="background"):
        stormcast_spec(STATE_VARS, FINE_SHAPE, regression_conditions=["state", "background"])
    with pytest.raises(ConfigError, match="diffusion-only"):
        stormscope_spec(STATE_VARS, FINE_SHAPE, diffusion_conditions=["state", "regression"])


def test_bundle_roundtrip_is_exact(tmp_path):
    pipe = tiny_corrdiff()
    path = save_bundle(pipe, tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "weights.safetensors"]
    loaded = load_model(path)
    x = torch.randn(1, len(INPUT_VARS), *FINE_SHAPE)
    a, _ = pipe.sample(x, seeds=[[5]])
    b, _ = loaded.sample(x, seeds=[[5]])
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(loaded.grid_lat, pipe.grid_lat)
    assert loaded.spec.to_dict() == pipe.spec.to_dict()
    assert loaded.source_path == str(path.resolve())


def test_bundle_mismatch_and_garbage_refused(tmp_path):
    path = save_bundle(tiny_corrdiff(), tmp_path / "model")
    config = json.loads((path / "config.json").read_text())
    config["spec"]["networks"]["regression"]["kwargs"]["model_channels"] = 32
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="does not match the SHA-256 of its spec"):  # an edited config
        load_bundle(path)
    del config["integrity"]  # a bundle without digests (older xkmcast): the strict load still names the tensors
    (path / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="records no SHA-256"), pytest.raises(BundleError, match="shape mismatches"):
        load_bundle(path)
    with pytest.raises(BundleError, match="not an xkmcast model bundle"):
        load_bundle(tmp_path)
    (path / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BundleError):
        load_bundle(path)


def test_failed_save_keeps_the_previous_bundle(tmp_path):
    pipe = tiny_corrdiff()
    path = save_bundle(pipe, tmp_path / "model")
    before = (path / "config.json").read_text()
    pipe.spec.extra["not_json"] = object()
    with pytest.raises(TypeError):
        save_bundle(pipe, path)
    assert (path / "config.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left behind


def test_unknown_kind_and_network_refused():
    spec = corrdiff_spec(INPUT_VARS, OUTPUT_VARS, FINE_SHAPE, size="tiny")
    spec.kind = "weather-oracle"
    with pytest.raises(BundleError, match="corrdiff"):
        build_pipeline(spec)
    spec = corrdiff_spec(INPUT_VARS, OUTPUT_VARS, FINE_SHAPE, size="tiny")
    spec.networks["regression"]["class"] = "ResNet9000"
    with pytest.raises(BundleError, match="SongUNet"):
        build_pipeline(spec)


def test_regression_only_corrdiff_returns_the_mean():
    spec = corrdiff_spec(INPUT_VARS, OUTPUT_VARS, FINE_SHAPE, size="tiny", stages=("regression",))
    pipe = build_pipeline(spec).eval()
    x = torch.randn(1, len(INPUT_VARS), *FINE_SHAPE)
    samples, mean = pipe.sample(x, seeds=[[0, 1]])
    assert samples.shape[0] == 2
    np.testing.assert_array_equal(samples[0].numpy(), mean.numpy())


def test_import_mdlus_pair_equals_the_original(tmp_path):
    """Export both stages as PhysicsNeMo .mdlus files, import them with the metadata: same samples."""
    pipe = tiny_corrdiff()
    paths, spec = export_mdlus_pair(pipe, tmp_path)
    imported = load_model(mdlus=paths, spec=spec)
    from xkmcast.nn import match_physicsnemo_eval

    match_physicsnemo_eval(pipe)  # an import normalises as PhysicsNeMo does in eval mode
    x = torch.randn(1, len(INPUT_VARS), *FINE_SHAPE)
    a, _ = pipe.sample(x, seeds=[[3, 4]])
    b, _ = imported.sample(x, seeds=[[3, 4]])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    save_bundle(imported, tmp_path / "bundle")  # an import saves as an ordinary bundle, flag included
    c, _ = load_model(tmp_path / "bundle").sample(x, seeds=[[3, 4]])
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    with pytest.raises(BundleError, match="spec="):
        load_model(mdlus={"regression": tmp_path / "regression.mdlus"}, spec={"kind": "corrdiff"})
    with pytest.raises(BundleError, match="PhysicsNeMo checkpoint"):
        load_model(tmp_path / "regression.mdlus")


def test_stormscope_exports_and_imports_as_physicsnemo_preconditioner(tmp_path):
    """Stormscope's DiT saved as EDMPreconditioner(ConcatConditionWrapper(DiT)) (the StormScope package layout)
    and imported with the metadata: the same forecast step."""
    from xkmcast.nn.mdlus import EDMCheckpoint, read_mdlus, save_mdlus

    spec = stormscope_spec(STATE_VARS, FINE_SHAPE, background_vars=["msl"], size="tiny", sampler={"num_steps": 2},
                           diffusion_conditions=["state", "background"])
    pipe = build_pipeline(spec).eval()
    with torch.no_grad():
        for p in pipe.parameters():  # adaLN-Zero and the output layers start at zero
            p.add_(0.05 * torch.randn_like(p))
    net = pipe.stages["diffusion"].model
    path = save_mdlus(EDMCheckpoint(network=net, wrapper="EDMPreconditioner", sigma_data=0.5), tmp_path / "scope.mdlus")
    assert read_mdlus(path).name == "EDMPreconditioner"
    meta = {k: v for k, v in pipe.spec.to_dict().items() if k != "networks"}
    meta.update(lat=pipe.grid_lat.numpy(), lon=pipe.grid_lon.numpy())
    imported = load_model(mdlus={"diffusion": path}, spec=meta)
    state, bg = torch.randn(1, len(STATE_VARS), *FINE_SHAPE), torch.randn(1, 1, *FINE_SHAPE)
    a = pipe.step(state, bg, seeds=[5])
    torch.testing.assert_close(imported.step(state, bg, seeds=[5]), a, atol=1e-5, rtol=1e-5)
    assert a.std() > 0.1


def test_a_sampler_named_per_call_brings_its_own_defaults():
    """The bundle says heun / 4 steps; naming euler gives euler's 9 steps, dpmpp_2m its 10 log-uniform."""
    from xkmcast.models.base import sampler_config

    pipe = tiny_corrdiff()
    assert sampler_config(pipe.spec).num_steps == 4
    euler = sampler_config(pipe.spec, "euler")
    assert (euler.sampler, euler.num_steps, euler.rho) == ("euler", 9, 7.0)
    dpm = sampler_config(pipe.spec, "dpmpp_2m", 6, S_churn=None)
    assert dpm.num_steps == 6 and dpm.rho == float("inf") and dpm.S_churn == 0.0
    x = torch.randn(1, len(INPUT_VARS), *FINE_SHAPE)
    a, _ = pipe.sample(x, seeds=[[1]], sampler="euler")
    b, _ = pipe.sample(x, seeds=[[1]], sampler="euler", num_steps=9)
    torch.testing.assert_close(a, b)
    c, _ = pipe.sample(x, seeds=[[1]], sampler="dpmpp_2m")
    assert torch.isfinite(c).all()


def test_corrdiff_trains_and_samples_on_an_odd_grid_whole_and_patched():
    """23 x 19 (neither a multiple of the U-Net's 2): the losses are finite, whole-field and patched
    samples come back on the input grid."""
    from _tiny import stats_for

    torch.manual_seed(0)
    shape = (23, 19)
    spec = corrdiff_spec(INPUT_VARS, OUTPUT_VARS, shape, invariant_vars=[], size="tiny", patch=(16, 16),
                         sampler={"num_steps": 2})
    spec.stats = {"input": stats_for(INPUT_VARS), "output": stats_for(OUTPUT_VARS), "invariant": {}}
    pipe = build_pipeline(spec).eval()
    x = torch.randn(1, 3, *shape)
    batch = {"input": x, "target": torch.randn(1, 2, *shape)}
    for stage in ("regression", "diffusion"):
        assert torch.isfinite(pipe.loss(stage, batch).loss).all()
    samples, mean = pipe.sample(x, seeds=[[0, 1]])
    assert samples.shape == (2, 1, 2, *shape) and mean.shape == (1, 2, *shape)
    patched, _ = pipe.sample(x, seeds=[[0]], patch=(16, 16))
    assert patched.shape == (1, 1, 2, *shape) and torch.isfinite(patched).all()
