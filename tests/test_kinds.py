"""The model-kind table: every kind's defaults validate through the configuration and build a tiny
pipeline whose networks accept the conditions the table names; the docs and the CLI show the table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from xkmcast.errors import ConfigError
from xkmcast.models import build_pipeline, spec_from_config
from xkmcast.models.kinds import CONDITIONS, KINDS
from xkmcast.train.config import validate

SHAPE = (16, 16)
STATE, BACKGROUND, INVARIANTS = ["t2m", "u10m"], ["msl"], ["orog"]


def _config(kind: str, stage: str, **model):
    data = {"source": "synthetic", "invariants": INVARIANTS}
    if KINDS[kind].forecast:
        data.update(input_vars=STATE, background_vars=BACKGROUND)
    else:
        data.update(input_vars=["t2m", "msl"], output_vars=STATE)
    return validate({"data": data, "model": {"kind": kind, "stage": stage, "size": "tiny", "regression_bundle": "r",
                                             **model}})


def _batch(kind, n: int = 2):
    g = torch.Generator().manual_seed(0)
    rand = lambda c: torch.randn(n, c, *SHAPE, generator=g)  # noqa: E731
    if not KINDS[kind].forecast:
        return {"input": rand(2 + len(INVARIANTS)), "target": rand(len(STATE))}
    return {"state": [rand(len(STATE)), rand(len(STATE))], "background": rand(len(BACKGROUND)),
            "invariant": rand(len(INVARIANTS))}


@pytest.mark.parametrize("kind,stage", [(k.name, s) for k in KINDS.values() for s in k.stages])
def test_every_kind_and_stage_builds_from_the_table_defaults(kind, stage):
    row = KINDS[kind]
    cfg = _config(kind, stage)
    m = cfg.model
    # the configuration took its defaults from the row
    assert m.loss.P_mean == row.P_mean and m.loss.P_std == row.P_std
    for s in ("regression", "diffusion"):
        assert set(getattr(m, f"{s}_conditions")) == set(row.conditions.get(s, ()))
    torch.manual_seed(0)
    spec = spec_from_config(m, cfg.data, SHAPE)
    # the skip is the regression's, or a diffusion-only kind's (the Stormscope tendency)
    assert bool(spec.extra.get("input_skip")) == (row.input_skip and ("regression" in spec.networks
                                                                      or "regression" not in row.stages))
    if spec.extra.get("input_skip"):  # the skip renormalises the input of each output: identity statistics
        from xkmcast.data.stats import Stats

        names = sorted({*cfg.data.input_vars, *cfg.data.output_vars, *INVARIANTS})
        ident = Stats({n: 0.0 for n in names}, {n: 1.0 for n in names}).to_dict()
        spec.stats = {"input": ident, "output": ident, "invariant": ident}
    pipe = build_pipeline(spec)
    assert type(pipe) is row.pipeline_class() and pipe.stage_names == row.stages
    assert spec.time_step == row.time_step
    assert spec.sampler == ({} if row.sampler is None else row.sampler.to_dict())
    pipe.set_invariants(torch.randn(len(INVARIANTS), *SHAPE))
    # every network takes the channels the conditions name (a wrong count fails in the first conv)
    loss, sigma = pipe.train().loss(stage, _batch(kind))
    loss.mean().backward()
    assert loss.shape == (2,) and torch.isfinite(loss).all() and (sigma is None) == (stage == "regression")
    trained = [p for p in pipe.stages[stage].parameters() if p.grad is not None]
    assert trained and all(torch.isfinite(p.grad).all() for p in trained)
    pipe.eval()
    batch = _batch(kind, n=1)
    if row.forecast:
        out = pipe.step(batch["state"][0], batch["background"], seeds=[3], num_steps=2)
        assert out.shape == batch["state"][0].shape and torch.isfinite(out).all()
    else:
        samples, mean = pipe.sample(batch["input"][:, :2], seeds=[[3, 4]], num_steps=2)
        assert samples.shape == (2, 1, len(STATE), *SHAPE) and torch.isfinite(samples).all()


def test_the_rows_are_consistent():
    for name, row in KINDS.items():
        assert row.name == name and row.stages and set(row.stages) <= {"regression", "diffusion"}
        for stage, names in row.conditions.items():
            assert set(names) <= set(CONDITIONS) and names
            assert stage == "diffusion" or "regression" not in names  # a regression does not condition on itself
        assert (row.sampler is None) == ("diffusion" not in row.stages)
        assert row.forecast == ("state" in {c for names in row.conditions.values() for c in names})
        assert row.spec_factory().__name__ == row.spec and "tiny" in row.size_table()


@pytest.mark.parametrize("kind", ["corrdiff", "stormcast", "stormscope"])
def test_trained_bundles_sample_with_dpm_solver_10_steps(kind):
    """The measured default (bench/science_samplers.py: the CRPS of Heun-18 within 1.2 % on real fields at
    3.5x fewer network evaluations) reaches a bundle trained with no sampler setting; a setting still wins."""
    from xkmcast.models.base import sampler_config

    def spec(**model):
        cfg = _config(kind, "diffusion", **model)
        return spec_from_config(cfg.model, cfg.data, SHAPE)

    got = sampler_config(spec())
    assert (got.sampler, got.num_steps, got.rho) == ("dpmpp_2m", 10, float("inf"))
    heun = sampler_config(spec(sampler={"sampler": "heun"}))
    assert (heun.sampler, heun.num_steps, heun.rho) == ("heun", 18, 7.0)


def test_the_config_refuses_what_the_table_does_not_allow():
    with pytest.raises(ConfigError, match="no 'regression' stage"):
        _config("stormscope", "regression")
    with pytest.raises(ConfigError, match="diffusion-only"):
        _config("stormscope", "diffusion", diffusion_conditions=["state", "regression"])
    with pytest.raises(ConfigError, match="no diffusion stage"):
        _config("vit", "regression", diffusion_conditions=["state"])
    with pytest.raises(ConfigError, match="not allowed"):
        _config("corrdiff", "regression", regression_conditions=["state"])
    with pytest.raises(ConfigError, match="num_step"):
        _config("stormcast", "diffusion", sampler={"num_step": 3})


def test_the_training_guide_table_is_the_kinds_table():
    text = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "training.md").read_text()
    rows = re.findall(r"^\| (\w+) \| ([^|]+) \| ([^|]+) \|$", text, re.M)
    documented = {kind: {"regression": reg.strip(), "diffusion": diff.strip()} for kind, reg, diff in rows
                  if kind in KINDS or kind.islower() and kind != "kind"}
    expected = {name: {s: ", ".join(row.conditions[s]) if s in row.conditions else f"(no {s} stage)"
                       for s in ("regression", "diffusion")} for name, row in KINDS.items()}
    assert documented == expected


def test_the_cli_lists_the_kinds():
    from typer.testing import CliRunner

    from xkmcast.cli import app

    result = CliRunner().invoke(app, ["kinds"])
    assert result.exit_code == 0, result.output
    for name, row in KINDS.items():
        line = next(line for line in result.output.splitlines() if f" {name} " in line)
        assert (row.time_step or "downscaling") in line


def test_downscale_and_forecast_name_the_kinds_that_do_them():
    import xarray as xr

    from xkmcast.errors import XkmcastError
    from xkmcast.fields.downscale import downscale
    from xkmcast.fields.forecast import forecast

    pipes = {kind: build_pipeline(spec_from_config(_config(kind, KINDS[kind].stages[0]).model,
                                                   _config(kind, KINDS[kind].stages[0]).data, SHAPE))
             for kind in ("corrdiff", "vit")}
    forecasters = " / ".join(k for k, row in KINDS.items() if row.forecast)
    with pytest.raises(XkmcastError, match=r"(?s)does not downscale.*expected: a model of kind corrdiff\n"):
        downscale(xr.Dataset(), pipes["vit"], device="cpu")
    with pytest.raises(XkmcastError, match=f"(?s)does not step a state forward.*kind {forecasters}\n"):
        forecast(xr.Dataset(), pipes["corrdiff"], device="cpu")
