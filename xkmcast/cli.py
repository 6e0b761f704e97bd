"""The ``xkmcast`` command line: each command is a few lines over the library.

Every command reports an :class:`~xkmcast.errors.XkmcastError` as ``error: <message>`` with exit code 2
(``xkmcast --debug COMMAND`` also prints the traceback; :mod:`xkmcast.cli_errors`)."""

from __future__ import annotations

import re

import typer

from .cli_errors import reported_errors

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Kilometre-scale generative weather models for xarray.")
catalog_app = typer.Typer(no_args_is_help=True, help="List and download the datasets of the xkmcast catalog.")
models_app = typer.Typer(no_args_is_help=True, help="NVIDIA's published models that --model NAME fetches and loads.")
app.add_typer(models_app, name="models")
MODEL_HELP = "a published model name (xkmcast models list), a bundle folder, or a package folder / archive"
KNOWN_HASH_HELP = "FILE=SHA256 of a published model's file whose hash the registry does not know (repeatable)"
CENTRE_HELP = ("members centred on the regression mean (default: as the model records it: on for "
               "residual models trained by xkmcast, off for published packages)")
TRUST_HELP = ("verify Hugging Face files the registry has no hash for against the checksums the host lists at the "
              "pinned revision (--no-trust-host-hashes: refuse them)")
app.add_typer(catalog_app, name="catalog")


def _register_training() -> None:
    from .train.cli import debug_option, register

    app.callback()(debug_option)  # xkmcast --debug COMMAND ...
    register(app)  # train, scale, prepare


@app.command()
def version() -> None:
    """Print the xkmcast version."""
    import xkmcast

    typer.echo(xkmcast.__version__)


@app.command()
def kinds() -> None:
    """List the model kinds: stages, the conditions each stage may use, time step, sampler defaults."""
    from rich.console import Console
    from rich.table import Table

    from .models.kinds import KINDS

    table = Table("kind", "regression may use", "diffusion may use", "time step", "sampler", "description")
    for kind in KINDS.values():
        uses = [", ".join(kind.conditions[s]) if s in kind.conditions else "(no such stage)"
                for s in ("regression", "diffusion")]
        sampler = "" if kind.sampler is None else f"{kind.sampler.sampler} {kind.sampler.num_steps} steps"
        table.add_row(kind.name, *uses, kind.time_step or "(downscaling)", sampler, kind.description)
    Console(width=200).print(table)


@catalog_app.command("list")
def catalog_list() -> None:
    """List the catalog entries with their descriptions."""
    from rich.console import Console
    from rich.table import Table

    from .data.catalog import catalog_list as entries

    table = Table("name", "description")
    for name, description in entries():
        table.add_row(name, description)
    Console().print(table)


@models_app.command("list")
def models_list() -> None:
    """List the published models (name, description)."""
    from .models.published.registry import entries

    for name, entry in entries().items():
        typer.echo(f"{name:24s} {entry.description}")


def _model(model: str, known_hash: list[str] | None, trust_host_hashes: bool):
    """A published name becomes a loaded pipeline (with the hash options); anything else stays a path."""
    from .errors import ConfigError, explain
    from .models.published import published_models

    if model not in published_models():
        return model
    import xkmcast

    hashes = {}
    for item in known_hash or []:
        fname, sep, digest = item.partition("=")
        if not sep:
            raise ConfigError(explain("--known-hash takes FILE=SHA256", found=item))
        hashes[fname] = digest
    return xkmcast.load_model(model, known_hashes=hashes or None, trust_host_hashes=trust_host_hashes)


@catalog_app.command("fetch")
def catalog_fetch(name: str) -> None:
    """Download the files of catalog entry NAME (hash-checked, cached); print the local path."""
    from .data.catalog import catalog_fetch as fetch

    with reported_errors():
        typer.echo(str(fetch(name)))


def _open_input(name_or_path: str, part: str | None, times: str | None):
    """A catalog entry or path (any published layout), optionally one part and a time selection."""
    import xkmcast

    from .errors import TimeCoverageError, explain
    from .fields.grid import find_time_dim, time_indexed

    kwargs = {"part": part} if part else {}
    ds = xkmcast.open_dataset(name_or_path, **kwargs)
    ds = time_indexed(ds, find_time_dim(ds), "time")  # as "time" (ERA5 from the CDS: valid_time; WRF: Time, XTIME)
    if times:
        try:
            ds = ds.sel(time=parse_times(times))
        except (KeyError, ValueError) as exc:
            raise TimeCoverageError(explain(f"--times {times} are not all times of {name_or_path}",
                                            expected=f"times within {ds.time.values.min()} .. {ds.time.values.max()}",
                                            found=str(exc).splitlines()[0] if str(exc) else times,
                                            fix="list times the data hold, or give a range START..END")) from None
    return ds


#: the older START:END form of a --times range, still read when what follows the ':' is a date (a year),
#: never the minutes of an ISO time
_COLON_RANGE = re.compile(r"^(?P<start>.*?):(?P<stop>\d{4}-.*|)$")


