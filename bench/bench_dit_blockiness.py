"""Token-seam blockiness of Stormscope forecasts, per DiT detokenizer and token size (a program, not a test).

Trains ``stormscope-tiny`` (synthetic 32 x 32 world) once per configuration: 4 x 4 tokens with each
detokenizer (``proj_reshape_2d``: each token writes its own block; ``proj_reshape_2d_conv``: plus a
residual convolution head across the seams) and the tiny default, 2 x 2 tokens with the conv head; all
move their token grid with the noise level (:mod:`xkmcast.diffusion.token_jitter`; 2 x 2 averaged over
the diagonal offsets at sampling). Forecasts one step from held-out times and prints
:func:`xkmcast.fields.metrics.blockiness` at the token period, the worst of its offsets, next to the
truth's at that offset.

    python bench/bench_dit_blockiness.py [--steps 300] [--workdir /tmp/xkmcast-blockiness]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

CONFIGS = (("proj_reshape_2d", 4), ("proj_reshape_2d_conv", 4), ("proj_reshape_2d_conv", 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--workdir", default="/tmp/xkmcast-blockiness")
    a = p.parse_args()

    import xkmcast
    from xkmcast.data.synthetic import synthetic_pair
    from xkmcast.fields.metrics import blockiness

    coarse, fine = synthetic_pair(nx=32, ny=32, dx=3000.0, factor=4, times=60, seed=1)  # training used seed 0
    for detok, patch in CONFIGS:
        run = Path(a.workdir) / f"{detok}-{patch}"
        bundle = run / "runs" / "stormscope-tiny" / "0" / "model"
        if not (bundle / "config.json").exists():
            run.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "xkmcast.cli", "train", "stormscope-tiny", f"training.duration={a.steps}",
                            f"model.network.detokenizer={detok}", f"model.network.patch_size={patch}",
                            "training.validate_every=100000", f"training.checkpoint_every={a.steps}", "-q"], cwd=run,
                           check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})  # fmt: skip
        model = xkmcast.load_model(bundle)
        scores: dict[str, list[tuple[float, float]]] = {}
        for t0 in (48, 52, 56):
            fc = fine.isel(time=[t0]).kmcast.forecast(model, steps=1, background=coarse, members=2, seed=t0,
                                                      regrid_method="nearest")  # fmt: skip
            truth = fine.isel(time=t0 + 1)
            for v in model.spec.output_vars:
                grid_dims = list(truth[v].dims)[-2:]
                step = fc[v].isel(lead_time=-1)  # lead 0 is the initial state itself
                pairs = [(float(blockiness(step, patch, dims=grid_dims, offset=o).mean()),
                          float(blockiness(truth[v], patch, dims=grid_dims, offset=o))) for o in range(patch)]
                scores.setdefault(v, []).append(max(pairs, key=lambda ft: ft[0] / ft[1]))
        means = {v: np.mean(s, axis=0) for v, s in scores.items()}
        print(f"{detok:22s} {patch}x{patch}  " + "  ".join(f"{v}: forecast {m[0]:.3f} / truth {m[1]:.3f}"
                                                       for v, m in means.items()))

if __name__ == "__main__":
    main()
