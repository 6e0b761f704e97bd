"""The real-data cases of bench/science.py: how each real dataset becomes a downscaling or a stepping case.

- ``storm-x2`` / ``storm-x3``: the January 1996 blizzard (NCL example data, six-hourly analyses,
  1.25 x 2.5 deg). The coarse input is the real field block-averaged x2 / x3; the target is the real
  field on the window of the fine grid that the coarse cell centres cover (so bilinear needs no
  extrapolation): latitude 31.25..57.5 N, longitude 125..72.5 W (22 x 22), inside the rectangle where
  the analyses are defined at every time (they are NaN outside a trapezoid). Train on the first 40 times
  (10 days), validate on the next 8, score on the last 16 (4 days, held out).
- ``storm-conic-x3``: the same x3 on the analyses' whole grid as the files hold it, the fine target NaN
  outside the conic domain (19 % of the pixels; and t2m / v10m missing at a few whole times): the part
  of the 31 x 34 grid inside the coarse centres. Coarse cells with a NaN fine point are filled from the
  nearest cell of their row (and the missing times from the times beside them), as a user fills an
  input; the target is left as it is (the model trains on the values there are and is missing where
  the target always is). Same times as storm-x3; scored at the pixels with a value. The linear
  baselines skip the missing samples; ``spec`` is taken on the largest rectangle with a value at every
  scored time (:func:`science_scores.top_third_power_ratio`). 5 minutes
  export the same weights as 2 (the validation's best: regression step 125, diffusion step 175).
- ``guam-x4``: WRF 0.78 km over Guam (3 hourly times), coarsened x4; train on the first hour, validate
  on the second (best weights, spread calibration), score on the third: one field each, so a test of
  what a model learns from a single real field (the linear baselines are fitted on that hour too).
  How much of the fine detail (truth minus bilinear) an hour shares with the next: t2m 0.89-0.92
  (correlation between the three hours), u10m 0.69-0.76, v10m 0.15-0.21. For v10m the best any reuse
  of the earlier hours' detail reaches on the scored hour is 0.97x bilinear's MAE (the validation hour's
  detail, or the two hours' mean, scaled by its best factor, 0.25-0.35), and a pooled linear fit on the
  scored hour itself 0.953x: 0.9x bilinear is out of reach for v10m from these inputs.
- ``storm-step``: the blizzard state (6 variables, 24 x 26) stepped 6 h, 12 h, 18 h ahead from every
  held-out initial time; persistence and the per-pixel linear stepping baseline. The record's t2m
  diurnal cycle changes phase by 12 h on 10 January: over the central US (35-45 N, 105-90 W) the 6-hour
  change from 06 UTC is cooling (-1.3 to -3.1 K) and from 12 UTC warming (+0.5 to +4.5 K) on each of
  5-9 January, as local night and day have it, and the reverse from 10 January to the end (from 06 UTC
  warming on 8 of 11 days, from 12 UTC cooling on all 11, the held-out days included): 12 hours missing
  from the record, or its later times labelled 12 hours off. A state-only model reads the phase from
  the state alone, and a time-of-day input would learn two phases from the one label. The held-out
  days are more active than the validation days: the RMS of the 6-hour change is larger by 25 / 23 / 4
  / 14 / 26 / 28 % (t2m, msl, u10m, v10m, u500, v500) than on the 2 days before them and by 11 / 19 / 0
  / 10 / 9 / 16 % than on one day in four, so a spread calibrated there is short on them (the
  stepping cases' period check). The 2-minute StormCast regression's one-step error (domain RMS, in
  the state's spread) is larger there by 31 / 9 / 6 / 14 / 28 / 14 %; the RMS of the state's change over
  the 6 hours before the step tracks it (26 / 19 / 6 / 13 / 31 / 26 %; correlation with the error over
  the record's times 0.2-0.47), the regression's own predicted change does not (held-out 2-16 % smaller
  for five variables).
- ``storm-dit``: the same stepping with the Stormscope kind (the tiny DiT, diffusion only, 2 x 2 tokens):
  its ``seam`` column is the blockiness at the token period over the truth's (the worst offset).
- ``storm-vit``: the same stepping with the ViT weather transformer (``vit-tiny``, deterministic: its one
  stage is the ``regression`` row; no ensemble).
- ``navy-x2``: FNOC monthly mean winds (the catalog's ``navy_winds``, fetched from Debian's
  ferret-datasets package), a real global grid as old COARDS files have it: 2.5 deg, latitude ascending,
  longitudes 20..377.5 (periodic). The coarse input is the 2 x 2 block means (5 deg, 36 x 72); the
  target is the fine grid inside the coarse cell centres in latitude (87.5 S .. 85 N: 70 x 144), all
  longitudes (the model pads circularly across 377.5 / 20 E). Trained by the ``corrdiff-cpu`` recipe as its docs give it
  (FINE, COARSE, train times, budget): train on 1982-1989 (96 months), validate on 1990, score on
  1991-1992 (24 months, held out). Scores are per pixel, unweighted by area, as in the other cases.
- ``mpi-x2``: monthly means of 2005 from the MPI-ESM-LR CMIP5 historical run (the catalog's
  ``mpi_esm_2005``, fetched from Debian's libncarg-data package: NCL's example data), near-surface
  temperature and wind (CMOR's tas / uas / vas) on the T63 Gaussian grid (96 x 192, latitudes unevenly
  spaced, periodic longitude). Model output, not an analysis: real in its physics and its fine
  structure (orography, coasts, the seasons), on a grid that no other case has. The coarse input is
  the 2 x 2 block means (48 x 96); the target the fine rows inside the coarse centres (94 x 192). Trained
  by the ``corrdiff-cpu`` recipe: train on January-July (7 fields: the recipe's batch of 8 becomes 7),
  validate on August, score on September-December (held out: the seasons turn, autumn and winter
  are not in the training months).
- ``bcsd-x4``: the gridded observations of Maurer et al. (2002) that the BCSD CMIP projections are
  trained on (the catalog's ``bcsd_obs_1999``, fetched from Debian's r-cran-stars package): monthly
  mean temperature and total precipitation of 1999 at 1/8 deg over the US Southeast, land only (the
  Atlantic is missing: 22 % of the grid), the real target of a statistical downscaling. The coarse
  input is the 4 x 4 block means (0.5 deg; the cells over the sea filled from the nearest cell of their
  row, as a coarse reanalysis has a value there); the target is the fine grid inside the coarse centres
  (28 x 76), missing over the sea. Trained by the ``corrdiff-cpu`` recipe with ``data.transforms={tp:
  sqrt}`` (monthly totals; without it tp's ensemble mean was 0.936x bilinear with spread-skill 0.84,
  with it 0.921x and 1.05) on January-July, validated on August, scored on September-December (held
  out; September 1999 is Hurricane Floyd's flood month in North Carolina, up to 850 mm). The one
  validation month picks step 25 of both stages at 2 and at 5 minutes alike (the same weights).
- ``florence-now``: hourly NCEP Stage IV radar + gauge precipitation (4 km, 118 x 87 polar-stereographic
  grid) of Hurricane Florence's landfall, 2018-09-13T19 .. 09-14T17 (23 hours; the catalog entry
  ``stageiv_florence``, fetched from Debian's r-cran-stars package), nowcast 1, 2, 3 h ahead by the
  ``stormcast-cpu`` recipe exactly as its docs give it (state only, ``data.transforms={tp: log1p}``):
  train on the first 14 hours, validate on the next 3, score from each of the last 3 initial hours
  with leads up to 3 h (the last 6 hours held out); its ``f>1/10`` column is the fraction of member
  pixels above 1 and 10 mm/h over the truth's. Where its 1-hour spread falls short (a 2-minute model,
  2026-12-03, forecasts of 8 members from each hour): spread-skill 1.00 on the two validation pairs the
  spread is calibrated on, 0.73-0.83 from the hour after them, 0.75-0.76 held out, 0.65 from the
  training hours; without the gains by value 1.77 / 1.69 / 1.34 / 1.30. The two validation hours have a
  one-step error 25-35 % smaller for their spread than the rest of the record, however the spread is
  shaped: the calibration is exact where it is made, and two hours of a landfalling hurricane do not
  stand for the others. Validating on 5 hours (12-16) calibrates the step gains and the spread by
  activity too, on 3 rollouts and 3 samples, and made it worse (held-out 0.70 / 0.59 / 0.56 at 1 / 2 /
  3 h; without the spread by activity 0.84 / 0.75 / 0.67, without the step gains too 0.84 / 1.00 /
  1.04; docs/guide/training.md has why each needs more samples than this record gives): the 3-hour
  gain solved on 2 rollouts leaves those rollouts' own 3-hour spread-skill at 0.82-0.89 from one draw
  seed to another.

Data: ../shared/data (see its README) and the package's catalog; the files are written as CF NetCDF
into the work directory, which is what a user's own data would look like.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.exists():  # a worktree beside the main checkout
    DATA = Path("/work/shared/data")
STORM_FILES = {"t2m": ("Tstorm", "t", "K"), "msl": ("Pstorm", "p", "Pa"), "u10m": ("Ustorm", "u", "m s-1"),
               "v10m": ("Vstorm", "v", "m s-1"), "u500": ("U500storm", "u", "m s-1"),
               "v500": ("V500storm", "v", "m s-1")}
STORM_OUTPUTS = ["t2m", "msl", "u10m", "v10m"]
MPI_OUTPUTS = ["t2m", "u10m", "v10m"]
BCSD_OUTPUTS = ["t2m", "tp"]
#: the 1/8 deg grid's points inside the centres of its x4 coarse cells (28 x 76)
BCSD_WINDOW = {"latitude": slice(2, 30), "longitude": slice(2, 78)}
#: the analyses are NaN outside a trapezoid (a conic domain): this rectangle is valid at every time
STORM_VALID = {"latitude": slice(8, 32), "longitude": slice(5, 31)}  # 24 x 26, 30..58.75 N, 127.5..65 W
#: the fine window inside the centres of both the x2 and the x3 coarse cells (22 x 22)
STORM_WINDOW = {"latitude": slice(1, 23), "longitude": slice(1, 23)}
#: the whole grid's fine points inside the centres of its x3 coarse cells (31 x 34)
CONIC_WINDOW = {"latitude": slice(1, 32), "longitude": slice(1, 35)}


@dataclasses.dataclass
class Case:
    name: str
    kind: str  # "downscale" or "step"
    fine: Path  # CF NetCDF of the target (downscale) or the state (step)
    coarse: Path | None
    inputs: list[str]
    outputs: list[str]
    train: tuple[str, str]
    valid: list[tuple[str, str]]  # validation windows (taken out of the training window); empty: none
    test: tuple[str, str]
    note: str = ""
    overrides: tuple[str, ...] = ()  # config overrides this case needs (e.g. a batch its few times can fill)
    model: str = "stormcast"  # stepping: "stormcast" (regression + diffusion), "stormscope" (DiT diffusion only), "vit"
    recipe: str | None = None  # train with this one-command recipe (e.g. "stormcast-cpu") instead of the tiny presets
    step_hours: int = 6  # stepping: hours per step
    thresholds: tuple[float, ...] = ()  # the f> column: fractions of pixels above these values, members / truth


def storm_raw() -> xr.Dataset:
    """The six blizzard fields as one CF Dataset on their whole 33 x 36 grid, as the files have them: NaN
    outside the conic domain (time built from the hours since reftime)."""
    out = {}
    for name, (stem, var, units) in STORM_FILES.items():
        ds = xr.open_dataset(DATA / "ncl_storm" / f"{stem}.cdf", decode_times=False)
        out[name] = ds[var].rename({"timestep": "time", "lat": "latitude", "lon": "longitude"}).assign_attrs(units=units)
    ds = xr.Dataset(out).load()
    ds = ds.assign_coords(time=pd.Timestamp("1996-01-05") + pd.to_timedelta(ds["time"].values.astype(int), "h"))
    ds["latitude"].attrs.update(standard_name="latitude", units="degrees_north")
    ds["longitude"].attrs.update(standard_name="longitude", units="degrees_east")
    ds.attrs = {"source": "NCAR Command Language example data (Debian libncarg-data 6.6.2), BSD-4-clause, UCAR"}
    return ds


def storm() -> xr.Dataset:
    """The six blizzard fields in the rectangle valid at every time (:data:`STORM_VALID`)."""
    ds = storm_raw().isel(STORM_VALID)
    # three fields miss one whole time each (t2m and v10m at index 17, v10m 37, v500 36, all in the
    # training period): linear interpolation in time there, so that 6-hourly pairs stay contiguous
    return ds.interpolate_na("time")


def _block(ds: xr.Dataset, factor: int) -> xr.Dataset:
    """Block means of a rectilinear lat/lon dataset (cell centres = means of the fine centres)."""
    out = ds.coarsen(latitude=factor, longitude=factor, boundary="trim").mean(keep_attrs=True)
    for c in ("latitude", "longitude"):
        out[c].attrs = dict(ds[c].attrs)
    return out


def _inside_latitudes(fine: xr.Dataset, coarse: xr.Dataset) -> xr.Dataset:
    """The rows of a global ``fine`` grid between its ``coarse`` block means' first and last centres
    (all longitudes: they are periodic), so that bilinear needs no extrapolation."""
    lat = fine["latitude"]
    return fine.isel(latitude=np.flatnonzero(((lat >= coarse["latitude"].min()) & (lat <= coarse["latitude"].max())).values))


def _times(ds: xr.Dataset, a: int, b: int) -> tuple[str, str]:
    t = ds["time"].values
    return str(t[a])[:19], str(t[b])[:19]


def _write(ds: xr.Dataset, path: Path) -> None:
    """``ds`` to ``path`` as NetCDF, unless the file there already holds it (a file rewritten with the
    same data has a new mtime, which the training runs of ``--reuse`` would take for other data)."""
    if path.exists():
        with xr.open_dataset(path) as old:
            if old.load().identical(ds):
                return
    ds.to_netcdf(path)


def storm_valid(ds: xr.Dataset, every_days: int | None) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """The blizzard cases' validation: (windows, overrides). Days 11-12 (times 40-47, the 2 days before
    the held-out ones: the recorded tables), or with ``every_days`` N the last day of every N days of the
    12 before the held-out ones (validation spread over the record; ``--valid-every-days``), which is
    the package's recurring validation window ``data.valid_times={every: ND, length: 1D}``."""
    if not every_days:
        return [_times(ds, 40, 47)], ()
    return [], (f"data.valid_times={{every: {every_days}D, length: 1D}}",)


