"""A model on a rotated pole grid (CF ``rotated_latitude_longitude``, EURO-CORDEX's EUR-11: dims rlat / rlon
in rotated degrees), end to end without training: the grid's spacing in metres, and a result that keeps
the grid's dims, rotated coordinates and grid mapping, so it scores against the user's own truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from _nets import randomise
from _tiny import INPUT_VARS, OUTPUT_VARS, stats_for

from xkmcast.fields.grid import EARTH_RADIUS_M, find_grid
from xkmcast.models import build_pipeline, corrdiff_spec

POLE = {"grid_mapping_name": "rotated_latitude_longitude", "grid_north_pole_latitude": 39.25,
        "grid_north_pole_longitude": -162.0}
TIMES = pd.date_range("2006-01-16", periods=2, freq="D")


def rotated(step: float, ny: int, nx: int, names=OUTPUT_VARS, seed=0) -> xr.Dataset:
    """Fields on a EUR-11-like rotated grid of ``step`` degrees, from rotated (-3, -6), central Europe."""
    rng = np.random.default_rng(seed)
    rlat, rlon = -3.0 + step * np.arange(ny), -6.0 + step * np.arange(nx)
    mean = {"t2m": 275.0, "u10m": 2.0, "msl": 101500.0}
    units = {"t2m": "K", "u10m": "m s-1", "msl": "Pa"}
    data = {v: (("time", "rlat", "rlon"), mean[v] + rng.normal(size=(2, ny, nx)),
                {"units": units[v], "grid_mapping": "rotated_pole"}) for v in names}
    ds = xr.Dataset(data, coords={
        "time": TIMES,
        "rlat": ("rlat", rlat, {"standard_name": "grid_latitude", "units": "degrees", "axis": "Y"}),
        "rlon": ("rlon", rlon, {"standard_name": "grid_longitude", "units": "degrees", "axis": "X"})})
    ds["rotated_pole"] = xr.DataArray(np.array(b"", dtype="S1"), attrs=POLE)  # as CDO writes it
    return ds


def test_the_spacing_of_a_rotated_grid_is_in_metres():
    """0.11 rotated degrees are 12.2 km along the rotated meridians (not 0.11 m)."""
    dy, dx = find_grid(rotated(0.11, 8, 10)).spacing_m()
    np.testing.assert_allclose(dy, EARTH_RADIUS_M * np.deg2rad(0.11), rtol=1e-3)
    assert 0.98 * dy < dx < 1.001 * dy  # the rotated equator runs through the domain: dx close to dy


def test_a_result_on_a_rotated_grid_keeps_its_dims_coordinates_and_grid_mapping():
    fine = rotated(0.11, 16, 20)
    coarse = rotated(0.44, 6, 7, names=INPUT_VARS, seed=1)  # covers the fine grid
    coarse = coarse.assign_coords(rlat=coarse.rlat - 0.165, rlon=coarse.rlon - 0.165)
    spec = corrdiff_spec(INPUT_VARS, OUTPUT_VARS, (16, 20), size="tiny", sampler={"num_steps": 2})
    spec.stats = {"input": stats_for(INPUT_VARS), "output": stats_for(OUTPUT_VARS), "invariant": {}}
    pipe = randomise(build_pipeline(spec))
    g = find_grid(fine)
    pipe.set_grid(g.lat, g.lon, **g.model_info())
    out = coarse.kmcast.downscale(pipe.eval(), members=2)
    assert out["t2m"].dims == ("member", "time", "rlat", "rlon")
    np.testing.assert_array_equal(out.rlat.values, fine.rlat.values)
    np.testing.assert_array_equal(out.rlon.values, fine.rlon.values)
    assert out.rlon.attrs["standard_name"] == "grid_longitude" and out.rlon.attrs["units"] == "degrees"
    assert out.crs.attrs["grid_mapping_name"] == "rotated_latitude_longitude"
    back = find_grid(out)
    np.testing.assert_allclose(back.lat, g.lat, atol=1e-9)
    np.testing.assert_allclose(back.lon, g.lon, atol=1e-9)
    # scored against the user's truth as it is (its own dims and coordinates)
    table = out[["t2m"]].kmcast.score(fine[["t2m"]])
    assert np.isfinite(table["mae"].values).all()


def test_a_training_store_of_a_rotated_grid_holds_its_grid_mapping_as_zarr_can_type_it(tmp_path):
    """CDO's |S1 grid mapping variable is stored as an int32 container with its attributes (zarr v3 has
    no type for |S1: an UnstableSpecificationWarning at every write), and the store's grid is the source's."""
    import warnings

    from xkmcast.data.prepare import open_store, prepare

    fine = rotated(0.11, 16, 20)
    coarse = rotated(0.44, 6, 7, names=INPUT_VARS, seed=1)
    coarse = coarse.assign_coords(rlat=coarse.rlat - 0.165, rlon=coarse.rlon - 0.165)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = open_store(prepare(fine, coarse, tmp_path / "s.zarr", input_vars=INPUT_VARS, output_vars=OUTPUT_VARS))
    assert not [w for w in caught if "Unstable" in w.category.__name__], [str(w.message) for w in caught]
    assert store["rotated_pole"].dtype == np.int32 and store["rotated_pole"].attrs["grid_mapping_name"] == POLE[
        "grid_mapping_name"]
    np.testing.assert_allclose(find_grid(store).lat, find_grid(fine).lat, atol=1e-9)
