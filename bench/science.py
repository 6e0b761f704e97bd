"""Skill on real data: the user workflow against bilinear, linear statistical downscaling, persistence.

    python bench/science.py [--quick] [--budgets 120,300,600] [--cases storm-x2,...] [--valid-every-days N] [--no-record]

For each real case (bench/science_cases.py) this trains a model exactly as a user would, with the
package's presets and the Python API of the docs (``xkmcast.train.train(load_config(preset,
overrides))``, CPU, ``training.time_budget``), then scores on held-out times:

- downscaling (CorrDiff, ``corrdiff-tiny-*`` presets): bilinear (``Dataset.kmcast.regrid``), the
  linear statistical downscaling (``xkmcast.fields.baselines.fit_linear`` on all interpolated inputs, fitted
  on the training and validation times: ``linear`` pooled per variable, the baseline the ratios use; ``linear-px`` per
  pixel), ``bil+detail`` (bilinear plus the mean departure of the truth from it over those times, per pixel: the
  stationary fine detail a model can learn without invariants), the regression stage alone, the regression +
  diffusion ensemble;
- stepping (StormCast, ``stormcast-tiny-*`` presets, state only): persistence, the per-pixel linear
  step iterated, the regression, the ensemble (for precipitation also its median, ``ens-median``), at
  leads 1..3 steps; then the period check
  (:func:`period_lines`): the ensemble's RMSE and spread-skill by the period its rollouts start in. The
  Stormscope DiT (``stormscope-tiny``) has the ensemble alone, the ViT (``vit-tiny``, deterministic) the
  ``regression`` row alone.

Each budget B in ``--budgets`` (seconds of training in total, regression then diffusion half each; the
regression resumes from the previous budget, the diffusion restarts on it) gives one block of the
table. The table is printed and, unless ``--no-record``, recorded in docs/benchmarks.md under
"Skill on real data". Columns: see bench/science_scores.py.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import xarray as xr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from science_cases import Case, all_cases, open_case, window  # noqa: E402
from science_scores import on_truth, patch_borders, scores  # noqa: E402

SECTION = "## Skill on real data"
#: what the blocks recorded by this version of the bench have that older blocks lack (INTRO says what)
SINCE = "with the spread by scale"


def _q(t: str) -> str:
    return f'"{t}"'


def _common(case: Case, outdir: Path, seconds: float, extra: list[str]) -> list[str]:
    windows = ", ".join(f"{{start: {_q(a)}, end: {_q(b)}}}" for a, b in case.valid)
    valid = [f"data.valid_times=[{windows}]"] if case.valid else ["data.valid_fraction=0"]
    return [f"data.source={case.fine}", "data.params={}", "data.regrid_method=bilinear", "data.invariants=[]",
            f"data.input_vars=[{','.join(case.inputs)}]", f"data.output_vars=[{','.join(case.outputs)}]",
            f"data.train_times={{start: {_q(case.train[0])}, end: {_q(case.train[1])}}}", *valid,
            f"training.time_budget={seconds}", "training.duration=10000000", f"training.outdir={outdir}",
            "training.tensorboard=false", "training.checkpoint_every=100000", "training.validate_every=25",
            *extra]


#: stepping models of one stage: case.model -> (preset, stage)
ONE_STAGE = {"stormscope": ("stormscope-tiny", "diffusion"), "vit": ("vit-tiny", "regression")}


def train_pair(case: Case, outdir: Path, seconds: float, tag: str, extra: list[str], reuse: bool = False):
    """Regression (resumed to seconds/2) then a fresh diffusion on it (seconds/2): both bundles. A
    one-stage case trains that stage for all ``seconds``: a Stormscope DiT (None, run), a ViT (run, None)."""
    from xkmcast.train import load_config, train

    half = seconds / 2
    step_kind = ["data.coarsen=1", "data.background_vars=[]", f"model.time_step={case.step_hours}h"]
    coarse = [f"data.coarse={case.coarse}"] if case.kind == "downscale" else []
    if case.recipe:  # one command trains both stages (the recipe's contract: R/regression/0/model, R/model)
        cfg = load_config(case.recipe, [*_common(case, outdir, seconds, [*case.overrides, *extra]), *coarse,
                                        f"training.experiment={case.name}", f"training.run_id={tag}",
                                        f"training.resume={'latest' if reuse else 'null'}"])
        dif = train(cfg, quiet=True)
        reg_dir = dif.run_dir / "regression" / "0"
        return types.SimpleNamespace(bundle=reg_dir / "model", step=_last_step(reg_dir)), dif
    if case.model in ONE_STAGE:  # the DiT's diffusion or the ViT's regression, for all the seconds
        preset, stage = ONE_STAGE[case.model]
        cfg = load_config(preset, [*_common(case, outdir, seconds, [*case.overrides, *extra]), *step_kind,
                                   f"model.{stage}_conditions=[state]", f"training.experiment={case.name}",
                                   f"training.run_id={tag}", f"training.resume={'latest' if reuse else 'null'}"])
        run = train(cfg, quiet=True)
        return (None, run) if stage == "diffusion" else (run, None)
    if case.kind == "downscale":
        presets = ("corrdiff-tiny-regression", "corrdiff-tiny-diffusion")
        kind = coarse
        dif_kind = []
    else:
        presets = ("stormcast-tiny-regression", "stormcast-tiny-diffusion")
        kind = [*step_kind, "model.regression_conditions=[state]"]
        dif_kind = ["model.diffusion_conditions=[state,regression]"]
    common = [*_common(case, outdir, half, [*case.overrides, *extra]), *kind]
    reg = train(load_config(presets[0], [*common, f"training.experiment={case.name}-regression"]), quiet=True)
    dif = train(load_config(presets[1], [*common, *dif_kind, f"training.experiment={case.name}-diffusion",
                                         f"training.run_id={tag}", f"training.resume={'latest' if reuse else 'null'}",
                                         f"model.regression_bundle={reg.bundle}"]), quiet=True)
    return reg, dif


def _last_step(run_dir: Path) -> int:
    """The step of a run's newest checkpoint (0 without one)."""
    steps = [int(p.stem.split("-")[-1]) for p in (run_dir / "checkpoints").glob("ckpt-*.pt")]
    return max(steps, default=0)


