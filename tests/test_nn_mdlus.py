"""``.mdlus`` files: round trips (zip and tar), EDM wrappers, and refusal of unknown classes,
tampered arguments, pickled objects and damaged archives. The reference-implementation side
(PhysicsNeMo writing and reading) is in test_nn_parity.py."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import pytest
import torch
from _nets import TINY_UNET as TINY, rand as _rand, randomise

from xkmcast.errors import BundleError
from xkmcast.nn import (
    DiT,
    EDMCheckpoint,
    NETWORKS,
    RegressionUNet,
    SongUNetPosEmbd,
    SongUNetPosLtEmbd,
    WeatherViT,
    load_mdlus,
    read_mdlus,
    save_mdlus,
)

def _randomise(model, seed=0):
    return randomise(model, seed).eval()


def _rewrite(path, out, **changes):
    """Copy a zip .mdlus, replacing members (bytes) or args.json (a function of the dict)."""
    with zipfile.ZipFile(path) as src:
        members = {n: src.read(n) for n in src.namelist()}
    for name, value in changes.items():
        key = name.replace("_", ".", 1)
        members[key] = value(json.loads(members[key])) if callable(value) else value
        if callable(value):
            members[key] = json.dumps(members[key]).encode()
    with zipfile.ZipFile(out, "w") as dst:
        for n, data in members.items():
            dst.writestr(n, data)
    return out


CASES = {
    "posltembd": (
        lambda: SongUNetPosLtEmbd([8, 16], 3 + 4 + 2, 2, lead_time_channels=2, lead_time_steps=3, **TINY),
        lambda m: m(_rand(2, 3, 8, 16), _rand(2), lead_time_label=torch.tensor([1, 2])),
    ),
    "regression": (
        lambda: RegressionUNet(8, img_in_channels=3 + 4, img_out_channels=2, embedding_type="zero", **TINY),
        lambda m: m(_rand(1, 2, 8, 8), _rand(1, 3, 8, 8, seed=1)),
    ),
    "dit": (
        lambda: DiT([6, 10], 2, 2, condition_channels=1, patch_size=2, hidden_size=16, depth=1, num_heads=2, window_size=2),
        lambda m: m(_rand(1, 2, 6, 10), _rand(1), None, _rand(1, 1, 6, 10)),
    ),
    "vit": (
        lambda: WeatherViT([8, 12], 2, patch_size=4, embed_dim=16, depth=1, num_heads=2),
        lambda m: m(_rand(1, 2, 8, 12)),
    ),
}


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "tar"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_roundtrip_gives_identical_outputs(tmp_path, case, legacy_format):
    make, run = CASES[case]
    model = _randomise(make())
    path = save_mdlus(model, tmp_path / f"{case}.mdlus", legacy_format=legacy_format)
    assert tarfile.is_tarfile(path) == legacy_format
    loaded = load_mdlus(path)
    assert type(loaded) is type(model) and not loaded.training
    with torch.no_grad():
        assert torch.equal(run(model), run(loaded))


def test_args_json_has_physicsnemo_layout(tmp_path):
    model = SongUNetPosEmbd(8, 7, 2, **TINY)
    contents = read_mdlus(save_mdlus(model, tmp_path / "m.mdlus"))
    assert contents.name == "SongUNetPosEmbd"
    assert contents.module == "physicsnemo.models.diffusion_unets.song_unet"
    assert contents.args["__args__"]["gridtype"] == "sinusoidal" and contents.args["__args__"]["in_channels"] == 7
    assert contents.metadata["mdlus_file_version"] == "0.1.0"
    assert set(contents.state_dict) == set(model.state_dict())


def test_edm_wrapper_roundtrip(tmp_path):
    net = _randomise(SongUNetPosEmbd(8, 2 + 3 + 4, 2, gridtype="learnable", **TINY))
    ckpt = EDMCheckpoint(net, "EDMPrecondSuperResolution", sigma_data=0.5, sigma_max=80.0, img_in_channels=3 + 4, img_out_channels=2)
    path = save_mdlus(ckpt, tmp_path / "edm.mdlus")
    contents = read_mdlus(path)
    assert all(k.startswith("model.") for k in contents.state_dict)
    assert contents.args["__args__"]["img_in_channels"] == 7 and contents.args["__args__"]["model_type"] == "SongUNetPosEmbd"
    back = load_mdlus(path)
    assert isinstance(back, EDMCheckpoint)
    assert (back.sigma_data, back.sigma_max, back.img_in_channels, back.img_out_channels) == (0.5, 80.0, 7, 2)
    assert back.condition_channels == 3
    x, noise = _rand(1, 5, 8, 8), _rand(1)
    assert torch.equal(net(x, noise), back.network(x, noise))


def test_edmprecond_reads_sigma_data_from_the_weights(tmp_path):
    net = _randomise(SongUNetPosEmbd(8, 2 + 4 + 3, 2, **TINY))  # state (2) + condition (3)
    ckpt = EDMCheckpoint(net, "EDMPrecond", sigma_data=[0.5, 1.0], img_in_channels=2 + 4 + 3, img_out_channels=2)
    back = load_mdlus(save_mdlus(ckpt, tmp_path / "edm.mdlus"))
    assert back.sigma_data == [0.5, 1.0] and back.img_in_channels == 9 and back.img_out_channels == 2
    assert back.condition_channels == 3


def test_unknown_class_is_refused_with_the_supported_list(tmp_path):
    path = save_mdlus(SongUNetPosEmbd(8, 7, 2, **TINY), tmp_path / "m.mdlus")
    bad = _rewrite(path, tmp_path / "bad.mdlus", args_json=lambda a: {**a, "__name__": "DhariwalUNet"})
    with pytest.raises(BundleError) as err:
        load_mdlus(bad)
    assert "DhariwalUNet" in str(err.value) and "SongUNetPosLtEmbd" in str(err.value)


def test_tampered_args_are_refused(tmp_path):
    path = save_mdlus(SongUNetPosEmbd(8, 7, 2, **TINY), tmp_path / "m.mdlus")
    extra = _rewrite(path, tmp_path / "extra.mdlus", args_json=lambda a: {**a, "__args__": {**a["__args__"], "evil": 1}})
    with pytest.raises(BundleError, match="evil"):
        load_mdlus(extra)
    wider = _rewrite(path, tmp_path / "wider.mdlus", args_json=lambda a: {**a, "__args__": {**a["__args__"], "model_channels": 16}})
    with pytest.raises(BundleError, match="do not fit|do not match"):
        load_mdlus(wider)
    nested = _rewrite(path, tmp_path / "nested.mdlus",
                      args_json=lambda a: {**a, "__args__": {**a["__args__"], "act": "__physicsnemo.Module__.act"}})  # fmt: skip
    with pytest.raises(BundleError, match="nested"):
        load_mdlus(nested)


class _Payload:
    """Anything that is not a tensor: weights_only loading must refuse to unpickle it."""


def test_pickled_objects_are_never_loaded(tmp_path):
    path = save_mdlus(SongUNetPosEmbd(8, 7, 2, **TINY), tmp_path / "m.mdlus")
    buffer = io.BytesIO()
    torch.save({"weight": _Payload()}, buffer)
    bad = _rewrite(path, tmp_path / "pickle.mdlus", model_pt=buffer.getvalue())
    with pytest.raises(BundleError, match="weights_only"):
        read_mdlus(bad)


def test_damaged_archives_are_refused(tmp_path):
    not_archive = tmp_path / "x.mdlus"
    not_archive.write_bytes(b"hello")
    with pytest.raises(BundleError, match="zip or tar"):
        read_mdlus(not_archive)
    with pytest.raises(BundleError, match="not found"):
        read_mdlus(tmp_path / "missing.mdlus")
    partial = tmp_path / "partial.mdlus"
    with zipfile.ZipFile(partial, "w") as archive:
        archive.writestr("args.json", "{}")
    with pytest.raises(BundleError, match="incomplete"):
        read_mdlus(partial)
    with pytest.raises(BundleError):
        save_mdlus(SongUNetPosEmbd(8, 7, 2, **TINY), tmp_path / "model.pt")


def test_old_tar_with_directory_prefix_and_alias_names(tmp_path):
    """Old checkpoints: a tar whose members sit in a folder, class saved as ``UNet`` with dropped args."""
    model = _randomise(RegressionUNet(8, img_in_channels=7, img_out_channels=2, embedding_type="zero", **TINY))
    args = {"__name__": "UNet", "__module__": "modulus.models.diffusion.unet",
            "__args__": {**model.config, "img_channels": 4, "sigma_min": 0.0}}  # fmt: skip
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    path = tmp_path / "old.mdlus"
    with tarfile.open(path, "w") as tar:
        for name, data in [("model.pt", buffer.getvalue()), ("args.json", json.dumps(args).encode()), ("metadata.json", b"{}")]:
            info = tarfile.TarInfo(f"checkpoint/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    loaded = load_mdlus(path)
    assert isinstance(loaded, RegressionUNet)
    x, lr = _rand(1, 2, 8, 8), _rand(1, 3, 8, 8, seed=1)
    assert torch.equal(model(x, lr), loaded(x, lr))


def test_build_stage_from_the_registry():
    from xkmcast.models.stages import build_stage

    assert NETWORKS["CorrDiffRegressionUNet"] is RegressionUNet
    kwargs = dict(img_resolution=8, in_channels=1, out_channels=1, hidden_size=16, depth=1, num_heads=2)
    net = build_stage({"class": "DiT", "kwargs": kwargs})
    assert isinstance(net, DiT) and build_stage({"class": "DiT", "kwargs": net.config}).config == net.config
    with pytest.raises(BundleError, match="SongUNet"):
        build_stage({"class": "UNet3D"})
    with pytest.raises(BundleError):
        build_stage({"class": "DiT", "kwargs": {**kwargs, "depthh": 2}})