def storm_cases(work: Path, valid_every_days: int | None = None) -> list[Case]:
    ds = storm()
    valid, overrides = storm_valid(ds, valid_every_days)
    train = _times(ds, 0, 47 if valid_every_days else 39)
    work.mkdir(parents=True, exist_ok=True)
    fine = work / "storm_fine.nc"
    _write(ds[STORM_OUTPUTS].isel(STORM_WINDOW), fine)
    cases = []
    for f in (2, 3):
        coarse = work / f"storm_coarse_x{f}.nc"
        _write(_block(ds, f), coarse)
        cases.append(Case(f"storm-x{f}", "downscale", fine, coarse, list(STORM_FILES), STORM_OUTPUTS,
                          train, valid, _times(ds, 48, 63),
                          f"blizzard 1996, 22x22 at 1.25x2.5 deg, coarse x{f} block means", overrides=overrides))
    state = work / "storm_state.nc"
    _write(ds, state)
    for name, model in (("storm-step", "stormcast"), ("storm-dit", "stormscope"), ("storm-vit", "vit")):
        cases.append(Case(name, "step", state, None, list(STORM_FILES), list(STORM_FILES),
                          train, valid, _times(ds, 48, 63),
                          f"blizzard 1996, 6 variables 24x26, 6-hourly steps, {model}", model=model,
                          overrides=overrides))
    return cases