def parse_times(text: str) -> slice | list[str]:
    """``--times`` text -> a label slice or a list of labels.

    ``"2018-09-14T13:00..2018-09-14T18:00"`` -> slice (inclusive, open ends allowed: ``"..2018-09-15"``;
    the range forms of :data:`xkmcast.train.config_times.RANGE`);
    ``"2018-09-14T13:00,2018-09-14T14:00"`` -> list; one time -> a one-element list. ISO datetimes
    keep their ``:`` (hours and minutes); ``START:END`` between two dates still means a range.
    """
    from .train.config_times import split_range

    text = text.strip()
    if "," not in text:
        bounds = split_range(text)
        if bounds is None and (m := _COLON_RANGE.match(text)) and (m.group("start") or m.group("stop")):
            bounds = (m.group("start").strip() or None, m.group("stop").strip() or None)
        if bounds is not None:
            return slice(*bounds)
    return [t.strip() for t in text.split(",") if t.strip()]


def _hours(text: str | None) -> list[float] | None:
    """``--lead-times`` text ("-12,0,6") -> hours."""
    from .errors import ConfigError, explain

    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(explain("--lead-times must be hours separated by commas", expected="e.g. -12,0,6",
                                  found=text)) from None


@app.command()
def downscale(
    model: str = typer.Argument(..., help=MODEL_HELP),
    input: str = typer.Argument(..., help="coarse input: a catalog entry or a NetCDF / zarr path"),
    output: str = typer.Argument(..., help="result path: .zarr or .nc"),
    members: int = typer.Option(1, help="ensemble members"),
    seed: int = typer.Option(0, help="seed of the ensemble (member k is the same whatever the batching)"),
    steps: int | None = typer.Option(None, "--steps", help="sampler steps (default: the model's)"),
    sampler: str | None = typer.Option(None, help="heun | euler | dpmpp_2m"),
    times: str | None = typer.Option(None, help="'START..END' (inclusive) or a comma-separated list of ISO times"),
    part: str | None = typer.Option(None, help="part of a published layout to use as input (e.g. input)"),
    batch_size: int | None = typer.Option(None, help="samples per network call"),
    time_chunk: int = typer.Option(1, help="times per dask task"),
    include_mean: bool = typer.Option(False, help="also write the regression mean as <var>_regression"),
    layout: str = typer.Option("cf", help="NetCDF layout: cf, or corrdiff (groups input / truth / prediction)"),
    truth: str | None = typer.Option(None, help="truth dataset to store in the corrdiff layout"),
    regrid: str | None = typer.Option(None, "--regrid",
                                      help="bilinear | nearest | conservative (default: as the model was trained)"),
    allow_outside: bool = typer.Option(False, "--allow-outside",
                                       help="model grid points the input does not cover come out NaN instead of an error"),
    device: str | None = typer.Option(None, help="cuda / cpu (default: automatic)"),
    precision: str = typer.Option("fp32", help="fp32, amp-bf16 (bfloat16 autocast on CUDA and CPU), or auto (amp-bf16 where the device computes bfloat16 in hardware)"),
    overwrite: bool = typer.Option(False, help="replace an existing output"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    check_ranges: bool = typer.Option(True, help="refuse physically implausible input values (wrong units)"),
    centre: bool | None = typer.Option(None, "--centre/--no-centre", help=CENTRE_HELP),
    lead_times: str | None = typer.Option(None, help="time-window packages (corrdiff-cmip6-era5) only: hours after "
                                          "each window centre, comma-separated, e.g. --lead-times=-12,0 (default -12)"),
    known_hash: list[str] | None = typer.Option(None, help=KNOWN_HASH_HELP),
    trust_host_hashes: bool = typer.Option(True, "--trust-host-hashes/--no-trust-host-hashes", help=TRUST_HELP),
) -> None:
    """Downscale INPUT with MODEL and write OUTPUT (streamed time chunk by time chunk)."""
    from .fields.downscale import downscale as run
    from .fields.io import output_format, write_corrdiff_netcdf, write_dataset
    from .fields.validate import require_positive

    with reported_errors():
        model = _model(model, known_hash, trust_host_hashes)
        require_positive(members=members, time_chunk=time_chunk, steps=steps, batch_size=batch_size)
        output_format(output)
        ds = _open_input(input, part, times).chunk({"time": time_chunk})
        result = run(ds, model, members=members, seed=seed, num_steps=steps, sampler=sampler, batch_size=batch_size,
                     time_chunk=time_chunk, include_mean=include_mean, device=device, precision=precision,
                     regrid_method=regrid, regrid_options={"allow_outside": True} if allow_outside else None,
                     check_ranges=check_ranges, lead_times=_hours(lead_times), centre=centre)
        if layout == "corrdiff":
            truth_ds = _open_input(truth, "target" if part else None, times) if truth else None
            if truth_ds is not None:
                truth_ds = truth_ds[[v for v in result.data_vars if v in truth_ds.data_vars]].sel(time=result.time)
            write_corrdiff_netcdf(result, output, truth=truth_ds, overwrite=overwrite, progress=not quiet)
        else:
            write_dataset(result, output, overwrite=overwrite, progress=not quiet)
    typer.echo(f"wrote {output}: {dict(result.sizes)}")


@app.command()
def forecast(
    model: str = typer.Argument(..., help=MODEL_HELP + " (stormcast, stormscope or vit)"),
    init: str = typer.Argument(..., help="initial state: a catalog entry or a NetCDF / zarr path on the model grid"),
    output: str = typer.Argument(..., help="result path: .zarr (written step by step, resumable) or .nc"),
    background: str | None = typer.Option(None, help="coarse background covering the forecast window"),
    steps: int = typer.Option(12, help="time steps to roll forward"),
    members: int = typer.Option(1, help="ensemble members"),
    seed: int = typer.Option(0, help="seed of the ensemble"),
    sampler_steps: int | None = typer.Option(None, help="sampler steps of diffusion models"),
    sampler: str | None = typer.Option(None, help="heun | euler | dpmpp_2m"),
    times: str | None = typer.Option(None, help="initial times: 'START..END' (inclusive) or a comma-separated "
                                     "list (default: every time of INIT); the states before them that the "
                                     "model reads come from INIT too"),
    part: str | None = typer.Option(None, help="part of a published layout holding the state"),
    device: str | None = typer.Option(None, help="cuda / cpu (default: automatic)"),
    quiet: bool = typer.Option(False, help="no progress output"),
    overwrite: bool = typer.Option(False, help="replace an existing NetCDF output (zarr outputs resume)"),
    check_ranges: bool = typer.Option(True, help="refuse physically implausible input values (wrong units)"),
    centre: bool | None = typer.Option(None, "--centre/--no-centre", help=CENTRE_HELP),
    known_hash: list[str] | None = typer.Option(None, help=KNOWN_HASH_HELP),
    trust_host_hashes: bool = typer.Option(True, "--trust-host-hashes/--no-trust-host-hashes", help=TRUST_HELP),
) -> None:
    """Roll MODEL forward from INIT and write OUTPUT (zarr: each step as soon as it is computed)."""
    from .fields.io import output_format, write_dataset
    from .fields.forecast import forecast as run

    with reported_errors():
        model = _model(model, known_hash, trust_host_hashes)
        common = dict(steps=steps, members=members, seed=seed, sampler=sampler, num_steps=sampler_steps,
                      device=device, check_ranges=check_ranges, centre=centre,
                      init_times=parse_times(times) if times else None)
        zarr = output_format(output) == "zarr"
        state = _open_input(init, part, None)
        bg = _open_input(background, "background" if part else None, None) if background else None
        if zarr:
            result = run(state, model, background=bg, output=output, progress=not quiet, **common)
        else:
            result = run(state.chunk({"time": 1}), model, background=bg, **common)
            write_dataset(result, output, overwrite=overwrite, progress=not quiet)
    typer.echo(f"wrote {output}: {dict(result.sizes)}")


@app.command()
def score(
    prediction: str = typer.Argument(..., help="prediction (.zarr / .nc, or a CorrDiff generate.py NetCDF)"),
    truth: str | None = typer.Argument(None, help="truth dataset (not needed for the CorrDiff layout)"),
    output: str | None = typer.Option(None, "-o", "--output", help="write the scores to .nc or .zarr"),
    baseline: str | None = typer.Option(None, help="a baseline prediction to score alongside"),
    keep: str | None = typer.Option(None, help="dimension to keep (time or lead_time)"),
    fair: bool = typer.Option(False, help="fair CRPS (M(M-1) denominator)"),
    interval: float | None = typer.Option(None, help="also each score's bootstrap interval over the times "
                                          "at this level, e.g. 0.9"),
) -> None:
    """Score PREDICTION against TRUTH: CRPS, MAE, RMSE, spread, spread-skill per variable."""
    from rich.console import Console

    from .fields.scoring import format_table, score_files

    with reported_errors():
        scores = score_files(prediction, truth, out=output, baseline_path=baseline, keep=keep, fair=fair,
                             interval=interval)
    Console().print(format_table(scores, title=f"scores of {prediction}"))


@app.command()
def demo(
    outdir: str = typer.Option("demo-output", help="where to write the results"),
    members: int = typer.Option(8, help="ensemble members"),
    quiet: bool = typer.Option(False, help="print only the result table"),
    overrides: list[str] = typer.Argument(None, help="training overrides key=value (e.g. training.duration=50)"),
) -> None:
    """Train a tiny CorrDiff on the shipped sample, downscale held-out hours, score and plot them."""
    from .demo import run_demo

    with reported_errors():
        result = run_demo(outdir, members=members, overrides=tuple(overrides or ()), quiet=quiet)
    if not result.ok:
        typer.echo("the demo's claims did not hold (see the lines above): this is a bug to report", err=True)
        raise typer.Exit(1)


_register_training()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # torchrun -m xkmcast.cli train CONFIG
    main()
