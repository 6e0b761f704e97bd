"""The demo end to end, shortened (few training steps, 2 members): every output is written.

The full demo (``make demo``) checks its claims itself; here the networks are too briefly trained
for them, so this test checks the path and the files, and that the claims are evaluated.
"""

from __future__ import annotations

import pytest
import xarray as xr

from xkmcast.demo import run_demo


@pytest.mark.slow
def test_demo_writes_everything(tmp_path):
    result = run_demo(tmp_path / "out", members=2, quiet=True,
                      overrides=("training.duration=6", "training.validate_every=3", "training.checkpoint_every=6"))
    out = result.outdir
    for name in ("downscaled.zarr", "scores.nc", "scores.txt", "members_t2m.png", "spectra_t2m.png",
                 "truth_t2m.png", "bilinear_t2m.png"):
        assert (out / name).exists(), name
    scores = xr.open_dataset(out / "scores.nc")
    assert {"crps", "mae", "baseline_mae", "regression_mae"} <= set(scores.data_vars)
    assert set(result.ensemble_beats_bilinear) == {"t2m", "u10m", "v10m"}
    fine = xr.open_zarr(out / "downscaled.zarr", consolidated=False)
    assert fine.sizes["member"] == 2 and fine.sizes["time"] == 8
