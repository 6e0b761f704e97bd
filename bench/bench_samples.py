"""Throughput of DownscalingSamples through a DataLoader on a 256 x 256 prepared zarr store.

    python bench/bench_samples.py [--times 32] [--epochs 2] [--batch-size 4]

Builds synthetic data (xkmcast.data.synthetic: fine 256 x 256 Lambert 3 km, coarse 0.25 deg lat/lon),
prepares a training store in a temporary directory (8 input + 2 invariant channels, 4 output
channels, one zarr chunk per time and variable) and prints samples/s for num_workers 0 and 2: whole
fields as loaded, and whole fields cut into 64 x 64 patches by
:func:`xkmcast.diffusion.patching.random_patches`, the path patch-based training takes (4 patches per
field). torch runs on one thread (the machine is shared).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from xkmcast.data.prepare import prepare
from xkmcast.data.samples import DownscalingSamples
from xkmcast.diffusion.patching import random_patches
from xkmcast.data.synthetic import SyntheticWeather
from xkmcast.fields.grid import find_grid, make_lambert_grid, make_latlon_grid

INPUTS = ["t2m", "u10m", "v10m", "tp", "msl", "tcwv", "z500", "t850"]
OUTPUTS = ["t2m", "u10m", "v10m", "tp"]
INVARIANTS = ["orog", "lsm"]


def build_store(root: Path, n: int, times: int) -> Path:
    w = SyntheticWeather(5)
    t = pd.date_range("2024-07-01", periods=times, freq="1h")
    grid = find_grid(make_lambert_grid(n, n, 3000.0, 38.5, -97.5))
    fine = w.dataset(grid, t, ("t2m", "u10m", "v10m", "tp"))
    lat = np.arange(np.floor(grid.lat.min() * 4) - 1, np.ceil(grid.lat.max() * 4) + 2)[::-1] / 4
    lon = np.arange(np.floor(grid.lon.min() * 4) - 1, np.ceil(grid.lon.max() * 4) + 2) / 4
    coarse = w.dataset(make_latlon_grid(lat, lon, lat_name="latitude", lon_name="longitude"), t, INPUTS,
                       supersample=2)
    return prepare(fine, coarse, root / "bench.zarr", input_vars=INPUTS, output_vars=OUTPUTS,
                   invariants=INVARIANTS, log_vars=["tp"])


def rate(dataset, workers: int, batch_size: int, epochs: int, patch: int | None = None, patches: int = 4) -> float:
    """Fields (or, with ``patch``, training patches as the model cuts them) per second."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    next(iter(loader))  # start the workers and open the store before timing
    gen = torch.Generator().manual_seed(1)
    start, count = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            if patch is None:
                count += batch["input"].shape[0]
            else:
                cut = random_patches(batch["target"], batch["input"], (patch, patch), patches, generator=gen)
                count += cut.target.shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--times", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = build_store(Path(tmp), args.size, args.times)
        print(f"synthetic data + prepare: {time.perf_counter() - t0:.1f} s "
              f"({args.times} times, {args.size}x{args.size}, store {sum(f.stat().st_size for f in store.rglob('*') if f.is_file()) / 1e6:.1f} MB)")
        ds = DownscalingSamples(store, INPUTS, OUTPUTS, INVARIANTS)
        channels = ds[0]["input"].shape[0]
        for name, patch in (("whole field", None), ("64x64 patches", 64)):
            n = patch or args.size
            for workers in (0, 2):
                r = rate(ds, workers, args.batch_size, args.epochs, patch)
                print(f"{name:14s} input ({channels}, {n}, {n})  num_workers={workers}: {r:7.1f} samples/s")


if __name__ == "__main__":
    main()
