"""ds.kmcast.downscale: shapes, CF result, laziness, reproducibility, streaming, bad input."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

import xkmcast  # noqa: F401
from _tiny import FINE_SHAPE, OUTPUT_VARS, coarse_dataset, tiny_corrdiff
from xkmcast.errors import DomainCoverageError, InvalidDataError, MissingVariableError
from xkmcast.diffusion.seeds import row_seed
from xkmcast.models.bundle import save_bundle


@pytest.fixture(scope="module")
def pipe():
    return tiny_corrdiff()


class CountingScheduler:
    """A dask callback that counts executed tasks (to prove nothing ran while building the graph)."""

    def __init__(self):
        self.count = 0

    def __enter__(self):
        from dask.callbacks import Callback

        outer = self

        class _CB(Callback):
            def _posttask(self, key, result, dsk, state, id):
                outer.count += 1

        self._cb = _CB()
        self._cb.__enter__()
        return self

    def __exit__(self, *exc):
        self._cb.__exit__(*exc)


def test_result_is_cf_annotated_on_the_model_grid(pipe):
    out = coarse_dataset(2).kmcast.downscale(pipe, members=3, include_mean=True)
    assert dict(out.sizes) == {"member": 3, "time": 2, "y": FINE_SHAPE[0], "x": FINE_SHAPE[1]}
    assert set(out.data_vars) == {"t2m", "u10m", "t2m_regression", "u10m_regression"}
    assert out.t2m.attrs["standard_name"] == "air_temperature" and out.t2m.attrs["units"] == "K"
    assert out.t2m.attrs["grid_mapping"] == "crs"
    assert out.crs.attrs["grid_mapping_name"] == "lambert_conformal_conic"
    g = out.kmcast.grid  # the result is a grid xkmcast (and cf_xarray) can read back
    np.testing.assert_allclose(g.lat, pipe.grid_lat.numpy())
    assert out.cf["latitude"].shape == FINE_SHAPE
    # denormalised: t2m around the 288 K mean of the statistics, not around 0
    assert 250 < float(out.t2m.mean()) < 330
    assert out.t2m.dtype == np.float32 and np.isfinite(out.t2m).all()


def test_dask_input_stays_lazy_until_computed(pipe):
    ds = coarse_dataset(3).chunk({"time": 1})
    with CountingScheduler() as counter:
        out = ds.kmcast.downscale(pipe, members=2)
    assert counter.count == 0
    assert out.t2m.chunks is not None and out.t2m.data.numblocks[1] == 3
    with CountingScheduler() as counter:
        computed = out.compute()
    assert counter.count > 0 and np.isfinite(computed.t2m).all()


def test_members_do_not_depend_on_batch_size_or_chunking(pipe):
    ds = coarse_dataset(4)
    a = ds.chunk({"time": 1}).kmcast.downscale(pipe, members=3, batch_size=1).compute()
    b = ds.chunk({"time": 4}).kmcast.downscale(pipe, members=3, time_chunk=4).compute()
    xr.testing.assert_allclose(a, b, atol=1e-4)
    # a subset of times gives the same samples for those times
    c = ds.isel(time=[2]).kmcast.downscale(pipe, members=3)
    xr.testing.assert_allclose(a.isel(time=[2]), c, atol=1e-4)
    # another seed gives other members
    d = ds.kmcast.downscale(pipe, members=3, seed=1)
    assert float(abs(d.t2m - a.t2m).max()) > 1e-3


def test_row_seed_is_a_function_of_member_and_time_only():
    t = np.datetime64("2024-05-01T03", "ns")
    assert row_seed(0, 2, t) == row_seed(0, 2, np.datetime64("2024-05-01T03:00"))
    assert len({row_seed(0, k, t) for k in range(100)}) == 100
    assert row_seed(0, 0, t) != row_seed(0, 0, t + np.timedelta64(1, "h"))


def test_stream_to_zarr_and_reopen(pipe, tmp_path):
    out = coarse_dataset(3).chunk({"time": 1}).kmcast.downscale(pipe, members=2)
    out.to_zarr(tmp_path / "fine.zarr", consolidated=False)
    back = xr.open_zarr(tmp_path / "fine.zarr", consolidated=False)
    xr.testing.assert_allclose(back.t2m.compute(), out.t2m.compute())
    assert back.t2m.attrs["units"] == "K" and back.kmcast.grid.shape == FINE_SHAPE


def test_model_from_a_bundle_path(pipe, tmp_path):
    path = save_bundle(pipe, tmp_path / "bundle")
    ds = coarse_dataset(2)
    xr.testing.assert_allclose(ds.kmcast.downscale(str(path), members=2), ds.kmcast.downscale(pipe, members=2))


def test_aliases_and_units_are_resolved(pipe):
    """Inputs found by CF standard name, in other units, give the same result as canonical ones."""
    ds = coarse_dataset(2)
    renamed = ds.rename({"2t": "air", "msl": "pmsl"})
    renamed["air"] = renamed["air"] - 273.15
    renamed["air"].attrs = {"units": "degC", "standard_name": "air_temperature"}
    renamed["pmsl"].attrs = {"units": "hPa", "standard_name": "air_pressure_at_mean_sea_level"}
    xr.testing.assert_allclose(renamed.kmcast.downscale(pipe, members=1), ds.kmcast.downscale(pipe, members=1),
                               atol=1e-3)


def test_missing_variables_named(pipe):
    with pytest.raises(MissingVariableError) as err:
        coarse_dataset(1).drop_vars("msl").kmcast.downscale(pipe)
    assert "msl" in str(err.value) and "2t" in str(err.value)


def test_input_that_does_not_cover_the_grid(pipe):
    small = coarse_dataset(1).sel(longitude=slice(119.0, 120.5))
    with pytest.raises(DomainCoverageError):
        small.kmcast.downscale(pipe)


def test_nan_input_is_refused_before_anything_is_written(pipe, tmp_path):
    ds = coarse_dataset(2)
    ds["2t"][1, :, :] = np.nan
    with pytest.raises(InvalidDataError, match="2024-05-01T01"):
        ds.kmcast.downscale(pipe)
    from xkmcast.fields.io import write_dataset

    out = tmp_path / "out.zarr"
    with pytest.raises(InvalidDataError, match="2024-05-01T01"):  # lazy: raised while writing at the latest
        write_dataset(ds.chunk({"time": 1}).kmcast.downscale(pipe), out)
    assert list(tmp_path.iterdir()) == []  # no output and no temporary store left behind


@pytest.mark.slow
def test_local_cluster_gives_the_single_process_result(pipe, tmp_path):
    """Two worker processes, each loading the bundle once, give exactly the threaded result."""
    distributed = pytest.importorskip("distributed")
    path = save_bundle(pipe, tmp_path / "bundle")
    ds = coarse_dataset(4).chunk({"time": 1})
    expected = ds.kmcast.downscale(str(path), members=2).compute(scheduler="threads")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        result = ds.kmcast.downscale(str(path), members=2).compute()
        assert len(client.scheduler_info()["workers"]) == 2
    xr.testing.assert_allclose(result, expected, atol=1e-6)


def test_scheduler_independence_threads_vs_sync(pipe):
    ds = coarse_dataset(2).chunk({"time": 1})
    out = ds.kmcast.downscale(pipe, members=2)
    with dask.config.set(scheduler="sync"):
        a = out.compute()
    b = out.compute(scheduler="threads")
    xr.testing.assert_allclose(a, b, atol=1e-6)


def test_bf16_autocast_stays_close_to_fp32(pipe):
    """amp-bf16 (CPU autocast here, CUDA on GPUs) gives the fp32 result within bfloat16 precision."""
    ds = coarse_dataset(1)
    a = ds.kmcast.downscale(pipe, members=1, num_steps=3)
    b = ds.kmcast.downscale(pipe, members=1, num_steps=3, precision="amp-bf16")
    assert np.isfinite(b.t2m).all()
    scale = float(abs(a.t2m - a.t2m.mean()).max())
    assert float(abs(a.t2m - b.t2m).max()) < 0.1 * scale
    with pytest.raises(Exception, match="precision"):
        ds.kmcast.downscale(pipe, members=1, precision="fp8")
