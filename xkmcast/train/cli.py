"""The ``train``, ``scale`` and ``prepare`` commands (registered on the main app by :func:`register`).

    xkmcast train CONFIG [key=value ...] [--quiet]       CONFIG: a preset name or a YAML file
    xkmcast train --list                                  the presets
    xkmcast scale CONFIG [key=value ...] --factors 0.5 1 2 4 --types width depth [--steps N | --seconds S]
    xkmcast prepare FINE OUT --input t2m,u10m,... --output t2m,... [--log tp] [--coarse COARSE | --coarsen 8]

Several GPUs / nodes: ``torchrun --nproc_per_node=8 -m xkmcast.train.cli train CONFIG ...``.
"""

from __future__ import annotations

import sys

import typer

from ..cli_errors import reported_errors, set_debug, signal_exit_code

__all__ = ["register", "train_command", "scale_command", "prepare_command", "app"]

_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def train_command(
    config: str = typer.Argument(None, help="A preset name (see --list) or a YAML file."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides such as training.lr=1e-4."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    list_presets: bool = typer.Option(False, "--list", help="List the presets and exit."),
) -> None:
    """Train a model stage: CONFIG (preset or YAML) with key=value overrides; resumes by default."""
    from .config import list_presets as presets
    from .config import load_config
    from .trainer import train

    if list_presets or config is None:
        typer.echo("\n".join(presets()))
        return
    with reported_errors():
        result = train(load_config(config, overrides or []), quiet=quiet)
    if result.bundle is not None:
        typer.echo(f"model bundle: {result.bundle}")
    code = signal_exit_code(result.stop_reason)
    if code is not None:  # stopped by a signal: checkpoint written; tell the calling script
        typer.echo(f"stopped by {result.stop_reason} at step {result.step}; checkpoint written", err=True)
        raise typer.Exit(code=code)


def _split_lists(args: list[str], names: tuple[str, ...]) -> tuple[list[str], dict[str, list[str]]]:
    """Overrides and the values of ``--name v1 v2 ...`` options (values until the next ``--``)."""
    rest: list[str] = []
    found: dict[str, list[str]] = {}
    current = None
    for arg in args:
        if arg.startswith("--"):
            key = arg[2:].split("=", 1)
            if key[0] not in names:
                raise typer.BadParameter(f"unknown option {arg}; expected one of {['--' + n for n in names]}")
            current = key[0]
            found.setdefault(current, [])
            if len(key) == 2:
                found[current] += [v for v in key[1].split(",") if v]
        elif current is not None and "=" not in arg:
            found[current].append(arg)
        else:
            current = None
            rest.append(arg)
    return rest, found


def scale_command(ctx: typer.Context, config: str = typer.Argument(..., help="A preset name or a YAML file.")) -> None:
    """Scaling experiments: --factors 0.5 1 2 4 --types width depth batch resolution data precision
    [--steps N] [--seconds S] [--outdir DIR]; then key=value overrides of the base config."""
    from .scaling import print_table, run_scaling

    overrides, opts = _split_lists(list(ctx.args), ("factors", "types", "steps", "seconds", "outdir", "quiet"))
    try:
        factors = [float(f) for f in opts.get("factors", ["0.5", "1", "2", "4"])]
        steps = int(opts["steps"][0]) if opts.get("steps") else None
        seconds = float(opts["seconds"][0]) if opts.get("seconds") else None
    except (ValueError, IndexError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if steps is None and seconds is None:
        steps = 20
    with reported_errors():
        rows = run_scaling(config, overrides, factors=factors, types=opts.get("types", ["width"]), steps=steps,
                           seconds=seconds, outdir=(opts.get("outdir") or [None])[0])
    print_table(rows)


def _names(values: list[str]) -> list[str]:
    """Variable names from repeated options and / or comma-separated lists."""
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _pairs(items: list[str], option: str) -> dict[str, str]:
    """``["tp=log1p"]`` -> ``{"tp": "log1p"}``; ConfigError for an item without ``=``."""
    from ..errors import ConfigError, explain

    bad = [i for i in items if "=" not in i]
    if bad:
        raise ConfigError(explain(f"{option} takes VARIABLE=NAME", expected="e.g. tp=log1p", found=bad))
    return dict(i.split("=", 1) for i in items)


def prepare_command(
    fine: str = typer.Argument(..., help="Fine (target) dataset: catalog entry or path."),
    out: str = typer.Argument(..., help="Output zarr store."),
    input_vars: list[str] = typer.Option(..., "--input", help="Coarse input variables (repeat, or comma-separated)."),
    output_vars: list[str] = typer.Option(..., "--output", help="Target variables (repeat, or comma-separated)."),
    invariants: list[str] = typer.Option([], "--invariant", help="Invariant fields of the fine dataset."),
    log_vars: list[str] = typer.Option([], "--log", help="Variables stored log-transformed (precipitation)."),
    transforms: list[str] = typer.Option([], "--transform",
                                         help="VAR=log1p|sqrt: transform VAR before its statistics (repeat or comma-separate)."),
    coarse: str = typer.Option(None, "--coarse", help="Coarse input dataset (entry or path)."),
    coarsen: int = typer.Option(None, "--coarsen", help="Make the input by block-averaging the fine data."),
    regrid_method: str = typer.Option("bilinear", "--regrid", help="bilinear | nearest | conservative."),
    times: str = typer.Option(None, "--times", help="Times to keep: START..END (either end open), or a "
                              "comma-separated list; as downscale --times."),
    stats_start: str = typer.Option(None, "--stats-start", help="First time of the statistics window (ISO)."),
    stats_end: str = typer.Option(None, "--stats-end", help="Last time of the statistics window (ISO); "
                                  "use your training window so that no evaluation time enters the normalisation."),
    allow_outside: bool = typer.Option(False, "--allow-outside",
                                       help="Fine points the coarse grid does not cover take the nearest coarse value "
                                            "instead of an error (the ring outside the centres of block means)."),
    states: bool = typer.Option(False, "--states",
                                help="The targets are a forecaster's states (stormcast, stormscope, vit): refuse "
                                     "missing values in them now, as training would (each state is the next input)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Write a training store (inputs on the fine grid, targets, invariants, statistics).

    Without --coarse / --coarsen, a layout holding both (the sample, HRRR-Mini, CWA) gives its input part."""
    from ..cli import parse_times
    from ..data.prepare import open_pair, prepare

    with reported_errors():
        fine_ds, coarse_ds = open_pair(fine, coarse, coarsen)
        path = prepare(fine_ds, coarse_ds, out, input_vars=_names(input_vars), output_vars=_names(output_vars),
                       invariants=_names(invariants), log_vars=_names(log_vars), regrid_method=regrid_method,
                       regrid_options={"allow_outside": "nearest"} if allow_outside else None, overwrite=overwrite,
                       transforms=_pairs(_names(transforms), "--transform"),
                       stats_times=slice(stats_start, stats_end) if (stats_start or stats_end) else None,
                       states=states, times=parse_times(times) if times else None)
    typer.echo(str(path))
    _report_missing(path)


def _report_missing(path) -> None:
    """One line naming the targets of the store at ``path`` with missing values, and their share."""
    import json

    from ..data.prepare import MISSING_ATTR, TARGET_PREFIX, open_store

    store = open_store(path)
    counts = {n: c for n, c in json.loads(store.attrs.get(MISSING_ATTR, "{}")).items() if c}
    if counts:
        typer.echo("targets with missing values (left out of training): " + ", ".join(
            f"{n.removeprefix(TARGET_PREFIX)} {100 * c / store[n].size:.1f} %" for n, c in counts.items()))


def debug_option(debug: bool = typer.Option(False, "--debug", help="Show the traceback of errors.")) -> None:
    """Kilometre-scale generative weather models for xarray."""
    set_debug(debug)


def register(app: typer.Typer) -> None:
    """Add ``train``, ``scale`` and ``prepare`` to ``app``."""
    app.command("train")(train_command)
    app.command("scale", context_settings=_EXTRA)(scale_command)
    app.command("prepare")(prepare_command)


app = typer.Typer(no_args_is_help=True, add_completion=False, help="xkmcast training commands.")
app.callback()(debug_option)
register(app)

if __name__ == "__main__":  # torchrun -m xkmcast.train.cli train CONFIG ...
    sys.exit(app())
