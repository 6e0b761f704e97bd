"""Neighbourhood vs dense attention on CPU: time and peak memory (a program, not a test).

The StormScope-like case: a 512 x 640 image in 4 x 4 patches is a 128 x 160 token grid (20480
tokens); batch 1, ``--heads`` heads of ``--head-dim`` channels, K x K neighbourhood (default 7).
Each variant runs in its own subprocess; peak memory is the growth of the process's maximum
resident set (``ru_maxrss``) during the call, after q, k, v exist. ``natten`` (if installed) is
run too: on CPU it goes through eager flex attention, which materialises the full score matrix.

    python bench/bench_neighborhood_attention.py [--grid 128 160] [--kernel 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _run(variant: str, grid: list[int], kernel: int, heads: int, head_dim: int, repeats: int, backward: bool) -> dict:
    import torch

    from xkmcast.nn.neighborhood_attention import dense_attention_2d, neighborhood_attention_2d

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, *grid, head_dim, generator=gen, requires_grad=backward) for _ in range(3))
    if variant == "neighbourhood":
        fn = lambda: neighborhood_attention_2d(q, k, v, kernel)  # noqa: E731
    elif variant == "dense":
        fn = lambda: dense_attention_2d(q, k, v)  # noqa: E731
    else:
        import warnings

        import natten

        warnings.simplefilter("ignore")
        qn, kn, vn = (t.permute(0, 2, 3, 1, 4).contiguous() for t in (q, k, v))
        fn = lambda: natten.functional.na2d(qn, kn, vn, kernel_size=kernel)  # noqa: E731

    def call():
        with torch.set_grad_enabled(backward):
            out = fn()
            if backward:
                out.sum().backward()
        return out

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # kB -> MB
    times = [first]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "peak_mb": round(peak, 1), "median_s": round(statistics.median(times), 3), "first_s": round(first, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, nargs=2, default=[128, 160])
    p.add_argument("--kernel", type=int, default=7)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backward", action="store_true", help="time forward + backward")
    p.add_argument("--variants", nargs="+", default=["neighbourhood", "dense", "natten"])
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(_run(a.one, a.grid, a.kernel, a.heads, a.head_dim, a.repeats, a.backward)))
        return
    n = a.grid[0] * a.grid[1]
    print(f"{a.grid[0]} x {a.grid[1]} tokens (N = {n}), batch 1, {a.heads} heads x {a.head_dim}, kernel {a.kernel}, "
          f"{a.threads} thread(s), {'forward + backward' if a.backward else 'forward'}")  # fmt: skip
    print(f"  dense score matrix would be {n * n * a.heads * 4 / 2**20:.0f} MB (float32)")
    for variant in a.variants:
        cmd = [sys.executable, __file__, "--one", variant, "--grid", *map(str, a.grid), "--kernel", str(a.kernel),
               "--heads", str(a.heads), "--head-dim", str(a.head_dim), "--repeats", str(a.repeats), "--threads", str(a.threads)]
        cmd += ["--backward"] if a.backward else []  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            print(f"  {variant:14s} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  {variant:14s} peak +{r['peak_mb']:8.1f} MB   median {r['median_s']:7.3f} s   (first call {r['first_s']:.3f} s)")


if __name__ == "__main__":
    main()
