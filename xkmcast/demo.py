"""``xkmcast demo``: the whole CorrDiff path on the sample shipped in the package, on a CPU.

1. open the sample: coarse ERA5-like fields (0.25 deg) and the 3 km truth on a Lambert grid;
2. ``prepare`` a training store (coarse regridded onto the fine grid, statistics);
3. train a tiny CorrDiff: the regression, then the residual diffusion on it
   (presets ``corrdiff-demo-regression`` / ``corrdiff-demo-diffusion``);
4. downscale the 8 held-out hours with an 8-member ensemble;
5. score against the truth, next to bilinear interpolation of the input, the linear statistical
   baseline and the regression mean;
6. write ``demo-output/``: the downscaled zarr, the scores, PNG maps and spectra.

The linear statistical baseline is :func:`xkmcast.fields.baselines.fit_linear`, pooled per variable:
``y_v = a_v + sum_k b_vk x_k + c_v . (orog, lsm)`` with ``x_k`` the regridded inputs of the training
store, fitted by least squares on the training hours only (``data.train_times`` of the preset), never
on the held-out hours.

The demo checks three claims per variable and says so: the ensemble mean beats bilinear
interpolation on MAE, it beats the linear statistical baseline on MAE, and the CRPS of the ensemble
is below the MAE of the regression mean. :func:`run_demo` returns them.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["run_demo", "DemoResult", "DEMO_TIMES"]

#: the held-out hours of the sample (not seen in training or validation)
DEMO_TIMES = slice("2024-07-02T16:00", "2024-07-02T23:00")


@dataclasses.dataclass
class DemoResult:
    outdir: Path
    scores: xr.Dataset
    ensemble_beats_bilinear: dict[str, bool]
    ensemble_beats_linear: dict[str, bool]
    crps_below_regression_mae: dict[str, bool]
    seconds: float

    @property
    def ok(self) -> bool:
        claims = (self.ensemble_beats_bilinear, self.ensemble_beats_linear, self.crps_below_regression_mae)
        return all(all(c.values()) for c in claims)


def _say(quiet: bool, *parts) -> None:
    if not quiet:
        print(*parts, flush=True)


def run_demo(outdir: str | Path = "demo-output", *, members: int = 8, overrides: tuple[str, ...] = (),
             quiet: bool = False) -> DemoResult:
    """Run the demo into ``outdir`` (see the module docstring); returns the scores and the three checks."""
    import xkmcast
    from xkmcast.data.prepare import prepare
    from xkmcast.fields.io import write_dataset
    from xkmcast.fields.scoring import format_table, score
    from xkmcast.train import load_config, train

    t0 = time.perf_counter()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    fine = xkmcast.open_dataset("sample", part="target").load()
    coarse = xkmcast.open_dataset("sample", part="input").load()
    base = load_config("corrdiff-demo-regression")
    outputs = list(base.data.output_vars)

    _say(quiet, f"[1/5] preparing the training store from the sample ({fine.sizes['time']} hours, "
                f"{coarse.sizes['latitude']}x{coarse.sizes['longitude']} coarse -> "
                f"{fine.sizes['y']}x{fine.sizes['x']} at 3 km)")
    store = outdir / "data" / "train.zarr"
    if not store.exists():
        prepare(fine, coarse, store, input_vars=base.data.input_vars, output_vars=outputs,
                invariants=base.data.invariants, regrid_method=base.data.regrid_method)
    common = [f"data.source={store}", f"training.outdir={outdir / 'runs'}", *overrides]

    _say(quiet, "[2/5] training the regression (tiny SongUNet)")
    reg = train(load_config("corrdiff-demo-regression", common), quiet=quiet)
    _say(quiet, f"      {reg.step} steps, validation loss {_first_last(reg.valid_losses)}")
    _say(quiet, "[3/5] training the residual diffusion on it")
    dif = train(load_config("corrdiff-demo-diffusion", [*common, f"model.regression_bundle={reg.bundle}"]),
                quiet=quiet)
    _say(quiet, f"      {dif.step} steps, validation loss {_first_last(dif.valid_losses)}")

    _say(quiet, f"[4/5] downscaling the {len(coarse.sel(time=DEMO_TIMES).time)} held-out hours, {members} members")
    model = xkmcast.load_model(dif.bundle)
    test_in = coarse.sel(time=DEMO_TIMES).chunk({"time": 1})
    result = test_in.kmcast.downscale(model, members=members, include_mean=True, seed=0)
    write_dataset(result, outdir / "downscaled.zarr", overwrite=True)
    result = xr.open_zarr(outdir / "downscaled.zarr", consolidated=False).load()

    _say(quiet, "[5/5] scoring against the 3 km truth")
    truth = fine[outputs].sel(time=result.time)
    bilinear = coarse[outputs].sel(time=result.time).kmcast.regrid(fine[["lat", "lon"]], method="bilinear")
    bilinear = bilinear.assign_coords(x=truth.x, y=truth.y)
    regression = result[[f"{v}_regression" for v in outputs]].rename({f"{v}_regression": v for v in outputs})
    scores = score(result[outputs], truth, baseline=bilinear)
    reg_scores = score(regression, truth)
    scores["regression_mae"] = reg_scores["mae"]
    scores["regression_mae"].attrs["long_name"] = "MAE of the regression mean"
    linear = _linear_baseline(store, load_config("corrdiff-demo-regression", common).data, result.time.values)
    scores["linear_mae"] = score(linear, truth)["mae"]
    scores["linear_mae"].attrs["long_name"] = "MAE of the linear statistical baseline (fitted on the training hours)"
    write_dataset(scores, outdir / "scores.nc", overwrite=True)
    (outdir / "scores.txt").write_text(_plain_table(scores))
    if not quiet:
        import sys

        if sys.stdout.isatty():
            from rich.console import Console

            Console().print(format_table(scores, title="held-out hours: ensemble vs bilinear, linear baseline "
                                                       "and regression mean"))
        else:  # a log file: the plain table, never truncated to a terminal width
            print(_plain_table(scores), flush=True)
    ens_mae = {v: _ens_mae(result, truth, v) for v in outputs}
    beats = {v: bool(ens_mae[v] < float(scores["baseline_mae"].sel(variable=v))) for v in outputs}
    beats_linear = {v: bool(ens_mae[v] < float(scores["linear_mae"].sel(variable=v))) for v in outputs}
    crps_ok = {v: bool(float(scores["crps"].sel(variable=v)) < float(scores["regression_mae"].sel(variable=v)))
               for v in outputs}
    _plots(result, truth, bilinear, outputs, outdir)
    for v in outputs:
        _say(quiet, f"  {v:5s} ensemble-mean MAE {ens_mae[v]:.3f} vs bilinear "
                    f"{float(scores['baseline_mae'].sel(variable=v)):.3f}: {'better' if beats[v] else 'NOT better'};  "
                    f"vs linear baseline {float(scores['linear_mae'].sel(variable=v)):.3f}: "
                    f"{'better' if beats_linear[v] else 'NOT better'};  "
                    f"CRPS {float(scores['crps'].sel(variable=v)):.3f} vs regression-mean MAE "
                    f"{float(scores['regression_mae'].sel(variable=v)):.3f}: {'below' if crps_ok[v] else 'NOT below'}")
    seconds = time.perf_counter() - t0
    _say(quiet, f"wrote {outdir}/ in {seconds:.0f} s")
    return DemoResult(outdir, scores, beats, beats_linear, crps_ok, seconds)


def _linear_baseline(store: Path, data, times) -> xr.Dataset:
    """The linear statistical baseline (module docstring) at ``times``: fitted on the store's inputs,
    targets and invariants at the training hours ``data.train_times`` only, applied to its inputs."""
    from xkmcast.data.prepare import open_store, store_names
    from xkmcast.fields.baselines import fit_linear

    ds = open_store(store).load()
    inputs, targets, invariants = store_names(data.input_vars, data.output_vars, data.invariants)
    x = ds[inputs].rename(dict(zip(inputs, data.input_vars)))
    y = ds[targets].rename(dict(zip(targets, data.output_vars)))
    from xkmcast.train.config import time_windows
    from xkmcast.train.time_split import window_positions

    windows = time_windows(data.train_times)
    train = x.time.values[window_positions(x.indexes["time"], windows, "train_times")] if windows else x.time.values
    leaked = np.intersect1d(train, np.asarray(times, dtype=x.time.dtype))
    if leaked.size:
        from xkmcast.errors import ConfigError, explain

        raise ConfigError(explain("The training hours overlap the demo's held-out hours",
                                  expected="data.train_times before " + str(DEMO_TIMES.start),
                                  found=f"{leaked.size} held-out hours in data.train_times",
                                  fix="leave data.train_times at the preset's value"))
    fitted = fit_linear(x.sel(time=train), y.sel(time=train), invariants=ds[invariants], pooled=True)
    return fitted.predict(x.sel(time=times))


def _first_last(values) -> str:
    vals = [float(v[1]) for v in values]  # (step, loss) pairs
    return f"{vals[0]:.4f} -> {vals[-1]:.4f}" if vals else "n/a"


def _ens_mae(result: xr.Dataset, truth: xr.Dataset, var: str) -> float:
    from xkmcast.fields.metrics import mae

    return float(mae(result[var].mean("member"), truth[var]))


def _plain_table(scores: xr.Dataset) -> str:
    from xkmcast.fields.scoring import format_text

    return format_text(scores) + "\n"


def _plots(result, truth, bilinear, outputs, outdir: Path) -> None:
    from xkmcast.fields import plot  # figures written to files: own Agg canvases, the user's backend untouched

    shown = result.isel(time=-1)
    for v in outputs:
        plot.members(shown, v, truth=truth.isel(time=-1), baselines={"bilinear": bilinear[v].isel(time=-1)},
                     n=4, ncols=4, path=outdir / f"members_{v}.png")
        plot.spectra(result, v, truth=truth, path=outdir / f"spectra_{v}.png")
    plot.map(truth.isel(time=-1), outputs[0], path=outdir / f"truth_{outputs[0]}.png")
    plot.map(bilinear.isel(time=-1), outputs[0], path=outdir / f"bilinear_{outputs[0]}.png")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(0 if run_demo().ok else 1)
