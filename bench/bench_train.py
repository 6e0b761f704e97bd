"""Training throughput of the CorrDiff tiny and mini presets on this machine (synthetic data, CPU ok).

    python bench/bench_train.py [--steps 12] [--threads 1] [--precisions fp32,amp-bf16]

Each preset trains its regression stage on a synthetic training store (tiny: 32 x 32, mini: 64 x 64,
the HRRR-Mini sample size) for ``--steps`` optimizer steps with validation, checkpoints and TensorBoard
off, once per precision, side by side; prints samples/s (over the whole run, first step included),
FLOPs per step, GFLOP/s, and each precision's samples/s over fp32's, with what computes bfloat16 on
this machine (``xkmcast.device.native_bf16``: where nothing does, bf16 is emulated and slower).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from xkmcast.device import native_bf16
from xkmcast.train.config import load_config
from xkmcast.train.trainer import train

CASES = {  # preset -> (grid size, batch size)
    "corrdiff-tiny-regression": (32, 8),
    "corrdiff-mini-regression": (64, 8),
}
INPUTS = ["t2m", "u10m", "v10m", "msl", "tcwv", "z500", "t850"]


def run(preset: str, size: int, batch: int, steps: int, root: Path, precision: str = "fp32") -> dict:
    cfg = load_config(preset, [
        "data.source=synthetic", "data.regrid_method=nearest",
        f"data.params={{nx: {size}, ny: {size}, dx: 3000.0, factor: 4, times: 24, seed: 0}}",
        f"data.input_vars={INPUTS}", "data.output_vars=[t2m, u10m, v10m]", "data.invariants=[orog, lsm]",
        f"training.outdir={root}", f"training.experiment={preset}-{precision}", f"training.batch_size={batch}",
        "training.batch_size_per_rank=auto",
        f"training.duration={steps}", "training.duration_unit=steps", "training.validate_every=1000000",
        "training.checkpoint_every=1000000", "training.tensorboard=false", f"training.precision={precision}",
        "training.device=auto",
    ])
    start = time.perf_counter()
    result = train(cfg, quiet=True)
    return {"preset": preset, "precision": precision, "grid": f"{size}x{size}", "batch": batch,
            "parameters": result.parameters,
            "samples_per_s": result.samples_per_second, "flops_per_step": result.flops_per_step or 0.0,
            "gflops_per_s": (result.flops_per_step or 0.0) * result.step / max(result.samples / result.samples_per_second, 1e-9) / 1e9,
            "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--precisions", default="fp32,amp-bf16", help="training.precision values, side by side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precisions = args.precisions.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(p, size, batch, args.steps, Path(tmp), precision)
                for p, (size, batch) in CASES.items() for precision in precisions]
    print(f"bfloat16 in hardware: {native_bf16(torch.device('cpu')) or 'none (emulated)'}")
    print(f"{'preset':28s} {'precision':>9s} {'grid':>7s} {'batch':>5s} {'params':>10s} {'samples/s':>10s} "
          f"{'/fp32':>6s} {'GFLOP/step':>11s} {'GFLOP/s':>8s} {'wall s':>7s}")
    fp32 = {r["preset"]: r["samples_per_s"] for r in rows if r["precision"] == "fp32"}
    for r in rows:
        ratio = f"{r['samples_per_s'] / fp32[r['preset']]:6.2f}" if r["preset"] in fp32 else f"{'-':>6s}"
        print(f"{r['preset']:28s} {r['precision']:>9s} {r['grid']:>7s} {r['batch']:5d} {r['parameters']:10d} "
              f"{r['samples_per_s']:10.2f} {ratio} {r['flops_per_step'] / 1e9:11.2f} {r['gflops_per_s']:8.2f} "
              f"{r['wall_s']:7.1f}")


if __name__ == "__main__":
    main()
