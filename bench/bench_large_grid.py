"""What a large grid costs a recipe on this machine: whole fields against the windows the recipe trains
on (``xkmcast.train.recipe.auto_window``), and the export's spread calibration.

    python bench/bench_large_grid.py [--recipe corrdiff-cpu] [--grid 200x400] [--steps 6] [--threads 2]

On a synthetic fine grid of ``--grid`` (the cost does not depend on the values; ``corrdiff-cpu``: 7
coarse inputs at x4 and 5 outputs, ``stormcast-cpu``: a state of 5 variables without background, as
the recipe's state-only forecaster), orography and land-sea mask, each stage with the recipe's
settings (tiny U-Net, batch 8, its precision and conditions) trains ``--steps`` steps on whole
fields and on the window, side by side, the spread calibration off; prints samples/s and seconds per
step (over the training loop, its first step and the bundle's export included, the setup not), and
their ratio. Then the windowed diffusion's export with the calibration on, timed: the draws on
``xkmcast.train.spread.calibration_samples`` validation samples, shared by its calibrations (and for
a forecaster the rollouts of its step gains).

    python bench/bench_large_grid.py --denoise [--against 80x192]

prints instead the seconds one denoising step of the recipe's tiny patched diffusion (random weights)
takes over the whole grid for 8 members, on the blended patches of the recipe's window and of each
``--against`` window, side by side (what a window's tiling costs every sampler step at inference and
in the export's calibration).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from xkmcast import load_model
from xkmcast.train.config import load_config
from xkmcast.train.recipe import auto_window
from xkmcast.train.spread import CALIBRATION_SAMPLES, calibration_samples
from xkmcast.train.trainer import train

INPUTS = ["t2m", "u10m", "v10m", "msl", "tcwv", "z500", "t850"]
OUTPUTS = ["t2m", "u10m", "v10m", "tp", "refc"]
#: the tiny presets each recipe's stages match, and what differs between the recipes' data (a forecaster's
#: 48 hourly times leave a validation tenth of 5 consecutive times: chains for the step gains' rollouts)
RECIPES = {
    "corrdiff-cpu": {"preset": "corrdiff-tiny", "times": 24, "data": [f"data.input_vars={INPUTS}"]},
    "stormcast-cpu": {"preset": "stormcast-tiny", "times": 48,
                      "data": [f"data.input_vars={OUTPUTS}", "data.background_vars=[]"]},
}


def overrides(recipe_name: str, shape, steps: int, root: Path, patch, calibrate: bool) -> list[str]:
    ny, nx = shape
    times = RECIPES[recipe_name]["times"]
    recipe = load_config(recipe_name, ["data.source=synthetic"])
    out = ["data.source=synthetic", "data.regrid_method=nearest",
           f"data.params={{nx: {nx}, ny: {ny}, dx: 3000.0, factor: 4, times: {times}, seed: 0}}",
           *RECIPES[recipe_name]["data"], f"data.output_vars={OUTPUTS}", "data.invariants=[orog, lsm]",
           f"model.regression_conditions={recipe.model.regression_conditions}",
           f"model.diffusion_conditions={recipe.model.diffusion_conditions}",
           f"training.outdir={root}", f"training.batch_size={recipe.training.batch_size}",
           f"training.precision={recipe.training.precision}", f"training.duration={steps}",
           "training.duration_unit=steps", "training.validate_every=1000000", "training.checkpoint_every=1000000",
           "training.tensorboard=false", f"model.spread_calibration={str(calibrate).lower()}"]
    return out + ([f"data.patch={patch}"] if patch else [])


def run_stage(recipe: str, stage: str, shape, steps: int, root: Path, patch, bundle=None, calibrate=False) -> dict:
    preset = f"{RECIPES[recipe]['preset']}-{stage}"
    extra = [f"training.experiment={stage}-{'window' if patch else 'whole'}-{int(calibrate)}"]
    if bundle is not None:
        extra.append(f"model.regression_bundle={bundle}")
    cfg = load_config(preset, overrides(recipe, shape, steps, root, patch, calibrate) + extra)
    start = time.perf_counter()
    result = train(cfg, quiet=True)
    wall = time.perf_counter() - start
    spec = load_model(result.bundle).spec if calibrate else None
    return {"stage": stage, "window": patch, "samples_per_s": result.samples_per_second, "bundle": result.bundle,
            "wall_s": wall, "bundle_spec": spec}


def denoise_seconds(recipe: str, shape, patch, members: int = 8, repeats: int = 2) -> tuple[int, float]:
    """``(patches, seconds per denoising step)`` of the recipe's tiny diffusion (random weights) on the blended
    ``patch`` patches of a ``shape`` field, ``members`` rows, after one warm-up call."""
    from xkmcast.models import build_pipeline
    from xkmcast.models.specs import corrdiff_spec, stormcast_spec

    common = {"invariant_vars": ["orog", "lsm"], "size": "tiny", "patch": list(patch)}
    conditions = load_config(recipe, ["data.source=synthetic"]).model.diffusion_conditions
    spec = corrdiff_spec(INPUTS, OUTPUTS, shape, **common) if recipe == "corrdiff-cpu" else \
        stormcast_spec(OUTPUTS, shape, **common, diffusion_conditions=conditions)
    pipe = build_pipeline(spec).eval()
    net = pipe.patched(pipe.stages["diffusion"], tuple(shape))
    kw = spec.networks["diffusion"]["kwargs"]  # in = out + condition + its resized copy + positional grid
    cond = (kw["in_channels"] - kw["out_channels"] - kw.get("N_grid_channels", 0)) // 2
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(members, kw["out_channels"], *shape, generator=g), torch.randn(members, cond, *shape, generator=g)
    sigma = torch.ones(members)
    with torch.no_grad():
        net(x, sigma, c)
        start = time.perf_counter()
        for _ in range(repeats):
            net(x, sigma, c)
    return net.patching.num_patches, (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="corrdiff-cpu", choices=sorted(RECIPES))
    parser.add_argument("--grid", default="200x400", help="fine grid HxW")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--denoise", action="store_true", help="time one denoising step per window instead")
    parser.add_argument("--against", action="append", default=[], help="another window HxW for --denoise "
                        "(default 80x192, the grid's aspect the recipes took before)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(n) for n in args.grid.split("x"))
    window = auto_window(shape)
    if window is None:
        parser.error(f"the recipes train a {shape[0]} x {shape[1]} grid whole (up to 2 x WINDOW_PIXELS pixels): "
                     "give a larger --grid")
    if args.denoise:
        print(f"{args.recipe}: one denoising step over {shape[0]} x {shape[1]}, 8 members, {args.threads} threads")
        for patch in [window] + [[int(n) for n in w.split("x")] for w in args.against or ["80x192"]]:
            n, seconds = denoise_seconds(args.recipe, shape, patch)
            tag = "recipe window" if patch == window else "against"
            print(f"{tag:13s} {patch[0]:4d} x {patch[1]:<4d} {n:3d} patches {seconds:7.2f} s per step", flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for patch in (None, window):
            reg = run_stage(args.recipe, "regression", shape, args.steps, root, patch)
            dif = run_stage(args.recipe, "diffusion", shape, args.steps, root, patch, bundle=reg["bundle"])
            rows += [reg, dif]
        calibrated = run_stage(args.recipe, "diffusion", shape, 1, root, window, bundle=rows[2]["bundle"],
                               calibrate=True)
        uncalibrated = run_stage(args.recipe, "diffusion", shape, 1, root, window, bundle=rows[2]["bundle"])
    recipe = load_config(args.recipe, ["data.source=synthetic"]).training
    print(f"{args.recipe}: grid {shape[0]} x {shape[1]}, recipe window {window}, batch {recipe.batch_size}, "
          f"precision {recipe.precision}, {args.threads} threads")
    batch = recipe.batch_size
    print(f"{'stage':11s} {'trained on':>12s} {'samples/s':>10s} {'s/step':>7s} {'x whole':>8s}")
    whole = {r["stage"]: r["samples_per_s"] for r in rows if r["window"] is None}
    for r in rows:
        where = "whole" if r["window"] is None else f"{r['window'][0]} x {r['window'][1]}"
        print(f"{r['stage']:11s} {where:>12s} {r['samples_per_s']:10.2f} {batch / r['samples_per_s']:7.2f} "
              f"{r['samples_per_s'] / whole[r['stage']]:8.2f}")
    cal = calibrated["wall_s"] - uncalibrated["wall_s"]
    rollouts = calibrated["bundle_spec"].extra.get("step_spread_gain")
    print(f"export spread calibration (windowed diffusion): {cal:.0f} s on {calibration_samples(shape, 'cpu')} "
          f"validation samples (of at most {CALIBRATION_SAMPLES}), 8 members, one set of draws for all calibrations"
          + (f"; and the step gains' rollouts ({len(rollouts)} steps)" if rollouts else ""))


if __name__ == "__main__":
    main()