def fit_span(case: Case) -> tuple[str, str]:
    """The times the linear baselines are fitted on: the training and the validation times (a least-squares
    fit selects nothing on validation, so it gets all the data the model saw)."""
    return case.train[0], max([case.train[1]] + [b for _, b in case.valid])


# ------------------------------------------------------------------------------------ downscaling
def downscale_rows(case: Case, reg, dif, members: int) -> list[dict]:
    import xkmcast
    from xkmcast.fields.baselines import fit_linear

    fine, coarse = open_case(case)
    test_truth = window(fine, case.test)[case.outputs]
    interp = coarse[case.inputs].kmcast.regrid(fine, method="bilinear")
    fit = fit_span(case)
    train_in, test_in, train_out = window(interp, fit), window(interp, case.test), window(fine, fit)
    detail = (train_out[case.outputs] - train_in[case.outputs]).mean("time")  # per pixel, over the fit times
    preds = {"bilinear": test_in[case.outputs],
             "linear": fit_linear(train_in, train_out[case.outputs], pooled=True).predict(test_in),
             "bil+detail": test_in[case.outputs] + detail,
             }
    if train_in.sizes["time"] >= 4 * (len(case.inputs) + 1):  # per pixel only with enough samples per pixel
        preds["linear-px"] = fit_linear(train_in, train_out[case.outputs]).predict(test_in)
    model = xkmcast.load_model(dif.bundle)
    t0 = time.perf_counter()
    out = window(coarse, case.test)[case.inputs].kmcast.downscale(model, members=members, include_mean=True, seed=0)
    seconds = time.perf_counter() - t0
    rows = []
    for v in case.outputs:
        truth = test_truth[v]
        got = {**{k: p[v] for k, p in preds.items()},
               "regression": on_truth(out[f"{v}_regression"], truth), "ensemble": on_truth(out[v], truth)}
        for method, pred in got.items():
            s = scores(pred, truth, patch_borders(model) if method == "ensemble" else None)
            if method == "ensemble":
                s["seconds"] = seconds
            rows.append({"case": case.name, "var": v, "lead": "", "method": method, **s})
    return _ratios(rows, ("bilinear", "linear", "regression"))


