"""What a large grid costs the ``corrdiff-cpu`` recipe on this machine: whole fields against the windows
the recipe trains on (``xkmcast.train.recipe.auto_window``), and the export's spread calibration.

    python bench/bench_large_grid.py [--grid 200x400] [--steps 6] [--threads 2]

On a synthetic fine grid of ``--grid`` (7 coarse inputs at x4, 5 outputs, orography and land-sea
mask; the cost does not depend on the values), each stage of the recipe's settings (tiny U-Net, batch
8, its precision) trains ``--steps`` steps on whole fields and on the window, side by side, the spread
calibration off; prints samples/s and seconds per step (over the training loop, its first step and the
bundle's export included, the setup not), and their ratio. Then the windowed diffusion's export with the calibration on, timed: the
draws on ``xkmcast.train.spread.calibration_samples`` validation samples, shared by its calibrations.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from xkmcast.train.config import load_config
from xkmcast.train.recipe import auto_window
from xkmcast.train.spread import CALIBRATION_SAMPLES, calibration_samples
from xkmcast.train.trainer import train

INPUTS = ["t2m", "u10m", "v10m", "msl", "tcwv", "z500", "t850"]
OUTPUTS = ["t2m", "u10m", "v10m", "tp", "refc"]


def overrides(shape, steps: int, root: Path, patch, calibrate: bool) -> list[str]:
    ny, nx = shape
    recipe = load_config("corrdiff-cpu", ["data.source=synthetic"])
    out = ["data.source=synthetic", "data.regrid_method=nearest",
           f"data.params={{nx: {nx}, ny: {ny}, dx: 3000.0, factor: 4, times: 24, seed: 0}}",
           f"data.input_vars={INPUTS}", f"data.output_vars={OUTPUTS}", "data.invariants=[orog, lsm]",
           f"training.outdir={root}", f"training.batch_size={recipe.training.batch_size}",
           f"training.precision={recipe.training.precision}", f"training.duration={steps}",
           "training.duration_unit=steps", "training.validate_every=1000000", "training.checkpoint_every=1000000",
           "training.tensorboard=false", f"model.spread_calibration={str(calibrate).lower()}"]
    return out + ([f"data.patch={patch}"] if patch else [])


def run_stage(stage: str, shape, steps: int, root: Path, patch, bundle=None, calibrate=False) -> dict:
    preset = f"corrdiff-tiny-{stage}"
    extra = [f"training.experiment={stage}-{'window' if patch else 'whole'}-{int(calibrate)}"]
    if bundle is not None:
        extra.append(f"model.regression_bundle={bundle}")
    cfg = load_config(preset, overrides(shape, steps, root, patch, calibrate) + extra)
    start = time.perf_counter()
    result = train(cfg, quiet=True)
    return {"stage": stage, "window": patch, "samples_per_s": result.samples_per_second, "bundle": result.bundle,
            "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="200x400", help="fine grid HxW")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(n) for n in args.grid.split("x"))
    window = auto_window(shape)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for patch in (None, window):
            reg = run_stage("regression", shape, args.steps, root, patch)
            dif = run_stage("diffusion", shape, args.steps, root, patch, bundle=reg["bundle"])
            rows += [reg, dif]
        calibrated = run_stage("diffusion", shape, 1, root, window, bundle=rows[2]["bundle"], calibrate=True)
        uncalibrated = run_stage("diffusion", shape, 1, root, window, bundle=rows[2]["bundle"])
    batch = load_config("corrdiff-cpu", ["data.source=synthetic"]).training.batch_size
    print(f"grid {shape[0]} x {shape[1]}, recipe window {window}, batch {batch}, {args.threads} threads")
    print(f"{'stage':11s} {'trained on':>12s} {'samples/s':>10s} {'s/step':>7s} {'x whole':>8s}")
    whole = {r["stage"]: r["samples_per_s"] for r in rows if r["window"] is None}
    for r in rows:
        where = "whole" if r["window"] is None else f"{r['window'][0]} x {r['window'][1]}"
        print(f"{r['stage']:11s} {where:>12s} {r['samples_per_s']:10.2f} {batch / r['samples_per_s']:7.2f} "
              f"{r['samples_per_s'] / whole[r['stage']]:8.2f}")
    cal = calibrated["wall_s"] - uncalibrated["wall_s"]
    print(f"export spread calibration (windowed diffusion): {cal:.0f} s on {calibration_samples(shape, 'cpu')} "
          f"validation samples (of at most {CALIBRATION_SAMPLES}), 8 members, one set of draws for all calibrations")


if __name__ == "__main__":
    main()
