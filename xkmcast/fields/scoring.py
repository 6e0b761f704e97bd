"""Dataset-level scoring: a table of scores per variable, and the files the CorrDiff recipe writes.

``score(prediction, truth)`` returns one Dataset with a data variable per score and a ``variable``
dimension (one row per forecast variable)::

    <xarray.Dataset>
    Dimensions:     (variable: 2[, lead_time: 12])
    Coordinates:    variable (variable) <U4 't2m' 'u10m';  units (variable) <U5 'K' 'm s-1'
    Data variables: mae, rmse, bias, crps[, spread, spread_skill][, baseline_mae, baseline_rmse]

- ``mae`` / ``rmse`` / ``bias``: of the ensemble mean (of the forecast itself when it has no members).
- ``crps``: ensemble CRPS (:func:`xkmcast.fields.metrics.crps`, plain estimator unless ``fair=True``); for a
  deterministic forecast it equals ``mae``.
- ``spread`` / ``spread_skill``: only for ensembles of two or more members.
- ``baseline_mae`` / ``baseline_rmse``: of ``baseline`` (its ensemble mean if it has members), e.g.
  the regression network alone or the interpolated coarse input.
- the truth's and the baseline's variables are matched to the prediction's canonical names by alias or
  CF standard_name (CMIP's ``tas`` is ``t2m``) and converted to the prediction's units.
- with ``interval``: ``<score>_low`` / ``<score>_high``, each score's bootstrap interval over the
  forecast times (:mod:`xkmcast.fields.resampling`); the tables print it in brackets after the score.

A ``variable`` dimension (rather than per-variable data variables) keeps every score in one array that
``scores.crps.sel(variable="t2m")``, ``to_dataframe()`` and the table rendering handle alike. Units of
each forecast variable are in the ``units`` coordinate (spread-skill has no units).

``open_corrdiff_netcdf`` reads the NetCDF file of the CorrDiff recipe's ``generate.py``: root group
with 2-D ``lat`` / ``lon`` (y, x) and ``time`` (hours since 1990-01-01, or strings when the run had
lead times); groups ``truth`` (time, y, x), ``prediction`` (ensemble, time, y, x) and ``input`` (time,
y, x), one variable per channel. ``score_files`` is what ``xkmcast score`` calls.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import xarray as xr

from . import metrics
from ..data.layouts import is_zarr_store, zarr_consolidated
from ..errors import CoordinateError, DataNotFoundError, InvalidDataError, MissingVariableError, explain
from .scoring_align import match_truth

__all__ = ["score", "format_table", "format_text", "open_corrdiff_netcdf", "score_files", "open_any"]

SCORE_ORDER = ("crps", "mae", "rmse", "bias", "spread", "spread_skill", "baseline_mae", "baseline_rmse")


# --------------------------------------------------------------------------------------------- score


def score(
    prediction: xr.Dataset,
    truth: xr.Dataset,
    baseline: xr.Dataset | None = None,
    dim: Hashable | Sequence[Hashable] | None = None,
    member_dim: Hashable = "member",
    *,
    keep: Hashable | Sequence[Hashable] | None = None,
    variables: Sequence[str] | None = None,
    weights: xr.DataArray | None = None,
    fair: bool = False,
    interval: float | None = None,
    resamples: int = 1000,
    resample_over: Hashable = "time",
    seed: int | None = 0,
) -> xr.Dataset:
    """Score ``prediction`` against ``truth`` for every variable they share (see the module docstring).

    ``interval`` (e.g. 0.9): also ``<score>_low`` / ``<score>_high`` for every score, its percentile
    interval when the positions of ``resample_over`` (the forecast times) are resampled ``resamples``
    times (:func:`xkmcast.fields.resampling.bootstrap_interval`, drawn with ``seed``); ``resample_over``
    must be one of the dims averaged over, and ``weights`` must not vary along it.

    ``(prediction, truth)``: the forecast first (xskillscore takes ``(observations, forecasts)``);
    errors are ``prediction - truth``, so a positive ``bias`` means the prediction is too high.

    ``dim``: dims to average over (None: all but the members, minus those in ``keep``); ``keep``:
    dims to keep instead, e.g. ``keep="lead_time"``. The truth is first put on the prediction's dims
    (:func:`xkmcast.fields.scoring_align.match_truth`): selected at the prediction's coordinates (``time``,
    ``x``...), at its ``valid_time`` when the prediction is indexed by lead time, its grid dims renamed
    when it is the same grid under other names. Raises :class:`MissingVariableError` when no variable
    is shared, :class:`TimeCoverageError` when the truth lacks some of the prediction's times and
    :class:`~xkmcast.errors.GridError` when its dims would broadcast against the prediction's.
    """
    if isinstance(prediction, xr.DataArray) or isinstance(truth, xr.DataArray):
        prediction, truth = _as_dataset(prediction), _as_dataset(truth)
    truth = _as_prediction_names(prediction, truth, variables)
    names = _shared_variables(prediction, truth, variables)
    prediction, truth = prediction[names], match_truth(prediction[names], truth[names], member_dim)
    reduce = _score_dims(prediction, dim, keep, member_dim)

    has_members = member_dim in prediction.dims
    mean = prediction.mean(member_dim) if has_members else prediction
    kw = {"dim": reduce, "weights": weights, "member_dim": member_dim}
    # each score: (metric, the forecast it scores)
    how: dict[str, tuple] = {"crps": (partial(metrics.crps, fair=fair), prediction), "mae": (metrics.mae, mean),
                             "rmse": (metrics.rmse, mean), "bias": (metrics.bias, mean)}
    n_members = prediction.sizes[member_dim] if has_members else 1
    if n_members >= 2:
        how.update(spread=(metrics.spread, prediction), spread_skill=(metrics.spread_skill, prediction))
    if baseline is not None:
        base = _as_prediction_names(prediction, _as_dataset(baseline), names)
        missing = [n for n in names if n not in base]
        if missing:
            raise MissingVariableError(
                explain("The baseline lacks variables of the prediction", expected=names, found=list(base.data_vars))
            )
        base = match_truth(prediction, base[names], member_dim, what="baseline")
        if member_dim in base.dims:
            base = base.mean(member_dim)
        base = base.transpose(*[d for d in mean.dims if d in base.dims], ...)
        how.update(baseline_mae=(metrics.mae, base), baseline_rmse=(metrics.rmse, base))
    out: dict[str, xr.Dataset] = {key: fn(forecast, truth, **kw) for key, (fn, forecast) in how.items()}
    if interval is not None:
        out.update(_intervals(how, truth, kw, interval, resamples, resample_over, seed))

    units = [str(truth[n].attrs.get("units", prediction[n].attrs.get("units", ""))) for n in names]
    scores = xr.Dataset(
        {
            key: value.to_dataarray("variable").assign_attrs(_long_name(key, fair))
            for key, value in out.items()
        }
    )
    scores = scores.assign_coords(variable=list(names), units=("variable", units))
    scores.attrs = {
        "n_members": int(n_members),
        "crps_estimator": "fair" if fair else "plain (energy form, M^2)",
        "averaged_over": " ".join(map(str, reduce)),
        **({"interval": f"{interval:g} bootstrap over {resample_over} ({resamples} resamples)"} if interval else {}),
        "title": "xkmcast scores",
    }
    return scores


def _intervals(how: dict, truth: xr.Dataset, kw: dict, level: float, resamples: int, over: Hashable, seed) -> dict:
    """``<score>_low`` / ``<score>_high`` of every score of ``how`` (see :func:`score`)."""
    from .resampling import bootstrap_interval

    weights = kw.get("weights")
    if weights is not None and over in weights.dims:
        raise InvalidDataError(explain(f"Weights that vary along the resampled dimension {over!r}",
                                       found=f"weights dims {list(weights.dims)}",
                                       fix=f"pass weights without {over!r} (e.g. cos(latitude)), or resample another dim"))
    out = {}
    for key, (fn, forecast) in how.items():
        q = bootstrap_interval(fn, forecast, truth, over=over, resamples=resamples, level=level, seed=seed, **kw)
        out[f"{key}_low"], out[f"{key}_high"] = (q.isel(quantile=i, drop=True) for i in (0, 1))
    return out


def _long_name(key: str, fair: bool) -> dict:
    base, _, bound = key.rpartition("_")
    if bound in ("low", "high") and base:
        return {"long_name": f"{bound} end of the bootstrap interval of the {_long_name(base, fair)['long_name']}"}
    names = {
        "crps": "fair CRPS" if fair else "CRPS",
        "mae": "mean absolute error of the ensemble mean",
        "rmse": "root mean square error of the ensemble mean",
        "bias": "mean error of the ensemble mean",
        "spread": "ensemble spread (sqrt of the mean member variance)",
        "spread_skill": "spread-skill ratio, sqrt((M+1)/M) spread / rmse",
        "baseline_mae": "mean absolute error of the baseline",
        "baseline_rmse": "root mean square error of the baseline",
    }
    return {"long_name": names[key]}


def _as_dataset(obj: xr.Dataset | xr.DataArray) -> xr.Dataset:
    if isinstance(obj, xr.Dataset):
        return obj
    return obj.to_dataset(name=obj.name if obj.name is not None else "value")


def _as_prediction_names(prediction: xr.Dataset, truth: xr.Dataset, variables) -> xr.Dataset:
    """``truth`` (or a baseline) with the prediction's variables (``variables``, else all) under the
    prediction's names and in its units: a canonical variable that the truth holds under an alias or CF
    standard_name (CMIP's ``tas`` for ``t2m``) is taken from there
    (:func:`~xkmcast.fields.variables.get_variable`), and a truth variable whose ``units`` differ from
    the prediction's is converted to them (``degC`` to ``K``); one without ``units`` is taken as it is."""
    from .variables import convert_units, find_variable, get_variable, normalise_units

    found = {}
    for name in (list(variables) if variables is not None else list(prediction.data_vars)):
        if name not in prediction.data_vars:
            continue
        taken = name not in truth.data_vars
        try:
            src = find_variable(truth, name) if taken else name
        except MissingVariableError:  # not there, or a name the variable table does not know
            continue
        has_units = truth[src].attrs.get("units") is not None  # without units: taken as they are
        da = get_variable(truth, name, convert=has_units) if taken else truth[name]
        units = prediction[name].attrs.get("units")
        if has_units and units is not None and normalise_units(da.attrs.get("units")) != normalise_units(units):
            da, taken = convert_units(da, units, standard_name=prediction[name].attrs.get("standard_name")), True
        if taken:
            found[name] = da
    return truth.assign(found) if found else truth


def _shared_variables(prediction: xr.Dataset, truth: xr.Dataset, variables) -> list[str]:
    wanted = list(variables) if variables is not None else list(prediction.data_vars)
    names = [n for n in wanted if n in prediction.data_vars and n in truth.data_vars]
    if not names or (variables is not None and len(names) < len(wanted)):
        raise MissingVariableError(
            explain(
                "The prediction and the truth share no variable to score"
                if not names
                else "Some requested variables are missing from the prediction or the truth",
                expected=wanted,
                found=f"prediction {list(prediction.data_vars)}, truth {list(truth.data_vars)}",
                fix="rename the truth's variables to the prediction's names (xkmcast.fields.variables.select_variables)",
            )
        )
    return names


def _score_dims(prediction: xr.Dataset, dim, keep, member_dim) -> list[Hashable]:
    """The dims the scores average over: ``dim``, else all but the members and ``keep``
    (:func:`xkmcast.fields.metrics._reduce_dims`)."""
    kept = [] if keep is None or dim is not None else [keep] if isinstance(keep, str) else list(keep)
    missing = [k for k in kept if k not in prediction.dims]
    if missing:
        raise CoordinateError(
            explain(f"Cannot keep {missing}: no such dimension", expected=list(prediction.dims), found=kept)
        )
    return metrics._reduce_dims(dim, member_dim, prediction, keep=kept)


# --------------------------------------------------------------------------------------------- tables


def _rows(scores: xr.Dataset) -> tuple[list[str], list[list[str]]]:
    scores = scores.compute()
    bounds = {f"{k}_{b}" for k in scores.data_vars for b in ("low", "high")}
    keys = [k for k in SCORE_ORDER if k in scores.data_vars] + [
        k for k in scores.data_vars if k not in SCORE_ORDER and k not in bounds
    ]
    extra = [d for d in scores.dims if d != "variable"]
    header = ["variable", *map(str, extra), *keys, "units"]
    stacked = scores.stack(_row=["variable", *extra])
    rows = []
    for i in range(stacked.sizes["_row"]):
        r = stacked.isel(_row=i)
        cells = [str(r["variable"].values)] + [format_coordinate(r[d].values) for d in extra]
        cells += [_cell(r, k) for k in keys]
        cells.append(str(r["units"].values) if "units" in r.coords else "")
        rows.append(cells)
    return header, rows


def _cell(row: xr.Dataset, key: str) -> str:
    """A score, with its bootstrap interval in brackets when the scores have one."""
    text = f"{float(row[key]):.4g}"
    if f"{key}_low" in row:
        text += f" [{float(row[f'{key}_low']):.3g}, {float(row[f'{key}_high']):.3g}]"
    return text


def format_coordinate(value) -> str:
    """A coordinate value for a table cell or a title: times to the minute, lead times in hours."""
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.datetime64):
        return str(np.datetime_as_string(value, unit="m"))
    if np.issubdtype(value.dtype, np.timedelta64):
        return f"{value / np.timedelta64(1, 'h'):g} h"
    return str(value)