# ------------------------------------------------------------------------------------ stepping
def step_rows(case: Case, reg, dif, members: int, steps: int = 3) -> list[dict]:
    import xkmcast
    from xkmcast.fields.baselines import fit_linear

    state, _ = open_case(case)
    names = case.outputs
    train = window(state, fit_span(case))[names]
    lin = fit_linear(train.isel(time=slice(0, -1)),
                     train.isel(time=slice(1, None)).assign_coords(time=train.time[:-1].values))
    test = window(state, case.test)[names]
    inits = test.isel(time=slice(0, test.sizes["time"] - steps))  # every held-out time: all hours of the day
    t0 = time.perf_counter()
    regression = None if reg is None else xkmcast.load_model(reg.bundle)
    det = None if reg is None else forecast_from(regression, state[names], inits.time.values, steps, 1)
    model = None if dif is None else xkmcast.load_model(dif.bundle)  # a deterministic case (ViT) has no ensemble
    ens = None if model is None else forecast_from(model, state[names], inits.time.values, steps, members)
    seconds = time.perf_counter() - t0
    tokens = token_seams(model or regression, test)
    forecast = "ensemble" if ens is not None else "regression"  # the model's own row (the ViT: deterministic)
    rows = []
    n = inits.sizes["time"]
    current = inits
    for lead in range(1, steps + 1):
        truth = test.isel(time=slice(lead, lead + n))
        current = lin.predict(current.assign_coords(time=inits.time.values))
        for v in names:
            t = truth[v].assign_coords(time=inits.time.values)
            got = {"persistence": inits[v], "linear": current[v]}
            if ens is not None:
                got["ensemble"] = _lead(ens[v], lead, t)
                if case.thresholds:  # precipitation: the point forecast that MAE rewards (scores.py)
                    got["ens-median"] = got["ensemble"].median("member")
            if det is not None:
                got["regression"] = _lead(det[v], lead, t).squeeze("member", drop=True)
            for method, pred in got.items():
                s = scores(pred, t, thresholds=case.thresholds)
                if method == forecast:
                    s["seconds"], s["starts"], s["step"] = seconds, n, lead  # starts, step: the period check
                    if tokens:
                        s["seam"] = token_blockiness(pred, t, tokens)
                rows.append({"case": case.name, "var": v, "lead": f"{case.step_hours * lead}h", "method": method, **s})
    with_regression = forecast == "ensemble" and det is not None
    return _ratios(rows, ("persistence", "linear", "regression") if with_regression else ("persistence", "linear"))


def _lags_before(model, case: Case) -> list[np.timedelta64]:
    """How long before its initial time each state is that ``model``'s rollouts read too (``history`` or
    ``input_window``: a StormCast spread by activity, a StormScope package)."""
    from xkmcast.fields.forecast import _start_window

    return [np.timedelta64(k * case.step_hours, "h") for k in range(1, _start_window(model))]


def forecast_from(model, state: xr.Dataset, starts, steps: int, members: int) -> xr.Dataset:
    """``model``'s forecasts from the times ``starts`` of ``state`` (seed 0), which holds the states before
    them that its rollouts read too (:func:`_lags_before`)."""
    return state.kmcast.forecast(model, steps=steps, members=members, seed=0, init_times=starts)


def with_history(model, state: xr.Dataset, starts, case: Case) -> np.ndarray:
    """The times of ``starts`` whose states before them, that ``model``'s rollouts read, are in ``state``."""
    have = state["time"].values
    return np.asarray([t for t in starts if all(np.isin(t - lag, have) for lag in _lags_before(model, case))])


