"""Issue 14, faults: nonsense inputs accepted, leftovers of killed runs, exit codes, a run directory
that ignored its changed data source. Each test does what used to pass silently (or crash with a raw
Python error), then checks the xkmcast error and that nothing was written or lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

import xkmcast  # noqa: F401
from _tiny import FINE_SHAPE, attach_grid, coarse_dataset, fine_grid, stats_for, tiny_corrdiff
from test_train_faults import _launch, _wait_for_checkpoint
from test_train_trainer import prepared_store, tiny_config
from xkmcast.atomic import temporary_name
from xkmcast.cli import app
from xkmcast.errors import (ConfigError, CoordinateError, GridError, InvalidDataError, MissingVariableError,
                            TimeCoverageError)
from xkmcast.fields.downscale import downscale
from xkmcast.fields.io import write_dataset
from xkmcast.models import build_pipeline, corrdiff_spec
from xkmcast.models.bundle import save_bundle
from xkmcast.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from xkmcast.train.config import load_config, save_config
from xkmcast.train.setup import build_run
from xkmcast.train.trainer import train

runner = CliRunner()


@pytest.fixture(scope="module")
def pipe():
    return tiny_corrdiff()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    save_bundle(tiny_corrdiff(), root / "corrdiff")
    coarse_dataset(3).to_netcdf(root / "coarse.nc")
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    torch.set_num_threads(1)
    return prepared_store(tmp_path_factory)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------ 5. times
def test_duplicate_times_are_refused(pipe):
    ds = coarse_dataset(2)
    dup = xr.concat([ds, ds.isel(time=[0]) + 1.0], "time")  # two different rows at one time
    with pytest.raises(CoordinateError, match="same time more than once"):
        downscale(dup, pipe)  # before: both rows got identical noise


def test_empty_time_selection_writes_nothing(files, tmp_path):
    out = tmp_path / "fine.zarr"
    result = runner.invoke(app, ["downscale", str(files / "corrdiff"), str(files / "coarse.nc"), str(out),
                                 "--times", "2030-01-01:2030-01-02", "--quiet"])
    assert result.exit_code == 2 and result.output.startswith("error: The input holds no time"), result.output
    assert not out.exists() and _hidden(tmp_path) == []  # before: an empty store, exit 0


def test_times_outside_the_data_are_one_error_line(files, tmp_path):
    out = tmp_path / "fine.zarr"
    result = runner.invoke(app, ["downscale", str(files / "corrdiff"), str(files / "coarse.nc"), str(out),
                                 "--times", "2030-01-01T00", "--quiet"])
    assert result.exit_code == 2 and "error: --times 2030-01-01T00 are not all times" in result.output
    assert "Traceback" not in result.output and not out.exists()


# ---------------------------------------------------------------------------- 5. counts
@pytest.mark.parametrize("option", [["--members", "0"], ["--members", "-1"], ["--time-chunk", "0"], ["--steps", "0"]])
def test_counts_below_one_are_refused_by_the_cli(files, tmp_path, option):
    out = tmp_path / "fine.zarr"
    result = runner.invoke(app, ["downscale", str(files / "corrdiff"), str(files / "coarse.nc"), str(out), *option])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {option[0][2:].replace('-', '_')} must be a whole number of at least 1")
    assert not out.exists()


def test_counts_below_one_are_refused_by_the_library(pipe):
    for kwargs in ({"members": -1}, {"members": 0}, {"time_chunk": 0}, {"num_steps": 0}, {"batch_size": 0}):
        with pytest.raises(ConfigError, match="at least 1"):  # before: ValueError / ZeroDivisionError
            downscale(coarse_dataset(1), pipe, **kwargs)
    with pytest.raises(ConfigError, match="steps must be"):
        from _tiny import state_dataset, tiny_stormcast

        state_dataset(1).kmcast.forecast(tiny_stormcast(), steps=0, background=coarse_dataset(2))


# ------------------------------------------------------------------------- 5. DataArray
def _t2m_only_pipeline():
    torch.manual_seed(0)
    spec = corrdiff_spec(["t2m"], ["t2m"], FINE_SHAPE, size="tiny", sampler={"num_steps": 2})
    spec.stats = {"input": stats_for(["t2m"]), "output": stats_for(["t2m"]), "invariant": stats_for([])}
    p = build_pipeline(spec)
    attach_grid(p, fine_grid())
    return p.eval()


def test_a_named_dataarray_is_downscaled_like_its_dataset():
    model = _t2m_only_pipeline()
    da = coarse_dataset(1)["2t"]
    out = downscale(da, model, members=2)  # before: AttributeError
    ref = downscale(da.to_dataset(), model, members=2)
    np.testing.assert_array_equal(out.t2m.values, ref.t2m.values)
    assert out.t2m.shape == (2, 1, *FINE_SHAPE)


def test_an_unnamed_dataarray_is_explained(pipe):
    with pytest.raises(InvalidDataError, match="unnamed DataArray"):
        downscale(coarse_dataset(1)["2t"].rename(None), pipe)
    with pytest.raises(MissingVariableError):  # a named one lacking the other inputs: the usual message
        downscale(coarse_dataset(1)["2t"], pipe)


def test_an_ensemble_dim_of_the_input_is_named_not_a_transpose_error(pipe):
    """An ERA5 ensemble as cfgrib opens it, (number, time, lat, lon): before, a raw ValueError of
    transpose deep in the bridge; now the dim, a selection and the loop over it. Selecting one downscales."""
    ds = xr.concat([coarse_dataset(1)] * 3, dim="number").assign_coords(number=[0, 1, 2])
    with pytest.raises(InvalidDataError, match=r"(?s)'t2m' has dims \['number'\] besides time and the grid.*"
                                               r"ds.isel\(number=0\).*for each number"):
        downscale(ds, pipe)
    assert downscale(ds.isel(number=0), pipe, members=2).t2m.shape == (2, 1, *FINE_SHAPE)


# ---------------------------------------------------------------------- 5. plausibility
def test_degc_labelled_kelvin_is_refused_and_can_be_allowed(pipe):
    ds = coarse_dataset(1)
    ds["2t"] = ds["2t"] - 273.15  # degC values, attrs still say K
    with pytest.raises(InvalidDataError, match=r"t2m has physically implausible values for K"):
        downscale(ds, pipe)  # before: a 35 K field
    out = downscale(ds, pipe, check_ranges=False)
    assert np.isfinite(out.t2m.values).all()  # the user's choice, honoured


def test_hpa_labelled_pa_is_refused_lazily_and_writes_nothing(pipe, tmp_path):
    ds = coarse_dataset(2)
    ds["msl"].attrs["units"] = "Pa"  # the values are hPa
    result = downscale(ds.chunk({"time": 1}), pipe)  # lazy: the check runs with the computation
    out = tmp_path / "fine.zarr"
    with pytest.raises(InvalidDataError, match=r"msl has physically implausible values for Pa"):
        write_dataset(result, out)
    assert not out.exists() and _hidden(tmp_path) == []


def test_ranges_live_in_the_one_variables_table():
    from xkmcast.fields.variables import variable_info

    assert variable_info("t2m").valid_range == (170.0, 340.0)
    assert variable_info("t850").valid_range == (150.0, 350.0)  # pressure levels take their base's range
    assert variable_info("msl").valid_range[0] > 1100.0  # above any hPa value


# ----------------------------------------------------------------------------- 5. NaN = inf
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_one_nan_or_inf_cell_is_the_same_error(pipe, bad):
    ds = coarse_dataset(2)
    ds["2t"][1, 0, 0] = bad  # a corner cell: before, a NaN was silently filled by the regridding
    with pytest.raises(InvalidDataError, match=r"t2m holds 1 non-finite values at times \['2024-05-01T01"):
        downscale(ds, pipe)


# ---------------------------------------------------------------- 5. configured network sizes
def test_network_size_conflicting_with_the_data_is_refused(store, tmp_path):
    cfg = tiny_config(store, tmp_path, "model.network.img_in_channels=5")
    with pytest.raises(ConfigError, match=r"model\.network\.img_in_channels=5 conflicts with the data"):
        build_run(cfg)  # before: silently replaced by the data's 10 channels
    build_run(tiny_config(store, tmp_path, "model.network.model_channels=8"))  # a free size is accepted


@pytest.mark.slow
def test_diffusion_on_a_regression_bundle_of_another_grid_is_a_grid_error(store, tmp_path_factory, tmp_path):
    from xkmcast.data.prepare import prepare
    from xkmcast.data.synthetic import synthetic_pair

    from test_train_trainer import STORE_VARS

    reg = train(tiny_config(store, tmp_path, "training.duration=2"), quiet=True)
    small = tmp_path / "small.zarr"
    coarse, fine = synthetic_pair(nx=12, ny=12, factor=4, times=10, seed=2)
    prepare(fine, coarse, small, regrid_method="nearest", **STORE_VARS)
    cfg = tiny_config(small, tmp_path, "model.stage=diffusion", f"model.regression_bundle={reg.bundle}",
                      "training.experiment=diff")
    with pytest.raises(GridError, match="regression bundle and the diffusion run's data are on different grids"):
        train(cfg, quiet=True)  # before: a raw torch shape error
    assert not (tmp_path / "diff").exists() or not list((tmp_path / "diff").rglob("ckpt-*"))


# -------------------------------------------------------------------------- 7. CLI errors
def test_every_command_reports_errors_in_one_line(files, tmp_path):
    bad = tmp_path / "bad.nc"
    ds = coarse_dataset(2)
    ds["2t"][0, 3, 3] = np.nan
    ds.to_netcdf(bad)
    calls = [
        ["downscale", str(files / "corrdiff"), str(bad), str(tmp_path / "a.zarr"), "--quiet"],
        ["forecast", str(files / "corrdiff"), str(files / "coarse.nc"), str(tmp_path / "b.zarr"), "--quiet"],
        ["score", str(tmp_path / "missing.zarr"), str(files / "coarse.nc")],
        ["downscale", str(files / "nope"), str(files / "coarse.nc"), str(tmp_path / "c.zarr")],
    ]
    for args in calls:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert result.output.startswith("error: ") and "Traceback" not in result.output, result.output
    debug = runner.invoke(app, ["--debug", *calls[0]])
    assert debug.exit_code == 2 and "Traceback" in debug.output and "error: " in debug.output
    assert not [p for p in tmp_path.iterdir() if p.name not in ("bad.nc",)]  # nothing written


def test_existing_output_without_overwrite_is_one_line(files, tmp_path):
    out = tmp_path / "fine.nc"
    out.write_text("keep me")
    result = runner.invoke(app, ["downscale", str(files / "corrdiff"), str(files / "coarse.nc"), str(out), "--quiet"])
    assert result.exit_code == 2 and result.output.startswith(f"error: {out} exists")
    assert out.read_text() == "keep me"


# ---------------------------------------------------------------- 7. leftovers of kill -9
def test_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    out = tmp_path / "out.nc"
    dead, live = _dead_pid(), os.getppid()
    stale_dir = tmp_path / f".tmp-out.nc-{dead}-0badc0de"  # a killed writer's half store
    stale_dir.mkdir()
    (stale_dir / "chunk").write_bytes(b"x" * 100)
    alive = tmp_path / f".tmp-out.nc-{live}-0123abcd"  # a writer still running
    alive.write_text("in progress")
    other = tmp_path / f".tmp-other.nc-{dead}-89abcdef"  # another target: not this run's business
    other.write_text("x")
    write_dataset(coarse_dataset(1), out)
    assert _hidden(tmp_path) == sorted([alive.name, other.name])
    assert xr.open_dataset(out).sizes["time"] == 1


def test_old_copy_of_a_writer_killed_between_its_renames_is_restored(tmp_path):
    out = tmp_path / "model"
    old = temporary_name(out, "old").with_name(f".old-model-{_dead_pid()}-00000000")
    old.mkdir()
    (old / "config.json").write_text("{}")  # the target was moved aside, the new one never renamed in
    from xkmcast.atomic import remove_stale

    remove_stale(tmp_path, "model")
    assert (out / "config.json").read_text() == "{}" and _hidden(tmp_path) == []


def test_checkpoint_temporaries_of_a_killed_run_are_removed_by_the_next_save(tmp_path):
    stale = tmp_path / f".tmp-ckpt-000000004.pt-{_dead_pid()}-deadbeef"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path, {"model": {"w": torch.ones(2)}, "step": 6}, 6)
    assert _hidden(tmp_path) == [] and load_checkpoint(latest_checkpoint(tmp_path))["step"] == 6


# -------------------------------------------------------------------------- 7. signals
@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_training_stopped_by_a_signal_exits_128_plus_signal_after_its_checkpoint(store, tmp_path, sig, code):
    cfg = tiny_config(store, tmp_path / "runs", "training.duration=100000", "training.checkpoint_every=2",
                      "training.validate_every=1000000", "training.experiment=sig")
    config = save_config(cfg, tmp_path / "sig.yaml")
    folder = tmp_path / "runs" / "sig" / "0" / "checkpoints"
    proc = _launch(config)
    _wait_for_checkpoint(proc, folder, beyond=0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err  # before: 0, a script could not tell
    assert f"stopped by {sig.name}" in err
    import json

    stopped = json.loads((folder.parent / "ranks" / "rank0.json").read_text())["step"]
    assert load_checkpoint(latest_checkpoint(folder))["step"] == stopped


# ------------------------------------------------------------------- 2. run dir and its store
def _synthetic_config(outdir: Path, *extra: str):
    from test_train_trainer import STORE_VARS

    return load_config("corrdiff-tiny-regression", [
        "data.source=synthetic", "data.params={nx: 16, ny: 16, factor: 4, times: 12, seed: 1}",
        f"data.input_vars={STORE_VARS['input_vars']}", f"data.output_vars={STORE_VARS['output_vars']}",
        f"data.invariants={STORE_VARS['invariants']}", "data.regrid_method=nearest", "data.valid_fraction=0.2",
        f"training.outdir={outdir}", "training.batch_size=4", "training.duration=2", "training.validate_every=10",
        "training.valid_batches=1", "training.checkpoint_every=10", "training.tensorboard=false",
        "training.device=cpu", *extra,
    ])


def test_run_directory_refuses_a_changed_data_source(tmp_path):
    first = train(_synthetic_config(tmp_path), quiet=True)
    store = first.run_dir / "data" / "train.zarr"
    recorded = (first.run_dir / "config.yaml").read_text()
    before = xr.open_zarr(store, consolidated=False).target_t2m.values.copy()
    for change in ("data.source=/does/not/exist.zarr", "data.params={nx: 16, ny: 16, factor: 4, times: 12, seed: 2}",
                   "data.regrid_method=bilinear"):
        with pytest.raises(ConfigError, match=r"prepared store .* was built from other data"):
            train(_synthetic_config(tmp_path, change, "training.duration=4"), quiet=True)
    assert (first.run_dir / "config.yaml").read_text() == recorded  # the bogus source is not recorded
    np.testing.assert_array_equal(xr.open_zarr(store, consolidated=False).target_t2m.values, before)
    again = train(_synthetic_config(tmp_path, "training.duration=4"), quiet=True)  # same data: resumes
    assert again.step == 4


def test_run_directory_rebuilds_its_store_once_deleted(tmp_path):
    import shutil

    first = train(_synthetic_config(tmp_path), quiet=True)
    shutil.rmtree(first.run_dir / "data" / "train.zarr")
    cfg = _synthetic_config(tmp_path, "data.params={nx: 16, ny: 16, factor: 4, times: 12, seed: 2}",
                            "training.run_id=1")
    second = train(cfg, quiet=True)
    assert (second.run_dir / "data" / "train.recipe.json").exists()
