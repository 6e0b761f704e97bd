"""The fraction of this machine's peak reached by the U-Net forward (a program, not a test).

Peak: the best of several fp32 matrix products (2048 x 2048, torch.mm) in GFLOP/s, with the same
threads. Achieved: FLOPs of one SongUNet forward (counted with torch.utils.flop_counter) divided by
its median time, for the "mini" preset at 64 x 64, batch 4. Both measured in this run.

    python bench/bench_peak.py [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    peak = max(2 * n**3 / _median_time(lambda: torch.mm(a, b), 3) for _ in range(args.repeats)) / 1e9

    from xkmcast.nn import SongUNet, songunet_preset

    net = SongUNet(64, 12, 4, **songunet_preset("mini", dropout=0.0)).eval()
    x, labels = torch.randn(4, 12, 64, 64), torch.randn(4)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            net(x, labels)
        flops = counter.get_total_flops()
        seconds = _median_time(lambda: net(x, labels), args.repeats)
    achieved = flops / seconds / 1e9
    print(f"threads {args.threads}: matmul peak {peak:.1f} GFLOP/s")
    print(f"SongUNet mini 64x64 batch 4 forward: {flops / 1e9:.1f} GFLOP in {seconds * 1e3:.0f} ms = {achieved:.1f} GFLOP/s")
    print(f"fraction of peak: {achieved / peak:.2f}")


if __name__ == "__main__":
    main()
