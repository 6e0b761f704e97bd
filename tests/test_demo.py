"""The demo end to end, shortened (few training steps, 2 members): every output is written, and what
the demo claims is what an independent computation from its outputs finds.

The full demo (``make demo``) trains long enough for its three claims to hold (ensemble-mean MAE
below bilinear interpolation and below the linear statistical baseline, CRPS below the
regression-mean MAE); this shortened run cannot make them true, so the test checks that the demo
states them correctly: its MAE of the ensemble mean, of bilinear interpolation and of the linear
baseline are recomputed with numpy / scipy from ``downscaled.zarr`` and the shipped sample (the
baseline: numpy least squares on the scipy-interpolated inputs and the invariants over the training
hours), and the printed verdicts must follow from those numbers.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

import xkmcast
from xkmcast.demo import DEMO_TIMES, run_demo
from xkmcast.train import load_config


def _bilinear(coarse: xr.DataArray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Bilinear interpolation in (latitude, longitude) degrees with scipy, independent of xkmcast.fields.regrid."""
    c = coarse.sortby("latitude")
    f = RegularGridInterpolator((c.latitude.values, c.longitude.values), c.values, method="linear")
    return f(np.stack([lat2.ravel(), lon2.ravel()], axis=-1)).reshape(lat2.shape)


def _linear_mae(fine: xr.Dataset, coarse: xr.Dataset, var: str, train: slice) -> float:
    """MAE on the held-out hours of ``var = a + b . (interpolated inputs, orog, lsm)`` fitted with
    numpy least squares on the training hours: the linear statistical baseline, independently."""
    data = load_config("corrdiff-demo-regression").data
    lat, lon = fine.lat.values, fine.lon.values

    def design(times) -> np.ndarray:
        cols = [np.stack([_bilinear(coarse[k].sel(time=t), lat, lon) for t in times]) for k in data.input_vars]
        cols += [np.broadcast_to(fine[k].values, cols[0].shape) for k in data.invariants]
        return np.stack([c.ravel() for c in cols], axis=1).astype(np.float64)

    a_train, a_test = design(fine.time.sel(time=train).values), design(fine.time.sel(time=DEMO_TIMES).values)
    mean, std = a_train.mean(0), a_train.std(0)  # scaled columns: a well-conditioned solve, same fit
    a_train, a_test = [np.column_stack([np.ones(len(a)), (a - mean) / std]) for a in (a_train, a_test)]
    coef = np.linalg.lstsq(a_train, fine[var].sel(time=train).values.ravel().astype(np.float64), rcond=None)[0]
    return float(np.abs(a_test @ coef - fine[var].sel(time=DEMO_TIMES).values.ravel()).mean())


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
    assert {"crps", "mae", "baseline_mae", "regression_mae", "linear_mae"} <= set(scores.data_vars)
    fine = xr.open_zarr(out / "downscaled.zarr", consolidated=False).load()
    assert fine.sizes["member"] == 2 and fine.sizes["time"] == 8

    truth = xkmcast.open_dataset("sample", part="target").sel(time=DEMO_TIMES).load()
    coarse = xkmcast.open_dataset("sample", part="input").sel(time=DEMO_TIMES).load()
    assert set(result.ensemble_beats_bilinear) == set(result.ensemble_beats_linear) == {"t2m", "u10m", "v10m"}
    window = load_config("corrdiff-demo-regression").data.train_times
    train = slice(window.start, window.end)
    assert np.datetime64(window.end) < np.datetime64(DEMO_TIMES.start)  # fitted on no held-out hour
    whole_fine = xkmcast.open_dataset("sample", part="target").load()
    whole_coarse = xkmcast.open_dataset("sample", part="input").load()
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

        lin_mae = _linear_mae(whole_fine, whole_coarse, v, train)
        assert float(scores["linear_mae"].sel(variable=v)) == pytest.approx(lin_mae, rel=2e-3)
        assert result.ensemble_beats_linear[v] == (ens_mae < lin_mae)
        line = re.search(rf"{v}\s+ensemble-mean MAE [\d.]+ vs bilinear [\d.]+: (?:better|NOT better);\s+"
                         r"vs linear baseline ([\d.]+): (better|NOT better)", printed)
        assert line, printed[-2000:]
        assert float(line.group(1)) == pytest.approx(lin_mae, abs=2e-3)
        assert (line.group(2) == "better") == (ens_mae < lin_mae)
    assert result.ok == all([*result.ensemble_beats_bilinear.values(), *result.ensemble_beats_linear.values(),
                             *result.crps_below_regression_mae.values()])
