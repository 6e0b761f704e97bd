"""Issue 14, probed as a hostile user would: tampered bundles and checkpoints, two models mixed in one
forecast, concurrent writers, a stale model cache, registry keys leaving the cache. Each test first
does what used to succeed silently, then checks the refusal and that nothing was written or lost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr

from _tiny import coarse_dataset, state_dataset, tiny_corrdiff, tiny_stormcast
from xkmcast.atomic import atomic_path
from xkmcast.errors import BundleError, CheckpointError, OutputBusyError, OutputExistsError, XkmcastError
from xkmcast.fields.downscale import ModelRef, downscale
from xkmcast.fields.io import write_dataset
from xkmcast.models.bundle import WEIGHTS, load_bundle, model_identity, save_bundle
from xkmcast.fields.forecast import forecast
from xkmcast.train.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return save_bundle(tiny_corrdiff(), tmp_path_factory.mktemp("bundle") / "model")


def _copy(bundle, tmp_path):
    return shutil.copytree(bundle, tmp_path / "model")


# ---------------------------------------------------------------------------- 6. integrity
def test_flipped_bytes_in_the_weights_are_refused_naming_the_file(bundle, tmp_path):
    path = _copy(bundle, tmp_path)
    raw = bytearray((path / WEIGHTS).read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    for k in range(0, 200):  # 200 flips spread over the tensor data (the probe)
        raw[header + (k * 7919) % (len(raw) - header)] ^= 0xFF
    (path / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"weights\.safetensors does not match the SHA-256"):
        load_bundle(path)


def test_one_flipped_bit_is_refused(bundle, tmp_path):
    path = _copy(bundle, tmp_path)
    raw = bytearray((path / WEIGHTS).read_bytes())
    raw[-3] ^= 0x01
    (path / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="SHA-256"):
        load_bundle(path)


def test_swapped_output_vars_in_config_json_are_refused(bundle, tmp_path):
    path = _copy(bundle, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["spec"]["output_vars"] = config["spec"]["output_vars"][::-1]  # t2m <-> u10m: silent mislabel before
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"config\.json does not match the SHA-256 of its spec"):
        load_bundle(path)


def test_an_untouched_bundle_loads_with_the_identity_of_the_pipeline(bundle):
    pipe = tiny_corrdiff()
    loaded = load_bundle(bundle)
    assert model_identity(loaded) == model_identity(pipe)  # recorded digests == recomputed from the network
    assert model_identity(tiny_corrdiff(seed=1)) != model_identity(pipe)


def test_flipped_bytes_in_a_checkpoint_tensor_are_refused(tmp_path):
    marker = torch.full((256,), 1.2345678, dtype=torch.float32)
    state = {"model": {"w": marker.clone(), "b": torch.zeros(3)}, "ema": None, "step": 4}
    path = save_checkpoint(tmp_path, state, 4)
    assert load_checkpoint(path)["step"] == 4
    raw = bytearray(path.read_bytes())
    at = raw.find(marker.numpy().tobytes())
    assert at > 0
    raw[at + 100] ^= 0x10  # one weight changes from 1.2345678 to another finite number: loads silently before
    path.write_bytes(bytes(raw))
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], marker)
    with pytest.raises(CheckpointError, match=rf"{path.name} is corrupted"):
        load_checkpoint(path)


# ------------------------------------------------------------------------- 8. model cache
def test_cache_sees_new_weights_exported_to_the_same_path(tmp_path):
    path = save_bundle(tiny_corrdiff(seed=0), tmp_path / "b")
    first = ModelRef(str(path)).get()
    save_bundle(tiny_corrdiff(seed=1), path)  # re-exported by a new training run
    second = ModelRef(str(path)).get()
    expected = tiny_corrdiff(seed=1).state_dict()
    assert all(torch.equal(second.state_dict()[k], v) for k, v in expected.items())
    assert model_identity(first) != model_identity(second)


def test_relative_and_absolute_paths_share_one_cache_entry(tmp_path, monkeypatch):
    path = save_bundle(tiny_corrdiff(), tmp_path / "b")
    monkeypatch.chdir(tmp_path)
    assert ModelRef("b").get() is ModelRef(str(path)).get() is ModelRef("./b/").get()


def test_a_loaded_model_edited_in_memory_is_not_reloaded_from_its_bundle(bundle):
    """The lazy result of a model loaded from disk is computed by what the user holds: an edited spec
    (no members' spread) or weights changed in place are honoured, not the bundle's (the workers'
    reloaded copy); an unedited model still travels as its path."""
    from xkmcast.fields.downscale import _graph_handle
    from xkmcast.models.bundle import reloadable_source

    coarse = coarse_dataset(1)
    model = load_bundle(bundle)
    assert isinstance(_graph_handle(model, model), ModelRef)
    plain = coarse.kmcast.downscale(model, members=3, seed=1)["t2m"].values
    before = model_identity(model)
    model.spec.extra["sample_scale"] = [0.0, 0.0]  # members = the regression mean
    assert reloadable_source(model) is None
    edited = coarse.kmcast.downscale(model, members=3, seed=1)["t2m"].values
    assert np.abs(plain - plain[0]).max() > 0.01
    np.testing.assert_allclose(edited, edited[:1].repeat(3, 0), atol=1e-6)
    fresh = load_bundle(bundle)
    with torch.no_grad():
        for p in fresh.stages["regression"].parameters():  # (EDM's output layer starts at zero)
            p.add_(0.05)
    assert reloadable_source(fresh) is None
    assert model_identity(fresh) != before  # outputs do not name the bundle's weights
    assert not np.allclose(coarse.kmcast.downscale(fresh, members=3, seed=1)["t2m"].values, plain)


# ---------------------------------------------------------------------- 4. concurrent writers
def _holder(target, seconds: float) -> subprocess.Popen:
    """Another process writing ``target`` through atomic_path for ``seconds``."""
    code = ("import sys, time; from xkmcast.atomic import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.mkdir(); (tmp / 'who').write_text('first'); print('writing', flush=True); time.sleep(float(sys.argv[2]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(target), str(seconds)], stdout=subprocess.PIPE, env=env,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_second_writer_fails_while_the_first_runs(tmp_path):
    ds = coarse_dataset(1)
    out = tmp_path / "out.zarr"
    first = _holder(out, 3.0)
    try:
        with pytest.raises(OutputBusyError, match=rf"being written by another process \(pid {first.pid}\)"):
            write_dataset(ds, out, overwrite=True)  # before: both reported success, the later one won
    finally:
        assert first.wait(timeout=60) == 0
    assert (out / "who").read_text() == "first"  # the first writer's result, whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no lock or temporaries left


def test_overwrite_false_is_checked_at_the_moment_of_the_move(tmp_path):
    out = tmp_path / "out.nc"
    with pytest.raises(OutputExistsError):
        with atomic_path(out, overwrite=False) as tmp:
            tmp.write_text("mine")
            out.write_text("someone else finished first")  # appears while this writer runs
    assert out.read_text() == "someone else finished first"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_lock_of_a_killed_writer_is_taken_over(tmp_path):
    out = tmp_path / "out.nc"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock-out.nc").write_text(str(dead.pid))
    write_dataset(coarse_dataset(1), out)
    assert xr.open_dataset(out).sizes["time"] == 1


# -------------------------------------------------------- 3. one forecast store, one model
def _interrupted(path, model, steps=3):
    """A streamed forecast of ``model`` whose last lead is not completed (as after Ctrl-C)."""
    state_dataset(1).kmcast.forecast(model, steps=steps, background=coarse_dataset(steps + 1), output=path)
    flags = xr.Dataset({"completed": (("init_time", "lead_time"), np.zeros((1, 1), np.int8))})
    flags.to_zarr(path, region={"init_time": slice(0, 1), "lead_time": slice(steps, steps + 1)}, consolidated=False)
    return xr.open_zarr(path, consolidated=False).t2m.values.copy()


def test_resume_with_another_model_is_refused(tmp_path):
    path = tmp_path / "fc.zarr"
    before = _interrupted(path, tiny_stormcast(seed=0))
    other = tiny_stormcast(seed=1)  # same variables and grid, other weights: used to continue silently
    with pytest.raises(XkmcastError, match="written by another model"):
        state_dataset(1).kmcast.forecast(other, steps=3, background=coarse_dataset(4), output=path)
    after = xr.open_zarr(path, consolidated=False)
    np.testing.assert_array_equal(after.t2m.values, before)  # nothing overwritten
    assert not after.completed.values[0, 3]
    assert after.attrs["xkmcast_model_sha256"] == model_identity(tiny_stormcast(seed=0))


def test_resume_with_other_sampler_settings_is_refused_and_same_settings_finish(tmp_path):
    path = tmp_path / "fc.zarr"
    model = tiny_stormcast(seed=0)
    _interrupted(path, model)
    with pytest.raises(XkmcastError, match="written by another sampler settings"):
        state_dataset(1).kmcast.forecast(model, steps=3, background=coarse_dataset(4), output=path, num_steps=2)
    done = state_dataset(1).kmcast.forecast(model, steps=3, background=coarse_dataset(4), output=path)
    assert done.completed.values.all()


def test_resume_with_the_same_bundle_from_disk_is_accepted(tmp_path):
    model = tiny_stormcast(seed=0)
    bundle = save_bundle(model, tmp_path / "sc")
    path = tmp_path / "fc.zarr"
    _interrupted(path, model)  # started with the in-memory pipeline, resumed from its exported bundle
    done = state_dataset(1).kmcast.forecast(str(bundle), steps=3, background=coarse_dataset(4), output=path)
    assert done.completed.values.all()


# ------------------------------------------------------------- 1. registry keys (catalog)
def test_registry_keys_leaving_the_cache_are_refused(tmp_path):
    from xkmcast.data.catalog import load_registry

    good = "a" * 64
    for bad in ("../../dir/file", "/etc/passwd", "a/../../b", "C:/x"):
        registry = tmp_path / "registry.txt"
        registry.write_text(f"{bad} {good} http://127.0.0.1:9/x\n")
        with pytest.raises(XkmcastError, match="not a plain relative name"):
            load_registry(registry)  # before: the key became a path outside the cache
    registry.write_text(f"hrrr/2024/file.nc {good} http://127.0.0.1:9/x\n")
    assert "hrrr/2024/file.nc" in load_registry(registry)
