"""Downscaling throughput and peak memory when streaming to zarr (a program, not a test).

Prints, for the "tiny" and "mini" CorrDiff sizes on a 64 x 64 grid: seconds per member per time, and
the peak resident memory of downscaling 20 vs 200 times streamed to zarr. Each case runs in its own
process so that its peak memory (ru_maxrss) is its own. Networks have random weights: speed and
memory do not depend on the values.

    python bench/bench_downscale.py [--sizes tiny mini] [--times 20 200] [--members 1] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = (64, 64)


def _case(size: str, times: int, members: int, steps: int, workdir: str) -> dict:
    import numpy as np
    import torch
    import xarray as xr

    import xkmcast  # noqa: F401
    from xkmcast.data.stats import Stats
    from xkmcast.fields.grid import find_grid, make_lambert_grid
    from xkmcast.models import build_pipeline, corrdiff_spec

    torch.manual_seed(0)
    inputs, outputs = ["t2m", "u10m", "v10m", "msl"], ["t2m", "u10m", "v10m"]
    spec = corrdiff_spec(inputs, outputs, SHAPE, invariant_vars=["orog"], size=size,
                         sampler={"sampler": "dpmpp_2m", "num_steps": steps})
    unit = {n: 0.0 for n in inputs + outputs + ["orog"]}
    ones = {n: 1.0 for n in unit}
    spec.stats = {r: Stats(unit, ones).to_dict() for r in ("input", "output", "invariant")}
    pipe = build_pipeline(spec).eval()
    grid = make_lambert_grid(SHAPE[1], SHAPE[0], 3000.0, 38.5, -97.5)
    g = find_grid(grid)
    pipe.set_grid(g.lat, g.lon, grid_mapping=g.grid_mapping, x=g.x, y=g.y)
    pipe.set_invariants(torch.zeros(1, *SHAPE))
    lat = np.arange(39.5, 37.4, -0.25)
    lon = np.arange(-99.0, -95.9, 0.25)
    t = np.datetime64("2024-01-01", "ns") + np.arange(times) * np.timedelta64(1, "h")
    rng = np.random.default_rng(0)

    def field(offset):
        return (("time", "latitude", "longitude"), (offset + rng.normal(size=(times, lat.size, lon.size))).astype("f4"),
                {"units": "K" if offset > 100 else "m s-1"})

    ds = xr.Dataset({"t2m": field(280.0), "u10m": field(0.0), "v10m": field(0.0)},
                    coords={"time": t, "latitude": ("latitude", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                            "longitude": ("longitude", lon, {"standard_name": "longitude", "units": "degrees_east"})})
    ds["msl"] = ds.t2m * 0 + 101000.0
    ds["msl"].attrs = {"units": "Pa"}
    out = ds.chunk({"time": 1}).kmcast.downscale(pipe, members=members)
    t0 = time.perf_counter()
    out.to_zarr(Path(workdir) / f"{size}-{times}.zarr", consolidated=False)
    seconds = time.perf_counter() - t0
    return {"size": size, "times": times, "members": members, "seconds": seconds,
            "s_per_member_time": seconds / (members * times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "mini"])
    p.add_argument("--times", nargs="+", type=int, default=[20, 200])
    p.add_argument("--members", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        size, times, workdir = args.case.split(",")
        print(json.dumps(_case(size, int(times), args.members, args.steps, workdir)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.sizes:
            for times in args.times:
                cmd = [sys.executable, __file__, "--case", f"{size},{times},{workdir}",
                       "--members", str(args.members), "--steps", str(args.steps)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                rows.append(json.loads(out))
                r = rows[-1]
                print(f"{r['size']:>5} {r['times']:>4} times x {r['members']} members: {r['seconds']:7.1f} s, "
                      f"{r['s_per_member_time']:.3f} s per member per time, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    for size in args.sizes:
        by_t = {r["times"]: r for r in rows if r["size"] == size}
        if len(by_t) >= 2:
            lo, hi = min(by_t), max(by_t)
            print(f"{size}: peak memory {hi} vs {lo} times: {by_t[hi]['peak_rss_mb'] / by_t[lo]['peak_rss_mb']:.2f}x "
                  f"(flat streaming gives ~1.0x)")


if __name__ == "__main__":
    main()
