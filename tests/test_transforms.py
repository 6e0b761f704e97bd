"""Per-variable transforms: exact round trips, physical ranges, statistics of transformed values, and
a trained tiny pipeline whose precipitation is never negative."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xkmcast.data.stats import Stats, compute_stats
from xkmcast.errors import ConfigError
from xkmcast.fields.transforms import TRANSFORMS, clip_physical, get_transform, parse_transforms, physical_range


def _rain(seed=0, n=2000) -> np.ndarray:
    """Precipitation-like values: 60 % dry, the rest gamma-distributed with a heavy tail."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < 0.6, 0.0, rng.gamma(0.5, 4.0, n))


@pytest.mark.parametrize("name", ["log1p", "sqrt", "none"])
def test_round_trip_is_exact(name):
    x = _rain()
    t = get_transform(name)
    back = t.inverse(t.forward(x, 0.1), 0.1)
    np.testing.assert_allclose(back, x, rtol=1e-13, atol=1e-15)
    if name == "log1p":  # the closed form, independently: log1p(x / eps)
        np.testing.assert_allclose(t.forward(x, 0.1), np.log(1 + x / 0.1), rtol=1e-12)


def test_inverses_never_leave_the_domain():
    z = np.linspace(-5, 5, 101)
    for name in ("log1p", "sqrt"):
        assert (TRANSFORMS[name].inverse(z, 0.1) >= 0).all()


def test_physical_ranges_from_the_variables_table():
    assert physical_range("tp") == (0.0, np.inf)
    assert physical_range("lsm") == (0.0, 1.0)
    assert physical_range("t2m") == (-np.inf, np.inf)
    assert physical_range("not_a_variable", "sqrt") == (0.0, np.inf)  # the transform's domain
    np.testing.assert_array_equal(clip_physical(np.array([-1.0, 0.5, 2.0]), "lsm"), [0.0, 0.5, 1.0])


def test_parse_transforms_and_the_override_form():
    from xkmcast.train.config import apply_overrides

    raw = apply_overrides({}, ["data.transforms={tp: log1p, q: sqrt}"])
    assert parse_transforms(raw["data"]["transforms"]) == {"tp": "log1p", "q": "sqrt"}
    with pytest.raises(ConfigError, match="log1p"):
        parse_transforms({"tp": "cube"})


def test_statistics_are_of_the_transformed_values_and_denormalise_inverts():
    x = _rain(1).reshape(20, 10, 10)
    ds = xr.Dataset({"tp": (("time", "y", "x"), x), "q": (("time", "y", "x"), x)})
    stats = compute_stats(ds, transforms={"tp": "log1p", "q": "sqrt"}, eps=0.5)
    assert stats.mean["tp"] == pytest.approx(np.log1p(x / 0.5).mean(), rel=1e-12)
    assert stats.std["q"] == pytest.approx(np.sqrt(x).std(), rel=1e-12)
    again = Stats.from_json(stats.to_json())
    assert again == stats and again.transform_of("q") == "sqrt" and again.log_eps == {"tp": 0.5}
    n = stats.normalise(ds)
    back = stats.denormalise(n)
    np.testing.assert_allclose(back["tp"].values, x, rtol=1e-10, atol=1e-12)
    # a normalised value far below anything seen (a model's undershoot) comes back as 0, not negative
    low = stats.denormalise(np.full((2, 3), -50.0), ["tp", "q"], axis=0)
    assert (low == 0).all()


@pytest.mark.slow
def test_trained_pipeline_with_log1p_precipitation_never_rains_negative(tmp_path):
    """train (data.transforms={tp: log1p}) -> bundle -> load_model -> downscale: the bundle records
    the transform, the output tp is >= 0 everywhere and of the size of the truth."""
    import xkmcast
    from xkmcast.data.synthetic import synthetic_pair
    from xkmcast.fields.downscale import downscale
    from xkmcast.train.config import load_config
    from xkmcast.train.trainer import train

    coarse, fine = synthetic_pair(nx=16, ny=16, factor=4, times=8, seed=2)
    fine.to_netcdf(tmp_path / "fine.nc")
    coarse.to_netcdf(tmp_path / "coarse.nc")
    cfg = load_config("corrdiff-tiny-regression", [
        f"data.source={tmp_path / 'fine.nc'}", f"data.coarse={tmp_path / 'coarse.nc'}",
        "data.input_vars=[t2m, tp]", "data.output_vars=[tp]", "data.invariants=[]", "data.transforms={tp: log1p}",
        "data.valid_fraction=0.25", f"training.outdir={tmp_path / 'runs'}", "training.batch_size=2",
        "training.duration=4", "training.validate_every=4", "training.valid_batches=1", "training.checkpoint_every=4",
        "training.tensorboard=false", "training.device=cpu",
    ])
    run = train(cfg, quiet=True)
    model = xkmcast.load_model(run.bundle)
    assert model.stats_for("output").transform_of("tp") == "log1p"
    assert model.stats_for("input").transform_of("tp") == "log1p"
    out = downscale(coarse.isel(time=slice(0, 2)), model, regrid_method="nearest")
    tp = out["tp"].values
    assert np.isfinite(tp).all() and (tp >= 0).all()
    assert tp.max() < 20 * float(fine["tp"].max()) + 1.0  # an inverted log, not a normalised value


def test_a_prepared_store_without_the_transform_is_refused(tmp_path):
    """data.transforms on a store prepared without them: ConfigError (its statistics would not match)."""
    from xkmcast.data.prepare import prepare
    from xkmcast.data.synthetic import synthetic_pair
    from xkmcast.train.config import load_config
    from xkmcast.train.trainer import train

    coarse, fine = synthetic_pair(nx=8, ny=8, factor=2, times=3, seed=1)
    store = prepare(fine, coarse, tmp_path / "s.zarr", input_vars=["t2m", "tp"], output_vars=["tp"],
                    regrid_method="nearest")
    cfg = load_config("corrdiff-tiny-regression", [
        f"data.source={store}", "data.input_vars=[t2m, tp]", "data.output_vars=[tp]", "data.invariants=[]",
        "data.transforms={tp: sqrt}", f"training.outdir={tmp_path / 'runs'}", "training.duration=1",
        "training.tensorboard=false", "training.device=cpu"])
    with pytest.raises(ConfigError, match="transforms"):
        train(cfg, quiet=True)