#: training-period starts of the period check (evenly spread; the forecasts cost as much as the scoring)
TRAINING_STARTS = 8


def period_lines(case: Case, dif, members: int, held_out: list[dict], steps: int = 3) -> list[str]:
    """Stepping: RMSE of the ensemble mean and spread-skill at each lead by the period the rollouts start
    in -- the training times, the validation windows (where the spread was calibrated), the held-out
    times (the ensemble rows of :func:`step_rows`, ``held_out``) -- which tells a calibration that missed
    from a held-out period harder than the validation one. Every start whose lead times the state
    holds (of the training times up to TRAINING_STARTS, evenly spread); none without
    validation windows (a recurring validation, ``--valid-every-days``, has no one period)."""
    import xkmcast

    if not case.valid or dif is None:  # no validation window, or no ensemble (ViT)
        return []
    state, _ = open_case(case)
    names, last = case.outputs, state["time"].values[-1]
    spans = {"training": case.train} | {f"validation {i + 1}" if len(case.valid) > 1 else "validation": w
                                        for i, w in enumerate(case.valid)}
    model, out = xkmcast.load_model(dif.bundle), {}
    for label, span in spans.items():
        starts = window(state, span)["time"].values
        if label == "training":  # the validation windows are taken out of the training window
            starts = starts[~np.isin(starts, np.concatenate([window(state, w)["time"].values for w in case.valid]))]
        starts = starts[starts + np.timedelta64(steps * case.step_hours, "h") <= last]
        starts = with_history(model, state, starts, case)
        if label == "training" and len(starts) > TRAINING_STARTS:
            starts = starts[np.linspace(0, len(starts) - 1, TRAINING_STARTS).round().astype(int)]
        ens = forecast_from(model, state[names], starts, steps, members)
        for lead in range(1, steps + 1):
            ahead = starts + np.timedelta64(lead * case.step_hours, "h")
            for v in names:
                truth = state[v].sel(time=ahead).assign_coords(time=starts)
                out.setdefault((v, lead), []).append((label, len(starts), scores(_lead(ens[v], lead, truth), truth)))
    for r in held_out:
        if r["method"] == "ensemble":
            out[(r["var"], r["step"])].append(("held-out", r["starts"], r))
    head = " / ".join(f"{label} ({n} starts)" for label, n, _ in out[(names[0], 1)])
    lines = [f"{case.name}: RMSE of the ensemble mean and spread-skill by the period the rollouts start in: {head}"]
    for (v, lead), got in sorted(out.items(), key=lambda kv: (kv[0][1], names.index(kv[0][0]))):
        lines.append(f"{case.name:10s} {v:5s} {case.step_hours * lead:>3d}h  RMSE "
                     + " / ".join(_fmt(s["rmse"]) for _, _, s in got) + "  SSR " + " / ".join(_fmt(s["ssr"]) for _, _, s in got))
    return lines


def token_seams(model, like: xr.Dataset) -> dict[str, int] | None:
    """{spatial dim: token period} of a transformer's tokens on ``like``'s grid (None: no tokens): of the
    diffusion stage, or of a deterministic model's regression (the ViT)."""
    stage = model.stages["diffusion"] if "diffusion" in model.stages else \
        model.stages["regression"] if len(model.stages) == 1 else None
    patch = next((m.patch_size for m in stage.modules() if getattr(m, "patch_size", None)), None) if stage else None
    if not patch:
        return None
    p = patch if isinstance(patch, int) else patch[0]
    ydim, xdim = list(like[list(like.data_vars)[0]].dims[-2:])
    return {ydim: p, xdim: p}


def token_blockiness(pred: xr.DataArray, truth: xr.DataArray, tokens: dict[str, int]) -> float:
    """Blockiness (xkmcast.fields.blockiness) at the token period over the truth's at the same seams,
    mean over the members; the worst of the period's offsets (a model whose token grid moves with the
    noise level, xkmcast.diffusion.token_jitter, may leave its seams elsewhere than at the padded
    grid's), mean over both axes."""
    from xkmcast.fields.blockiness import blockiness

    ratios = []
    for dim, period in tokens.items():
        ratios.append(max(float(blockiness(pred, period, dims=(dim,), offset=o).mean())
                          / float(blockiness(truth, period, dims=(dim,), offset=o).mean()) for o in range(period)))
    return float(np.mean(ratios))