def format_table(scores: xr.Dataset, title: str | None = None):
    """A ``rich.table.Table`` of ``scores`` (one row per variable and kept coordinate)."""
    from rich.table import Table

    header, rows = _rows(scores)
    table = Table(title=title or scores.attrs.get("title", "scores"))
    for i, name in enumerate(header):
        numeric = i > 0 and name != "units" and name in scores.data_vars
        table.add_column(name, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*row)
    return table


def format_text(scores: xr.Dataset) -> str:
    """The same table as :func:`format_table` as plain text (aligned columns, no colours)."""
    header, rows = _rows(scores)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------------------------- files


def open_corrdiff_netcdf(path: str | Path, chunks: dict | None = None) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset | None]:
    """(prediction, truth, input) from a CorrDiff ``generate.py`` NetCDF file.

    The ``ensemble`` dimension is renamed ``member``; ``lat`` / ``lon`` (y, x) and ``time`` of the root
    group become coordinates of the three Datasets. ``input`` is None when the file has no such group.
    """
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(explain("No such prediction file", found=str(path)))
    chunks = chunks if chunks is not None else {}
    # one open_dataset per group: xr.open_groups gives same-named variables of different groups the same
    # dask name (xarray 2026.9), which silently mixes truth and prediction in one graph
    groups = {g: _open_group(path, g, chunks) for g in ("prediction", "truth", "input")}
    if groups["prediction"] is None or groups["truth"] is None:
        raise InvalidDataError(
            explain(
                f"{path.name} is not a CorrDiff generate.py file",
                expected="groups 'prediction' and 'truth' (and 'input')",
                found=f"groups {sorted(g for g, ds in groups.items() if ds is not None)}",
                fix="pass a NetCDF written by CorrDiff's generate.py, or open the file with xarray and call score()",
            )
        )
    root = xr.open_dataset(path, chunks=chunks)
    coords = {n: root[n] for n in ("lat", "lon", "time") if n in root.variables}

    def prepare(ds: xr.Dataset | None) -> xr.Dataset | None:
        if ds is None:
            return None
        ds = ds.assign_coords({n: v for n, v in coords.items() if set(v.dims) <= set(ds.dims)})
        return ds.rename({"ensemble": "member"}) if "ensemble" in ds.dims else ds

    return prepare(groups["prediction"]), prepare(groups["truth"]), prepare(groups["input"])