def conic_case(work: Path) -> Case:
    """The blizzard x3 on the analyses' whole grid, the fine target NaN outside the conic domain."""
    ds = storm_raw()
    coarse = _block(ds, 3)  # cells with a NaN fine point are NaN: filled from their row, then in time
    coarse = coarse.interpolate_na("longitude", method="nearest", fill_value="extrapolate").interpolate_na("time")
    fine = ds[STORM_OUTPUTS].isel(CONIC_WINDOW)
    fine_path, coarse_path = work / "storm_conic_fine.nc", work / "storm_conic_coarse_x3.nc"
    work.mkdir(parents=True, exist_ok=True)
    _write(fine, fine_path)
    _write(coarse, coarse_path)
    valid, _ = storm_valid(ds, None)
    return Case("storm-conic-x3", "downscale", fine_path, coarse_path, list(STORM_FILES), STORM_OUTPUTS,
                _times(ds, 0, 39), valid, _times(ds, 48, 63),
                "blizzard 1996, 31x34 with NaN outside the conic domain, coarse x3 block means filled")


def guam_case(work: Path) -> Case | None:
    """WRF Guam coarsened x4: the fine window inside the coarse cell centres (56 x 48)."""
    path = DATA / "guam.nc"
    if not path.exists():
        return None
    import xkmcast  # noqa: F401  (the accessor)

    raw = xr.open_dataset(path)
    ds = raw.kmcast.variables(["t2m", "u10m", "v10m"]).rename({"Time": "time"}).load()
    ds = ds.isel(south_north=slice(0, 68), west_east=slice(0, 60))
    ds.attrs = {"source": "Dynamical Downscaled and Projected Climate for the Pacific Islands - Guam "
                          "(WRF, C. Zhang, University of Hawaii; USGS CIDA), licence: Freely available"}
    coarse = ds.coarsen(south_north=4, west_east=4).mean()
    coarse = coarse.assign_coords(XLAT=ds["XLAT"].coarsen(south_north=4, west_east=4).mean(),
                                  XLONG=ds["XLONG"].coarsen(south_north=4, west_east=4).mean())
    for c in ("XLAT", "XLONG"):
        coarse[c].attrs = dict(raw[c].attrs)
    fine_path, coarse_path = work / "guam_fine.nc", work / "guam_coarse_x4.nc"
    _write(ds.isel(south_north=slice(6, 62), west_east=slice(6, 54)), fine_path)
    _write(coarse, coarse_path)
    return Case("guam-x4", "downscale", fine_path, coarse_path, ["t2m", "u10m", "v10m"], ["t2m", "u10m", "v10m"],
                _times(ds, 0, 0), [_times(ds, 1, 1)], _times(ds, 2, 2),
                "WRF 0.78 km Guam, 56x48, coarse x4, train / validate / score on one hour each",
                ("training.batch_size=1",))


