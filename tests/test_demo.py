"""The demo end to end, shortened (few training steps, 2 members): every output is written, and what
the demo claims is what an independent computation from its outputs finds.

The full demo (``make demo``) trains long enough for its two claims to hold (ensemble-mean MAE below
bilinear interpolation, CRPS below the regression-mean MAE); this shortened run cannot make them
true, so the test checks that the demo states them correctly: its MAE of the ensemble mean and of
bilinear interpolation are recomputed with numpy / scipy from ``downscaled.zarr`` and the shipped
sample, and the printed verdicts must follow from those numbers.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

import xkmcast
from xkmcast.demo import DEMO_TIMES, run_demo


def _bilinear(coarse: xr.DataArray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Bilinear interpolation in (latitude, longitude) degrees with scipy, independent of xkmcast.fields.regrid."""
    c = coarse.sortby("latitude")
    f = RegularGridInterpolator((c.latitude.values, c.longitude.values), c.values, method="linear")
    return f(np.stack([lat2.ravel(), lon2.ravel()], axis=-1)).reshape(lat2.shape)


@pytest.mark.slow
def test_demo_writes_everything_and_states_its_claims_correctly(tmp_path, capsys):
    result = run_demo(tmp_path / "out", members=2, quiet=False,
                      overrides=("training.duration=6", "training.validate_every=3", "training.checkpoint_every=6"))
    printed = capsys.readouterr().out
    out = result.outdir
    for name in ("downscaled.zarr", "scores.nc", "scores.txt", "members_t2m.png", "spectra_t2m.png",
                 "truth_t2m.png", "bilinear_t2m.png"):
        assert (out / name).exists(), name
    scores = xr.open_dataset(out / "scores.nc")
    assert {"crps", "mae", "baseline_mae", "regression_mae"} <= set(scores.data_vars)
    fine = xr.open_zarr(out / "downscaled.zarr", consolidated=False).load()
    assert fine.sizes["member"] == 2 and fine.sizes["time"] == 8

    truth = xkmcast.open_dataset("sample", part="target").sel(time=DEMO_TIMES).load()
    coarse = xkmcast.open_dataset("sample", part="input").sel(time=DEMO_TIMES).load()
    assert set(result.ensemble_beats_bilinear) == {"t2m", "u10m", "v10m"}
    for v, beats in result.ensemble_beats_bilinear.items():
        ens_mae = float(np.abs(fine[v].mean("member").values - truth[v].values).mean())
        bil = np.stack([_bilinear(coarse[v].isel(time=t), truth.lat.values, truth.lon.values)
                        for t in range(truth.sizes["time"])])
        bil_mae = float(np.abs(bil - truth[v].values).mean())
        assert float(scores["mae"].sel(variable=v)) == pytest.approx(ens_mae, rel=1e-5)
        assert float(scores["baseline_mae"].sel(variable=v)) == pytest.approx(bil_mae, rel=1e-3)
        assert beats == (ens_mae < bil_mae)
        line = re.search(rf"{v}\s+ensemble-mean MAE ([\d.]+) vs bilinear ([\d.]+): (better|NOT better)", printed)
        assert line, printed[-2000:]
        assert float(line.group(1)) == pytest.approx(ens_mae, abs=1e-3)
        assert float(line.group(2)) == pytest.approx(bil_mae, abs=1e-3)
        assert (line.group(3) == "better") == (ens_mae < bil_mae)
