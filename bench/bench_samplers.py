"""Sampler quality per network evaluation on the demo data (a program, not a test).

Downscales the held-out hours of the shipped sample with the demo's trained CorrDiff and each sampler,
and prints CRPS against the 3 km truth next to the network evaluations (NFE) per member:
DPM-Solver++(2M) at 8 NFE against Heun-18 (35 NFE), the published default, and Euler-9 (CorrDiff's
fast setting), with the ratio of CRPS measured side by side in this one run.

    python bench/bench_samplers.py [--bundle demo-output/runs/corrdiff-demo-diffusion/0/model] [--members 16]

Without a bundle it runs ``xkmcast demo`` first (about 4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

CASES = [("heun", 18), ("euler", 9), ("dpmpp_2m", 8), ("dpmpp_2m", 18)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None)
    p.add_argument("--members", type=int, default=16)
    args = p.parse_args()

    import xkmcast
    from xkmcast.demo import DEMO_TIMES, run_demo
    from xkmcast.diffusion.samplers import nfe
    from xkmcast.fields.metrics import crps

    bundle = args.bundle
    if bundle is None:
        out = Path(tempfile.mkdtemp(prefix="xkmcast-bench-"))
        run_demo(out, quiet=True)
        bundle = out / "runs" / "corrdiff-demo-diffusion" / "0" / "model"
    model = xkmcast.load_model(bundle)
    coarse = xkmcast.open_dataset("sample", part="input").sel(time=DEMO_TIMES).load()
    truth = xkmcast.open_dataset("sample", part="target").sel(time=DEMO_TIMES).load()
    rows = []
    for sampler, steps in CASES:
        t0 = time.perf_counter()
        out = coarse.kmcast.downscale(model, members=args.members, sampler=sampler, num_steps=steps)
        seconds = time.perf_counter() - t0
        scores = {v: float(crps(out[v], truth[v])) for v in model.spec.output_vars}
        rows.append((sampler, steps, nfe(sampler, steps), seconds, scores))
        print(f"{sampler:9s} {steps:3d} steps  NFE {nfe(sampler, steps):3d}  {seconds:6.1f} s  "
              + "  ".join(f"CRPS {v} {s:.4f}" for v, s in scores.items()), flush=True)
    heun = rows[0][4]
    for sampler, steps, n, _, scores in rows[1:]:
        ratios = "  ".join(f"{v} {scores[v] / heun[v]:.3f}" for v in scores)
        print(f"CRPS ratio {sampler}-{steps} ({n} NFE) / heun-18 (35 NFE): {ratios}")


if __name__ == "__main__":
    main()