def _open_group(path: Path, group: str, chunks: dict) -> xr.Dataset | None:
    try:
        return xr.open_dataset(path, group=group, chunks=chunks)
    except OSError:  # netCDF4: "group not found"
        return None


def open_any(path: str | Path, chunks: dict | None = None) -> xr.Dataset:
    """Open a zarr store (consolidated or not) or a NetCDF file lazily (dask chunks as stored)."""
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(explain("No such file or store", found=str(path)))
    if is_zarr_store(path):
        return xr.open_zarr(path, consolidated=zarr_consolidated(path), chunks=chunks if chunks is not None else {})
    return xr.open_dataset(path, chunks=chunks if chunks is not None else {})


def _has_corrdiff_groups(path: Path) -> bool:
    if is_zarr_store(path):
        return False
    try:
        return _open_group(path, "prediction", {}) is not None
    except ValueError:  # not a NetCDF4 / HDF5 file
        return False


def score_files(
    prediction_path: str | Path,
    truth_path: str | Path | None = None,
    out: str | Path | None = None,
    *,
    baseline_path: str | Path | None = None,
    keep: Hashable | Sequence[Hashable] | None = None,
    member_dim: str | None = None,
    fair: bool = False,
    interval: float | None = None,
) -> xr.Dataset:
    """Score a prediction file against a truth file (zarr or NetCDF); write the scores to ``out``.

    ``prediction_path`` may be a CorrDiff ``generate.py`` NetCDF file, whose ``truth`` group is used when
    ``truth_path`` is None. The member dimension is ``member_dim``, else ``member`` or ``ensemble``
    when present (none: a deterministic forecast). ``out`` ending in ``.zarr`` is written as a zarr
    store, anything else as NetCDF. ``interval``: bootstrap intervals over the times (:func:`score`).
    Returns the scores (see :func:`score`).
    """
    ppath = Path(prediction_path)
    truth = None
    if _has_corrdiff_groups(ppath):
        prediction, truth, _ = open_corrdiff_netcdf(ppath)
    else:
        prediction = open_any(ppath)
    if truth_path is not None:
        truth = open_any(truth_path)
    if truth is None:
        raise InvalidDataError(
            explain(
                "No truth to score against",
                expected="a truth file, or a CorrDiff generate.py file with a 'truth' group",
                found=f"only {ppath.name}",
                fix="xkmcast score PREDICTION TRUTH",
            )
        )
    if member_dim is None:
        member_dim = next((d for d in ("member", "ensemble") if d in prediction.dims), "member")
    baseline = open_any(baseline_path) if baseline_path is not None else None
    scores = score(prediction, truth, baseline, member_dim=member_dim, keep=keep, fair=fair,
                   interval=interval).compute()
    scores.attrs["prediction"] = str(ppath)
    scores.attrs["truth"] = str(truth_path if truth_path is not None else f"{ppath} (group truth)")
    if out is not None:
        out = Path(out)
        if out.suffix == ".zarr":  # variable-length strings: zarr v3 has no spec for fixed-width unicode
            strings = {n: scores[n].astype(object) for n in ("variable", "units") if n in scores.coords}
            scores.assign_coords(strings).to_zarr(out, mode="w", consolidated=False)
        else:
            scores.to_netcdf(out)
    return scores
