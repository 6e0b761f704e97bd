"""Run every benchmark in one go and record the printed figures in docs/benchmarks.md.

    python bench/run_all.py [--quick] [--no-record]

Each benchmark is a program that prints ratios measured side by side in one run; this runner only
collects their output with the date and the machine (CPU model, cores, torch threads).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ("Network forward+backward vs PhysicsNeMo (same weights, 1 thread)", ["bench_unet.py"], ["bench_unet.py", "--repeats", "3", "--sizes", "64"]),
    ("Fraction of the machine's peak in the U-Net forward", ["bench_peak.py"], ["bench_peak.py", "--repeats", "3"]),
    ("Sampler quality per network evaluation (demo data)", ["bench_samplers.py", "--members", "16"],
     ["bench_samplers.py", "--members", "8"]),
    ("Data loading (DownscalingSamples, 256x256 zarr)", ["bench_samples.py"], ["bench_samples.py", "--times", "16", "--epochs", "1"]),
    ("Training throughput (corrdiff tiny / mini presets)", ["bench_train.py"], ["bench_train.py", "--steps", "6"]),
    ("Downscaling throughput and peak memory streaming to zarr", ["bench_downscale.py"],
     ["bench_downscale.py", "--sizes", "tiny"]),
]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller runs")
    p.add_argument("--no-record", action="store_true", help="print only, do not write docs/benchmarks.md")
    p.add_argument("--bundle", help="a trained demo bundle for the sampler benchmark (default: "
                   "demo-output/runs/corrdiff-demo-diffusion/0/model if `make demo` ran, else it trains one)")
    args = p.parse_args()
    bundle = args.bundle or HERE.parent / "demo-output" / "runs" / "corrdiff-demo-diffusion" / "0" / "model"
    sections = []
    for title, full, quick in BENCHES:
        script, *options = quick if args.quick else full
        if script == "bench_samplers.py" and Path(bundle).exists():
            options = [*options, "--bundle", str(bundle)]
        shown = " ".join([script, *options])
        print(f"== {title}: python bench/{shown}", flush=True)
        proc = subprocess.run([sys.executable, str(HERE / script), *options], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        out = proc.stdout.strip() or proc.stderr.strip()[-2000:]
        print(out, flush=True)
        sections.append((title, shown, out, proc.returncode))
    if args.no_record:
        return
    import torch

    head = [
        "# Benchmarks",
        "",
        f"Recorded by `python bench/run_all.py{' --quick' if args.quick else ''}` on "
        f"{datetime.date.today().isoformat()}: {_cpu()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}. Every figure is printed by the benchmark program itself; "
        "ratios are measured side by side in the same run.",
        "",
    ]
    body = []
    for title, cmd, out, code in sections:
        body += [f"## {title}", "", f"`python bench/{cmd}`" + ("" if code == 0 else f" (exit code {code})"), "",
                 "```text", out, "```", ""]
    path = HERE.parent / "docs" / "benchmarks.md"
    kept = ""  # bench/science.py records its own section (minutes of training): keep it
    if path.exists():
        old = path.read_text()
        start = old.find("## Skill on real data")
        if start >= 0:
            end = old.find("\n## ", start + 1)
            kept = old[start:] if end < 0 else old[start:end + 1]
    path.write_text("\n".join(head + body) + ("\n" + kept if kept else ""))
    print(f"recorded in {HERE.parent / 'docs' / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