def florence_case(work: Path) -> Case | None:
    """Stage IV precipitation of Hurricane Florence (the catalog's ``stageiv_florence``), nowcast hourly;
    None (with a message) when it cannot be fetched."""
    import xkmcast

    try:
        ds = xkmcast.open_dataset("stageiv_florence")[["tp"]].load()
    except Exception as exc:  # no access to the Debian archive: the other cases still run
        print(f"# florence-now skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return None
    path = work / "florence_tp.nc"
    _write(ds, path)
    return Case("florence-now", "step", path, None, ["tp"], ["tp"], _times(ds, 0, 16), [_times(ds, 14, 16)],
                _times(ds, 17, 22), "Stage IV precipitation, Florence 2018, 118x87 at 4 km, hourly nowcast, "
                "stormcast-cpu recipe with log1p", recipe="stormcast-cpu", step_hours=1,
                thresholds=(1.0, 10.0), overrides=("data.transforms={tp: log1p}",))


def navy_case(work: Path) -> Case | None:
    """FNOC monthly winds (the catalog's ``navy_winds``) downscaled x2 on the globe; None (with a message)
    when they cannot be fetched."""
    import xkmcast

    try:
        raw = xkmcast.open_dataset("navy_winds").load().drop_encoding()  # (its unlimited TIME)
    except Exception as exc:  # no access to the Debian archive: the other cases still run
        print(f"# navy-x2 skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return None
    ds = raw.rename(TIME="time", FNOCY="latitude", FNOCX="longitude")
    for c in ("latitude", "longitude"):
        ds[c].attrs["standard_name"] = c
    coarse = _block(ds, 2)  # 36 x 72 centres at 88.75 S .. 86.25 N (the 90 N row trimmed)
    fine_path, coarse_path = work / "navy_fine.nc", work / "navy_coarse_x2.nc"
    _write(_inside_latitudes(ds, coarse), fine_path)
    _write(coarse, coarse_path)
    times = ds["time"].values
    year = ds["time"].dt.year.values
    span = lambda a, b: (str(times[year >= a][0])[:19], str(times[year <= b][-1])[:19])  # noqa: E731
    return Case("navy-x2", "downscale", fine_path, coarse_path, ["UWND", "VWND"], ["UWND", "VWND"],
                span(1982, 1989), [span(1990, 1990)], span(1991, 1992),
                "FNOC monthly winds, global 70x144 at 2.5 deg, coarse x2 block means, corrdiff-cpu recipe",
                recipe="corrdiff-cpu")


def mpi_case(work: Path) -> Case | None:
    """MPI-ESM-LR monthly means of 2005 (the catalog's ``mpi_esm_2005``) downscaled x2 on the globe; None
    (with a message) when they cannot be fetched."""
    import xkmcast

    try:
        raw = xkmcast.open_dataset("mpi_esm_2005").load()
    except Exception as exc:  # no access to the Debian archive: the other cases still run
        print(f"# mpi-x2 skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return None
    ds = raw.kmcast.variables(MPI_OUTPUTS).drop_encoding()
    ds.attrs = {"source": "MPI-ESM-LR CMIP5 historical r1i1p1 (Max Planck Institute for Meteorology), from NCL's "
                          "example data (Debian libncarg-data 6.6.2)"}
    ds = ds.rename(lat="latitude", lon="longitude")
    coarse = _block(ds, 2)  # 48 x 96 centres, -87.65 .. 87.65
    fine_path, coarse_path = work / "mpi_fine.nc", work / "mpi_coarse_x2.nc"
    _write(_inside_latitudes(ds, coarse), fine_path)
    _write(coarse, coarse_path)
    return Case("mpi-x2", "downscale", fine_path, coarse_path, MPI_OUTPUTS, MPI_OUTPUTS,
                _times(ds, 0, 6), [_times(ds, 7, 7)], _times(ds, 8, 11),
                "MPI-ESM-LR monthly means 2005, global T63 Gaussian 94x192, coarse x2 block means, corrdiff-cpu recipe",
                recipe="corrdiff-cpu")


def bcsd_case(work: Path) -> Case | None:
    """Maurer's gridded observations of 1999 (the catalog's ``bcsd_obs_1999``), land only, downscaled x4;
    None (with a message) when they cannot be fetched."""
    import xkmcast

    try:
        raw = xkmcast.open_dataset("bcsd_obs_1999").load()
    except Exception as exc:  # no access to the Debian archive: the other cases still run
        print(f"# bcsd-x4 skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return None
    ds = raw.kmcast.variables(BCSD_OUTPUTS).drop_encoding()  # K and kg m-2
    ds.attrs = {"source": "Maurer et al. (2002) gridded observations, bcsd_obs_1999.nc of R stars (Debian r-cran-stars)"}
    coarse = _block(ds, 4)  # cells all over the sea are NaN: filled from the nearest cell of their row
    coarse = coarse.interpolate_na("longitude", method="nearest", fill_value="extrapolate")
    fine_path, coarse_path = work / "bcsd_fine.nc", work / "bcsd_coarse_x4.nc"
    work.mkdir(parents=True, exist_ok=True)
    _write(ds.isel(BCSD_WINDOW), fine_path)
    _write(coarse, coarse_path)
    return Case("bcsd-x4", "downscale", fine_path, coarse_path, BCSD_OUTPUTS, BCSD_OUTPUTS,
                _times(ds, 0, 6), [_times(ds, 7, 7)], _times(ds, 8, 11),
                "Maurer gridded observations 1999, 1/8 deg 28x76 land only, coarse x4 block means, corrdiff-cpu recipe",
                recipe="corrdiff-cpu", overrides=("data.transforms={tp: sqrt}",))


def all_cases(work: Path, names: list[str] | None = None, valid_every_days: int | None = None) -> list[Case]:
    cases = storm_cases(work, valid_every_days)
    g = guam_case(work)
    if g is not None:
        cases.insert(2, g)
    cases.insert(2, conic_case(work))
    if names is None or "navy-x2" in names:
        n = navy_case(work)
        if n is not None:  # after the other downscaling cases
            cases.insert(next(i for i, c in enumerate(cases) if c.kind == "step"), n)
    if names is None or "mpi-x2" in names:
        m = mpi_case(work)
        if m is not None:  # after the other downscaling cases
            cases.insert(next(i for i, c in enumerate(cases) if c.kind == "step"), m)
    if names is None or "bcsd-x4" in names:
        b = bcsd_case(work)
        if b is not None:  # after the other downscaling cases
            cases.insert(next(i for i, c in enumerate(cases) if c.kind == "step"), b)
    if names is None or "florence-now" in names:
        f = florence_case(work)
        cases += [f] if f is not None else []
    return [c for c in cases if names is None or c.name in names]


def open_case(case: Case) -> tuple[xr.Dataset, xr.Dataset | None]:
    """``(fine, coarse)`` of a case as xarray Datasets (loaded)."""
    fine = xr.open_dataset(case.fine).load()
    coarse = xr.open_dataset(case.coarse).load() if case.coarse else None
    return fine, coarse


def window(ds: xr.Dataset, span: tuple[str, str]) -> xr.Dataset:
    return ds.sel(time=slice(np.datetime64(span[0]), np.datetime64(span[1])))
