"""``precision: auto``: bfloat16 autocast where the device computes it in hardware, fp32 elsewhere; the
downscaling recipe trains with it, and a run under ``auto`` is the run under the precision it resolves to."""

from __future__ import annotations

import json

import pytest
import torch

from xkmcast.device import autocast, native_bf16, resolve_precision
from xkmcast.errors import ConfigError
from xkmcast.train.config import load_config

CPU = torch.device("cpu")


def _cpu_probes(monkeypatch, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


@pytest.mark.parametrize(("amx", "avx", "found"), [(True, True, "AMX"), (False, True, "AVX-512 BF16"),
                                                   (False, False, None)])
def test_native_bf16_names_the_cpu_hardware_or_none(monkeypatch, amx, avx, found):
    _cpu_probes(monkeypatch, amx, avx)
    assert native_bf16(CPU) == found
    assert resolve_precision(CPU, "auto") == ("amp-bf16" if found else "fp32")


def test_explicit_precisions_pass_through_and_unknown_ones_are_refused(monkeypatch):
    _cpu_probes(monkeypatch, False, False)
    assert resolve_precision(CPU, "amp-bf16") == "amp-bf16"  # asked for: emulated, but as asked
    _cpu_probes(monkeypatch, True, True)
    assert resolve_precision(CPU, "fp32") == "fp32"
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision(CPU, "fp16")


def test_a_gpu_that_only_emulates_bf16_is_not_native(monkeypatch):
    """torch.cuda.is_bf16_supported() counts emulation by default (pre-Ampere GPUs): auto must not."""
    asked = []

    def supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return including_emulation  # an emulating GPU: yes only when emulation counts

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert native_bf16(torch.device("cuda")) is None and asked == [False]
    assert native_bf16(torch.device("meta")) is None  # no probe for other devices: fp32


@pytest.mark.parametrize(("native", "dtype"), [(True, torch.bfloat16), (False, torch.float32)])
def test_autocast_auto_computes_in_the_resolved_dtype(monkeypatch, native, dtype):
    _cpu_probes(monkeypatch, native, False)
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with autocast(CPU, "auto"):
        assert (a @ b).dtype == dtype


def test_the_downscaling_recipe_trains_with_auto_precision_the_stepping_one_in_fp32():
    assert load_config("corrdiff-cpu", ["data.source=synthetic"]).training.precision == "auto"
    assert load_config("stormcast-cpu", ["data.source=synthetic"]).training.precision == "fp32"
    assert load_config("corrdiff-tiny-regression").training.precision == "fp32"  # the tiny presets stay exact


@pytest.mark.slow
@pytest.mark.parametrize("native", [True, False])
def test_a_run_under_auto_is_the_run_under_the_precision_it_resolves_to(monkeypatch, tmp_path, tmp_path_factory,
                                                                        capsys, native):
    """The same 4 steps, bitwise: under ``auto`` with bf16 hardware (faked: CPU autocast runs on any CPU)
    as under ``amp-bf16``, without it as under ``fp32``; the run log says what ``auto`` chose and why.
    The two resolutions differ from each other (so the comparison can fail)."""
    from test_train_trainer import prepared_store, tiny_config

    from xkmcast.train.trainer import train

    torch.set_num_threads(1)
    store = prepared_store(tmp_path_factory)
    _cpu_probes(monkeypatch, native, False)

    def losses(precision: str) -> list[float]:
        run = train(tiny_config(store, tmp_path, f"training.experiment={precision}-{native}", "training.duration=4",
                                f"training.precision={precision}"), quiet=True)
        said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("precision auto")]
        assert said == ([] if precision != "auto" else ["precision auto: amp-bf16 (AMX computes bfloat16)" if native
                                                         else "precision auto: fp32 (no bfloat16 hardware found)"]), said
        rows = [json.loads(line) for line in (run.run_dir / "log.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    auto, resolved, other = losses("auto"), losses("amp-bf16" if native else "fp32"), losses("fp32" if native else "amp-bf16")
    assert len(auto) == 4 and auto == resolved
    assert auto != other


@pytest.mark.parametrize(("native", "resolved"), [(True, "amp-bf16"), (False, "fp32")])
def test_a_written_forecast_records_the_precision_auto_resolved_to(monkeypatch, tmp_path, native, resolved):
    """The zarr output's settings (which a resumed forecast must match) hold what ran, not "auto"."""
    from _tiny import coarse_dataset, state_dataset, tiny_stormcast

    _cpu_probes(monkeypatch, native, False)
    path = tmp_path / "f.zarr"
    state_dataset(1).kmcast.forecast(tiny_stormcast(), steps=1, background=coarse_dataset(2), output=path,
                                     precision="auto")
    import xarray as xr

    assert json.loads(xr.open_zarr(path).attrs["xkmcast_settings"])["precision"] == resolved


@pytest.mark.parametrize(("value", "warns"), [("65536", True), ("0", True), (str(1 << 20), False), ("lots", False),
                                              (None, False)])
def test_allocator_warning_names_a_small_trim_threshold_and_what_to_do(value, warns):
    from xkmcast.device import allocator_warning

    said = allocator_warning({} if value is None else {"MALLOC_TRIM_THRESHOLD_": value})
    assert (said is not None) == warns
    if warns:
        assert f"MALLOC_TRIM_THRESHOLD_={value}" in said and "env -u MALLOC_TRIM_THRESHOLD_" in said


def test_a_cpu_run_started_with_the_threshold_of_a_dask_cluster_says_so(monkeypatch, tmp_path, tmp_path_factory, capsys):
    """What a dask LocalCluster leaves in its parent's environment (distributed's Nanny writes its
    workers' MALLOC_TRIM_THRESHOLD_ into os.environ), read by a run started after it."""
    from test_train_trainer import prepared_store, tiny_config

    from xkmcast.train.trainer import train

    store = prepared_store(tmp_path_factory)
    for value, told in ((None, 0), ("65536", 1)):
        if value is not None:
            monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", value)
        train(tiny_config(store, tmp_path, f"training.experiment=trim-{value}", "training.duration=1"), quiet=True)
        said = [line for line in capsys.readouterr().err.splitlines() if "MALLOC_TRIM_THRESHOLD_" in line]
        assert len(said) == told