def _lead(da: xr.DataArray, lead: int, truth: xr.DataArray) -> xr.DataArray:
    """Lead ``lead`` (1-based step) of a forecast (member, init_time, lead_time, y, x) on truth's grid."""
    one = da.isel(lead_time=lead if da.sizes["lead_time"] > lead and _has_lead0(da) else lead - 1)
    one = one.rename({"init_time": "time"}) if "init_time" in one.dims else one
    return on_truth(one.drop_vars([c for c in one.coords if c in ("lead_time", "valid_time")]), truth)


def _has_lead0(da: xr.DataArray) -> bool:
    lt = da["lead_time"].values if "lead_time" in da.coords else None
    return lt is not None and np.asarray(lt).astype("timedelta64[s]").astype(int)[0] == 0


def _ratios(rows: list[dict], bases: tuple[str, ...]) -> list[dict]:
    ref = {(r["var"], r["lead"], r["method"]): r["mae"] for r in rows}
    for r in rows:
        for b in bases:
            r[f"/{b[:4]}"] = r["mae"] / ref[(r["var"], r["lead"], b)]
    return rows


# ------------------------------------------------------------------------------------ table

def _fmt(x: float) -> str:
    if x != x:
        return "-"
    a = abs(x)
    return f"{x:.3g}" if a < 1000 else f"{x:.0f}"


def _interval(lo: float | None, hi: float | None) -> str:
    return "-" if lo is None or lo != lo else f"{lo:.2f}-{hi:.2f}"


def table(rows: list[dict]) -> str:
    lines = []
    tails = next((r["tails"] for r in rows if r.get("tails")), None)
    head = f"{'case':10s} {'var':5s} {'lead':4s} {'method':11s} {'MAE':>7s} {'/bilin':>6s} {'/lin':>6s} {'/regr':>6s} " \
           f"{'RMSE':>7s} {'bias':>7s} {'CRPS':>7s} {'fCRPS':>7s} {'SSR':>5s} {'SSR 90%':>9s} {'spec':>5s} {'seam':>5s}" \
           + (f" {'f>' + '/'.join(_fmt(t) for t in tails):>10s} {'m.max':>5s}" if tails else "") + "  min/max (truth)"
    lines.append(head)
    for r in rows:
        first = r.get("/bili", r.get("/pers"))
        lines.append(
            f"{r['case']:10s} {r['var']:5s} {r['lead']:4s} {r['method']:11s} {_fmt(r['mae']):>7s} {_fmt(first):>6s} "
            f"{_fmt(r['/line']):>6s} {_fmt(r.get('/regr', float('nan'))):>6s} {_fmt(r.get('rmse', float('nan'))):>7s} "
            f"{_fmt(r.get('bias', float('nan'))):>7s} {_fmt(r['crps']):>7s} {_fmt(r['crps_fair']):>7s} "
            f"{_fmt(r['ssr']):>5s} {_interval(r.get('ssr_lo'), r.get('ssr_hi')):>9s} {_fmt(r['spec']):>5s} {_fmt(r['seam']):>5s}"
            + (f" {'/'.join(_fmt(x) for x in r.get('tails', {}).values()) or '-':>10s}"
               f" {_fmt(r.get('member_max', float('nan'))):>5s}" if tails else "")
            + f"  {_fmt(r['lo'])}/{_fmt(r['hi'])} ({_fmt(r['tlo'])}/{_fmt(r['thi'])})")
    return "\n".join(lines)


