"""Forward + backward time of xkmcast's SongUNet against PhysicsNeMo's, same weights and threads.

    python bench/bench_unet.py [--threads 1] [--repeats 7] [--sizes 64 128] [--batch 4]
                               [--channels-last] [--compile]

The "mini" preset (64 channels, channel_mult [1, 2, 2], attention at 16) in training mode with
dropout 0, on batches of ``--batch`` random fields. The two models are timed alternately (one
step each, repeated) so that load from other processes hits both alike; the medians of the
process CPU time (robust on a shared machine) and of the wall time are reported.
Needs the ``reference`` extra.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xkmcast._reference import import_physicsnemo
from xkmcast.nn import SongUNet, songunet_preset

IN_CHANNELS, OUT_CHANNELS = 8, 4


def step(model, x, noise) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one forward + backward pass."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    model(x, noise).square().mean().backward()
    elapsed = time.process_time() - cpu0, time.perf_counter() - wall0
    for p in model.parameters():
        p.grad = None
    return elapsed


def bench(size: int, args) -> dict[str, float]:
    import_physicsnemo()
    from physicsnemo.models.diffusion_unets import SongUNet as ReferenceSongUNet

    kwargs = dict(img_resolution=size, in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, dropout=0.0,
                  **songunet_preset("mini"))  # fmt: skip
    torch.manual_seed(0)
    ref = ReferenceSongUNet(**kwargs).train()
    ours = SongUNet(**kwargs).train()
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, IN_CHANNELS, size, size, generator=gen)
    noise = torch.randn(args.batch, generator=gen)
    x_ours = x
    if args.channels_last:
        ours = ours.to(memory_format=torch.channels_last)
        x_ours = x.contiguous(memory_format=torch.channels_last)
    run_ours = torch.compile(ours) if args.compile else ours
    for _ in range(args.warmup):
        step(ref, x, noise)
        step(run_ours, x_ours, noise)
    t_ref, t_ours = [], []
    for _ in range(args.repeats):
        t_ref.append(step(ref, x, noise))
        t_ours.append(step(run_ours, x_ours, noise))
    return {
        "ref_cpu": statistics.median(t[0] for t in t_ref),
        "ours_cpu": statistics.median(t[0] for t in t_ours),
        "ref_wall": statistics.median(t[1] for t in t_ref),
        "ours_wall": statistics.median(t[1] for t in t_ours),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--channels-last", action="store_true", help="run xkmcast in channels_last layout")
    parser.add_argument("--compile", action="store_true", help="torch.compile the xkmcast model (slow first call)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"SongUNet 'mini', batch {args.batch}, forward+backward, {args.threads} thread(s), "
          f"channels_last={args.channels_last}, compile={args.compile}, torch {torch.__version__}")  # fmt: skip
    print(f"{'grid':>9} {'':>6} {'physicsnemo [s]':>16} {'xkmcast [s]':>12} {'ratio':>7}")
    for size in args.sizes:
        t = bench(size, args)
        for kind in ("cpu", "wall"):
            ref, ours = t[f"ref_{kind}"], t[f"ours_{kind}"]
            print(f"{size:>4}x{size:<4} {kind:>6} {ref:>16.3f} {ours:>12.3f} {ours / ref:>7.2f}")


if __name__ == "__main__":
    main()
