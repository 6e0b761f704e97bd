"""Sample-based validation: the fair CRPS of the members a diffusion stage draws (xkmcast.train.valid_score)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _nets import randomise
from _tiny import FINE_SHAPE, STATE_VARS

from xkmcast.diffusion.seeds import row_seeds
from xkmcast.errors import ConfigError
from xkmcast.fields.metrics import crps_ensemble_kernel
from xkmcast.models import build_pipeline, stormscope_spec
from xkmcast.train.valid_score import members_crps, resolve_valid_score

SCALE = [0.2, 0.5, 0.1]


def _fair_crps(members: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The kernel the validation scores with, members on dim 0 (as the draws come)."""
    return torch.from_numpy(crps_ensemble_kernel(np.moveaxis(members.double().numpy(), 0, -1),
                                                 truth.double().numpy(), fair=True))


def test_the_fair_crps_is_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    m = x.shape[0]
    pairwise = (x - y).abs().mean(0) - (x[:, None] - x[None, :]).abs().sum((0, 1)) / (2 * m * (m - 1))
    torch.testing.assert_close(_fair_crps(x, y), pairwise, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="two members"):
        _fair_crps(x[:1], y)


def test_fair_crps_of_few_gaussian_members_is_unbiased_for_the_closed_form():
    """For members ~ N(mu, s^2) the CRPS is s [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)], z = (y - mu) / s
    (Gneiting et al. 2005); the fair estimator has that mean with any M (the plain one is too high by
    s / (M sqrt(pi)))."""
    g = torch.Generator().manual_seed(1)
    mu, s, y, m, n = 0.3, 1.7, 1.1, 3, 400_000
    x = mu + s * torch.randn(m, n, generator=g, dtype=torch.float64)
    z = (y - mu) / s
    phi, big_phi = math.exp(-z * z / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(z / math.sqrt(2)))
    exact = s * (z * (2 * big_phi - 1) + 2 * phi - 1 / math.sqrt(math.pi))
    got = float(_fair_crps(x, torch.full((n,), y, dtype=torch.float64)).mean())
    assert got == pytest.approx(exact, rel=5e-3)
    assert exact + s / (m * math.sqrt(math.pi)) > got * 1.1  # the plain estimator's bias would show


def _scope(input_skip: bool = True):
    spec = stormscope_spec(STATE_VARS, FINE_SHAPE, size="tiny", sampler={"num_steps": 3},
                           diffusion_conditions=["state"])
    pipe = randomise(build_pipeline(spec), seed=21).eval()
    if input_skip:
        pipe.spec.extra.update(input_skip=True, residual_scale=SCALE)
    return pipe


def test_members_crps_scores_the_states_the_forecast_steps_to():
    """Another code path: member k of sample b is ``step(prev_b, seeds=seeds[b])`` (the forecast's), its
    fair CRPS against the next state (a translation of the residual's: the CRPS is translation invariant)."""
    pipe = _scope()
    g = torch.Generator().manual_seed(3)
    prev = torch.randn(2, len(STATE_VARS), *FINE_SHAPE, generator=g)
    nxt = prev + 0.3 * torch.randn(prev.shape, generator=g)
    seeds = [row_seeds(5, 4, b) for b in range(2)]
    got = members_crps(pipe, {"state": [prev, nxt]}, seeds)
    for b in range(2):
        members = pipe.step(prev[b:b + 1].expand(4, -1, -1, -1), seeds=seeds[b])
        expected = _fair_crps(members, nxt[b]).mean()
        assert float(got[b]) == pytest.approx(float(expected), rel=1e-4)


def test_the_crps_is_the_automatic_score_of_a_diffusion_making_its_own_ensemble_mean():
    scope = _scope()
    assert resolve_valid_score("auto", "diffusion", scope) == "crps"
    assert resolve_valid_score("auto", "diffusion", _scope(input_skip=False)) == "loss"  # no residual draws
    scope.spec.extra["centre_members"] = True  # Stormscope members are never centred
    assert resolve_valid_score("auto", "diffusion", scope) == "crps"
    assert resolve_valid_score("loss", "diffusion", scope) == "loss"
    with pytest.raises(ConfigError, match="valid_score=loss"):
        resolve_valid_score("crps", "regression", scope)


class _Centred:
    diffuses_residual, members_centred = True, True


def test_members_centred_on_a_regression_mean_keep_the_loss():
    assert resolve_valid_score("auto", "diffusion", _Centred()) == "loss"
    assert resolve_valid_score("auto", "regression", _Centred()) == "loss"


@pytest.mark.slow
def test_a_stormscope_run_validates_and_exports_by_the_members_crps(tmp_path):
    """The logged validation CRPS is that of the exported (best) weights' members, recomputed from the
    bundle on the same validation samples and seeds (the export's spread calibration taken off); a run
    resumed from one validated by its loss starts its best afresh (the loss is no bar for a CRPS)."""
    import json

    import xkmcast
    from xkmcast.train import load_config, train
    from xkmcast.train.setup import build_run

    torch.set_num_threads(1)
    common = ["data.params={nx: 16, ny: 16, dx: 3000.0, factor: 4, times: 16, seed: 0}", "training.validate_every=2",
              "training.valid_batches=1", "training.valid_samples=3", "training.batch_size=4", f"training.outdir={tmp_path}",
              "training.tensorboard=false", "training.checkpoint_every=100"]
    first = train(load_config("stormscope-tiny", [*common, "training.duration=2", "training.valid_score=loss"]),
                  quiet=True)
    assert [s for s, _ in first.valid_losses] == [2]
    cfg = load_config("stormscope-tiny", [*common, "training.duration=6"])
    result = train(cfg, quiet=True)
    logged = [json.loads(line) for line in (result.bundle.parent / "log.jsonl").read_text().splitlines()]
    crps = [e["valid_crps"] for e in logged if "valid_crps" in e]
    assert [e["step"] for e in logged if "valid_loss" in e] == [2]
    assert len(crps) == 2 and [v for _, v in result.valid_losses] == crps
    model = xkmcast.load_model(result.bundle).eval()
    for key in ("spread_factor", "spread_by_scale", "step_spread_gain"):
        model.spec.extra.pop(key, None)
    _, _, valid = build_run(cfg)
    n = len(valid)
    chosen = sorted({round(i * (n - 1) / 2) for i in range(3)})  # valid_samples=3, spread evenly
    batch = torch.utils.data.default_collate([valid[i] for i in chosen])
    again = members_crps(model, batch, [row_seeds(cfg.training.seed, 4, i) for i in chosen])
    assert float(again.mean()) == pytest.approx(min(crps), rel=1e-4)