INTRO = ("Columns: MAE of the ensemble mean and its ratio to bilinear (or persistence), to the linear statistical "
         "baseline (pooled per variable) and to the regression mean; RMSE and bias (mean error) of the ensemble mean (older "
         "blocks lack them; for precipitation the mean and the median rank differently: MAE favours "
         "the median, which a regression of log1p values is close to: the ens-median rows, the members' median as one "
         "field, older blocks lack them); CRPS and fair CRPS; spread-skill ratio and its 90 % "
         "bootstrap interval over the scored times (whole fields resampled: how far other weather could move it); power "
         "of one member / truth over the finest third of wavenumbers; seam: jump across patch borders / truth's "
         "(- when unpatched), for the DiT (storm-dit) and the ViT (storm-vit, deterministic: its forecast is the "
         "regression row; older blocks lack the case) the blockiness at the token period / truth's, the worst of "
         "the period's offsets; f>a/b (precipitation): fraction of member pixels above a and b over the truth's; "
         "m.max (precipitation): one member's maximum over the truth's (the median over members; older blocks "
         "lack it); min/max of the members pooled (truth's). Baselines: bilinear, linear (pooled least squares on "
         "the interpolated inputs), linear-px (per pixel, where the fit times suffice), bil+detail (bilinear plus the "
         "truth's mean departure from it over the fit times, per pixel: the stationary fine detail), persistence. "
         "Downscaling blocks without a bil+detail row were recorded before the CorrDiff regression started from the "
         "training-mean fine detail (model.mean_detail, on since); the storm-x2 / storm-x3 rows of blocks other than "
         "--budgets 120, the one-day-in-four block and navy-x2's weighed that detail by one least-squares fit pooled "
         "over the validation times and the cross-fitted training blocks, the smaller of the two fits since (the "
         "blizzard rows moved by under 0.5 %; guam-x4, one training hour, has no blocks). Training exports the best "
         "validation's weights; CorrDiff "
         "and StormCast members are centred on the regression mean with their spread calibrated on the validation "
         "times, the Stormscope DiT learns the tendency with a spread factor calibrated there, moves its token "
         "grid with the noise level and is validated by the fair CRPS of 4 members; a stepping model's spread is "
         "calibrated at each step of validation rollouts and, in blocks dated from 2026-12-02 on that say so, "
         "scaled by how much the state changed over the step before the initial one (model.spread_by_activity; "
         "the forecasts then read that state too). Stepping cases are scored from every held-out time (the "
         "blizzard: all four hours of the day); blocks whose first line does not give the held-out starts "
         "started from every other one (00 and 12 UTC alone) and solved each step's gain of the spread on the "
         "validation rollouts of full length only (since, on every rollout that reaches that step: "
         "xkmcast.train.spread_steps). Blocks with stepping cases end with a period check (older "
         "blocks lack it): RMSE of the ensemble mean and spread-skill at each lead for rollouts started in the "
         "training times (8, evenly spread), the validation windows and the held-out times, training / validation / "
         "held-out, which tells a spread calibration that missed from a held-out period harder than the one it "
         "was calibrated on. Data and splits: bench/science_cases.py (the blizzard "
         "cases validate on the 2 days before the 4 held-out ones, or with --valid-every-days N on one day in every "
         "N of the 12 before them: data.valid_times={every: ND, length: 1D}). "
         "A block's first line gives the steps each model trained in its budget on that run's machine (older blocks "
         "lack them): the same budget buys fewer steps on a slower or busier machine. "
         "One block per command; each run replaces its own block (a block re-scored with --reuse scores the "
         f"models its command trained before). Blocks not marked \"{SINCE}\" were recorded before the members' spread "
         "was shaped by spatial scale (model.spread_by_scale, on since): their spec columns show the rough members "
         "that shaping removes. Blocks dated before 2026-12-01 sampled StormCast, the DiT and the nowcast with "
         "Heun-18; they default to DPM-Solver++(2M) at 10 steps since (CRPS within 1.2 % on the same weights: "
         "\"Samplers on real data\").")


