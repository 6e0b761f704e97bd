"""Training throughput of the CorrDiff tiny and mini presets on this machine (synthetic data, CPU ok).

    python bench/bench_train.py [--steps 12] [--threads 1]

Each preset trains its regression stage on a synthetic training store (tiny: 32 x 32, mini: 64 x 64,
the HRRR-Mini sample size) for ``--steps`` optimizer steps with validation, checkpoints and TensorBoard
off; prints samples/s (over the whole run, first step included), FLOPs per step and GFLOP/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from xkmcast.train.config import load_config
from xkmcast.train.trainer import train

CASES = {  # preset -> (grid size, batch size)
    "corrdiff-tiny-regression": (32, 8),
    "corrdiff-mini-regression": (64, 8),
}
INPUTS = ["t2m", "u10m", "v10m", "msl", "tcwv", "z500", "t850"]


def run(preset: str, size: int, batch: int, steps: int, root: Path) -> dict:
    cfg = load_config(preset, [
        "data.source=synthetic", "data.regrid_method=nearest",
        f"data.params={{nx: {size}, ny: {size}, dx: 3000.0, factor: 4, times: 24, seed: 0}}",
        f"data.input_vars={INPUTS}", "data.output_vars=[t2m, u10m, v10m]", "data.invariants=[orog, lsm]",
        f"training.outdir={root}", f"training.batch_size={batch}", "training.batch_size_per_rank=auto",
        f"training.duration={steps}", "training.duration_unit=steps", "training.validate_every=1000000",
        "training.checkpoint_every=1000000", "training.tensorboard=false", "training.precision=fp32",
        "training.device=auto",
    ])
    start = time.perf_counter()
    result = train(cfg, quiet=True)
    return {"preset": preset, "grid": f"{size}x{size}", "batch": batch, "parameters": result.parameters,
            "samples_per_s": result.samples_per_second, "flops_per_step": result.flops_per_step or 0.0,
            "gflops_per_s": (result.flops_per_step or 0.0) * result.step / max(result.samples / result.samples_per_second, 1e-9) / 1e9,
            "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(p, size, batch, args.steps, Path(tmp)) for p, (size, batch) in CASES.items()]
    print(f"{'preset':28s} {'grid':>7s} {'batch':>5s} {'params':>10s} {'samples/s':>10s} {'GFLOP/step':>11s} "
          f"{'GFLOP/s':>8s} {'wall s':>7s}")
    for r in rows:
        print(f"{r['preset']:28s} {r['grid']:>7s} {r['batch']:5d} {r['parameters']:10d} {r['samples_per_s']:10.2f} "
              f"{r['flops_per_step'] / 1e9:11.2f} {r['gflops_per_s']:8.2f} {r['wall_s']:7.1f}")


if __name__ == "__main__":
    main()
