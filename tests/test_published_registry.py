"""The published-model registry and load_model's dispatch (names, folders, archives, mdlus= / spec=)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xkmcast
from xkmcast.errors import BundleError, CatalogError, IntegrityError
from xkmcast.models.published import registry


def test_packaged_registry_lists_the_published_models_pinned():
    table = registry.entries()
    assert {"corrdiff-taiwan", "stormcast-v1", "corrdiff-cmip6-era5"} <= set(xkmcast.published_models())
    sc = table["stormcast-v1"]
    assert (sc.host, sc.repo, sc.revision) == ("huggingface", "nvidia/stormcast-v1-era5-hrrr",
                                               "6c89a0877a0d6b231033d3b0d8b9828a6f833ed8")
    assert set(sc.files) == {"model.yaml", "StormCastUNet.0.0.mdlus", "EDMPrecond.0.0.mdlus", "metadata.zarr.zip"}
    assert registry.file_url(sc, "model.yaml") == (
        "https://huggingface.co/nvidia/stormcast-v1-era5-hrrr/resolve/6c89a0877a0d6b231033d3b0d8b9828a6f833ed8/model.yaml")
    tw = table["corrdiff-taiwan"]
    assert registry.file_url(tw, "corrdiff_inference_package.zip") == (
        "https://api.ngc.nvidia.com/v2/models/org/nvidia/team/modulus/corrdiff_inference_package/1/files"
        "?path=corrdiff_inference_package.zip")
    assert table["corrdiff-cmip6-era5"].revision == "f756fad5b85efec64df4868aead14dda698b8aea"


def test_unknown_hashes_are_refused_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a download attempt would fail loudly
    monkeypatch.setenv("NGC_CLI_SEARCH_SERVICE_URL", "http://127.0.0.1:9")
    with pytest.raises(IntegrityError, match="never uses an unverified download"):
        xkmcast.load_model("stormcast-v1", cache_dir=tmp_path, trust_host_hashes=False)
    with pytest.raises(IntegrityError, match="never uses an unverified download"):  # NGC lists no checksums
        xkmcast.load_model("corrdiff-taiwan", cache_dir=tmp_path)
    assert not any(tmp_path.rglob("*.mdlus")) and not any(tmp_path.rglob("*.zip"))


@pytest.mark.parametrize("text, match", [
    ("x:\n  family: stormcast_v1\n  host: huggingface\n  repo: a/b\n  revision: main\n  files: {f: unknown}\n", "commit id"),
    ("x:\n  family: stormcast_v1\n  host: ftp\n  repo: a/b\n  revision: '1'\n  files: {f: unknown}\n", "Unknown host"),
    ("x:\n  family: stormcast_v1\n  host: ngc\n  repo: a/b/c\n  revision: '1'\n  files: {../f: unknown}\n", "'..'"),
    ("x:\n  family: stormcast_v1\n  host: ngc\n  repo: a/b/c\n  revision: '1'\n  files: {f: abc}\n", "SHA-256"),
])
def test_malformed_registry_entries_are_refused(tmp_path, text, match):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(Exception, match=match):
        registry.entries(path)


def test_unknown_names_and_misplaced_options(tmp_path):
    with pytest.raises(BundleError, match="published model name"):
        xkmcast.load_model("no-such-model")
    with pytest.raises(BundleError, match="only apply to published names"):
        xkmcast.load_model(tmp_path, trust_host_hashes=True)
    with pytest.raises(CatalogError, match="does not have"):
        registry.fetch_package("stormcast-v1", known_hashes={"other.bin": "0" * 64}, cache_dir=tmp_path)
    with pytest.raises(BundleError, match="neither an xkmcast bundle nor a published package"):
        xkmcast.load_model(tmp_path)


def test_load_model_with_mdlus_and_spec_works_as_documented(tmp_path):
    """The documented call ``xkmcast.load_model(mdlus=..., spec=...)`` (it raised TypeError before)."""
    from _tiny import FINE_SHAPE, INPUT_VARS, OUTPUT_VARS, export_mdlus_pair, tiny_corrdiff

    pipe = tiny_corrdiff()
    paths, spec = export_mdlus_pair(pipe, tmp_path)
    model = xkmcast.load_model(mdlus=paths, spec=spec)
    x = torch.randn(1, len(INPUT_VARS), *FINE_SHAPE, generator=torch.Generator().manual_seed(0))
    assert model.sample(x, seeds=[[1]])[0].shape == (1, 1, len(OUTPUT_VARS), *FINE_SHAPE)
    with pytest.raises(BundleError, match="either"):
        xkmcast.load_model(tmp_path, mdlus={"regression": tmp_path / "regression.mdlus"}, spec=spec)


@pytest.mark.slow
def test_a_loaded_package_saves_as_a_bundle_and_reloads_exactly(tmp_path):
    """Fine-tuning starts from a bundle: the Taiwan adapter (grid channels, legacy condition scaling) survives."""
    from _packages import build_taiwan

    from xkmcast.models.bundle import save_bundle

    root = build_taiwan(tmp_path / "tw", n=18)
    model = xkmcast.load_model(root)
    save_bundle(model, tmp_path / "bundle")
    again = xkmcast.load_model(tmp_path / "bundle")
    assert again.spec.networks["regression"]["append_grid"] == {"kind": "sinusoidal", "shape": [16, 16]}
    assert again.spec.networks["diffusion"]["precond"]["scale_cond_input"] is True
    x = torch.randn(1, 12, 16, 16, generator=torch.Generator().manual_seed(0))
    a, ma = model.sample(x, seeds=[[5]], num_steps=3)
    b, mb = again.sample(x, seeds=[[5]], num_steps=3)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(ma.numpy(), mb.numpy())