def record(text: str, command: str, section: str = SECTION, intro: str = INTRO, since: str = SINCE) -> Path:
    """Write ``text`` as the block of ``command`` in ``section`` of docs/benchmarks.md (replacing that
    command's previous block, keeping the others; the section, headed by ``intro``, moves to the end); the
    block's stamp is the date, the machine's cores and ``since``."""
    path = HERE.parent / "docs" / "benchmarks.md"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    start = doc.find(section)
    blocks: dict[str, str] = {}
    if start >= 0:
        end = doc.find("\n## ", start + len(section))
        body = doc[start:] if end < 0 else doc[start:end + 1]
        doc = doc[:start] + ("" if end < 0 else doc[end + 1:])
        for part in body.split("\n### ")[1:]:
            head, _, rest = part.partition("\n")
            blocks[head.strip()] = rest.strip("\n")
    stamp = f"{datetime.date.today().isoformat()}, {os.cpu_count()} cores (shared)" + (f"; {since}" if since else "")
    blocks[f"`{command}`"] = f"{stamp}\n\n```text\n{text}\n```"
    lines = [section, "", intro, ""]
    for head, rest in blocks.items():
        lines += [f"### {head}", "", rest, ""]
    path.write_text(doc.rstrip("\n") + "\n\n" + "\n".join(lines))
    return path


def _without_work(argv: list[str]) -> list[str]:
    """The arguments without ``--work DIR`` and ``--reuse`` (where the runs go, and re-scoring them, do not
    change the table it records)."""
    out, skip = [], False
    for a in argv:
        if skip or a.startswith("--work=") or a == "--reuse":
            skip = False
            continue
        skip = a == "--work"
        if not skip:
            out.append(a)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="30 s per stage, 4 members (about 5 minutes)")
    p.add_argument("--budgets", default=None, help="total training seconds per model, comma-separated "
                   "(default 600; --quick: 60)")
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    p.add_argument("--members", type=int, default=None)
    p.add_argument("--work", default="bench-science-runs", help="work directory (data, runs)")
    p.add_argument("--set", action="append", default=[], help="extra config override for every run (key=value)")
    p.add_argument("--reuse", action="store_true", help="resume the diffusion runs of --work too (a finished "
                   "run only re-exports: scores the models trained before without training again)")
    p.add_argument("--valid-every-days", type=int, default=None, help="blizzard cases: validate on the last day "
                   "of every N days before the held-out ones instead of the 2 days just before them")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    budgets = [float(b) for b in (args.budgets or ("60" if args.quick else "600")).split(",")]
    members = args.members or (4 if args.quick else 8)
    work = Path(args.work).resolve()
    cases = all_cases(work / "data", args.cases.split(",") if args.cases else None, args.valid_every_days)
    blocks = []
    for budget in sorted(budgets):
        rows, periods, trained = [], [], []
        for case in cases:
            t0 = time.perf_counter()
            reg, dif = train_pair(case, work / "runs", budget, f"b{int(budget)}", args.set, args.reuse)
            fn = downscale_rows if case.kind == "downscale" else step_rows
            new = fn(case, reg, dif, members)
            rows += new
            periods += period_lines(case, dif, members, new) if case.kind == "step" else []
            reg_steps, dif_steps = (run.step if run else 0 for run in (reg, dif))
            starts = next((r["starts"] for r in new if "starts" in r), None)  # stepping: the held-out starts
            trained.append(f"{case.name} {reg_steps} + {dif_steps}" + (f" ({starts} held-out starts)" if starts else ""))
            print(f"# {case.name}: {case.note}; regression {reg_steps} steps, diffusion {dif_steps} steps, "
                  f"{time.perf_counter() - t0:.0f} s\n{table(new)}", flush=True)
        text = f"training budget {budget:.0f} s per model (regression {budget / 2:.0f} s + diffusion " \
               f"{budget / 2:.0f} s), {members} members; steps trained on this machine (regression + diffusion): " \
               + ", ".join(trained) + "\n" + table(rows) + "".join("\n" + line for line in periods)
        print(text, flush=True)
        blocks.append(text)
    if not args.no_record:
        cmd = "python bench/science.py " + " ".join(_without_work(sys.argv[1:]))
        print(f"recorded in {record(chr(10).join(blocks), cmd.strip())}")


if __name__ == "__main__":
    main()
