"""Samplers on real data: the same trained weights sampled, and calibrated, with each solver (a program).

    python bench/science_samplers.py [--budget 120] [--cases storm-step,storm-dit,florence-now]
                                     [--samplers heun:18,dpmpp_2m:10] [--members 8] [--reuse] [--no-record]

For each real case of bench/science.py (training exactly as there, ``--budget`` seconds in total) the
diffusion run is exported once per sampler (``model.sampler`` set, the run resumed: a finished run only
re-exports, so the weights are the same and only the spread calibration of the export is redone with
that sampler, as a user training with it would get), then scored on the held-out times as in
bench/science.py. Printed: per case and sampler the network evaluations per member and step (NFE) and
the seconds of the ensemble forecast or downscaling; per variable and lead the ensemble's CRPS, MAE of
its mean, spread-skill, small-scale power and the members' maximum per sampler, and the ratio of CRPS
of each sampler to the first one's, all measured side by side in this one run. Recorded in
docs/benchmarks.md under "Samplers on real data" (one block per command) unless ``--no-record``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from science import _fmt, _without_work, downscale_rows, record, step_rows, train_pair  # noqa: E402
from science_cases import all_cases  # noqa: E402

SECTION = "## Samplers on real data"
DEFAULT_CASES = "storm-step,storm-dit,florence-now"


def parse_samplers(text: str) -> list[tuple[str, int]]:
    """``"heun:18,dpmpp_2m:10"`` -> [("heun", 18), ("dpmpp_2m", 10)]."""
    out = []
    for item in text.split(","):
        name, _, steps = item.partition(":")
        out.append((name.strip(), int(steps)))
    return out


def score_case(case, work: Path, budget: float, samplers, members: int, reuse: bool = False) -> tuple[list[dict], list[str]]:
    """Train ``case`` once (``reuse``: not at all, the runs of ``work`` are taken as they are), then per
    sampler re-export and score: (ensemble rows tagged with the sampler, one line per sampler with its
    NFE and seconds)."""
    from xkmcast.diffusion.samplers import nfe

    tag = f"b{int(budget)}"
    if not reuse:  # with reuse, the first sampler's re-export below is the only export needed
        train_pair(case, work, budget, tag, [])
    fn = downscale_rows if case.kind == "downscale" else step_rows
    rows, lines = [], []
    for name, steps in samplers:
        setting = f"model.sampler={{sampler: {name}, num_steps: {steps}}}"
        reg, dif = train_pair(case, work, budget, tag, [setting], reuse=True)
        got = [r for r in fn(case, reg, dif, members) if r["method"] == "ensemble"]
        label = f"{name}-{steps}"
        rows += [dict(r, sampler=label) for r in got]
        lines.append(f"{case.name:12s} {label:12s} NFE {nfe(name, steps):3d}  ensemble {got[0]['seconds']:6.1f} s")
        print(lines[-1], flush=True)
    return rows, lines


def table(rows: list[dict], labels: list[str]) -> str:
    """One line per (case, var, lead): CRPS / MAE / SSR / spec per sampler, CRPS ratio to the first."""
    first = labels[0]
    head = f"{'case':12s} {'var':5s} {'lead':4s}" + "".join(
        f" | {lab:>12s} {'CRPS':>7s} {'MAE':>7s} {'SSR':>5s} {'spec':>5s} {'max':>6s}" for lab in labels) \
        + "".join(f" | {lab}/{first} CRPS" for lab in labels[1:]) + " | truth max"
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        keyed.setdefault((r["case"], r["var"], r["lead"]), {})[r["sampler"]] = r
    lines = [head]
    for (case, var, lead), by in keyed.items():
        line = f"{case:12s} {var:5s} {lead:4s}"
        for lab in labels:
            r = by[lab]
            line += f" | {'':>12s} {_fmt(r['crps']):>7s} {_fmt(r['mae']):>7s} {_fmt(r['ssr']):>5s} {_fmt(r['spec']):>5s}" \
                    f" {_fmt(r['hi']):>6s}"
        for lab in labels[1:]:
            line += f" | {by[lab]['crps'] / by[first]['crps']:>{len(lab) + len(first) + 6}.3f}"
        line += f" | {_fmt(by[first]['thi']):>9s}"
        lines.append(line)
    return "\n".join(lines)


def summary(rows: list[dict], labels: list[str]) -> str:
    """Per case and sampler after the first: the range of CRPS ratios, and the SSR range of every sampler."""
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        base = {(r["var"], r["lead"]): r["crps"] for r in mine if r["sampler"] == labels[0]}
        for lab in labels:
            sel = [r for r in mine if r["sampler"] == lab]
            ssr = [r["ssr"] for r in sel if r["ssr"] == r["ssr"]]
            ratio = [r["crps"] / base[(r["var"], r["lead"])] for r in sel]
            out.append(f"{case:12s} {lab:12s} CRPS / {labels[0]} {min(ratio):.3f}-{max(ratio):.3f}  "
                       f"SSR {min(ssr):.2f}-{max(ssr):.2f}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=120.0, help="total training seconds per model")
    p.add_argument("--cases", default=DEFAULT_CASES)
    p.add_argument("--samplers", default="heun:18,dpmpp_2m:10", help="solver:steps, comma-separated; the first "
                   "is the reference of the ratios")
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--work", default="bench-sampler-runs", help="work directory (data, runs)")
    p.add_argument("--reuse", action="store_true", help="score the runs --work holds (trained by an earlier "
                   "run of this command) instead of training them again")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    samplers = parse_samplers(args.samplers)
    labels = [f"{n}-{s}" for n, s in samplers]
    work = Path(args.work).resolve()
    rows, lines = [], []
    for case in all_cases(work / "data", args.cases.split(",")):
        new, what = score_case(case, work / "runs", args.budget, samplers, args.members, args.reuse)
        rows += new
        lines += what
    text = (f"training budget {args.budget:.0f} s per model, {args.members} members\n" + "\n".join(lines) + "\n\n"
            + table(rows, labels) + "\n\n" + summary(rows, labels))
    print(text, flush=True)
    if not args.no_record:
        command = "python bench/science_samplers.py " + " ".join(_without_work(sys.argv[1:]))
        intro = __doc__.split("\n\n")[2].replace("\n", " ")
        print(f"recorded in {record(text, command.strip(), SECTION, intro, since='')}")


if __name__ == "__main__":
    main()
